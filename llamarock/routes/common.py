"""What every runtime handler shares: the call (request, context, invocation record), disconnect handling, and the
one streaming-response helper that every event stream goes through (local answers and relayed peers alike)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarock.bedrock.model_ids import runtime_label
from llamarock.codec import eventstream
from llamarock.codec.errors import status_of
from llamarock.context import ModelName, RequestContext
from llamarock.errors import BedrockError, InternalServerException
from llamarock.observability.records import InvocationRecord, Observers

# A response whose client went away before it was complete (nginx's convention; never sent).
CLIENT_CLOSED = 499


@dataclass
class Call:
    """What every runtime handler gets: the request, its context (id, body, model, caller) and its record.

    ``record`` is the invocation's :class:`InvocationRecord` (None for operations that are not invocations):
    handlers fill in what they learn and :meth:`finish` hands it to the observers once — from the runtime
    dispatcher for whole responses and errors before the first byte, from :func:`event_stream` when a stream ends,
    fails or loses its client.
    """

    request: Request
    context: RequestContext
    record: InvocationRecord | None = None
    _finished: bool = field(default=False)

    @property
    def request_id(self) -> str:
        return self.context.request_id

    @property
    def operation(self) -> str:
        """The operation's name, as the operation table has it (for the codec's shapes)."""
        assert self.context.operation is not None
        return self.context.operation.name

    @property
    def body(self) -> bytes:
        return self.context.body

    @property
    def model(self) -> ModelName:
        assert self.context.model is not None, "runtime model operations always have a model"
        return self.context.model

    @property
    def model_label(self) -> str:
        """The ``modelId`` label as the input shape checks it: beyond Bedrock a custom model's ARN is invocable on
        demand (``bedrock.model_ids.runtime_label``); ``--compat bedrock`` keeps Bedrock's pattern error."""
        model = self.model
        if self.state().settings.compat == "bedrock":
            return model.identifier
        return runtime_label(model.identifier, model.ref)

    @property
    def region(self) -> str:
        """The region the request was signed for (the server's region for unsigned and bearer calls)."""
        return self.context.region

    def state(self) -> Any:
        """The app's state: services and stores."""
        return self.request.app.state

    def elapsed_ms(self) -> int:
        return self.context.elapsed_ms()

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

    def finish(self, status: int = 200, error: BaseException | None = None, cancelled: bool = False,
               code: str | None = None) -> None:
        """Complete the record and emit it (once; later calls do nothing); ``code`` is an error code with ``status``."""
        if self.record is None or self._finished:
            return
        self._finished = True
        record = self.record
        record.latency_ms = self.elapsed_ms()
        record.status, record.cancelled = status, cancelled
        if code is not None:
            record.error_code = code
        # A failure after the first byte still answered 200 on the wire; the record keeps the error's own status.
        if isinstance(error, BedrockError):
            record.error_code, record.status = error.code, status_of(error)
        elif error is not None:
            record.error_code, record.status = InternalServerException.code, 500
        self.context.input_tokens, self.context.output_tokens = record.input_tokens, record.output_tokens
        observers: Observers = self.request.app.state.observers
        observers.emit(record)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Finish the record when the block fails (the error goes on to the edge) or loses its client."""
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            self.finish(CLIENT_CLOSED, cancelled=True)
            raise
        except BaseException as error:
            self.finish(error=error)
            raise


Handler = Callable[[Call], Awaitable[Response]]


def json_response(body: Any, headers: dict[str, str], status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/json",
                    headers=headers)


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
        return Response(status_code=CLIENT_CLOSED)
    return task.result()


async def event_stream(
    call: Call,
    frames: AsyncIterator[tuple[bytes, Any]],
    headers: dict[str, str],
    ended: Callable[[], tuple[str, int] | None],
    status: int = 200,
    media_type: str = eventstream.CONTENT_TYPE,
) -> StreamingResponse:
    """The one way an event stream is answered: ``frames`` yields (encoded frame, what the invocation log keeps).

    The first frame is awaited before the response starts, so that anything failing before it is an ordinary JSON
    error. After that a failure propagates to the edge, which ends the stream with an exception frame; the record is
    finished here: complete, failed, or cancelled when the client left. ``ended`` runs first, to note the usage; a
    relay returns the (error code, status) of an exception frame its peer sent, which the record then keeps.
    ``media_type`` is the stream's (server-sent events for OpenAI's chat completion chunks).
    """
    try:
        first = await anext(frames)
    except BaseException:
        await _close(frames)
        raise
    sent: list[Any] = []
    # What the invocation log keeps of a stream: the events as they went (nothing for a relayed peer's frames).
    call.answered(sent if first[1] is not None else None, call.elapsed_ms())

    async def body() -> AsyncIterator[bytes]:
        failure: BaseException | None = None
        complete = False
        try:
            frame: tuple[bytes, Any] | None = first
            while frame is not None:
                if frame[1] is not None:
                    sent.append(frame[1])
                yield frame[0]
                frame = await anext(frames, None)
            complete = True
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError | GeneratorExit):
                failure = error
            raise
        finally:
            relayed = ended()
            await _close(frames)
            if failure is None and relayed is not None:
                call.finish(relayed[1], code=relayed[0])
            else:
                call.finish(200, failure, cancelled=failure is None and not complete)

    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)


async def _close(frames: AsyncIterator[Any]) -> None:
    close = getattr(frames, "aclose", None)
    if close is not None:
        await close()
