"""SigV4 verification: parse what the client sent, then let botocore's own signer recompute the signature.

The canonical request is built by ``botocore.auth.SigV4Auth`` (``SigV4QueryAuth`` for presigned query strings) over
a reconstructed ``AWSRequest`` carrying exactly the headers the client signed, the raw (still percent-encoded) path
as sent, and the query parameters as sent. The path is therefore encoded again, as botocore does when it signs
``/model/meta.llama3-8b-instruct-v1%3A0/invoke``, except for service ``s3``, whose canonical URI is the path as sent
(``S3SigV4Auth``: S3 signs its paths without normalising or encoding them again); the comparison is constant-time.

S3 bodies that are streamed to disk (PutObject, UploadPart) are not in hand when the signature is checked: the
canonical request then carries the ``x-amz-content-sha256`` the client declared (a hash, ``UNSIGNED-PAYLOAD`` or a
``STREAMING-...`` value), and the S3 route checks the body against it as it arrives (:class:`StreamSigning` carries
what chunk signatures are checked with).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from llamarock.errors import ContentSHA256Mismatch, IncompleteSignatureException, InvalidSignatureException

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "bedrock"
S3 = "s3"
SERVICES = (SERVICE, S3)  # the signing names of the services this server answers
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# The x-amz-content-sha256 values of S3's aws-chunked bodies (the ECDSA/SigV4a variant is not accepted).
STREAMING_PAYLOADS = (
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
)
TIMESTAMP = "%Y%m%dT%H%M%SZ"
MAX_PRESIGN_EXPIRES = 604800
_TIMESTAMP_RE = re.compile(r"^\d{8}T\d{6}Z$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SignedRequest:
    """The signature pieces of one request, as the client sent them."""

    access_key_id: str
    scope_date: str
    region: str
    service: str
    timestamp: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    expires: int | None
    security_token: str | None


Headers = Sequence[tuple[bytes, bytes]]


def _header(headers: Headers, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    """The query parameters as sent, decoded (``+`` stays a plus, as SigV4 clients mean it)."""
    pairs = []
    for part in query_string.decode("latin-1").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote(key, errors="replace"), unquote(value, errors="replace")))
    return pairs


def _credential(value: str) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or not all(parts):
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got "
            f"{len(parts)}."
        )
    key_id, date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )
    if service not in SERVICES:
        raise InvalidSignatureException(f"Credential should be scoped to correct service: '{SERVICE}'.")
    if not re.fullmatch(r"[a-z0-9-]{1,64}", region):
        raise InvalidSignatureException("Credential should be scoped to a valid region.")
    if not re.fullmatch(r"\d{8}", date):
        raise InvalidSignatureException("Credential should be scoped to a valid date.")
    return key_id, date, region, service


def credential_service(headers: Headers, query_string: bytes) -> str | None:
    """The service of a SigV4 credential scope (``Authorization`` header or presigned ``X-Amz-Credential``), read
    before anything is verified, to tell S3 requests from Bedrock ones; None when the request carries no credential
    at all, ``""`` when it carries one that names no service (a bearer token, a malformed signature)."""
    authorization = _header(headers, b"authorization")
    credential = ""
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme != ALGORITHM:
            return ""
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            if name == "Credential":
                credential = value
    elif b"X-Amz-Credential" in query_string:
        credential = dict(query_pairs(query_string)).get("X-Amz-Credential", "")
    else:
        return None
    parts = credential.split("/")
    return parts[3] if len(parts) == 5 else ""


def _signed_header_names(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or not all(names) or any(n != n.lower().strip() for n in names):
        raise IncompleteSignatureException("SignedHeaders must be a ';'-separated list of lower-case header names.")
    if "host" not in names and ":authority" not in names:  # HTTP/2 clients (the JS SDK v3) sign :authority
        raise IncompleteSignatureException("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    return names


def _check_timestamp_scope(timestamp: str, scope_date: str) -> None:
    if timestamp[:8] != scope_date:
        raise InvalidSignatureException(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{timestamp[:8]}', from '{timestamp}'."
        )


def parse_authorization(value: str, headers: Headers) -> SignedRequest:
    """An ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`` header."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported authorization type '{scheme[:40]}': use {ALGORITHM} (SigV4) or Bearer."
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field = part.strip().partition("=")
        if sep:
            fields[name] = field
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise IncompleteSignatureException(
            " ".join(f"Authorization header requires '{n}' parameter." for n in missing)
        )
    key_id, date, region, service = _credential(fields["Credential"])
    signed = _signed_header_names(fields["SignedHeaders"])
    timestamp = _header(headers, b"x-amz-date")
    if timestamp is None:
        http_date = _header(headers, b"date")
        if http_date is None:
            raise IncompleteSignatureException(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
            )
        try:
            timestamp = parsedate_to_datetime(http_date).astimezone(UTC).strftime(TIMESTAMP)
        except (TypeError, ValueError, IndexError, OverflowError):
            raise IncompleteSignatureException(f"The Date header '{http_date[:64]}' is not an HTTP date.") from None
    if not _TIMESTAMP_RE.match(timestamp):
        raise IncompleteSignatureException("X-Amz-Date must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'.")
    _check_timestamp_scope(timestamp, date)
    return SignedRequest(key_id, date, region, service, timestamp, signed, fields["Signature"], False, None,
                         _header(headers, b"x-amz-security-token"))


def parse_presigned(params: dict[str, str]) -> SignedRequest:
    """The ``X-Amz-*`` parameters of a presigned query string."""
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise IncompleteSignatureException(f"X-Amz-Algorithm must be {ALGORITHM}.")
    missing = [n for n in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
               if n not in params]
    if missing:
        raise IncompleteSignatureException(
            " ".join(f"AWS query-string parameters must include '{n}'." for n in missing)
        )
    key_id, date, region, service = _credential(params["X-Amz-Credential"])
    timestamp = params["X-Amz-Date"]
    if not _TIMESTAMP_RE.match(timestamp):
        raise IncompleteSignatureException("X-Amz-Date must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'.")
    _check_timestamp_scope(timestamp, date)
    raw_expires = params.get("X-Amz-Expires", str(SigV4QueryAuth.DEFAULT_EXPIRES))
    if not raw_expires.isdigit() or not 1 <= int(raw_expires) <= MAX_PRESIGN_EXPIRES:
        raise IncompleteSignatureException(
            f"X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGN_EXPIRES}."
        )
    return SignedRequest(key_id, date, region, service, timestamp, _signed_header_names(params["X-Amz-SignedHeaders"]),
                         params["X-Amz-Signature"], True, int(raw_expires), params.get("X-Amz-Security-Token"))


def _stamp(moment: datetime) -> str:
    return moment.strftime(TIMESTAMP)


def check_time(signed: SignedRequest, now: datetime, skew_seconds: int) -> None:
    """The clock-skew window (and a presigned URL's expiry), with AWS's messages."""
    moment = datetime.strptime(signed.timestamp, TIMESTAMP).replace(tzinfo=UTC)
    skew = timedelta(seconds=skew_seconds)
    minutes = f"{skew_seconds // 60} min." if skew_seconds % 60 == 0 else f"{skew_seconds} sec."
    if moment > now + skew:
        raise InvalidSignatureException(
            f"Signature not yet current: {signed.timestamp} is still later than {_stamp(now + skew)} "
            f"({_stamp(now)} + {minutes})"
        )
    if signed.presigned:
        if signed.expires is not None and now > moment + timedelta(seconds=signed.expires):
            raise InvalidSignatureException(
                f"Signature expired: {signed.timestamp} is now earlier than "
                f"{_stamp(now - timedelta(seconds=signed.expires))} ({_stamp(now)} - {signed.expires} sec.)"
            )
        return
    if moment < now - skew:
        raise InvalidSignatureException(
            f"Signature expired: {signed.timestamp} is now earlier than {_stamp(now - skew)} "
            f"({_stamp(now)} - {minutes})"
        )


class _Verifier:
    """Mixed into botocore's signers: the headers, query and payload are the client's, not recomputed."""

    def __init__(self, signed_headers: Any, pairs: list[tuple[str, str]], payload_hash: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._signed = signed_headers
        self._pairs = pairs
        self._payload_hash = payload_hash

    def headers_to_sign(self, request: AWSRequest) -> Any:
        return self._signed

    def canonical_query_string(self, request: AWSRequest) -> str:
        return str(self._canonical_query_string_params(self._pairs))  # type: ignore[attr-defined]

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


class _HeaderVerifier(_Verifier, SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
    pass


class _QueryVerifier(_Verifier, SigV4QueryAuth):  # type: ignore[misc]
    pass


class _S3HeaderVerifier(_Verifier, S3SigV4Auth):  # type: ignore[misc]
    pass


class _S3QueryVerifier(_Verifier, S3SigV4QueryAuth):  # type: ignore[misc]
    pass


@dataclass(frozen=True)
class StreamSigning:
    """What the chunk signatures of a streamed S3 body are checked with: the request's signing key, timestamp,
    credential scope and signature (the seed of the chain)."""

    key: bytes
    timestamp: str
    scope: str
    seed: str


def stream_signing(signed: SignedRequest, secret: str) -> StreamSigning:
    """The signing key of ``signed`` (SigV4's HMAC chain over date, region, service), for chunk signatures."""
    key = ("AWS4" + secret).encode()
    for part in (signed.scope_date, signed.region, signed.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    scope = f"{signed.scope_date}/{signed.region}/{signed.service}/aws4_request"
    return StreamSigning(key, signed.timestamp, scope, signed.signature)


def payload_hash(declared: str | None, body: bytes | None) -> str:
    """The payload hash the client signed: its ``x-amz-content-sha256`` (checked against the body) or the body's.
    With ``body`` None (an S3 body streamed to disk) the declared value is taken as it is; the S3 route checks the
    body against it as it arrives."""
    if body is None:
        if declared is None or not (declared == UNSIGNED_PAYLOAD or declared in STREAMING_PAYLOADS
                                    or _HEX64.match(declared)):
            raise InvalidSignatureException(
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING-... value of aws-chunked bodies, or the "
                "lower-case hex SHA-256 of the body."
            )
        return declared
    if declared is None or declared == UNSIGNED_PAYLOAD:
        return declared or hashlib.sha256(body).hexdigest()
    if not _HEX64.match(declared):
        raise InvalidSignatureException(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or the lower-case hex SHA-256 of the body."
        )
    if declared != hashlib.sha256(body).hexdigest():
        raise ContentSHA256Mismatch(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )
    return declared


def signature_matches(
    signed: SignedRequest,
    secret: str,
    *,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Headers,
    body: bytes | None,
) -> bool:
    """Recompute the signature with botocore over what the client sent, and compare in constant time."""
    header_map = HTTPHeaders()
    for name in signed.signed_headers:
        source = "host" if name == ":authority" else name  # ASGI servers hand HTTP/2's :authority over as host
        values = [v.decode("latin-1") for k, v in headers if k.lower().decode("latin-1") == source]
        if not values:
            return False
        for value in values:
            header_map[name] = value
    pairs = query_pairs(query_string)
    declared = None
    s3 = signed.service == S3
    if signed.presigned:
        pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        if s3:  # presigned S3 URLs never sign the payload
            declared = dict(pairs).get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    elif "x-amz-content-sha256" in signed.signed_headers:
        declared = header_map["x-amz-content-sha256"]
    elif s3:
        declared = _header(headers, b"x-amz-content-sha256")
        if declared is None:
            raise InvalidSignatureException("S3 requests signed with SigV4 must carry x-amz-content-sha256.")
    digest = payload_hash(declared, body)
    path = raw_path.decode("utf-8", errors="replace") or "/"
    request = AWSRequest(method=method, url="http://localhost" + path, headers=dict(header_map.items()),
                         data=body or b"")
    request.context["timestamp"] = signed.timestamp
    credentials = Credentials(signed.access_key_id, secret)
    if s3:
        kind = _S3QueryVerifier if signed.presigned else _S3HeaderVerifier
    else:
        kind = _QueryVerifier if signed.presigned else _HeaderVerifier
    signer = kind(header_map, pairs, digest, credentials=credentials, service_name=signed.service,
                  region_name=signed.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return hmac.compare_digest(expected.encode(), signed.signature.encode("utf-8", errors="replace"))
