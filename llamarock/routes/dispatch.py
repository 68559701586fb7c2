"""The app's one route: hand the request to its operation's handler, in the way its service's handlers expect."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from llamarock.context import BEDROCK, RUNTIME, RequestContext
from llamarock.routes import control, runtime


async def dispatch(request: Request) -> Response:
    """Run the handler of the operation the edge resolved (it has checked that there is one)."""
    context: RequestContext = request.state.context
    operation = context.operation
    assert operation is not None and operation.handler is not None
    if operation.service == RUNTIME:
        return await runtime.serve(request, operation.handler)
    if operation.service == BEDROCK:
        return await control.serve(request, operation.handler)
    response: Response = await operation.handler(request)
    return response
