"""What every runtime handler shares: the call context, error responses, body reading, disconnect handling."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llamarock.codec import eventstream
from llamarock.codec.errors import render_error, status_of
from llamarock.codec.rest_json import check_body_size
from llamarock.codec.service_model import RUNTIME
from llamarock.errors import BedrockError, InternalServerException, ModelErrorException, ModelStreamErrorException
from llamarock.observability.records import InvocationRecord, Observers
from llamarock.services.inference import InferenceService, Target

log = logging.getLogger(__name__)


@dataclass
class Call:
    """What every runtime handler gets: the request, its id, start time and the resolved path pieces.

    ``record`` is the invocation's :class:`InvocationRecord` (None for CountTokens): handlers fill in what they
    learn (model, deployment, bodies, tokens, time to first token) and :meth:`finish` hands it to the observers
    once — from the router for whole responses and errors before the first byte, from the stream's own generator
    when a stream ends, fails or loses its client.
    """

    request: Request
    request_id: str
    started: float
    model_identifier: str
    service: InferenceService
    record: InvocationRecord | None = None
    _finished: bool = False

    def resolved(self, target: Target, body: bytes) -> None:
        """Note the model and deployment that serve the call, and the request body as sent."""
        if self.record is not None:
            self.record.model_id = target.model.model_id
            self.record.deployment = target.deployment.name
            self.record.inference_region = target.inference_region
            self.record.provisioned_model_arn = target.provisioned_arn
            self.record.input_body = body

    def usage(self, input_tokens: int, output_tokens: int, cache_read: int | None) -> None:
        """Note the token counts, exactly as the response states them."""
        if self.record is not None:
            self.record.input_tokens, self.record.output_tokens = input_tokens, output_tokens
            self.record.cache_read_tokens = cache_read or 0

    def answered(self, output: Any, ttft_ms: int | None = None) -> None:
        """Note the response body (for streams: the events so far) and, for streams, the time to first token."""
        if self.record is not None:
            self.record.output_body = output
            if ttft_ms is not None:
                self.record.ttft_ms = ttft_ms

    def finish(self, status: int = 200, error: BaseException | None = None, cancelled: bool = False) -> None:
        """Complete the record and emit it (once; later calls do nothing)."""
        if self.record is None or self._finished:
            return
        self._finished = True
        record = self.record
        record.latency_ms = self.elapsed_ms()
        record.status, record.cancelled = status, cancelled
        # A failure after the first byte still answered 200 on the wire; the record keeps the error's own status.
        if isinstance(error, BedrockError):
            record.error_code, record.status = error.code, status_of(error)
        elif error is not None:
            record.error_code, record.status = InternalServerException.code, 500
        observers: Observers = self.request.app.state.observers
        observers.emit(record)

    @property
    def region(self) -> str | None:
        """The region the request was signed for (set by the auth middleware), if any."""
        region: str | None = getattr(self.request.state, "region", None)
        return region

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
