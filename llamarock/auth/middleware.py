"""The ASGI middleware in front of every route but ``/healthz``: authenticate, authorise, admit, audit.

It buffers the request body (the signature covers it; the 25 MB limit applies as in the routes), replays it to the
route, and leaves the caller on the request state: ``request.state.identity``, ``.principal``, ``.region`` (from
the credential scope) and ``.quota`` (the token reservation; a route that knows the real token count may call
``request.state.quota.settle(n)`` itself, otherwise the count is read from the response as it passes).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamarock.auth.actions import Access, describe
from llamarock.auth.audit import AuditLog
from llamarock.auth.identity import Authenticator, Identity, RequestParts
from llamarock.auth.quotas import Quotas, Reservation, estimate_tokens
from llamarock.bedrock.response_usage import ResponseUsage
from llamarock.codec.errors import render_error
from llamarock.codec.rest_json import check_body_size
from llamarock.errors import AccessDeniedException, BedrockError, InternalServerException, ThrottlingException
from llamarock.observability.logs import log_access
from llamarock.observability.records import InvocationRecord, Observers
from llamarock.settings import Settings
from llamarock.storage.keys import KeyStore

log = logging.getLogger(__name__)

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/metrics"})
INVOCATION_OPERATIONS = frozenset({"InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"})


def denial(principal_arn: str, action: str, resource: str, explicit: bool) -> AccessDeniedException:
    reason = (
        "with an explicit deny in an identity-based policy" if explicit
        else f"because no identity-based policy allows the {action} action"
    )
    return AccessDeniedException(
        f"User: {principal_arn} is not authorized to perform: {action} on resource: {resource} {reason}"
    )


class Gate:
    """Everything the middleware needs, built once per app by ``create_app``."""

    def __init__(self, settings: Settings, observers: Observers | None = None) -> None:
        self.settings = settings
        self.observers = observers or Observers()
        self.store = KeyStore(settings.data_dir, settings.database_url)
        self.authenticator = Authenticator(settings, self.store)
        self.quotas = Quotas()
        self.audit = AuditLog(
            settings.data_dir / "logs" / "audit.jsonl", settings.audit_log_max_bytes, settings.audit_log_backups
        )

    def close(self) -> None:
        self.store.close()

    def authorize(self, identity: Identity, access: Access, context: dict[str, str]) -> None:
        """Every resource of the request must be allowed; an explicit Deny on any of them wins."""
        policy = identity.principal.policy
        for resource in access.resources:
            decision = policy.evaluate(access.action, resource, context)
            if decision != "Allow":
                raise denial(identity.principal.arn, access.action, resource, decision == "Deny")


def _context(identity: Identity, scope: Scope, now: datetime) -> dict[str, str]:
    client = scope.get("client")
    context = {
        "aws:currenttime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:epochtime": str(int(now.timestamp())),
        "aws:requestedregion": identity.region,
        "aws:principalarn": identity.principal.arn,
        "aws:username": identity.principal.name,
        "aws:principalaccount": identity.principal.arn.split(":")[4],
        "aws:securetransport": "true" if scope.get("scheme") == "https" else "false",
    }
    if client:
        context["aws:sourceip"] = str(client[0])
    return context


class _Disconnected(Exception):
    pass


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            check_body_size(int(value))
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body.extend(message.get("body", b""))
        check_body_size(len(body))
        if not message.get("more_body", False):
            return bytes(body)


class AuthMiddleware:
    """Pure ASGI, so that streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        headers = scope["headers"]
        record: dict[str, Any] = {
            "sourceIp": scope["client"][0] if scope.get("client") else None,
            "userAgent": next((v.decode("latin-1")[:256] for k, v in headers if k == b"user-agent"), None),
            "method": scope["method"],
            "path": scope["path"],
        }
        request_id = str(uuid.uuid4())
        status = 500
        reservation: Reservation | None = None
        usage: ResponseUsage | None = None
        try:
            try:
                body = await _read_body(scope, receive)
                reservation, usage = await self._admit(scope, body, record)
            except _Disconnected:
                status = 499
                record["decision"] = "disconnected"
                return
            except BedrockError as error:
                status = await self._reject(send, error, request_id, record)
                self._throttled(error, record, request_id, started)
                return
            except Exception:
                log.exception("authentication failed unexpectedly (request %s)", request_id)
                internal = InternalServerException(
                    f"The server encountered an internal error. Request id: {request_id}"
                )
                status = await self._reject(send, internal, request_id, record)
                return
            status, request_id = await self._forward(scope, receive, send, body, usage, request_id, record)
        finally:
            if reservation is not None:
                total = usage.total() if usage is not None else None
                if status >= 400:
                    reservation.settle(0)
                elif total is not None:
                    reservation.settle(total)
            if usage is not None and usage.total() is not None:
                record["inputTokens"], record["outputTokens"] = usage.input_tokens, usage.output_tokens
            self._audit(record, request_id, status, started)

    async def _admit(
        self, scope: Scope, body: bytes, record: dict[str, Any]
    ) -> tuple[Reservation | None, ResponseUsage | None]:
        gate = self.gate
        settings = gate.settings
        now = datetime.now(UTC)
        parts = RequestParts(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                             scope.get("query_string", b""), scope["headers"], body)
        record["decision"] = "unauthenticated"
        identity = await gate.authenticator.authenticate(parts, now)
        record.update(principal=identity.principal.arn, accessKeyId=identity.access_key_id,
                      authType=identity.auth_type, region=identity.region)
        state = scope.setdefault("state", {})
        state.update(identity=identity, principal=identity.principal, region=identity.region)
        access = describe(parts.method, parts.raw_path, identity.region, settings.account_id, settings.aliases)
        if access is None:
            record["decision"] = "allow"
            return None, None
        record.update(operation=access.operation, action=access.action, resource=access.resources[0],
                      model=access.model)
        record["decision"] = "deny"
        gate.authorize(identity, access, _context(identity, scope, now))
        principal = identity.principal
        if not access.model:
            record["decision"] = "allow"
            return None, None
        record["decision"] = "throttled"
        tokens = estimate_tokens(access.operation, body) if principal.tpm and access.operation != "CountTokens" else 0
        reservation = gate.quotas.admit(principal.name, access.model, principal.rpm, principal.tpm, tokens)
        record["decision"] = "allow"
        state["quota"] = reservation
        usage = ResponseUsage(access.operation) if reservation.bucket is not None else None
        return reservation, usage

    async def _forward(self, scope: Scope, receive: Receive, send: Send, body: bytes, usage: ResponseUsage | None,
                       request_id: str, record: dict[str, Any]) -> tuple[int, str]:
        replayed = False
        status = 500

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-amzn-requestid":
                        request_id = value.decode("latin-1")
                    elif name.lower() == b"x-amzn-errortype":
                        record["errorCode"] = value.decode("latin-1").split(":", 1)[0]
                if usage is not None:
                    usage.start(list(message.get("headers", [])))
            elif message["type"] == "http.response.body" and usage is not None:
                usage.body(message.get("body", b""))
            await send(message)

        await self.app(scope, replay, watch)
        return status, request_id

    async def _reject(self, send: Send, error: BedrockError, request_id: str, record: dict[str, Any]) -> int:
        status, headers, payload = render_error(error, request_id)
        record["errorCode"] = error.code
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"content-length", str(len(payload)).encode())],
        })
        await send({"type": "http.response.body", "body": payload})
        return status

    def _throttled(self, error: BedrockError, record: dict[str, Any], request_id: str, started: float) -> None:
        """A quota throttle is an invocation the metrics count (InvocationThrottles), like the engine's."""
        if not isinstance(error, ThrottlingException) or record.get("operation") not in INVOCATION_OPERATIONS:
            return
        self.gate.observers.emit(InvocationRecord(
            request_id=request_id, operation=record["operation"], model_identifier=record.get("model", ""),
            model_id=record.get("model"), principal_arn=record.get("principal", ""), region=record.get("region", ""),
            status=429, error_code=error.code, latency_ms=int((time.monotonic() - started) * 1000),
        ))

    def _audit(self, record: dict[str, Any], request_id: str, status: int, started: float) -> None:
        record.update(requestId=request_id, status=status, latencyMs=int((time.monotonic() - started) * 1000))
        try:
            self.gate.audit.write(**record)
        except OSError:
            log.exception("cannot write the audit log %s", self.gate.audit.path)
        log_access(record)
