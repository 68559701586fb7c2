"""A deterministic, scripted engine for protocol tests and demos (``llamarock serve --engine fake``).

Tokens are whitespace-delimited words (each with its surrounding spaces). The reply is scripted (``reply``) or a
fixed sentence quoting the prompt, so the same request always streams the same chunks. It can be told to wait
before each token and to fail after a given number of tokens, which is how the protocol tests exercise slow
streams and in-stream errors.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from llamarock.engines.base import Engine
from llamarock.errors import ContextOverflowError, EngineError, EngineNotReadyError
from llamarock.types import EngineInfo, GenerationChunk, GenerationRequest, StopReason

_TOKEN = re.compile(r"\s*\S+\s*|\s+")
_SPECIAL = re.compile(r"<\|start_header_id\|>.*?<\|end_header_id\|>|<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>|</?s>")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def example_instance(schema: Any) -> Any:
    """A small deterministic value valid against a (common subset of) JSON schema."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_instance(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example_instance(sub) for name, sub in properties.items()}
    if kind == "array":
        return [example_instance(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(schema.get("minLength", 0), 4)
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


class FakeEngine(Engine):
    """Deterministic engine; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        context_length: int = 8192,
        reply: str | None = None,
        fail_after: int | None = None,
        token_delay_s: float = 0.0,
    ) -> None:
        super().__init__(name)
        self._context_length = context_length
        self._reply = reply
        self._fail_after = fail_after
        self._token_delay_s = token_delay_s

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name=self.name, context_length=self._context_length, chat_format="llama3", details={"engine": "fake"}
        )

    async def load(self) -> None:
        self._ready = True

    def _prompt_text(self, request: GenerationRequest) -> str:
        if request.messages is not None:
            rendered = "".join(f"{m.role}: {m.content}\n" for m in request.messages) + "assistant: "
            return rendered + request.assistant_prefix
        return request.prompt or ""

    def _last_user_text(self, request: GenerationRequest) -> str:
        if request.messages is not None:
            users = [m.content for m in request.messages if m.role == "user"]
            return users[-1] if users else ""
        prompt = request.prompt or ""
        for opener, closer in (("<|start_header_id|>user<|end_header_id|>", "<|eot_id|>"), ("[INST]", "[/INST]")):
            if opener in prompt:
                prompt = prompt.rsplit(opener, 1)[1].split(closer, 1)[0]
                prompt = prompt.rsplit("<</SYS>>", 1)[-1]
                break
        return " ".join(_SPECIAL.sub(" ", prompt).split())

    def _reply_for(self, request: GenerationRequest) -> str:
        if request.json_schema is not None:
            return json.dumps(example_instance(request.json_schema))
        quoted = self._last_user_text(request)
        if self._reply is not None:
            return self._reply.replace("{prompt}", quoted)
        words = quoted.split()
        tail = " ".join(words[-12:])
        return f"This is the fake engine. You said: {tail}"

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len(_tokens(self._prompt_text(request)))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        if request.adapter is not None:
            raise EngineError(f"{self.name} (the fake engine) cannot apply a LoRA adapter; serve the custom model's "
                              "base model with the llamacpp engine")
        prompt_tokens = await self.count_tokens(request)
        if prompt_tokens >= self._context_length:
            raise ContextOverflowError(prompt_tokens, self._context_length)
        budget = min(request.sampling.max_tokens, self._context_length - prompt_tokens)
        pieces = _tokens(self._reply_for(request))
        emitted = 0
        self._active += 1
        try:
            for piece in pieces[:budget]:
                if self._fail_after is not None and emitted >= self._fail_after:
                    raise EngineError(f"scripted failure after {emitted} tokens")
                await asyncio.sleep(self._token_delay_s)
                self._generated_tokens += 1
                yield GenerationChunk(piece, 1, prompt_tokens if emitted == 0 else None)
                emitted += 1
            stop: StopReason = "length" if len(pieces) > budget else "stop"
            yield GenerationChunk("", 0, prompt_tokens if emitted == 0 else None, stop_reason=stop)
        finally:
            self._active -= 1

    async def close(self) -> None:
        self._ready = False
