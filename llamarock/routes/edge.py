"""The edge: the outermost ASGI layer, and the only place a request's errors become responses.

For every HTTP request it mints the request id, resolves the operation against the table, parses the model
identifier, reads and size-checks the body (once: handlers read ``context.body``), puts the
:class:`~llamarock.context.RequestContext` on the scope's state, lets the auth gate admit the caller, and runs the
app (which dispatches to the row's handler). Whatever fails is answered here:

* a :class:`~llamarock.errors.BedrockError` before the first byte: the AWS JSON error (status from the operation's
  service model, ``x-amzn-ErrorType``, the request id), OpenAI's error object for rows whose ``error_shape`` is
  ``openai``, or S3's XML ``<Error>`` for S3 rows (``s3``; no body on HEAD);
* one after the first byte of an event stream: the stream's exception frame (an ``error`` event for server-sent
  events), and the stream ends;
* anything else: logged with the request id and answered as InternalServerException (never a traceback).

It then gives back a quota reservation nothing settled, and writes the audit and access lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamarock.auth.gate import Gate
from llamarock.auth.sigv4 import credential_service
from llamarock.bedrock import openai_chat
from llamarock.codec import eventstream, rest_xml
from llamarock.codec.errors import as_declared, render_error, status_of
from llamarock.codec.rest_json import MAX_BODY_BYTES, check_body_size
from llamarock.context import LLAMAROCK, RUNTIME, ModelName, RequestContext, body_model
from llamarock.errors import (
    BedrockError,
    InternalServerException,
    RequestTimeoutException,
    ServiceUnavailableException,
    ThrottlingException,
    UnknownOperationException,
)
from llamarock.observability.records import Observers, new_record
from llamarock.routes.common import CLIENT_CLOSED
from llamarock.routes.operations import OperationTable
from llamarock.settings import Settings

log = logging.getLogger(__name__)


class _Disconnected(Exception):
    """The client went away while sending its body."""


class BodyBudget:
    """Request bodies are read whole (the signature covers them) before their signature is checked; all the bodies
    being read at once share ``limit`` bytes, so that callers who only know an access key id cannot make the
    server hold more. A request that would go past it is refused with ServiceUnavailableException (retryable)."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.held = 0

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, or RequestTimeoutException when it takes longer than ``timeout_s`` to arrive."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(scope, receive)
        except TimeoutError:
            raise RequestTimeoutException(
                f"Your request body was not received within {self.timeout_s:g} s (body_read_timeout_s). Send it "
                "without pausing, or retry."
            ) from None

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
                check_body_size(declared)
        body = bytearray()
        taken = 0
        try:
            taken = self._take(declared)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                body.extend(message.get("body", b""))
                check_body_size(len(body))
                if len(body) > taken:
                    taken += self._take(len(body) - taken)
                if not message.get("more_body", False):
                    return bytes(body)
        finally:
            self.held -= taken

    def _take(self, size: int) -> int:
        if size and self.held + size > self.limit:
            raise ServiceUnavailableException(
                "The server is reading as many request bodies as it holds at once (pending_body_limit_bytes). "
                "Retry the request shortly."
            )
        self.held += size
        return size


class _TrackedReceive:
    """The ASGI ``receive`` of a request, noting when its body has ended (or the client left)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.done = True
        return message


# A request refused before its body was read is still read to its end (and discarded), up to these bounds, before
# the error is sent: the server closes a connection whose request it did not read whole once the response ends, and
# a client still writing to it (an oversized body, a refused credential) would see a broken pipe, not the error.
DRAIN_LIMIT_BYTES = MAX_BODY_BYTES + (1 << 20)
DRAIN_TIMEOUT_S = 10.0


async def _drain(receive: _TrackedReceive) -> None:
    taken = 0
    with contextlib.suppress(TimeoutError, OSError, ClientDisconnect):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while not receive.done and taken <= DRAIN_LIMIT_BYTES:
                taken += len((await receive()).get("body", b""))


class _Response:
    """What has been sent of the response so far; every response carries the request id."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id.encode()
        self.status = 500
        self.started = False
        self.streaming = False
        self.server_sent_events = False
        self.ended = False
        self.s3 = False  # an S3 row's response: S3 clients read the request id from x-amz-request-id

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = list(message.get("headers", []))
            names = {name.lower() for name, _ in headers}
            if b"x-amzn-requestid" not in names:
                headers.append((b"x-amzn-requestid", self._request_id))
            if self.s3 and b"x-amz-request-id" not in names:
                headers.append((b"x-amz-request-id", self._request_id))
            message = {**message, "headers": headers}
            # (an S3 object's Content-Type is the uploader's: it never makes the response an event stream)
            content_type = dict(headers).get(b"content-type", b"") if not self.s3 else b""
            self.streaming = content_type.startswith(eventstream.CONTENT_TYPE.encode())
            self.server_sent_events = content_type.startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.ended = True
        await self._send(message)


def declared(error: BedrockError, context: RequestContext, stream: bool) -> BedrockError:
    """The error as its operation's model declares it (before the first byte), or as a member of the operation's
    event stream (after it): e.g. ModelNotReadyException from CountTokens is a ServiceUnavailableException, and a
    model failure mid-stream is a ModelStreamErrorException. llamarock's own endpoints keep their codes."""
    operation = context.operation
    if operation is None or operation.handler is None or operation.service == LLAMAROCK or \
            operation.error_shape == "s3":  # S3's model declares almost no errors: S3's codes go out as they are
        return error
    return as_declared(error, operation.service, operation.name, stream)


class Edge:
    """Outermost ASGI middleware of the app (see the module docstring)."""

    def __init__(self, app: ASGIApp, table: OperationTable, gate: Gate, observers: Observers,
                 settings: Settings) -> None:
        self.app = app
        self.table = table
        self.gate = gate
        self.observers = observers
        self.settings = settings
        self.bodies = BodyBudget(settings.pending_body_limit_bytes, settings.body_read_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        context = RequestContext(scope["method"], scope["path"], raw_path, scope.get("query_string", b""),
                                 self.settings.region)
        scope.setdefault("state", {})["context"] = context
        response = _Response(send, context.request_id)
        headers = scope["headers"]
        resolved = self.table.resolve(context.method, raw_path, context.query, headers,
                                      credential_service(headers, context.query))
        if resolved is not None:
            context.operation, context.labels = resolved
            response.s3 = context.operation.error_shape == "s3"
            if context.operation.resource == "model" and not context.operation.model_in_body:
                context.model = ModelName.parse(context.labels.get("modelId", ""), self.settings.aliases,
                                                self.settings.account_id)
        public = context.operation is not None and context.operation.public
        status: int | None = None
        receive = tracked = _TrackedReceive(receive)
        try:
            if not public:
                # The caller is identified from the head first: a request with no valid credential is refused
                # before its body is read, and bodies of requests not yet verified share a bounded budget.
                pending = await self.gate.identify(context, scope)
                if context.operation is None or not context.operation.streams_body:
                    # (S3's PutObject and UploadPart stream their bodies to disk, under S3's own limits)
                    context.body = await self.bodies.read(scope, receive)
                self._model_in_body(context)
                await self.gate.admit(context, scope, pending)
            self._check_operation(context)
            await self.app(scope, receive, response.send)
        except _Disconnected:
            status = CLIENT_CLOSED
            context.decision = "disconnected"
        except ClientDisconnect:  # the client left while a response streamed to it
            status = CLIENT_CLOSED
        except BedrockError as error:
            self._throttled(error, context)
            if not tracked.done and not response.started and not isinstance(error, RequestTimeoutException):
                await _drain(tracked)
            await self._fail(response, error, context)
        except Exception:
            log.exception("unexpected error in %s (request %s)", context.operation_name or context.path,
                          context.request_id)
            internal = InternalServerException(
                f"The server encountered an internal error. Request id: {context.request_id}"
            )
            await self._fail(response, internal, context)
        finally:
            self.gate.release(context)
            if not public:
                self.gate.audit(context, scope, status or response.status)

    def _model_in_body(self, context: RequestContext) -> None:
        """The model a ``model_in_body`` row's body names (what auth authorises on), and whether it streams."""
        operation = context.operation
        if operation is None or not operation.model_in_body:
            return
        identifier, stream = body_model(context.body)
        context.model = ModelName.parse(identifier, self.settings.aliases, self.settings.account_id)
        if stream:
            context.operation = operation.streamed()

    def _check_operation(self, context: RequestContext) -> None:
        operation = context.operation
        if operation is None:
            message = f"No operation matches {context.method} {context.path}."
            if context.method == "POST" and context.path.startswith("/model/"):
                message += " The runtime operations are POST /model/{modelId}/" + "|".join(self.table.runtime_actions())
                message += "."
            raise UnknownOperationException(message)
        if operation.handler is None:
            raise UnknownOperationException(
                f"llamarock does not implement the {operation.service} operation {operation.name} yet; "
                "docs/api-coverage.md lists the operations it serves."
            )

    async def _fail(self, response: _Response, error: BedrockError, context: RequestContext) -> None:
        context.error_code = error.code
        try:
            await self._answer(response, error, context)
        except OSError:  # the client is gone: there is no one left to tell
            log.info("request %s: the client left before its error (%s) could be sent", context.request_id,
                     error.code)

    async def _answer(self, response: _Response, error: BedrockError, context: RequestContext) -> None:
        openai = context.operation is not None and context.operation.error_shape == "openai"
        if not response.started:
            service = context.operation.service if context.operation is not None else RUNTIME
            error = declared(error, context, stream=False)
            context.error_code = error.code
            if openai:
                status, headers, payload = openai_chat.render_error(error, status_of(error), context.request_id)
            elif context.operation is not None and context.operation.error_shape == "s3":
                status, headers, payload = rest_xml.render_error(error, context.request_id,
                                                                 head=context.method == "HEAD")
            else:
                status, headers, payload = render_error(error, context.request_id,
                                                        RUNTIME if service == LLAMAROCK else service)
            await response.send({
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                + [(b"content-length", str(len(payload)).encode())],
            })
            await response.send({"type": "http.response.body", "body": payload})
        elif response.streaming and not response.ended:
            frame = eventstream.exception_event(declared(error, context, stream=True))
            await response.send({"type": "http.response.body", "body": frame, "more_body": False})
        elif response.server_sent_events and openai and not response.ended:
            event = openai_chat.sse(openai_chat.error_body(error, openai_chat.error_status(error, status_of(error))))
            await response.send({"type": "http.response.body", "body": event, "more_body": False})
        else:
            log.warning("request %s failed after its response was sent: %s", context.request_id, error.message)

    def _throttled(self, error: BedrockError, context: RequestContext) -> None:
        """A quota throttle is an invocation the metrics count (InvocationThrottles), like the engine's."""
        operation = context.operation
        if context.decision != "throttled" or not isinstance(error, ThrottlingException) or operation is None \
                or not operation.invocation:
            return
        record = new_record(context)
        record.model_id = context.model.model_id if context.model is not None else None
        record.status, record.error_code, record.latency_ms = 429, error.code, context.elapsed_ms()
        self.observers.emit(record)
