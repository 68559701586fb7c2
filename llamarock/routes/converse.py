"""Converse, ConverseStream and CountTokens."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from llamarock.bedrock.converse import ChatRequest, converse_response, parse_chat_request, usage
from llamarock.bedrock.converse_stream import StreamAssembler, finalize, stop_reason
from llamarock.bedrock.native import parse_native_request
from llamarock.codec import eventstream
from llamarock.codec.shapes import parse_json_body
from llamarock.errors import (
    ValidationException,
)
from llamarock.routes.common import Call, read_body, stream_error_frame, until_disconnect
from llamarock.services.conversation import ConversationService, Delta
from llamarock.services.inference import Target
from llamarock.types import GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


def _conversation(call: Call) -> ConversationService:
    service: ConversationService = call.request.app.state.conversation
    return service


async def _prepare(call: Call, operation: str) -> tuple[Target, ChatRequest, GenerationRequest]:
    body = await read_body(call.request)
    params = parse_json_body(operation, body, location_values={"modelId": call.model_identifier})
    target = call.service.resolve(call.model_identifier, call.region)
    call.resolved(target, body)
    call.service.check_ready(target)
    chat = parse_chat_request(params, target.model)
    request = call.service.tiered(target, _conversation(call).generation_request(target, chat, call.request_id),
                                  chat.latency)
    if call.record is not None:
        call.record.request_metadata = dict(chat.request_metadata)
        call.record.performance_latency = chat.latency
        call.record.has_images = bool(chat.images)
    return target, chat, request


def _headers(call: Call, target: Target) -> dict[str, str]:
    return {"x-amzn-RequestId": call.request_id, "x-llamarock-served-by": target.deployment.name}


async def converse(call: Call) -> Response:
    """Converse: messages in, one assistant message (text and/or toolUse blocks) out."""
    target, chat, request = await _prepare(call, "Converse")

    async def run() -> Response:
        text: list[str] = []
        prompt_tokens = output_tokens = 0
        cached: int | None = None
        native, matched = "length", None
        async for delta in _conversation(call).run(target, chat, request):
            text.append(delta.text)
            output_tokens += delta.token_count
            prompt_tokens = delta.prompt_tokens if delta.prompt_tokens is not None else prompt_tokens
            cached = delta.cached_tokens if delta.cached_tokens is not None else cached
            if delta.stop_reason is not None:
                native, matched = delta.stop_reason, delta.stop_sequence
        outcome = finalize(chat, "".join(text), truncated=native == "length")
        reason = stop_reason(chat, outcome, native, matched)
        counted = usage(prompt_tokens, output_tokens, cached)
        body = converse_response(chat, outcome.text, outcome.calls, reason, counted, call.elapsed_ms(), matched)
        call.usage(counted["inputTokens"], counted["outputTokens"], counted.get("cacheReadInputTokens"))
        call.answered(body)
        return Response(json.dumps(body, ensure_ascii=False), media_type="application/json",
                        headers=_headers(call, target))

    return await until_disconnect(call.request, run())


async def converse_stream(call: Call) -> Response:
    """ConverseStream: messageStart, contentBlock events as tokens arrive, messageStop, metadata.

    The first piece of the answer is awaited before the response starts, so that failures before the first byte
    are ordinary JSON errors; later ones are exception frames.
    """
    target, chat, request = await _prepare(call, "ConverseStream")
    deltas = _conversation(call).run(target, chat, request)
    try:
        first = await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise

    first_byte_ms = call.elapsed_ms()

    async def frames() -> AsyncIterator[bytes]:
        assembler = StreamAssembler(chat)
        prompt_tokens = first.prompt_tokens or 0
        output_tokens = 0
        delta: Delta | None = first
        sent: list[dict[str, Any]] = []
        call.answered(sent, first_byte_ms)
        failure: BaseException | None = None
        complete = False
        try:
            for event_type, payload in assembler.start():
                sent.append({event_type: payload})
                yield eventstream.event(event_type, payload)
            while delta is not None:
                output_tokens += delta.token_count
                for event_type, payload in assembler.feed(delta.text):
                    sent.append({event_type: payload})
                    yield eventstream.event(event_type, payload)
                if delta.stop_reason is not None:
                    events, _, _ = assembler.finish(
                        delta.stop_reason, delta.stop_sequence, prompt_tokens, output_tokens, call.elapsed_ms(),
                        first.cached_tokens,
                    )
                    for event_type, payload in events:
                        sent.append({event_type: payload})
                        yield eventstream.event(event_type, payload)
                    complete = True
                    return
                delta = await anext(deltas, None)
        except Exception as error:
            failure = error
            yield stream_error_frame(error, call.request_id)
        finally:
            counted = usage(prompt_tokens, output_tokens, first.cached_tokens)
            call.usage(counted["inputTokens"], counted["outputTokens"], counted.get("cacheReadInputTokens"))
            call.finish(200, failure, cancelled=failure is None and not complete)
            await deltas.aclose()

    return StreamingResponse(frames(), media_type=eventstream.CONTENT_TYPE, headers=_headers(call, target))


async def count_tokens(call: Call) -> Response:
    """CountTokens: the input tokens Converse or InvokeModel would run for the same input, with the same template."""
    body = await read_body(call.request)
    params = parse_json_body("CountTokens", body, location_values={"modelId": call.model_identifier})
    target = call.service.resolve(call.model_identifier, call.region)
    call.service.check_ready(target)
    source: dict[str, Any] = params.get("input") or {}
    if "converse" in source:
        chat = parse_chat_request(source["converse"], target.model)
        request = _conversation(call).generation_request(target, chat, call.request_id)
    elif "invokeModel" in source:
        native = parse_native_request(source["invokeModel"]["body"])
        sampling = SamplingParams(temperature=native.temperature, top_p=native.top_p, max_tokens=native.max_gen_len)
        request = call.service.native_request(target, native.prompt, sampling, call.request_id)
    else:
        raise ValidationException("The input field must contain exactly one of converse or invokeModel.")
    tokens = await _conversation(call).count_tokens(target, request)
    return Response(json.dumps({"inputTokens": tokens}), media_type="application/json", headers=_headers(call, target))
