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
        routes.append(_Route(name, http["method"], pattern, tuple(labels)))
    # Literal segments beat labels: '/inference-profiles/x' must not match a route of labels only.
    routes.sort(key=lambda r: (len(r.labels), -len(r.pattern.pattern)))
    return tuple(routes)


def match(service: str, method: str, raw_path: bytes) -> tuple[str, dict[str, str]] | None:
    """The operation a method and raw path name, with its URI labels decoded; None if none matches."""
    path = raw_path.split(b"?", 1)[0]
    for route in _routes(service):
        if route.method != method:
            continue
        found = route.pattern.match(path)
        if found is not None:
            values = {label: unquote(found.group(i + 1).decode("utf-8", "replace"))
                      for i, label in enumerate(route.labels)}
            return route.operation, values
    return None
