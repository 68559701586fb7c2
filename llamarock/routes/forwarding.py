"""Runtime calls served by the llamarock server of their inference region (``region_servers``, docs/regions.md).

The peer's answer is relayed unchanged: its status, Bedrock's headers and its body — event streams frame by frame,
each flushed as soon as it is whole, through the same streaming helper as local answers. This server still emits
its own invocation record for the call, with what a relay can know: model, inference region, status, error code,
latency, time to first event and the token counts the peer's headers, body or last events state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from llamarock.codec.eventstream import take_frames
from llamarock.codec.response_usage import ResponseUsage
from llamarock.codec.service_model import error_status
from llamarock.errors import ServiceUnavailableException
from llamarock.routes.common import Call, event_stream, until_disconnect
from llamarock.services.peers import FORWARDED_HEADER, Forward, PeerAnswer, PeerService


def peer_for(call: Call) -> Forward | None:
    """The peer that serves this call, or None to serve it here."""
    peers: PeerService = call.state().peers
    return peers.route(call.model, call.region, FORWARDED_HEADER in call.request.headers)


async def forward(call: Call, to: Forward) -> Response:
    """Send the call to its peer and relay the answer."""
    request = call.request
    if call.record is not None:
        call.record.model_id = to.placement.model.model_id
        call.record.inference_region = to.placement.inference_region
        call.record.input_body = call.body
    peers: PeerService = call.state().peers
    context = call.context
    answer = await peers.send(to, context.method, context.raw_path, context.query, request.headers, call.body)
    usage = ResponseUsage()
    usage.start(answer.headers)
    if call.record is not None:
        call.record.deployment = answer.headers.get("x-llamarock-served-by")
        if "x-amzn-errortype" in answer.headers:
            call.record.error_code = answer.headers["x-amzn-errortype"].split(":", 1)[0]
    if answer.status == 200 and answer.streaming:

        def ended() -> tuple[str, int] | None:
            _note_usage(call, usage)
            # The peer's stream failed after its first byte: the record keeps that error's own status.
            return (usage.error_code, error_status(usage.error_code) or 500) if usage.error_code else None

        return await event_stream(call, _relay(answer, usage), answer.headers, ended, status=answer.status)

    async def whole() -> Response:
        content = await answer.read()
        usage.body(content)
        _note_usage(call, usage)
        if answer.status == 200 and answer.headers.get("content-type", "").startswith("application/json"):
            try:
                call.answered(json.loads(content))
            except ValueError:
                call.answered(content.decode("utf-8", errors="replace"))
        return Response(content, status_code=answer.status, headers=answer.headers)

    try:
        return await until_disconnect(request, whole())
    finally:
        await answer.close()


async def _relay(answer: PeerAnswer, usage: ResponseUsage) -> AsyncIterator[tuple[bytes, Any]]:
    """The peer's event stream, whole frames only, so that a failure midway can still end it with an exception
    frame (the edge writes it)."""
    pending = bytearray()
    try:
        async for piece in answer.chunks():
            pending.extend(piece)
            for frame in take_frames(pending):
                usage.body(frame)
                yield frame, None
        if pending:
            raise ServiceUnavailableException(
                f"The llamarock server for {answer.peer.region} ({answer.peer.url}) ended its event stream in the "
                "middle of a frame. Retry the request."
            )
    finally:
        await answer.close()


def _note_usage(call: Call, usage: ResponseUsage) -> None:
    if usage.total() is not None and usage.input_tokens is not None and usage.output_tokens is not None:
        call.usage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens)
