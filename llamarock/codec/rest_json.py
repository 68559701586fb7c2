"""restJson1 request pieces read through botocore's operation models: path labels, headers, body limits."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote

from llamarock.codec.service_model import RUNTIME, operation_model
from llamarock.errors import ValidationException

MAX_BODY_BYTES = 25_000_000


def split_model_path(raw_path: bytes) -> tuple[str, str]:
    """``/model/{modelId}/{action}`` on the raw (still percent-encoded) path -> (model id, action).

    Splitting before decoding keeps ARNs whose ``/`` arrives as ``%2F`` in one piece; an unencoded ARN still works
    because the action is always the last segment.
    """
    path = raw_path.decode("latin-1").split("?", 1)[0]
    prefix = "/model/"
    if not path.startswith(prefix):
        return "", ""
    label, _, action = path[len(prefix):].rpartition("/")
    return unquote(label), action


def header_values(operation: str, headers: Mapping[str, str], service: str = RUNTIME) -> dict[str, str]:
    """Input members bound to headers, by member name, with enum members checked against the model."""
    shape = operation_model(operation, service).input_shape
    values: dict[str, str] = {}
    if shape is None:
        return values
    for name, member in shape.members.items():
        if member.serialization.get("location") != "header":
            continue
        value = headers.get(member.serialization["name"])
        if value is None:
            continue
        allowed = getattr(member, "enum", None) or []
        if allowed and value not in allowed:
            raise ValidationException(
                f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy constraint: "
                f"Member must satisfy enum value set: [{', '.join(allowed)}]"
            )
        values[name] = value
    return values


def check_body_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise ValidationException(
            "1 validation error detected: Value at 'body' failed to satisfy constraint: Member must have length "
            f"less than or equal to {MAX_BODY_BYTES}"
        )


def check_json_media_type(value: str | None, member: str) -> None:
    """Llama models take and give only JSON; a missing header means JSON."""
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media in ("", "application/json", "*/*", "application/*"):
        return
    raise ValidationException(
        f"The provided {member} '{value}' is not supported by this model. Use application/json or omit the header."
    )
