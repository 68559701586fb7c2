"""In-process llama.cpp engine (llama-cpp-python).

One ``Llama`` instance per deployment, driven by one worker thread, so generation never blocks the event loop:
tokens travel from the worker to the request's coroutine through an asyncio queue. Requests run one after the
other on the worker (a later issue replaces these internals with continuous batching, not the interface).
``Llama.generate`` reuses the KV cache of the longest common prefix with the previous request.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import random
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llamarock.engines.base import Engine
from llamarock.errors import ContextOverflowError, EngineError, EngineNotReadyError, UnsupportedSchemaError
from llamarock.types import EngineInfo, GenerationChunk, GenerationRequest, SamplingParams, StopReason

log = logging.getLogger(__name__)

DEFAULT_MAX_CONTEXT = 8192


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


class _Job:
    """One generation handed to the worker thread."""

    def __init__(
        self, tokens: list[int], sampling: SamplingParams, emit: Callable[[Any], None], grammar: Any = None
    ) -> None:
        self.tokens = tokens
        self.sampling = sampling
        self.emit = emit
        self.grammar = grammar
        self.cancelled = threading.Event()


class LlamaCppEngine(Engine):
    """Serves one GGUF file with llama.cpp on the CPU."""

    def __init__(
        self,
        name: str,
        *,
        model_path: Path,
        threads: int,
        context_length: int | None = None,
        chat_format: str = "auto",
    ) -> None:
        super().__init__(name)
        self._model_path = model_path
        self._threads = threads
        self._context_length = context_length
        self._chat_format = chat_format
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{name}")
        self._llm: Any = None
        self._formatter: Any = None
        self._info: EngineInfo | None = None

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return self._info

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        self._ready = True

    def _load(self) -> None:
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EngineError(f"llama-cpp-python is not installed: {exc}") from exc
        if not self._model_path.is_file():
            raise EngineError(f"GGUF file not found: {self._model_path}")
        try:
            n_ctx = self._context_length or DEFAULT_MAX_CONTEXT
            self._llm = Llama(
                model_path=str(self._model_path),
                n_ctx=n_ctx,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                n_batch=512,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp could not load {self._model_path}: {exc}") from exc
        if self._context_length is None:
            # Default: the model's trained context, capped so that the KV cache stays small.
            n_ctx = min(n_ctx, int(self._llm._model.n_ctx_train()) or n_ctx)
        metadata: dict[str, str] = dict(self._llm.metadata)
        template = metadata.get("tokenizer.chat_template")
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self._llm.token_eos()),
                bos_token=self._token_text(self._llm.token_bos()),
                add_generation_prompt=True,
            )
        fmt = self._chat_format if self._chat_format != "auto" else chat_format_of(template)
        self._info = EngineInfo(
            name=self.name,
            # llama.cpp may round its context up; llama-cpp-python's token buffer keeps the size asked for.
            context_length=min(int(self._llm.n_ctx()), n_ctx),
            chat_format=fmt,
            details={
                "engine": "llamacpp",
                "weights": str(self._model_path),
                "architecture": metadata.get("general.architecture", "unknown"),
                "model_name": metadata.get("general.name", self._model_path.stem),
                "threads": str(self._threads),
            },
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", errors="ignore")

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
        tokens: list[int] = self._llm.tokenize(self._render(request).encode(), add_bos=True, special=True)
        bos = self._llm.token_bos()
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    async def count_tokens(self, request: GenerationRequest) -> int:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return len(await asyncio.to_thread(self._tokenize, request))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        tokens = await asyncio.to_thread(self._tokenize, request)
        grammar = None
        if request.json_schema is not None:
            grammar = await asyncio.to_thread(self._grammar, request.json_schema)
        n_ctx = self.info.context_length
        if len(tokens) >= n_ctx:
            raise ContextOverflowError(len(tokens), n_ctx)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

        def emit(item: GenerationChunk | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = _Job(tokens, request.sampling, emit, grammar)
        self._active += 1
        done = loop.run_in_executor(self._executor, self._run, job)
        done.add_done_callback(lambda _: self._finished())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed while generating: {item}") from item
                yield item
                if item.stop_reason is not None:
                    return
        finally:
            job.cancelled.set()

    @staticmethod
    def _grammar(schema: dict[str, Any]) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # llama.cpp's converter raises several kinds for schemas it cannot express
            raise UnsupportedSchemaError(f"cannot constrain output to this JSON schema: {exc}") from exc

    def _finished(self) -> None:
        self._active -= 1

    def _run(self, job: _Job) -> None:
        """Worker thread: decode until end of generation, the token budget, or cancellation."""
        if job.cancelled.is_set():
            return
        try:
            self._decode(job)
        except Exception as exc:
            log.exception("llama.cpp generation failed")
            job.emit(exc)

    def _decode(self, job: _Job) -> None:
        import llama_cpp

        llm = self._llm
        sampling = job.sampling
        prompt_tokens = len(job.tokens)
        budget = min(sampling.max_tokens, self.info.context_length - prompt_tokens)
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        top_p = sampling.top_p if 0.0 < sampling.top_p < 1.0 else 1.0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        generated = 0
        pending = 0
        first = True
        stop_reason: StopReason = "length"
        tokens = llm.generate(
            job.tokens,
            top_k=0,
            top_p=top_p,
            min_p=0.0,
            temp=max(sampling.temperature, 0.0),
            repeat_penalty=1.0,
            grammar=job.grammar,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    stop_reason = "stop"
                    break
                generated += 1
                pending += 1
                self._generated_tokens += 1
                text = decoder.decode(bytes(llm.detokenize([token], special=False)))
                if text:
                    job.emit(GenerationChunk(text, pending, prompt_tokens if first else None))
                    first = False
                    pending = 0
                if generated >= budget:
                    break
        finally:
            with contextlib.suppress(Exception):
                tokens.close()
        job.emit(
            GenerationChunk(
                decoder.decode(b"", final=True), pending, prompt_tokens if first else None, stop_reason=stop_reason
            )
        )

    async def close(self) -> None:
        self._ready = False
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, llm.close)
        self._executor.shutdown(wait=False)
