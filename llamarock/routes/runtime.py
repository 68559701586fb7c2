"""bedrock-runtime routes: ``POST /model/{modelId}/{action}``, matched on the raw path.

Handlers are named after the AWS operations they implement (``invoke_model``, ``converse``...); ``OPERATIONS`` maps
each path action to its operation and handler, which is what ``docs/api-coverage.md`` is generated from.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response

from llamarock.codec.rest_json import split_model_path
from llamarock.errors import BedrockError, InternalServerException, UnknownOperationException
from llamarock.routes.common import Call, Handler, error_response
from llamarock.routes.converse import converse, converse_stream, count_tokens
from llamarock.routes.invoke import invoke_model, invoke_model_with_response_stream
from llamarock.services.inference import InferenceService

log = logging.getLogger(__name__)

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
    try:
        model_identifier, action = split_model_path(request.scope.get("raw_path") or request.url.path.encode())
        entry = OPERATIONS.get(action)
        if entry is None or not model_identifier:
            raise UnknownOperationException(
                f"No operation matches POST {request.url.path}. The runtime operations are "
                "POST /model/{modelId}/" + "|".join(OPERATIONS) + "."
            )
        service: InferenceService = request.app.state.inference
        call = Call(request, request_id, started, model_identifier, service)
        return await entry[1](call)
    except BedrockError as error:
        return error_response(error, request_id)
    except Exception:
        log.exception("unexpected error (request %s)", request_id)
        return error_response(
            InternalServerException(f"The server encountered an internal error. Request id: {request_id}"), request_id
        )
