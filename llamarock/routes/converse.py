"""Converse, ConverseStream and CountTokens (the use cases are ``services/invocation.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from llamarock.codec import eventstream
from llamarock.codec.shapes import parse_json_body
from llamarock.routes.common import Call, event_stream, json_response, until_disconnect
from llamarock.routes.invoke import note_request, note_target, note_usage
from llamarock.services.invocation import Invocation, InvocationService


def _service(call: Call) -> InvocationService:
    service: InvocationService = call.state().invocations
    return service


def _converse(call: Call) -> Invocation:
    params = parse_json_body(call.operation, call.body, location_values={"modelId": call.model_label})
    invocation = _service(call).converse(call.model, call.region, params, call.request_id, call.context.started,
                                         lambda target: note_target(call, target),
                                         streaming=call.operation == "ConverseStream")
    note_request(call, invocation)
    return invocation


def _headers(call: Call, invocation: Invocation) -> dict[str, str]:
    return {"x-amzn-RequestId": call.request_id, "x-llamarock-served-by": invocation.target.deployment.name}


async def converse(call: Call) -> Response:
    """Converse: messages in, one assistant message (text and/or toolUse blocks) out."""
    invocation = _converse(call)

    async def run() -> Response:
        body = await invocation.drain()
        note_usage(call, invocation)
        call.answered(body)
        return json_response(body, _headers(call, invocation))

    return await until_disconnect(call.request, run())


async def converse_stream(call: Call) -> Response:
    """ConverseStream: messageStart, contentBlock events as tokens arrive, messageStop, metadata."""
    invocation = _converse(call)

    async def frames() -> AsyncIterator[tuple[bytes, Any]]:
        async with contextlib.aclosing(invocation.events) as events:  # a stream ended early ends its generation
            async for event_type, payload in events:
                yield eventstream.event(event_type, payload), {event_type: payload}

    return await event_stream(call, frames(), _headers(call, invocation), lambda: note_usage(call, invocation))


async def count_tokens(call: Call) -> Response:
    """CountTokens: the input tokens Converse or InvokeModel would run for the same input, with the same template."""
    params = parse_json_body(call.operation, call.body, location_values={"modelId": call.model_label})
    tokens, target = await _service(call).count_tokens(call.model, call.region, params, call.request_id)
    return json_response({"inputTokens": tokens},
                         {"x-amzn-RequestId": call.request_id, "x-llamarock-served-by": target.deployment.name})
