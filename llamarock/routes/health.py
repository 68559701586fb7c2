"""``GET /healthz``: 200 once every deployment is loaded, 503 before (or when one failed to load).

The body names each deployment's state and its engine's live counters (active generations, tokens generated).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from llamarock.services.deployments import Deployment, DeploymentRegistry


def _state(deployment: Deployment) -> dict[str, object]:
    if deployment.error:
        return {"status": "failed", "error": deployment.error}
    if not deployment.engine.ready:
        return {"status": "loading"}
    return {"status": "ready", **deployment.engine.stats()}


async def get_health(request: Request) -> JSONResponse:
    registry: DeploymentRegistry = request.app.state.registry
    ready = registry.ready
    deployments = {d.name: _state(d) for d in registry.deployments}
    body = {"status": "ok" if ready else "unavailable", "deployments": deployments}
    return JSONResponse(body, status_code=200 if ready else 503)
