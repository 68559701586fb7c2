"""Which operation of a rest-json service model a method and raw path name, from the model's ``requestUri``s."""

from __future__ import annotations

import re
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


@cache
def _routes(service: str) -> tuple[_Route, ...]:
    model = service_model(service)
    routes = []
    for name in model.operation_names:
        http = model.operation_model(name).http
        uri = http["requestUri"].split("?", 1)[0]
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
        routes.append(_Route(name, http["method"], pattern, tuple(labels), uri.endswith("/")))
    # Literal segments beat labels: '/inference-profiles/x' must not match a route of labels only.
    routes.sort(key=lambda r: (len(r.labels), -len(r.pattern.pattern)))
    return tuple(routes)


def _match(service: str, method: str, path: bytes) -> tuple[_Route, dict[str, str]] | None:
    for route in _routes(service):
        if route.method != method:
            continue
        found = route.pattern.match(path)
        if found is not None:
            values = {label: unquote(found.group(i + 1).decode("utf-8", "replace"))
                      for i, label in enumerate(route.labels)}
            return route, values
    return None


def match(service: str, method: str, raw_path: bytes) -> tuple[str, dict[str, str]] | None:
    """The operation a method and raw path name, with its URI labels decoded; None if none matches."""
    found = _match(service, method, raw_path.split(b"?", 1)[0])
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
