"""``GET /healthz``: 200 once every deployment is loaded, 503 before (or when one failed to load).

The body names each deployment's state and its engine's live counters (active generations, tokens generated), and
each embedding deployment's (those that load on first use are ``idle`` until then; only a failed one, or a
``preload`` one still loading, makes the server unavailable). A remote deployment adds its replicas' probed
``capabilities`` and each replica's state (up, down, ejected, half-open, throttled) and counters.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from llamarock.services.deployments import Deployment, DeploymentRegistry
from llamarock.services.embeddings import EmbeddingDeployment, EmbeddingService


def _state(deployment: Deployment) -> dict[str, object]:
    if deployment.error:
        return {"status": "failed", "error": deployment.error}
    if not deployment.engine.ready:
        return {"status": "loading"}
    state: dict[str, object] = {"status": "ready", **deployment.engine.stats()}
    if deployment.capabilities is not None:  # a remote deployment: what its replicas offer, and their states
        state["capabilities"] = deployment.capabilities
        state["replicas"] = deployment.replicas
    return state


def _embedding_state(deployment: EmbeddingDeployment) -> dict[str, object]:
    if deployment.error:
        return {"status": "failed", "error": deployment.error}
    if deployment.embedder.ready:
        return {"status": "ready", "active": deployment.active}
    return {"status": "loading" if deployment.settings.preload else "idle"}


async def get_health(request: Request) -> JSONResponse:
    registry: DeploymentRegistry = request.app.state.registry
    embeddings: EmbeddingService = request.app.state.embeddings
    embedding_states = {d.name: _embedding_state(d) for d in embeddings.deployments}
    ready = registry.ready and not any(s["status"] in ("failed", "loading") for s in embedding_states.values())
    deployments = {d.name: _state(d) for d in registry.deployments}
    body = {"status": "ok" if ready else "unavailable", "deployments": deployments,
            "embedding_deployments": embedding_states}
    return JSONResponse(body, status_code=200 if ready else 503)
