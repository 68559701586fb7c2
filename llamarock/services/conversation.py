"""Converse use case: a checked chat request becomes one engine generation; stop sequences are applied here, for
every engine, and the text is streamed without ever emitting a stop string or a piece of one."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from llamarock.bedrock.converse import ChatRequest, chat_messages, render_for
from llamarock.bedrock.converse_stream import output_schema
from llamarock.services.inference import InferenceService, Target
from llamarock.types import GenerationRequest, SamplingParams, StopReason


class StopFilter:
    """Holds back text that could be the start of a stop sequence; reports the one that matched."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            position, stop = min(hits)
            self.matched = stop
            out, self.pending = self.pending[:position], ""
            return out
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Delta:
    """A piece of the answer: text to show, tokens it cost; the last one has ``stop_reason``."""

    text: str
    token_count: int
    prompt_tokens: int | None = None
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    cached_tokens: int | None = None


class ConversationService:
    """Runs Converse requests on the inference service's deployments."""

    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference

    def generation_request(self, target: Target, chat: ChatRequest, request_id: str) -> GenerationRequest:
        """Render the chat for the serving weights: Llama's own format when they use it, else their template."""
        messages, prefix = chat_messages(chat)
        sampling = SamplingParams(temperature=chat.temperature, top_p=chat.top_p, max_tokens=chat.max_tokens)
        schema = output_schema(chat)
        engine_format = target.deployment.engine.info.chat_format
        if engine_format == target.model.prompt_format and engine_format in ("llama3", "llama2"):
            return GenerationRequest(
                sampling=sampling, prompt=render_for(engine_format, messages, prefix), request_id=request_id,
                json_schema=schema,
            )
        return GenerationRequest(
            sampling=sampling, messages=messages, assistant_prefix=prefix, request_id=request_id, json_schema=schema
        )

    async def count_tokens(self, target: Target, request: GenerationRequest) -> int:
        self.inference.check_ready(target)
        return await target.deployment.engine.count_tokens(request)

    async def run(self, target: Target, chat: ChatRequest, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Generate, cutting the answer at the first stop sequence (which then ends the generation)."""
        self.inference.check_images(target, chat.images)
        stops = StopFilter(() if request.json_schema is not None else chat.stop_sequences)
        stream = self.inference.generate(target, request)
        try:
            async for chunk in stream:
                text = stops.feed(chunk.text)
                delta = Delta(text, chunk.token_count, chunk.prompt_tokens, cached_tokens=chunk.cached_tokens)
                if stops.matched is not None:
                    delta.stop_reason, delta.stop_sequence = "stop", stops.matched
                elif chunk.stop_reason is not None:
                    delta.text += stops.flush()
                    delta.stop_reason = chunk.stop_reason
                yield delta
                if delta.stop_reason is not None:
                    return
        finally:
            await stream.aclose()
