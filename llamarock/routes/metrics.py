"""``GET /metrics``: the app's Prometheus registry in the text exposition format (unauthenticated, like /healthz).

The series and how they map to Bedrock's CloudWatch metrics are listed in ``observability/metrics.py``.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from llamarock.observability.metrics import InvocationMetrics


async def get_metrics(request: Request) -> Response:
    observer: InvocationMetrics = request.app.state.metrics
    # The engine collector takes each decode loop's lock briefly; keep that off the event loop.
    body = await asyncio.to_thread(generate_latest, observer.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
