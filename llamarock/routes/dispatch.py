"""The app's one route: hand the request to its operation's handler, in the way its service's handlers expect.

It is the router's default app (``create_app``), not a path pattern: the edge has already resolved the operation
from the raw path, and no pattern may second-guess it (Starlette's path patterns do not match a ``%0A`` label).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, RUNTIME, RequestContext
from llamarock.routes import control, runtime


async def dispatch(request: Request) -> Response:
    """Run the handler of the operation the edge resolved (it has checked that there is one)."""
    context: RequestContext = request.state.context
    operation = context.operation
    assert operation is not None and operation.handler is not None
    if operation.service == RUNTIME:
        return await runtime.serve(request, operation.handler)
    if operation.service in (BEDROCK, AGENT, AGENT_RUNTIME):
        return await control.serve(request, operation.handler)
    response: Response = await operation.handler(request)
    return response


async def dispatch_app(scope: Scope, receive: Receive, send: Send) -> None:
    """:func:`dispatch` as an ASGI app."""
    response = await dispatch(Request(scope, receive, send))
    await response(scope, receive, send)
