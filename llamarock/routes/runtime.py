"""bedrock-runtime dispatch: every runtime operation's handler runs through :func:`serve`.

The operation table (``routes/operations.py``) names the handlers (``invoke_model``, ``converse``...); ``serve``
gives each a :class:`~llamarock.routes.common.Call` with the invocation record of the call, relays calls whose
inference region another llamarock server serves (``region_servers``), and finishes the record of whole answers
and of errors before the first byte (a stream finishes its own). Errors go on to the edge, which renders them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarock.context import RequestContext
from llamarock.observability.records import new_record
from llamarock.routes import forwarding
from llamarock.routes.common import CLIENT_CLOSED, Call, Handler


async def serve(request: Request, handler: Handler) -> Response:
    context: RequestContext = request.state.context
    assert context.operation is not None
    call = Call(request, context, new_record(context) if context.operation.invocation else None)
    with call.recording():
        # ApplyGuardrail names no model: it is answered here (guardrails are this server's resources).
        peer = forwarding.peer_for(call) if context.model is not None else None
        response = await (handler(call) if peer is None else forwarding.forward(call, peer))
    if not isinstance(response, StreamingResponse):
        # A cancelled call counts the tokens its handler saw before the client left.
        call.finish(response.status_code, cancelled=response.status_code == CLIENT_CLOSED)
    return response
