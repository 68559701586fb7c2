"""Which operation of a service model a method and raw path name, from the model's ``requestUri``s.

rest-xml services (S3) put several operations on one method and URI and tell them apart by the query string and
headers: a literal in the ``requestUri`` (``/{Bucket}?uploads``, ``?list-type=2``, ``?delete``), a required
query-string member (UploadPart's ``partNumber`` and ``uploadId``) or a required header (CopyObject's
``x-amz-copy-source``). For them a route also needs those, and the route that needs most wins (UploadPartCopy over
UploadPart over PutObject). rest-json services (Bedrock) are matched on the path alone, as before: a missing required
query member is the operation's ValidationException, not another operation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from urllib.parse import unquote

from llamarock.codec.service_model import service_model


@dataclass(frozen=True)
class _Route:
    """One operation's method and compiled URI pattern; ``labels`` in the order of the pattern's groups."""

    operation: str
    method: str
    pattern: re.Pattern[bytes]
    labels: tuple[str, ...]
    slash: bool  # whether the model's requestUri ends in '/'
    query: tuple[tuple[str, str | None], ...] = ()  # (name, value or None for any) the query string must have
    headers: tuple[bytes, ...] = ()  # header names the request must have
    deprecated: bool = False  # loses to an operation with the same wire form (S3's GetBucketLifecycle, ...)


@cache
def _routes(service: str) -> tuple[_Route, ...]:
    model = service_model(service)
    discriminate = model.metadata.get("protocol") == "rest-xml"
    routes = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        http = operation.http
        uri, _, literal = http["requestUri"].partition("?")
        labels: list[str] = []
        parts = []
        for piece in re.split(r"(\{[^}]+\})", uri):
            if piece.startswith("{"):
                label = piece[1:-1]
                greedy = label.endswith("+")
                labels.append(label.rstrip("+"))
                parts.append("(.+)" if greedy else "([^/]+)")
            else:
                parts.append(re.escape(piece))
        pattern = re.compile(("^" + "".join(parts).rstrip("/") + "/?$").encode())
        query: list[tuple[str, str | None]] = []
        headers: list[bytes] = []
        if discriminate:
            for item in filter(None, literal.split("&")):
                key, sep, value = item.partition("=")
                query.append((key, value if sep else None))
            shape = operation.input_shape
            for member in shape.required_members if shape is not None else ():
                serialization = shape.members[member].serialization
                if serialization.get("location") == "querystring":
                    query.append((serialization["name"], None))
                elif serialization.get("location") == "header":
                    headers.append(serialization["name"].lower().encode())
        routes.append(_Route(name, http["method"], pattern, tuple(labels), uri.endswith("/"), tuple(query),
                             tuple(headers), bool(operation.deprecated)))
    # The route that needs most of the query and headers first; then literal segments beat labels:
    # '/inference-profiles/x' must not match a route of labels only.
    routes.sort(key=lambda r: (-len(r.query) - len(r.headers), len(r.labels), -len(r.pattern.pattern),
                               r.deprecated))
    return tuple(routes)


def _query(query_string: bytes) -> dict[str, str]:
    pairs = {}
    for part in query_string.decode("latin-1").split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs[unquote(key)] = unquote(value)
    return pairs


def _match(service: str, method: str, raw_path: bytes, query_string: bytes = b"",
           headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[_Route, dict[str, str]] | None:
    path = raw_path.split(b"?", 1)[0]
    query = _query(query_string) if query_string else {}
    names = {name.lower() for name, _ in headers}
    for route in _routes(service):
        if route.method != method:
            continue
        if any(key not in query or (value is not None and query[key] != value) for key, value in route.query):
            continue
        if any(header not in names for header in route.headers):
            continue
        found = route.pattern.match(path)
        if found is not None:
            values = {label: unquote(found.group(i + 1).decode("utf-8", "replace"))
                      for i, label in enumerate(route.labels)}
            return route, values
    return None


def match(service: str, method: str, raw_path: bytes, query_string: bytes = b"",
          headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[str, dict[str, str]] | None:
    """The operation a method and raw path (and, for rest-xml services, query string and headers) name, with its
    URI labels decoded; None if none matches."""
    found = _match(service, method, raw_path, query_string, headers)
    return (found[0].operation, found[1]) if found is not None else None


def match_first(services: tuple[str, ...], method: str, raw_path: bytes) -> tuple[str, str, dict[str, str]] | None:
    """The service and operation a method and raw path name among several services served on one port (they share
    the signing name ``bedrock``, so the path alone tells them apart), with its URI labels decoded.

    Where two services' URIs match the same path (bedrock-agent's ``POST /agents/{agentId}/``, PrepareAgent, and
    bedrock-agent-runtime's ``POST /agents/{sessionId}``, InvokeInlineAgent), the one whose trailing ``/`` agrees
    with the path's wins, as SDKs send each URI exactly; otherwise the first service listed.
    """
    path = raw_path.split(b"?", 1)[0]
    first: tuple[str, str, dict[str, str]] | None = None
    for service in services:
        found = _match(service, method, path)
        if found is None:
            continue
        route, values = found
        if route.slash == path.endswith(b"/"):
            return service, route.operation, values
        if first is None:
            first = (service, route.operation, values)
    return first
