"""InvokeModel(+Stream) on an imported model in OpenAI's body formats, which Bedrock accepts for imported models
beside the native one (``bedrock/imported_models.py`` tells them apart).

- OpenAI chat completion (``messages``): translated by the Chat Completions parser (``bedrock/openai_chat.py``) into
  a Converse request and run as Converse (so the checkpoint's chat template renders it); the answer is a
  ``chat.completion`` (streamed: ``chat.completion.chunk`` objects, one per InvokeModelWithResponseStream chunk).
- OpenAI completion (``prompt`` with ``max_tokens``, ``stop``...): the prompt as written, generated, stop sequences
  applied; the answer is a ``text_completion`` (streamed: one ``text_completion`` piece per chunk).

The last streamed chunk carries ``amazon-bedrock-invocationMetrics``, as on every Bedrock stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

from llamarock.bedrock import imported_models
from llamarock.bedrock.converse_stream import Event
from llamarock.bedrock.native import InvocationMetrics
from llamarock.bedrock.openai_chat import ChunkStream, completion, completion_id, parse_request
from llamarock.context import ModelName
from llamarock.services.inference import Target
from llamarock.services.invocation import Invocation, InvocationService, StopFilter, Usage
from llamarock.types import GenerationRequest, SamplingParams, StopReason


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _metrics(used: Usage, started: float) -> dict[str, int]:
    return InvocationMetrics(used.prompt_tokens, used.output_tokens, _since(started), used.first_token_ms or 0,
                             used.cache_read_tokens).to_json()


def invoke_openai(service: InvocationService, kind: imported_models.BodyKind, target: Target, model: ModelName,
                  region: str | None, body: bytes, request_id: str, started: float, streaming: bool,
                  priority: int | None) -> Invocation:
    """The invocation of an OpenAI-format body on an imported model (``kind``: openai-chat or openai-completion)."""
    assert target.imported_arn is not None
    arn = target.imported_arn
    created = int(time.time())
    if kind == "openai-chat":
        chat = parse_request(imported_models.chat_body(body, arn))
        inner = service.converse(model, region, chat.converse, request_id, started, seed=chat.seed,
                                 streaming=streaming, priority=priority)
        outer = Invocation(inner.target, inner.events, inner.usage, inner.headers,
                           request_metadata=inner.request_metadata, service_tier=inner.service_tier)
        outer.events = _chat_events(outer, inner, arn, completion_id(request_id), created, started)
        return outer
    request = imported_models.parse_completion(body)
    options: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p,
                               "max_tokens": request.max_tokens, "seed": request.seed}
    sampling = SamplingParams(**{key: value for key, value in options.items() if value is not None})
    service.inference.check_ready(target)
    generation = service.inference.engine_request(target, sampling, request_id, prompt=request.prompt)
    if priority is not None:
        generation = dataclasses.replace(generation, priority=priority)
    invocation = Invocation(target, _none(), Usage(report_cache=False))
    invocation.events = _completion_events(service, invocation, generation, request.stop,
                                           "cmpl-" + request_id.replace("-", ""), arn, created, started)
    return invocation


async def _chat_events(outer: Invocation, inner: Invocation, arn: str, identifier: str, created: int,
                       started: float) -> AsyncGenerator[Event, None]:
    chunks = ChunkStream(arn, identifier, created, include_usage=False)
    held: dict[str, Any] | None = None  # the finishing chunk, sent with the metrics once the usage is known
    async with contextlib.aclosing(inner.events) as events:
        async for event_type, payload in events:
            for chunk in chunks.feed(event_type, payload):
                if event_type == "messageStop":
                    held = chunk
                else:
                    yield "chunk", chunk
            if event_type == "metadata" and held is not None:
                yield "chunk", {**held, "amazon-bedrock-invocationMetrics": _metrics(outer.usage, started)}
    assert inner.response is not None
    outer.response = completion(inner.response, arn, identifier, created)
    outer.guard, outer.completed = inner.guard, inner.completed


async def _completion_events(service: InvocationService, invocation: Invocation, request: GenerationRequest,
                             stops: tuple[str, ...], identifier: str, arn: str, created: int,
                             started: float) -> AsyncGenerator[Event, None]:
    used = invocation.usage
    text: list[str] = []
    stop_filter = StopFilter(stops)
    reason: StopReason = "length"
    async with contextlib.aclosing(service.inference.generate(invocation.target, request)) as chunks:
        async for chunk in chunks:
            used.add(chunk, _since(started))
            released = stop_filter.feed(chunk.text)
            final = chunk.stop_reason is not None or stop_filter.matched is not None
            if final:
                reason = "stop" if stop_filter.matched is not None else (chunk.stop_reason or "stop")
                if stop_filter.matched is None:
                    released += stop_filter.flush()
            text.append(released)
            piece = imported_models.completion_chunk(identifier, arn, created, released, reason if final else None)
            if final:
                piece["amazon-bedrock-invocationMetrics"] = _metrics(used, started)
            if released or final:
                yield "chunk", piece
            if final:
                break
    invocation.response = imported_models.completion_response(identifier, arn, created, "".join(text), reason,
                                                              used.prompt_tokens, used.output_tokens)
    invocation.completed = True


async def _none() -> AsyncGenerator[Event, None]:
    return
    yield  # pragma: no cover - makes this an async generator
