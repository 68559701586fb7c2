"""bedrock-runtime routes: ``POST /model/{modelId}/{action}``, matched on the raw path.

Handlers are named after the AWS operations they implement (``invoke_model``, ``converse``...); ``OPERATIONS`` maps
each path action to its operation and handler, which is what ``docs/api-coverage.md`` is generated from.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarock.codec.rest_json import split_model_path
from llamarock.errors import BedrockError, InternalServerException, UnknownOperationException
from llamarock.observability.records import InvocationRecord
from llamarock.routes import forwarding
from llamarock.routes.common import Call, Handler, error_response
from llamarock.routes.converse import converse, converse_stream, count_tokens
from llamarock.routes.invoke import invoke_model, invoke_model_with_response_stream
from llamarock.services.inference import InferenceService

log = logging.getLogger(__name__)

INVOCATION_OPERATIONS = frozenset({"InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"})

OPERATIONS: dict[str, tuple[str, Handler]] = {
    "invoke": ("InvokeModel", invoke_model),
    "invoke-with-response-stream": ("InvokeModelWithResponseStream", invoke_model_with_response_stream),
    "converse": ("Converse", converse),
    "converse-stream": ("ConverseStream", converse_stream),
    "count-tokens": ("CountTokens", count_tokens),
}


async def model_operation(request: Request) -> Response:
    """Entry point for every ``POST /model/...`` request."""
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    call: Call | None = None
    try:
        model_identifier, action = split_model_path(request.scope.get("raw_path") or request.url.path.encode())
        entry = OPERATIONS.get(action)
        if entry is None or not model_identifier:
            raise UnknownOperationException(
                f"No operation matches POST {request.url.path}. The runtime operations are "
                "POST /model/{modelId}/" + "|".join(OPERATIONS) + "."
            )
        service: InferenceService = request.app.state.inference
        call = Call(request, request_id, started, model_identifier, service, _record(request, request_id,
                                                                                      entry[0], model_identifier))
        # A call whose inference region another llamarock server serves (region_servers) is relayed there.
        peer = forwarding.peer_for(call)
        response = await (entry[1](call) if peer is None else forwarding.forward(call, peer))
    except BedrockError as error:
        if call is not None:
            call.finish(error=error)
        return error_response(error, request_id)
    except Exception as error:
        log.exception("unexpected error (request %s)", request_id)
        if call is not None:
            call.finish(error=error)
        return error_response(
            InternalServerException(f"The server encountered an internal error. Request id: {request_id}"), request_id
        )
    if not isinstance(response, StreamingResponse):
        # A cancelled call (499) counts the tokens its handler saw before the client left.
        call.finish(response.status_code, cancelled=response.status_code == 499)
    return response


def _record(request: Request, request_id: str, operation: str, model_identifier: str) -> InvocationRecord | None:
    if operation not in INVOCATION_OPERATIONS:
        return None
    principal = getattr(request.state, "principal", None)
    region = getattr(request.state, "region", None) or request.app.state.settings.region
    return InvocationRecord(
        request_id=request_id, operation=operation, model_identifier=model_identifier,
        principal_arn=principal.arn if principal is not None else "", region=region,
    )
