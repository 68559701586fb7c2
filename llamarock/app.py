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
from llamarock.observability.invocation_log import InvocationLog
from llamarock.observability.metrics import InvocationMetrics
from llamarock.observability.records import Observers
from llamarock.observability.usage import UsageRecorder
from llamarock.routes import foundation_models, invocation_logging, provisioned
from llamarock.routes.common import error_response
from llamarock.routes.control import ControlHandler, control_operation
from llamarock.routes.health import healthz
from llamarock.routes.metrics import metrics
from llamarock.routes.quotas import quotas
from llamarock.routes.runtime import model_operation
from llamarock.routes.usage import usage_report
from llamarock.scheduler import Scheduler
from llamarock.services.conversation import ConversationService
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.inference import InferenceService
from llamarock.services.peers import PeerService
from llamarock.services.provisioning import ProvisioningService
from llamarock.settings import Settings
from llamarock.storage.blobs import open_blob_store
from llamarock.storage.logging_config import LoggingConfigStore
from llamarock.storage.provisioned import ProvisionedStore

log = logging.getLogger(__name__)

# The bedrock control-plane operations llamarock implements, by feature (docs/api-coverage.md lists them).
CONTROL_HANDLERS: dict[str, ControlHandler] = {
    **foundation_models.HANDLERS,
    **provisioned.HANDLERS,
    **invocation_logging.HANDLERS,
}


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
    usage = UsageRecorder(settings)
    observers.add(usage)
    invocation_log = InvocationLog(
        settings, open_blob_store(settings), LoggingConfigStore(settings.data_dir, settings.database_url)
    )
    invocation_metrics = InvocationMetrics(lambda: registry.deployments, lambda: dict(invocation_log.counts))
    observers.add(invocation_metrics)
    observers.add(invocation_log)
    scheduler = Scheduler(settings)
    provisioning = ProvisioningService(
        ProvisionedStore(settings.data_dir, settings.database_url), registry, scheduler, settings
    )
    gate = Gate(settings, observers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(registry.load_all())
        await asyncio.to_thread(invocation_log.start)
        await provisioning.load()
        provisioned_models = asyncio.create_task(provisioning.run())
        try:
            yield
        finally:
            provisioned_models.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await provisioned_models
            provisioning.store.close()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.close_all()
            await app.state.peers.close()
            gate.close()
            await asyncio.to_thread(usage.close)
            await asyncio.to_thread(invocation_log.close)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/llamarock/quotas", quotas, methods=["GET"]),
            Route("/llamarock/usage", usage_report, methods=["GET"]),
            Route("/model/{rest:path}", model_operation, methods=["POST"]),
            Route("/{rest:path}", other_route, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(AuthMiddleware, gate=gate)
    app.state.settings = settings
    app.state.control_handlers = CONTROL_HANDLERS
    app.state.gate = gate
    app.state.registry = registry
    app.state.observers = observers
    app.state.usage = usage
    app.state.metrics = invocation_metrics
    app.state.invocation_log = invocation_log
    app.state.provisioning = provisioning
    app.state.inference = InferenceService(registry, settings, scheduler, provisioning)
    app.state.conversation = ConversationService(app.state.inference)
    app.state.peers = PeerService(settings, app.state.inference)
    return app
