"""S3's rest-xml wire pieces, pure: response documents, the XML error, request documents, HTTP dates.

Responses are built as ``ElementTree`` elements (S3's namespace on the root) and serialized once; request documents
(DeleteObjects, CompleteMultipartUpload, CreateBucket) are parsed with ``defusedxml``, which refuses entity
expansion and external references, so a hostile body cannot make the server expand or fetch anything.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from llamarock.errors import (
    AccessDeniedException,
    BedrockError,
    ContentSHA256Mismatch,
    IncompleteSignatureException,
    InvalidSignatureException,
    MalformedXML,
    MissingAuthenticationTokenException,
    RequestTimeoutException,
    S3Error,
    ServiceUnavailableException,
    ThrottlingException,
    UnknownOperationException,
    UnrecognizedClientException,
    ValidationException,
)

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
CONTENT_TYPE = "application/xml"


def document(root: str, *children: Element | None) -> Element:
    """A response document: ``root`` in S3's namespace with ``children``."""
    element = Element(root, xmlns=NAMESPACE)
    element.extend(child for child in children if child is not None)
    return element


def leaf(name: str, value: object) -> Element:
    element = Element(name)
    element.text = _text(value)
    return element


def node(name: str, *children: Element | None, **leaves: object) -> Element:
    """An element with ``leaves`` (in order, None skipped) then ``children``."""
    element = Element(name)
    element.extend(leaf(key, value) for key, value in leaves.items() if value is not None)
    element.extend(child for child in children if child is not None)
    return element


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_time(value)
    return str(value)


def serialize(element: Element) -> bytes:
    text: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + text


def iso_time(moment: datetime) -> str:
    """S3's timestamps in documents: ``2009-10-12T17:50:30.000Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def http_date(moment: datetime) -> str:
    """``Last-Modified``'s form: ``Wed, 12 Oct 2009 17:50:00 GMT``."""
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_http_date(value: str) -> datetime | None:
    """An ``If-Modified-Since``-style date, or None when it is not one (S3 then ignores the condition)."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------------ requests


def parse_document(body: bytes, root: str) -> Element:
    """A request's XML document whose root element is ``root`` (any namespace); MalformedXML otherwise."""
    try:
        element = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise MalformedXML(
            "The XML you provided was not well-formed or did not validate against our published schema."
        ) from None
    if local(element.tag) != root:
        raise MalformedXML(f"The XML you provided has root element {local(element.tag)!r}, not {root!r}.")
    return element  # type: ignore[no-any-return]  # defusedxml ships no type hints


def local(tag: str) -> str:
    """An element's name without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def child_text(element: Element, name: str) -> str | None:
    found = children(element, name)
    return (found[0].text or "") if found else None


# -------------------------------------------------------------------------------------------------------- errors

# What llamarock's front-end errors are called on S3 (the same conditions, S3's codes and statuses).
_FRONT_END: tuple[tuple[type[BedrockError], str, int], ...] = (
    (ContentSHA256Mismatch, "XAmzContentSHA256Mismatch", 400),
    (IncompleteSignatureException, "AuthorizationHeaderMalformed", 400),
    (UnrecognizedClientException, "InvalidAccessKeyId", 403),
    (MissingAuthenticationTokenException, "AccessDenied", 403),
    (AccessDeniedException, "AccessDenied", 403),
    (RequestTimeoutException, "RequestTimeout", 400),
    (ThrottlingException, "SlowDown", 503),
    (ServiceUnavailableException, "ServiceUnavailable", 503),
    (UnknownOperationException, "NotImplemented", 501),
    (ValidationException, "InvalidArgument", 400),
)


def s3_code(error: BedrockError) -> tuple[str, int]:
    """The S3 code and status of an error raised on an S3 row."""
    if isinstance(error, S3Error):
        return error.code, error.fallback_status
    if isinstance(error, InvalidSignatureException) and not isinstance(error, ContentSHA256Mismatch):
        skewed = error.message.startswith(("Signature expired", "Signature not yet current"))
        return "RequestTimeTooSkewed" if skewed else "SignatureDoesNotMatch", 403
    for kind, code, status in _FRONT_END:
        if isinstance(error, kind):
            return code, status
    return "InternalError", 500


def render_error(error: BedrockError, request_id: str, *, head: bool = False,
                 resource: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of S3's XML error; a HEAD request's error has no body (as on S3)."""
    code, status = s3_code(error)
    headers = {"x-amz-id-2": request_id}  # (the edge adds x-amz-request-id to every S3 response)
    if head:
        return status, headers, b""
    members: dict[str, Any] = {**(resource or {}), **{k: v for k, v in error.extra.items() if v is not None}}
    body = Element("Error")
    body.extend([leaf("Code", code), leaf("Message", error.message)])
    body.extend(leaf(name, value) for name, value in members.items())
    body.extend([leaf("RequestId", request_id), leaf("HostId", request_id)])
    headers["Content-Type"] = CONTENT_TYPE
    return status, headers, serialize(body)


def elements(name: str, values: Iterable[object]) -> list[Element]:
    return [leaf(name, value) for value in values]
