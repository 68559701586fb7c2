"""In-process llama.cpp engine (llama-cpp-python's low-level bindings) with continuous batching.

The engine tokenizes and renders prompts (the GGUF's own chat template) on the caller's side and hands each request
to its :class:`~llamarock.engines.decode_loop.DecodeLoop`, which decodes all running requests together in one
thread. Tokens come back through an asyncio queue, so generation never blocks the event loop and a slow reader
never slows the loop: its tokens wait in its own queue.

A request's LoRA adapter (``GenerationRequest.adapter``, a custom model) is loaded into the model on its first use
(``llama_adapter_lora_init``, in a worker thread) and kept, by its key, for the model's lifetime; the decode loop
applies it to that request's tokens only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import llama_cpp

from llamarock.engines.base import ChunkRelay, Engine
from llamarock.engines.decode_loop import DecodeLoop, Job, LlamaCppConfig, Lora, check_grammar, common_prefix
from llamarock.errors import (
    ContextOverflowError,
    EmptyPromptError,
    EngineError,
    EngineNotReadyError,
    UnsupportedSchemaError,
)
from llamarock.types import Adapter, EngineInfo, GenerationChunk, GenerationRequest

log = logging.getLogger(__name__)

DEFAULT_MAX_CONTEXT = 8192
INLINE_TOKENIZE_CHARS = 4096  # raw prompts up to this size are tokenized on the event loop, longer ones in a thread


def chat_format_of(template: str | None) -> str:
    """Name the chat format a GGUF chat template implements: llama3, llama2, chatml or other."""
    if not template:
        return "other"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "llama2"
    if "<|im_start|>" in template:
        return "chatml"
    return "other"


class LlamaCppEngine(Engine):
    """Serves one GGUF file with llama.cpp on the CPU, many requests at once."""

    def __init__(self, name: str, config: LlamaCppConfig) -> None:
        super().__init__(name)
        self.config = config
        self._model: Any = None
        self._vocab: Any = None
        self._loop: DecodeLoop | None = None
        self._formatter: Any = None
        self._info: EngineInfo | None = None
        self._adapters: dict[str, tuple[str, Any]] = {}  # key -> (path, llama.cpp's adapter), loaded on first use
        self._adapter_loading: dict[str, asyncio.Lock] = {}

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return self._info

    def stats(self) -> dict[str, int]:
        base = super().stats()
        if self._loop is not None:
            base.update(self._loop.stats())
            base["generated_tokens"] = self._loop.generated_tokens
        base["loaded_adapters"] = len(self._adapters)
        return base

    async def load(self) -> None:
        await asyncio.to_thread(self._load)
        self._ready = True

    def _load(self) -> None:
        from llama_cpp._logger import set_verbose
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = self.config.model_path
        if not path.is_file():
            raise EngineError(f"GGUF file not found: {path}")
        llama_cpp.llama_backend_init()
        set_verbose(False)  # llama.cpp's progress lines stay quiet; its errors still reach stderr
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not model:
            raise EngineError(f"llama.cpp could not load {path}: not a valid GGUF model")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        trained = int(llama_cpp.llama_model_n_ctx_train(model)) or DEFAULT_MAX_CONTEXT
        window = self.config.context_length or min(trained, DEFAULT_MAX_CONTEXT)
        self._loop = DecodeLoop(model, self.config, window, self.name)
        template_bytes = llama_cpp.llama_model_chat_template(model, None)
        template = template_bytes.decode() if template_bytes else None
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
                bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
                add_generation_prompt=True,
            )
        fmt = self.config.chat_format if self.config.chat_format != "auto" else chat_format_of(template)
        self._info = EngineInfo(
            name=self.name,
            context_length=window,
            chat_format=fmt,
            details={
                "engine": "llamacpp",
                "weights": str(path),
                "architecture": self._meta("general.architecture") or "unknown",
                "model_name": self._meta("general.name") or path.stem,
                "threads": str(self.config.threads),
                "kv_cells": str(self._loop.kv_cells),
                "slots": str(self.config.slots),
            },
        )

    def _meta(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1024)
        size = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode(errors="replace") if size >= 0 else None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        buffer = ctypes.create_string_buffer(256)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[: max(size, 0)].decode(errors="ignore")

    def _render(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        assert request.messages is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if self._formatter is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        else:
            text = self._formatter(messages=messages).prompt
        return text + request.assistant_prefix

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        """Tokens of the rendered prompt, special tokens parsed, BOS added once when the model wants it."""
        return self._tokens_of(self._render(request))

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], tuple[int, ...]]:
        """The prompt's tokens, and its cache marks as token positions (each where the tokens of the prompt cut at
        the mark stop agreeing with the whole; marks that cover nothing, or the whole prompt, are dropped)."""
        tokens = self._tokenize(request)
        positions = set()
        for mark in request.cache_marks:
            if mark.message is None:
                if request.prompt is None or mark.chars is None:
                    continue
                cut = self._tokens_of(request.prompt[: mark.chars])
            else:
                if request.messages is None or not 0 <= mark.message < len(request.messages):
                    continue
                messages = list(request.messages[: mark.message + 1])
                if mark.chars is not None:
                    messages[-1] = dataclasses.replace(messages[-1], content=messages[-1].content[: mark.chars])
                cut = self._tokens_of(self._render(GenerationRequest(sampling=request.sampling,
                                                                     messages=tuple(messages))))
            position = common_prefix(cut, tokens)
            if 0 < position < len(tokens):
                positions.add(position)
        return tokens, tuple(sorted(positions))

    def _tokens_of(self, prompt: str) -> list[int]:
        """Tokens of a text, special tokens parsed, BOS added once when the model wants it.

        Text that is not valid Unicode (an unpaired surrogate, refused by the Bedrock layer) is encoded with ``?`` in
        its place, as Java's UTF-8 encoder does, rather than failing the request.
        """
        text = prompt.encode("utf-8", errors="replace")
        capacity = len(text) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, text, len(text), tokens, capacity, True, True)
        if count < 0:
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, text, len(text), tokens, capacity, True, True)
        result = list(tokens[:count])
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        if len(result) >= 2 and result[0] == bos and result[1] == bos:
            result = result[1:]
        return result

    @staticmethod
    def _grammar(schema: dict[str, Any]) -> str:
        """The GBNF grammar of a JSON schema, refused (UnsupportedSchemaError) when llama.cpp could not take it."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            grammar = str(json_schema_to_gbnf(json.dumps(_bounded_integers(schema))))
        except UnsupportedSchemaError:
            raise
        except RecursionError:
            raise UnsupportedSchemaError("it nests too deeply to convert to a grammar") from None
        except Exception as exc:  # llama.cpp's converter raises several kinds for schemas it cannot express
            raise UnsupportedSchemaError(f"cannot constrain output to this JSON schema: {exc}") from exc
        check_grammar(grammar)
        return grammar

    async def count_tokens(self, request: GenerationRequest) -> int:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return len(await asyncio.to_thread(self._tokenize, request))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready or self._loop is None:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        if request.prompt is not None and len(request.prompt) <= INLINE_TOKENIZE_CHARS and not request.cache_marks:
            tokens, marks = self._prepare(request)  # microseconds: cheaper than a hop to a worker thread on busy cores
        else:
            tokens, marks = await asyncio.to_thread(self._prepare, request)
        if not tokens:  # e.g. an empty raw prompt on weights without BOS: the decode loop would have nothing to run
            raise EmptyPromptError()
        if len(tokens) >= self.info.context_length:
            raise ContextOverflowError(len(tokens), self.info.context_length)
        grammar = None
        if request.json_schema is not None:
            grammar = await asyncio.to_thread(self._grammar, request.json_schema)
        lora = await self._lora(request.adapter) if request.adapter is not None else None
        relay = ChunkRelay()
        job = Job(tokens, request.sampling, relay.emit, grammar, priority=request.priority, marks=marks, lora=lora)
        decode = self._loop
        decode.submit(job)

        def cancel() -> None:  # the caller left early: the loop frees the sequence and its KV at its next step
            job.cancelled.set()
            decode.wake()

        self._active += 1
        try:
            async with contextlib.aclosing(relay.chunks("llama.cpp", cancel)) as chunks:
                async for item in chunks:
                    yield item
        finally:
            self._active -= 1

    async def _lora(self, adapter: Adapter) -> Lora:
        """The adapter loaded into this model, loading it on first use (one load per key, however many ask)."""
        loaded = self._adapters.get(adapter.key)
        if loaded is None or loaded[0] != adapter.path:
            lock = self._adapter_loading.setdefault(adapter.key, asyncio.Lock())
            async with lock:
                loaded = self._adapters.get(adapter.key)
                if loaded is None or loaded[0] != adapter.path:
                    handle = await asyncio.to_thread(self._load_adapter, adapter.path)
                    loaded = self._adapters[adapter.key] = (adapter.path, handle)
        return Lora(adapter.key, loaded[1], adapter.scale)

    def _load_adapter(self, path: str) -> Any:
        if not Path(path).is_file():
            raise EngineError(f"the LoRA adapter file {Path(path).name} is missing")
        handle = llama_cpp.llama_adapter_lora_init(self._model, path.encode())
        if not handle:
            raise EngineError(
                f"llama.cpp could not load the LoRA adapter {Path(path).name} over {self.config.model_path.name} "
                "(the server log has llama.cpp's reason: another base model's adapter?)"
            )
        return handle

    async def close(self) -> None:
        self._ready = False
        loop, self._loop = self._loop, None
        if loop is not None:
            await asyncio.to_thread(loop.close)
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None


MAX_ENUMERATED_RANGE = 2048
# Bounds the converter turns into one nested grammar group per unit (maxLength 1,001 is refused by llama.cpp, about
# 18,600 crash it): refused before converting, since the converter would first build the whole text (a maxLength of
# 10**9 is a gigabyte of grammar). Engines are given checked schemas (llamarock/bedrock/schema_limits.py); this is
# the engine's own guard.
MAX_REPETITION_BOUND = 1000
_REPETITION_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")


def _bounded_integers(schema: Any) -> Any:
    """llama-cpp-python's schema-to-grammar converter ignores ``minimum``/``maximum``; an integer with a small
    closed range is rewritten as the enum of its values, which the grammar does enforce. Length and item bounds
    above :data:`MAX_REPETITION_BOUND` are refused (UnsupportedSchemaError)."""
    if isinstance(schema, list):
        return [_bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    for keyword in _REPETITION_KEYWORDS:
        bound = schema.get(keyword)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > MAX_REPETITION_BOUND:
            raise UnsupportedSchemaError(
                f"{keyword} {bound} is above {MAX_REPETITION_BOUND}, the largest this engine enforces; lower it"
            )
    rewritten = {key: _bounded_integers(value) for key, value in schema.items()}
    if rewritten.get("type") == "integer" and "enum" not in rewritten:
        low = rewritten.get("minimum")
        high = rewritten.get("maximum")
        if isinstance(rewritten.get("exclusiveMinimum"), int | float):
            low = int(rewritten["exclusiveMinimum"]) + 1
        if isinstance(rewritten.get("exclusiveMaximum"), int | float):
            high = int(rewritten["exclusiveMaximum"]) - 1
        if isinstance(low, int | float) and isinstance(high, int | float):
            low, high = int(-(-low // 1)), int(high // 1)
            if 0 <= high - low <= MAX_ENUMERATED_RANGE:
                rewritten = {"enum": list(range(low, high + 1))}
    return rewritten
