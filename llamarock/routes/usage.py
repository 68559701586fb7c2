"""``GET /llamarock/usage?by=model|principal|tag|day|tier&since=DATE``: the usage report as JSON, for the console.

The same rows as ``llamarock usage --json`` (see ``observability/usage.py``), answered as ``{"by": ..., "since":
..., "rows": [...]}``. Bad parameters are a ValidationException that says what to send instead. The caller's policy
must allow ``llamarock:GetUsage`` (the operation table's action; the report shows every principal's usage).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llamarock.context import RequestContext
from llamarock.errors import ValidationException
from llamarock.observability.usage import UsageRecorder, parse_grouping, parse_since


async def get_usage(request: Request) -> Response:
    context: RequestContext = request.state.context
    recorder: UsageRecorder = request.app.state.usage
    unknown = sorted(set(request.query_params) - {"by", "since"})
    if unknown:
        raise ValidationException(f"unknown query parameter {unknown[0]!r}: use by and since")
    by = parse_grouping(request.query_params.get("by", "model"))
    raw_since = request.query_params.get("since")
    since = parse_since(raw_since) if raw_since else None

    def report() -> list[dict[str, object]]:
        recorder.flush()
        return [row.to_json(by) for row in recorder.store.report(by, since)]

    rows = await asyncio.to_thread(report)
    body = {"by": by, "since": since.isoformat() if since else None, "rows": rows}
    return JSONResponse(body, headers={"x-amzn-RequestId": context.request_id})
