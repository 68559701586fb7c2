"""What every runtime handler shares: the call context, error responses, body reading, disconnect handling."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from llamarock.codec import eventstream
from llamarock.codec.errors import render_error
from llamarock.codec.service_model import RUNTIME
from llamarock.codec.rest_json import check_body_size
from llamarock.errors import BedrockError, InternalServerException, ModelErrorException, ModelStreamErrorException
from llamarock.services.inference import InferenceService

log = logging.getLogger(__name__)


@dataclass
class Call:
    """What every runtime handler gets: the request, its id, start time and the resolved path pieces."""

    request: Request
    request_id: str
    started: float
    model_identifier: str
    service: InferenceService

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


Handler = Callable[[Call], Awaitable[Response]]


def error_response(error: BedrockError, request_id: str, service: str = RUNTIME) -> Response:
    status, headers, body = render_error(error, request_id, service)
    return Response(body, status_code=status, headers=headers)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_body_size(int(declared))
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        check_body_size(len(body))
    return bytes(body)


async def until_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run ``work``, cancelling it (and so its generation) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        return Response(status_code=499)
    return task.result()




def stream_error_frame(error: Exception, request_id: str) -> bytes:
    """The event-stream exception frame for a failure after the first byte.

    A model failure becomes the stream's own shape (modelStreamErrorException); anything unexpected is logged and
    sent as internalServerException with the request id.
    """
    if isinstance(error, ModelErrorException):
        error = ModelStreamErrorException(error.message, originalStatusCode=500, originalMessage=error.message)
    elif not isinstance(error, BedrockError):
        log.error("stream failed (request %s)", request_id, exc_info=error)
        error = InternalServerException(f"The server failed while streaming. Request id: {request_id}")
    return eventstream.exception_event(error)
