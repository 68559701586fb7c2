"""Runtime calls served by the llamarock server of their inference region (``region_servers``, docs/regions.md).

The peer's answer is relayed unchanged: its status, Bedrock's headers and its body — event streams frame by frame,
each flushed as soon as it is whole. This server still emits its own invocation record for the call, with what a
relay can know: model, inference region, status, error code, latency, time to first event and the token counts the
peer's headers, body or last events state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

from starlette.responses import Response, StreamingResponse

from llamarock.bedrock.response_usage import ResponseUsage
from llamarock.codec.service_model import error_status
from llamarock.errors import BedrockError, ServiceUnavailableException
from llamarock.routes.common import Call, read_body, stream_error_frame, until_disconnect
from llamarock.services.peers import FORWARDED_HEADER, Forward, PeerAnswer, PeerService

# An event-stream frame starts with its total length (4 bytes) and is at least prelude + CRCs long.
_MIN_FRAME = 16


def peer_for(call: Call) -> Forward | None:
    """The peer that serves this call, or None to serve it here."""
    peers: PeerService = call.request.app.state.peers
    return peers.route(call.model_identifier, call.region, FORWARDED_HEADER in call.request.headers)


async def forward(call: Call, to: Forward) -> Response:
    """Send the call to its peer and relay the answer."""
    request = call.request
    body = await read_body(request)
    if call.record is not None:
        call.record.model_id = to.placement.model.model_id
        call.record.inference_region = to.placement.inference_region
        call.record.input_body = body
    peers: PeerService = request.app.state.peers
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    answer = await peers.send(to, request.method, raw_path, request.scope.get("query_string", b""), request.headers,
                              body)
    usage = ResponseUsage(call.record.operation if call.record is not None else "")
    usage.start([(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()])
    if call.record is not None:
        call.record.deployment = answer.headers.get("x-llamarock-served-by")
        if "x-amzn-errortype" in answer.headers:
            call.record.error_code = answer.headers["x-amzn-errortype"].split(":", 1)[0]
    if answer.status == 200 and answer.streaming:
        return StreamingResponse(_relay(call, answer, usage), status_code=answer.status, headers=answer.headers)

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


async def _relay(call: Call, answer: PeerAnswer, usage: ResponseUsage) -> AsyncIterator[bytes]:
    """The peer's event stream, whole frames only, so that a failure midway can still end it with an exception frame.

    Ends the call's record like a local stream: cancelled when the client left before the stream's end.
    """
    pending = bytearray()
    failure: BaseException | None = None
    complete = False
    try:
        async for piece in answer.chunks():
            pending.extend(piece)
            for frame in _whole_frames(pending):
                if call.record is not None and call.record.ttft_ms is None:
                    call.answered(None, call.elapsed_ms())
                usage.body(frame)
                _note_usage(call, usage)
                yield frame
        if pending:
            raise ServiceUnavailableException(
                f"The llamarock server for {answer.peer.region} ({answer.peer.url}) ended its event stream in the "
                "middle of a frame. Retry the request."
            )
        complete = True
    except BedrockError as error:
        failure = error
        yield stream_error_frame(error, call.request_id)
    finally:
        # The record first: a cancelled response may not get past the next await.
        if failure is None and usage.error_code is not None and call.record is not None:
            # The peer's stream failed after its first byte: the record keeps that error's own status.
            call.record.error_code = usage.error_code
            call.finish(error_status(usage.error_code) or 500)
        else:
            call.finish(200, failure, cancelled=failure is None and not complete)
        await answer.close()


def _whole_frames(pending: bytearray) -> Iterator[bytes]:
    """Take every complete event-stream frame off the front of ``pending``."""
    while len(pending) >= 4:
        total = int.from_bytes(pending[:4], "big")
        if total < _MIN_FRAME:
            # Not an event stream after all: pass the bytes on as they are.
            total = len(pending)
        if len(pending) < total:
            return
        frame = bytes(pending[:total])
        del pending[:total]
        yield frame


def _note_usage(call: Call, usage: ResponseUsage) -> None:
    if usage.total() is not None and usage.input_tokens is not None and usage.output_tokens is not None:
        call.usage(usage.input_tokens, usage.output_tokens, None)
