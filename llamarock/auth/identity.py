"""Who is calling: a SigV4 signature (header or presigned query), a Bedrock API key (bearer token), or nobody.

In ``enforce`` mode every request needs a key from the key store. In ``dev`` mode unsigned requests and unknown keys
act as the ``dev`` principal, which may do anything; a known key is still verified and its policy applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llamarock.auth import sigv4
from llamarock.auth.policy import DEV_ACCESS, FULL_ACCESS, Policy, parse_policy
from llamarock.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    PolicyError,
    UnrecognizedClientException,
)
from llamarock.settings import Settings
from llamarock.storage.keys import KeyStore, StoredPrincipal

log = logging.getLogger(__name__)

INVALID_TOKEN = "The security token included in the request is invalid."
BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method. Consult the service documentation for details."
)
MISSING_TOKEN = "Missing Authentication Token"
DEV_PRINCIPAL = "dev"


@dataclass(frozen=True)
class Principal:
    name: str
    arn: str
    policy: Policy
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class Identity:
    """The authenticated caller of one request; ``region`` comes from the SigV4 credential scope."""

    principal: Principal
    access_key_id: str | None
    auth_type: str
    region: str


@dataclass(frozen=True)
class RequestParts:
    """What authentication looks at: the request line and headers (``secure`` when it came over TLS)."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: Sequence[tuple[bytes, bytes]]
    secure: bool = False


@dataclass(frozen=True)
class Pending:
    """A caller identified from the request's head; ``signed`` is the SigV4 signature still to be checked against the
    body (None when nothing is left to check: a bearer token, or the dev principal)."""

    identity: Identity
    signed: sigv4.SignedRequest | None = None
    secret: str = ""


class Authenticator:
    def __init__(self, settings: Settings, store: KeyStore) -> None:
        self.settings = settings
        self.store = store
        self._policies: dict[str, Policy] = {}
        self.dev_principal = self._principal(StoredPrincipal(DEV_PRINCIPAL, DEV_ACCESS, None, None))

    def _compile(self, document: dict[str, Any] | None) -> Policy:
        """Policies are compiled once per distinct document; a policy that no longer parses denies everything."""
        text = json.dumps(document or FULL_ACCESS, sort_keys=True)
        policy = self._policies.get(text)
        if policy is None:
            try:
                policy = parse_policy(json.loads(text))
            except PolicyError as error:
                log.error("a stored policy is invalid (%s); the principal is denied everything", error)
                policy = Policy(())
            if len(self._policies) < 1024:
                self._policies[text] = policy
        return policy

    def _principal(self, stored: StoredPrincipal) -> Principal:
        arn = f"arn:aws:iam::{self.settings.account_id}:user/{stored.name}"
        rpm = stored.rpm if stored.rpm is not None else self.settings.default_rpm
        tpm = stored.tpm if stored.tpm is not None else self.settings.default_tpm
        return Principal(stored.name, arn, self._compile(stored.policy), rpm, tpm)

    @property
    def enforce(self) -> bool:
        return self.settings.auth == "enforce"

    async def identify(self, request: RequestParts, now: datetime) -> Pending:
        """Who the request's head says is calling, or the AWS error that says why not — before its body is read,
        so that callers with no valid key never make the server buffer a body. :meth:`verify` checks the signature
        against the body once it is read."""
        authorization = sigv4._header(request.headers, b"authorization")
        params = dict(sigv4.query_pairs(request.query_string))
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme == "Bearer":
            if self.enforce and not request.secure:
                raise UnrecognizedClientException(
                    "Bedrock API keys (bearer tokens) are accepted only over HTTPS: serve with --tls-cert and "
                    "--tls-key, or sign the request with SigV4."
                )
            return Pending(await self._bearer(credential.strip()))
        if authorization is not None:
            signed = sigv4.parse_authorization(authorization, request.headers)
        elif "X-Amz-Algorithm" in params or "X-Amz-Signature" in params:
            signed = sigv4.parse_presigned(params)
        elif self.enforce:
            raise MissingAuthenticationTokenException(MISSING_TOKEN)
        else:
            return Pending(Identity(self.dev_principal, None, "none", self.settings.region))
        self._check_region(signed.region)
        return await self._sigv4(signed, now)

    def verify(self, pending: Pending, request: RequestParts, body: bytes | None) -> Identity:
        """The caller, once the signature matches the whole request, body included (``body`` None: an S3 body
        streamed to disk, which the S3 route checks as it arrives); InvalidSignatureException otherwise."""
        signed = pending.signed
        if signed is not None and not sigv4.signature_matches(
            signed, pending.secret, method=request.method, raw_path=request.raw_path,
            query_string=request.query_string, headers=request.headers, body=body,
        ):
            raise InvalidSignatureException(BAD_SIGNATURE)
        return pending.identity

    def _check_region(self, region: str) -> None:
        """A signature for a region this server does not answer for is refused, as AWS's front end refuses a
        credential scoped to another region than the endpoint's."""
        served = self.settings.regions
        if served and region not in served:
            raise InvalidSignatureException(
                f"Credential should be scoped to a valid region, not '{region}'. This server answers for "
                f"{', '.join(served)} (setting `regions`); sign requests for one of them."
            )

    async def _bearer(self, token: str) -> Identity:
        if not token:
            raise IncompleteSignatureException("The Bearer authorization header carries no token.")
        found = await asyncio.to_thread(self.store.find_bearer, token)
        if found is None:
            if self.enforce:
                raise UnrecognizedClientException(INVALID_TOKEN)
            return Identity(self.dev_principal, None, "bearer", self.settings.region)
        stored, key_id = found
        return Identity(self._principal(stored), key_id, "bearer", self.settings.region)

    async def _sigv4(self, signed: sigv4.SignedRequest, now: datetime) -> Pending:
        auth_type = "presigned" if signed.presigned else "sigv4"
        found = await asyncio.to_thread(self.store.find_access_key, signed.access_key_id)
        if found is None:
            if self.enforce:
                raise UnrecognizedClientException(INVALID_TOKEN)
            return Pending(Identity(self.dev_principal, None, auth_type, signed.region))
        if signed.security_token is not None and self.enforce:
            # llamarock issues long-term keys only; a session token belongs to some other issuer.
            raise UnrecognizedClientException(INVALID_TOKEN)
        stored, secret = found
        sigv4.check_time(signed, now, self.settings.clock_skew_seconds)
        identity = Identity(self._principal(stored), signed.access_key_id, auth_type, signed.region)
        return Pending(identity, signed, secret)
