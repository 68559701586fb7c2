"""Images for the vision Llamas, as Bedrock takes them: checked, decoded and placed in the prompt. Pure: no I/O.

Two ways in: the native InvokeModel body's ``images`` (base64 strings, the prompt carries one ``<|image|>`` per image
or none, in which case they go at the start of the first user turn, where Meta puts them) and Converse ``image``
blocks (raw bytes with a declared format, user turns only, each becoming ``<|image|>`` where it stands in the turn).

Every image is checked before anything runs, with Pillow: the declared format must be the bytes' format; size,
width and height within Bedrock's limits (3.75 MB, 8,000 × 8,000 px), the dimensions read from the header *before*
the pixels are decoded, so a small file that declares a huge canvas (a decompression bomb) is refused without
allocating it; then the first frame is decoded whole, so truncated or corrupt bytes are refused here and not in the
engine. Bedrock's Llama 3.2 Vision takes one image per request; Llama 4, like Converse in general, up to 20.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError

from llamarock.bedrock.catalog import CatalogModel
from llamarock.errors import ValidationException

IMAGE_TOKEN: Final = "<|image|>"
FORMATS: Final = ("png", "jpeg", "gif", "webp")
_PIL_FORMATS: Final = {"PNG": "png", "JPEG": "jpeg", "GIF": "gif", "WEBP": "webp", "MPO": "jpeg"}
MAX_IMAGE_BYTES: Final = 3_750_000
MAX_IMAGE_SIDE: Final = 8000
MAX_IMAGES: Final = 20
# Images per request by model family, where Bedrock takes fewer than MAX_IMAGES.
_FAMILY_MAX_IMAGES: Final = {"llama3.2": 1}
MODEL_ERRORS: Final = "The model returned the following errors: "
FORMAT_MISMATCH: Final = f"{MODEL_ERRORS}The provided image does not match the specified image format."
_NATIVE_SUFFIX: Final = ", please reformat your input and try again."
# The user-turn headers of the Llama 3 and Llama 4 prompt formats; images go right after the first one.
_USER_HEADERS: Final = ("<|start_header_id|>user<|end_header_id|>", "<|header_start|>user<|header_end|>")


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the checks: its bytes, its format and its size in pixels."""

    data: bytes
    format: str
    width: int
    height: int


def max_images(model: CatalogModel) -> int:
    """How many images one request to ``model`` may carry."""
    return _FAMILY_MAX_IMAGES.get(model.family, MAX_IMAGES)


def check_count(model: CatalogModel, count: int) -> None:
    """Refuse more images than ``model`` takes in one request."""
    limit = max_images(model)
    if count > limit:
        few = "one image" if limit == 1 else f"at most {limit} images"
        raise ValidationException(
            f"{MODEL_ERRORS}Validation Error: {model.model_id} takes {few} per request and this request has "
            f"{count}. Send {'one image' if limit == 1 else f'{limit} or fewer'} per request."
        )


def check_image(data: bytes, where: str, declared: str | None = None) -> CheckedImage:
    """Check one image's bytes (and its ``declared`` format, for Converse); ``where`` names it in the messages.

    Raises ValidationException, in Bedrock's words where they are known, for bytes over the size limit, bytes that
    are no image Pillow reads, a format other than png, jpeg, gif and webp (or other than the declared one), sides
    over 8,000 px (checked before decoding), and bytes that fail to decode.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise ValidationException(
            f"{MODEL_ERRORS}{where}: image exceeds the 3.75 MB maximum: {len(data)} bytes > {MAX_IMAGE_BYTES} "
            "bytes. Resize or compress the image."
        )
    found: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "GIF", "WEBP"]) as image:
                found = _PIL_FORMATS.get(image.format or "")
                width, height = image.size
                if found is None:
                    raise UnidentifiedImageError(image.format)
                if declared is not None and found != declared:
                    raise ValidationException(
                        f"{FORMAT_MISMATCH} The image at {where} is declared {declared} but its bytes are {found}."
                    )
                if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                    raise ValidationException(
                        f"{MODEL_ERRORS}{where}: image exceeds max pixels allowed: it is {width} x {height} px and "
                        f"each side may be at most {MAX_IMAGE_SIDE} px. Resize the image."
                    )
                image.load()  # the first frame, whole: truncated or corrupt bytes fail here
    except ValidationException:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationException(
            f"{MODEL_ERRORS}{where}: image exceeds max pixels allowed: each side may be at most {MAX_IMAGE_SIDE} px. "
            "Resize the image."
        ) from None
    except UnidentifiedImageError:
        raise ValidationException(
            f"{MODEL_ERRORS}{where}: the bytes are not a png, jpeg, gif or webp image. Send the image file's bytes "
            "in one of those formats."
        ) from None
    except Exception as exc:  # Pillow's decoders raise many kinds (OSError, SyntaxError, struct.error...) on bad bytes
        raise ValidationException(
            f"{MODEL_ERRORS}{where}: the {found or 'image'} bytes could not be decoded ({exc}). Send an intact "
            "image file."
        ) from None
    return CheckedImage(data, found, width, height)


def native_images(model: CatalogModel, images: tuple[str, ...]) -> tuple[bytes, ...]:
    """The native body's ``images``: base64 strings decoded and checked, refused in the native body's words."""
    check_count(model, len(images))
    decoded = []
    for index, text in enumerate(images):
        try:
            data = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValidationException(
                f"Malformed input request: #/images/{index}: string is not valid base64{_NATIVE_SUFFIX}"
            ) from None
        decoded.append(check_image(data, f"images.{index}").data)
    return tuple(decoded)


def place_image_tokens(prompt: str, count: int) -> str:
    """The native prompt with one ``<|image|>`` per image: as written when it already has them all; when it has
    none, they are put at the start of the first user turn (right after its header and blank line), or at the
    start of a prompt without turns. Any other count is refused: each image needs its one placeholder."""
    present = prompt.count(IMAGE_TOKEN)
    if present == count:
        return prompt
    if present:
        raise ValidationException(
            f"Malformed input request: #/prompt: has {present} {IMAGE_TOKEN} tokens for {count} images; put one "
            f"{IMAGE_TOKEN} where each image belongs, or none to have them placed at the start of the first user "
            f"turn{_NATIVE_SUFFIX}"
        )
    tokens = IMAGE_TOKEN * count
    for header in _USER_HEADERS:
        at = prompt.find(header)
        if at >= 0:
            at += len(header)
            for _ in range(2):  # the blank line after the header
                at += prompt.startswith("\n", at)
            return prompt[:at] + tokens + prompt[at:]
    begin = "<|begin_of_text|>"
    if prompt.startswith(begin):
        return begin + tokens + prompt[len(begin):]
    return tokens + prompt
