"""The ``bedrock`` control plane: every rest-json operation of botocore's ``bedrock`` model, routed by its own URI.

Each operation's ``requestUri`` is compiled from the service model and matched on the raw path, so labels holding
ARNs (``%2F`` for ``/``) and ids with ``:`` come through intact. Input members are taken from the URI, the query
string (by ``locationName``), headers and the JSON body and validated against the input shape with AWS's words;
the handler returns the output members, serialized as JSON with the operation's success status. Handlers are
named after the operations in snake_case; ``create_app`` collects each feature module's ``HANDLERS`` into
``app.state.control_handlers``. An operation that the model defines but llamarock has no handler for yet gets a
clear error naming it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from llamarock.codec.routing import match
from llamarock.codec.service_model import operation_model
from llamarock.codec.shapes import parse_json_body
from llamarock.errors import BedrockError, InternalServerException, UnknownOperationException
from llamarock.routes.common import error_response, read_body

log = logging.getLogger(__name__)

SERVICE = "bedrock"


@dataclass
class ControlCall:
    """What every control-plane handler gets: the request, its id, the caller and the region it signed for."""

    request: Request
    request_id: str
    operation: str
    principal_arn: str
    region: str
    account_id: str
    started: float

    @property
    def state(self) -> Any:
        """The app's state: registry, services, stores."""
        return self.request.app.state


ControlHandler = Callable[[ControlCall, dict[str, Any]], Awaitable[dict[str, Any]]]



def _location_values(operation: str, labels: dict[str, str], request: Request) -> dict[str, Any]:
    shape = operation_model(operation, SERVICE).input_shape
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


async def control_operation(request: Request) -> Response | None:
    """Serve a control-plane request; None when no ``bedrock`` operation matches the method and path."""
    matched = match(SERVICE, request.method, request.scope.get("raw_path") or request.url.path.encode())
    if matched is None:
        return None
    operation, labels = matched
    request_id = str(uuid.uuid4())
    try:
        handlers: dict[str, ControlHandler] = request.app.state.control_handlers
        handler = handlers.get(operation)
        if handler is None:
            raise UnknownOperationException(
                f"llamarock does not implement the bedrock operation {operation} yet; docs/api-coverage.md lists "
                "the operations it serves."
            )
        body = await read_body(request)
        params = parse_json_body(operation, body if request.method in ("POST", "PUT", "PATCH") else b"",
                                 service=SERVICE, location_values=_location_values(operation, labels, request))
        settings = request.app.state.settings
        principal = getattr(request.state, "principal", None)
        call = ControlCall(
            request, request_id, operation,
            principal.arn if principal is not None else f"arn:aws:iam::{settings.account_id}:root",
            getattr(request.state, "region", None) or settings.region, settings.account_id, time.monotonic(),
        )
        output = await handler(call, params)
    except BedrockError as error:
        return error_response(error, request_id, SERVICE)
    except Exception:
        log.exception("unexpected error in %s (request %s)", operation, request_id)
        return error_response(
            InternalServerException(f"The server encountered an internal error. Request id: {request_id}"),
            request_id, SERVICE,
        )
    status = operation_model(operation, SERVICE).http.get("responseCode", 200)
    return Response(json.dumps(output, default=_json_default, ensure_ascii=False), status_code=status,
                    media_type="application/json", headers={"x-amzn-RequestId": request_id})
