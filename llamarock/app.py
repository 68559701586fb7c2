"""``create_app(settings)``: wires settings, deployments, services and routes. No module-level state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llamarock.auth.middleware import AuthMiddleware, Gate
from llamarock.errors import UnknownOperationException
from llamarock.observability.records import Observers
from llamarock.routes.common import error_response
from llamarock.routes.control import control_operation
from llamarock.routes.health import healthz
from llamarock.routes.runtime import model_operation
from llamarock.services.conversation import ConversationService
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.inference import InferenceService
from llamarock.settings import Settings

log = logging.getLogger(__name__)


async def other_route(request: Request) -> Response:
    """A ``bedrock`` control-plane operation, or UnknownOperationException."""
    response = await control_operation(request)
    if response is not None:
        return response
    return error_response(
        UnknownOperationException(f"No operation matches {request.method} {request.url.path}."), str(uuid.uuid4())
    )


def create_app(settings: Settings) -> Starlette:
    """The ASGI application. Deployments start loading when the app starts; /healthz says when they are ready."""
    registry = DeploymentRegistry(settings)
    observers = Observers()
    gate = Gate(settings, observers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.close_all()
            gate.close()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/model/{rest:path}", model_operation, methods=["POST"]),
            Route("/{rest:path}", other_route, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(AuthMiddleware, gate=gate)
    app.state.settings = settings
    app.state.gate = gate
    app.state.registry = registry
    app.state.observers = observers
    app.state.inference = InferenceService(registry, settings)
    app.state.conversation = ConversationService(app.state.inference)
    return app
