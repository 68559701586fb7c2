"""The rest-json operations that are not invocations: botocore's ``bedrock`` control plane, and ``bedrock-agent`` and
``bedrock-agent-runtime`` (knowledge bases), each routed by its own URI.

Each operation's ``requestUri`` is compiled from the service model and matched on the raw path, so labels holding
ARNs (``%2F`` for ``/``) and ids with ``:`` come through intact. Input members are taken from the URI, the query
string (by ``locationName``), headers and the JSON body and validated against the input shape with AWS's words;
the handler returns the output members, serialized as JSON with the operation's success status. Handlers are
named after the operations in snake_case, and the operation table (``routes/operations.py``) lists them; an
operation that the model defines but llamarock has no handler for yet gets a clear error naming it (from the edge).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from llamarock.codec.service_model import operation_model
from llamarock.codec.shapes import parse_json_body
from llamarock.context import RequestContext


@dataclass
class ControlCall:
    """What every control-plane handler gets: the request, its id, the caller and the region it signed for."""

    request: Request
    request_id: str
    operation: str
    service: str
    principal_arn: str
    region: str
    account_id: str
    started: float

    @property
    def state(self) -> Any:
        """The app's state: registry, services, stores."""
        return self.request.app.state


# A handler returns the output members, or a whole Response (an event stream: RetrieveAndGenerateStream).
ControlHandler = Callable[[ControlCall, dict[str, Any]], Awaitable[dict[str, Any] | Response]]



def _location_values(service: str, operation: str, labels: dict[str, str], request: Request) -> dict[str, Any]:
    shape = operation_model(operation, service).input_shape
    if shape is None:
        return {}
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(request.url.query, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    values: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri" and wire in labels:
            values[name] = labels[wire]
        elif location == "querystring" and wire in query:
            values[name] = query[wire] if member.type_name == "list" else query[wire][-1]
        elif location == "header" and wire in request.headers:
            values[name] = request.headers[wire]
    return values


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


async def serve(request: Request, handler: ControlHandler) -> Response:
    """Serve one control-plane operation: input members from the URI, query, headers and JSON body, validated against
    the input shape; the handler's output members as JSON with the operation's success status."""
    context: RequestContext = request.state.context
    assert context.operation is not None
    operation = context.operation.name
    service = context.operation.service
    body = context.body if request.method in ("POST", "PUT", "PATCH") else b""
    params = parse_json_body(operation, body, service=service,
                             location_values=_location_values(service, operation, context.labels, request))
    settings = request.app.state.settings
    call = ControlCall(
        request, context.request_id, operation, service,
        context.principal_arn or f"arn:aws:iam::{settings.account_id}:root",
        context.region, settings.account_id, context.started,
    )
    output = await handler(call, params)
    if isinstance(output, Response):
        return output
    status = operation_model(operation, service).http.get("responseCode", 200)
    return Response(json.dumps(output, default=_json_default, ensure_ascii=False), status_code=status,
                    media_type="application/json", headers={"x-amzn-RequestId": context.request_id})
