"""In-process Hugging Face transformers engine for the vision Llamas (torch on CPU or CUDA).

Serves a Hugging Face model folder (``config.json``, safetensors weights, the processor's tokenizer and image
processor files) of one of :data:`ARCHITECTURES`: Llama 3.2 Vision (``MllamaForConditionalGeneration``, images
through cross-attention layers) and Llama 4 (``Llama4ForConditionalGeneration``, early fusion: each image becomes
``<|patch|>`` tokens in the prompt). The folder's processor turns the prompt and the request's images into model
inputs (for Llama 4 without torchvision, :mod:`llamarock.engines.llama4_images` does); generation is
transformers' own ``generate`` with a streamer and a stopping criterion that ends it as soon as the caller goes
away.

Generations run one at a time on one worker thread (the image and prompt preparation of the next request overlaps
the running one): the two architectures take images of different tile counts per request, and a padded batch of
those through ``generate`` is not streamable per request, so concurrent requests are serialised, not batched. The
event loop never waits on torch: chunks come back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarock.engines.base import ChunkRelay, Engine
from llamarock.engines.llama4_images import Llama4ImageSettings
from llamarock.errors import (
    ContextOverflowError,
    EmptyPromptError,
    EngineError,
    EngineNotReadyError,
    UnsupportedSchemaError,
)
from llamarock.types import EngineInfo, GenerationChunk, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

# The architectures this engine serves (config.json's ``architectures``), and the chat format of each: Llama 3.2
# Vision uses Llama 3's headers (llamarock renders those itself); Llama 4 its own, rendered by the folder's template.
ARCHITECTURES = {
    "MllamaForConditionalGeneration": "llama3",
    "Llama4ForConditionalGeneration": "other",
}
IMAGE_TOKEN = "<|image|>"
DEFAULT_MAX_CONTEXT = 8192


def torch_available() -> bool:
    """Whether torch and transformers can be imported (the ``llamarock[vision]`` extra)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TransformersConfig:
    """How a deployment runs its Hugging Face folder: ``device`` 'auto' (CUDA when torch sees a GPU, else CPU),
    'cpu', 'cuda' or 'cuda:N'; ``dtype`` 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16' or
    'float16'; ``threads`` torch's CPU threads (None: torch's default)."""

    model_path: Path
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    context_length: int | None = None
    chat_format: str = "auto"


@dataclass
class _Prepared:
    """A request made into model inputs: ``inputs`` for ``generate``, ``prompt_tokens`` as reported (text tokens
    plus the tokens its images stand for)."""

    inputs: dict[str, Any]
    text_tokens: int
    prompt_tokens: int


class _Stream:
    """transformers' streamer protocol (``put``/``end``): turns generated token ids into text chunks, holding back a
    partial UTF-8 character, and hands them to ``emit``."""

    def __init__(self, tokenizer: Any, stop_ids: set[int], prompt_tokens: int,
                 emit: Callable[[GenerationChunk | BaseException], None], counted: Callable[[], None]) -> None:
        self.counted = counted
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.prompt_tokens: int | None = prompt_tokens
        self.emit = emit
        self.tokens: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt's ids
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                return
            if token in self.stop_ids:
                self.stopped = True
                return
            self.tokens.append(int(token))
            self.counted()
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                self._send("", 1)
                continue
            self._send(text[len(self.sent):], 1)
            self.sent = text

    def _send(self, text: str, count: int, stop: Any = None) -> None:
        self.emit(GenerationChunk(text=text, token_count=count, prompt_tokens=self.prompt_tokens, stop_reason=stop))
        self.prompt_tokens = None

    def end(self) -> None:
        pass

    def finish(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True) if self.tokens else ""
        self._send(text[len(self.sent):], 0, "stop" if self.stopped else "length")


def _llama4_settings(path: Path) -> Llama4ImageSettings:
    """Llama 4's image settings from the folder's processor files (transformers' defaults where they say nothing)."""
    found: dict[str, Any] = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            document = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        found.update(document.get("image_processor", {}) if isinstance(document.get("image_processor"), dict)
                     else {})
        found.update(document)
    size = found.get("size") or {}
    return Llama4ImageSettings(
        tile=int(size.get("height", 336)), max_tiles=int(found.get("max_patches", 16)),
        patch_size=int(found.get("patch_size", 14)), pixel_shuffle_ratio=float(found.get("pixel_shuffle_ratio", 0.5)),
        mean=tuple(found.get("image_mean", (0.5, 0.5, 0.5))), std=tuple(found.get("image_std", (0.5, 0.5, 0.5))),
    )


class TransformersEngine(Engine):
    """Serves one Hugging Face vision-Llama folder with transformers, one generation at a time."""

    def __init__(self, name: str, config: TransformersConfig) -> None:
        super().__init__(name)
        self.config = config
        self._model: Any = None
        self._processor: Any = None
        self._tokenizer: Any = None
        self._architecture = ""
        self._device = "cpu"
        self._stop_ids: set[int] = set()
        self._info: EngineInfo | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._llama4: Llama4ImageSettings | None = None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return self._info

    async def load(self) -> None:
        await asyncio.to_thread(self._load)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{self.name}")
        self._ready = True

    def _load(self) -> None:
        path = self.config.model_path
        config_file = path / "config.json"
        if not config_file.is_file():
            raise EngineError(f"{path} is not a Hugging Face model folder: it has no config.json")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise EngineError(f"{config_file} is not readable JSON: {exc}") from exc
        architectures = config.get("architectures") or []
        architecture = next((a for a in architectures if a in ARCHITECTURES), None)
        if architecture is None:
            raise EngineError(
                f"{path} holds {', '.join(architectures) or 'an unnamed architecture'}; the transformers engine "
                f"serves {', '.join(ARCHITECTURES)} (Llama 3.2 Vision and Llama 4)"
            )
        try:
            import torch
            transformers: Any = importlib.import_module("transformers")  # untyped: seen as Any
        except ImportError as exc:
            raise EngineError(
                "the transformers engine needs torch and transformers: install llamarock[vision]"
            ) from exc
        transformers.utils.logging.disable_progress_bar()  # no progress bars in the server's log
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = self.config.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype_name)
        model_class = getattr(transformers, architecture)
        try:
            try:
                self._processor = transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True)
                self._tokenizer = self._processor.tokenizer
            except Exception:
                if architecture != "Llama4ForConditionalGeneration" or importlib.util.find_spec("torchvision"):
                    raise
                # Llama 4's image processor needs torchvision, which a CPU-only torch lacks: do its work here.
                self._processor = None
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self._llama4 = _llama4_settings(path)
            model = model_class.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        except Exception as exc:  # transformers raises many kinds for a broken folder
            raise EngineError(f"transformers could not load {path}: {exc}") from exc
        self._model = model.to(device).eval()
        self._device = device
        self._architecture = architecture
        generation = getattr(model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None) or self._tokenizer.eos_token_id
        self._stop_ids = {int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None}
        text_config = model.config.get_text_config()
        trained = int(getattr(text_config, "max_position_embeddings", 0) or DEFAULT_MAX_CONTEXT)
        window = self.config.context_length or min(trained, DEFAULT_MAX_CONTEXT)
        chat_format = self.config.chat_format if self.config.chat_format != "auto" else ARCHITECTURES[architecture]
        self._info = EngineInfo(
            name=self.name,
            context_length=window,
            chat_format=chat_format,
            supports_images=True,
            details={
                "engine": "transformers",
                "weights": str(path),
                "architecture": architecture,
                "device": device,
                "dtype": dtype_name,
                "parameters": str(sum(p.numel() for p in model.parameters())),
            },
        )

    # ------------------------------------------------------------------------------------------------ inputs

    def _text(self, request: GenerationRequest) -> str:
        """The prompt as text: a raw prompt as written, messages with the folder's chat template; BOS once."""
        if request.prompt is not None:
            text = request.prompt
        else:
            assert request.messages is not None
            messages = [{"role": "ipython" if m.role == "tool" else m.role, "content": m.content}
                        for m in request.messages]
            try:
                text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # a template that cannot render these messages
                raise EngineError(f"the chat template of {self.config.model_path} failed: {exc}") from exc
            text += request.assistant_prefix
        bos = self._tokenizer.bos_token or ""
        if bos and bos not in text:
            leading = 0
            while text.startswith(IMAGE_TOKEN, leading * len(IMAGE_TOKEN)):
                leading += 1
            cut = leading * len(IMAGE_TOKEN)
            text = text[:cut] + bos + text[cut:]
        return text

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        from PIL import Image

        text = self._text(request)
        placeholders = text.count(IMAGE_TOKEN)
        if placeholders != len(request.images):
            raise EngineError(
                f"the prompt has {placeholders} {IMAGE_TOKEN} placeholders for {len(request.images)} images"
            )
        images = []
        for data in request.images:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
        try:
            if self._processor is None:
                inputs = self._llama4_inputs(text, images)
            elif images:
                inputs = self._processor(text=text, images=images, add_special_tokens=False, return_tensors="pt")
            else:
                inputs = self._processor(text=text, add_special_tokens=False, return_tensors="pt")
        except Exception as exc:
            raise EngineError(f"the processor of {self.config.model_path} refused the input: {exc}") from exc
        inputs = dict(inputs)
        text_tokens = int(inputs["input_ids"].shape[1])
        prompt_tokens = text_tokens
        if images and self._architecture == "MllamaForConditionalGeneration":
            # Each image is one <|image|> token in the text and, through cross-attention, (patches + 1) vision
            # tokens per tile it was cut into.
            vision = self._model.config.vision_config
            per_tile = (vision.image_size // vision.patch_size) ** 2 + 1
            tiles = int(inputs["aspect_ratio_mask"].sum())
            prompt_tokens = text_tokens - len(images) + tiles * per_tile
        return _Prepared(inputs=inputs, text_tokens=text_tokens, prompt_tokens=prompt_tokens)

    def _llama4_inputs(self, text: str, images: list[Any]) -> dict[str, Any]:
        """Llama 4's model inputs made here (``llama4_images``), for when its processor cannot load."""
        import numpy as np
        import torch

        from llamarock.engines.llama4_images import image_tokens, pixel_tiles

        assert self._llama4 is not None
        pieces = text.split(IMAGE_TOKEN)
        tiles = []
        expanded = pieces[0]
        for image, piece in zip(images, pieces[1:], strict=True):
            pixels, grid = pixel_tiles(image, self._llama4)
            tiles.append(pixels)
            expanded += image_tokens(grid, self._llama4) + piece
        encoded = self._tokenizer(expanded, add_special_tokens=False, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if tiles:
            inputs["pixel_values"] = torch.from_numpy(np.concatenate(tiles))
        return inputs

    async def count_tokens(self, request: GenerationRequest) -> int:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return (await asyncio.to_thread(self._prepare, request)).prompt_tokens

    # -------------------------------------------------------------------------------------------- generation

    def _run(self, prepared: _Prepared, sampling: SamplingParams, cancelled: threading.Event,
             emit: Callable[[GenerationChunk | BaseException], None]) -> None:
        """Generate on the worker thread; every outcome, an exception included, reaches ``emit``."""
        if cancelled.is_set():
            return
        try:
            import torch
            from transformers import StoppingCriteria, StoppingCriteriaList

            class _Cancelled(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                      device=input_ids.device)

            stream = _Stream(self._tokenizer, self._stop_ids, prepared.prompt_tokens, emit, self._count_token)
            inputs = {k: v.to(self._device) if hasattr(v, "to") else v for k, v in prepared.inputs.items()}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            options: dict[str, Any] = {
                "max_new_tokens": sampling.max_tokens,
                "eos_token_id": sorted(self._stop_ids),
                "pad_token_id": self._tokenizer.pad_token_id or min(self._stop_ids),
                "streamer": stream,
                "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
            }
            if sampling.temperature > 0:
                options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            else:
                options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                self._model.generate(**inputs, **options)
            if not cancelled.is_set():
                stream.finish()
        except BaseException as exc:
            emit(exc)

    def _count_token(self) -> None:
        """One more token generated (counted on the worker thread, where generation happens, so that tokens of a
        cancelled generation count too)."""
        self._generated_tokens += 1

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready or self._worker is None:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        if request.adapter is not None:
            raise EngineError(f"{self.name} (the transformers engine) cannot apply a LoRA adapter yet; serve the "
                              "custom model's base model with the llamacpp engine")
        if request.json_schema is not None:
            raise UnsupportedSchemaError("the transformers engine does not constrain output to a JSON schema yet")
        prepared = await asyncio.to_thread(self._prepare, request)
        if prepared.text_tokens == 0:
            raise EmptyPromptError()
        if prepared.text_tokens >= self.info.context_length:
            raise ContextOverflowError(prepared.text_tokens, self.info.context_length)
        relay = ChunkRelay()
        cancelled = threading.Event()
        self._worker.submit(self._run, prepared, request.sampling, cancelled, relay.emit)
        self._active += 1
        try:
            # A caller that leaves early cancels: the stopping criterion ends generate() at its next step.
            async with contextlib.aclosing(relay.chunks("transformers", cancelled.set)) as chunks:
                async for item in chunks:
                    yield item
        finally:
            self._active -= 1

    async def close(self) -> None:
        self._ready = False
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.to_thread(worker.shutdown, wait=True, cancel_futures=True)
        self._model = None
