"""The gate every authenticated request passes before its handler: authenticate, authorise, admit against quotas.

The edge (``routes/edge.py``) calls :meth:`Gate.admit` with the request's :class:`~llamarock.context.RequestContext`
(its operation already resolved, its body read) and the headers; the gate fills in the caller and raises the AWS
error that refuses it. A token reservation is settled from the finished invocation's record (the gate observes
records, so quotas count exactly what the response stated), or given back whole when the call produced none.
:meth:`Gate.audit` writes the audit line and the access log line once the request is answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llamarock.auth import sigv4
from llamarock.auth.actions import UNKNOWN_MODEL, label_resources, model_resources
from llamarock.auth.audit import AuditLog
from llamarock.auth.identity import Authenticator, Identity, Pending, RequestParts
from llamarock.auth.quotas import Quotas, Reservation, request_estimate
from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import RESOURCE_KINDS
from llamarock.context import S3, ModelName, Operation, RequestContext
from llamarock.errors import AccessDeniedException, InvalidSignatureException
from llamarock.observability.logs import log_access
from llamarock.observability.records import InvocationRecord
from llamarock.settings import Settings
from llamarock.storage.keys import KeyStore
from llamarock.storage.quotas import QuotaBucketStore

log = logging.getLogger(__name__)


def denial(principal_arn: str, action: str, resource: str, explicit: bool) -> AccessDeniedException:
    reason = (
        "with an explicit deny in an identity-based policy" if explicit
        else f"because no identity-based policy allows the {action} action"
    )
    return AccessDeniedException(
        f"User: {principal_arn} is not authorized to perform: {action} on resource: {resource} {reason}"
    )


def signing_service(operation: Operation) -> str:
    """The SigV4 service name a row's requests are signed for: ``s3`` for the S3 endpoint, else ``bedrock``."""
    return sigv4.S3 if operation.service == S3 else sigv4.SERVICE


def _parts(context: RequestContext, scope: Mapping[str, Any]) -> RequestParts:
    return RequestParts(context.method, context.raw_path, context.query, scope["headers"],
                        secure=scope.get("scheme") == "https")


def _context(identity: Identity, scope: Mapping[str, Any], now: datetime) -> dict[str, str]:
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



def _model_resources(model: ModelName, region: str, account: str) -> tuple[tuple[str, ...], str]:
    """The ARNs an invocation of ``model`` is authorised on, and the model its quotas count under: identifiers that
    name no model share one bucket, so made-up ids cannot grow the quota table."""
    resources, quota_model = model_resources(model, region, account)
    known = model.ref is not None and (
        model.ref.kind in RESOURCE_KINDS
        or catalog.get(quota_model) is not None
    )
    return resources, quota_model if known else UNKNOWN_MODEL

class Gate:
    """Authentication, authorisation, quotas and the audit log of one app, built once by ``create_app``."""

    def __init__(self, settings: Settings, keys: KeyStore) -> None:
        self.settings = settings
        self.store = keys
        self.authenticator = Authenticator(settings, keys)
        shared = settings.shared_quotas
        if shared is None:
            shared = bool(settings.database_url) and not str(settings.database_url).startswith("sqlite")
        self.quotas = Quotas(store=QuotaBucketStore(keys.db) if shared else None)
        self.audit_log = AuditLog(
            settings.data_dir / "logs" / "audit.jsonl", settings.audit_log_max_bytes, settings.audit_log_backups
        )
        self._reservations: dict[str, Reservation] = {}

    async def identify(self, context: RequestContext, scope: Mapping[str, Any]) -> Pending:
        """Who calls, from the request's head (before its body is read); the AWS error that refuses an unknown or
        malformed credential."""
        context.decision = "unauthenticated"
        return await self.authenticator.identify(_parts(context, scope), datetime.now(UTC))

    async def admit(self, context: RequestContext, scope: Mapping[str, Any], pending: Pending) -> None:
        """Let the request through, or raise the AWS error that refuses it (signature, policy, quota)."""
        now = datetime.now(UTC)
        operation = context.operation
        streamed = operation is not None and operation.streams_body
        signed = pending.signed
        if signed is not None and operation is not None and signed.service != signing_service(operation):
            raise InvalidSignatureException(
                f"Credential should be scoped to correct service: '{signing_service(operation)}'."
            )
        identity = self.authenticator.verify(pending, _parts(context, scope), None if streamed else context.body)
        if streamed and signed is not None:
            context.signing = sigv4.stream_signing(signed, pending.secret)
        principal = identity.principal
        context.principal = principal
        context.principal_arn, context.principal_name = principal.arn, principal.name
        context.access_key_id, context.auth_type, context.region = (
            identity.access_key_id, identity.auth_type, identity.region
        )
        if operation is None:
            context.decision = "allow"  # no such operation: the edge answers UnknownOperationException
            return
        resources, quota_model = self._resources(context, identity.region)
        context.resource = resources[0]
        context.decision = "deny"
        policy_context = context.policy_context = _context(identity, scope, now)
        for resource in resources if operation.action else ():
            decision = principal.policy.evaluate(operation.action, resource, policy_context)
            if decision != "Allow":
                raise denial(principal.arn, operation.action, resource, decision == "Deny")
        if not quota_model:
            context.decision = "allow"
            return
        context.decision = "throttled"
        tokens = request_estimate(context.body) if principal.tpm and operation.invocation else 0
        admit = functools.partial(self.quotas.admit, principal.name, quota_model, principal.rpm, principal.tpm, tokens)
        reservation = await asyncio.to_thread(admit) if self.quotas.shared else admit()
        context.decision = "allow"
        context.quota = reservation
        if reservation.bucket is not None:
            self._reservations[context.request_id] = reservation

    def admit_model(self, context: RequestContext, model: ModelName, tokens: int) -> None:
        """Reserve requests and tokens per minute for an invocation whose model the request's body names, not its
        path (RetrieveAndGenerate's ``modelArn``): the same buckets and the same settlement as :meth:`admit`'s."""
        principal = context.principal
        if principal is None or context.request_id in self._reservations:
            return
        _, quota_model = _model_resources(model, context.region, self.settings.account_id)
        reservation = self.quotas.admit(principal.name, quota_model, principal.rpm, principal.tpm,
                                        tokens if principal.tpm else 0)
        context.quota = reservation
        if reservation.bucket is not None:
            self._reservations[context.request_id] = reservation

    def _resources(self, context: RequestContext, region: str) -> tuple[tuple[str, ...], str]:
        """The ARNs the operation's action is on, and the model its quotas count under ("" for none)."""
        operation = context.operation
        assert operation is not None
        account = self.settings.account_id
        if operation.resource == "model" and context.model is not None:
            return _model_resources(context.model, region, account)
        return label_resources(operation.resource, context.labels, region, account, context.body), ""

    def authorize(self, context: RequestContext, action: str, resource: str) -> None:
        """Raise AccessDeniedException unless the caller's policy allows ``action`` on ``resource`` too (an
        operation that touches more than its row's resource: CopyObject's source, each key of DeleteObjects)."""
        if context.principal is None:
            return
        decision = context.principal.policy.evaluate(action, resource, context.policy_context or {})
        if decision != "Allow":
            raise denial(context.principal.arn, action, resource, decision == "Deny")

    def allowed(self, context: RequestContext, action: str) -> bool:
        """Whether the caller's policy allows a llamarock action on ``*``, with the request's own policy context
        (so that Deny conditions apply as everywhere); any caller in ``--auth dev``."""
        if self.settings.auth == "dev" or context.principal is None:
            return True
        return bool(context.principal.policy.evaluate(action, "*", context.policy_context or {}) == "Allow")

    def record(self, record: InvocationRecord) -> None:
        """Observer of finished invocations: settle the call's token reservation with the tokens it used."""
        reservation = self._reservations.pop(record.request_id, None)
        if reservation is not None:
            reservation.settle(record.input_tokens + record.output_tokens)

    def release(self, context: RequestContext) -> None:
        """The request is over: a reservation no invocation record settled (a refusal, CountTokens) goes back."""
        reservation = self._reservations.pop(context.request_id, None)
        if reservation is not None:
            reservation.settle(0)

    def audit(self, context: RequestContext, scope: Mapping[str, Any], status: int) -> None:
        """One audit line and one access line for an answered request."""
        headers = scope["headers"]
        operation = context.operation
        record: dict[str, Any] = {
            "requestId": context.request_id,
            "sourceIp": scope["client"][0] if scope.get("client") else None,
            "userAgent": next((v.decode("latin-1")[:256] for k, v in headers if k == b"user-agent"), None),
            "method": context.method,
            "path": context.path,
            "principal": context.principal_arn,
            "accessKeyId": context.access_key_id,
            "authType": context.auth_type,
            "region": context.region if context.auth_type else None,
            "operation": operation.name if operation is not None else None,
            "action": operation.action if operation is not None else None,
            "resource": context.resource,
            "model": context.model.model_id if context.model is not None else None,
            "decision": context.decision,
            "status": status,
            "errorCode": context.error_code,
            "inputTokens": context.input_tokens,
            "outputTokens": context.output_tokens,
            "latencyMs": context.elapsed_ms(),
        }
        try:
            self.audit_log.write(**record)
        except OSError:
            log.exception("cannot write the audit log %s", self.audit_log.path)
        log_access(record)
