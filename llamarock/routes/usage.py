"""``GET /llamarock/usage?by=model|principal|tag|day&since=DATE``: the usage report as JSON, for the console.

The same rows as ``llamarock usage --json`` (see ``observability/usage.py``), answered as ``{"by": ..., "since":
..., "rows": [...]}``. Bad parameters are a ValidationException that says what to send instead. With ``--auth
enforce`` the caller's policy must allow ``llamarock:GetUsage`` (the report shows every principal's usage).
"""

from __future__ import annotations

import asyncio
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llamarock.auth.identity import Principal
from llamarock.errors import AccessDeniedException, ValidationException
from llamarock.observability.usage import UsageRecorder, parse_grouping, parse_since
from llamarock.routes.common import error_response

VIEW_ACTION = "llamarock:GetUsage"


async def usage_report(request: Request) -> Response:
    request_id = str(uuid.uuid4())
    recorder: UsageRecorder = request.app.state.usage
    principal: Principal | None = getattr(request.state, "principal", None)
    if request.app.state.settings.auth == "enforce" and principal is not None and \
            principal.policy.evaluate(VIEW_ACTION, "*", {}) != "Allow":
        return error_response(AccessDeniedException(
            f"User: {principal.arn} is not authorized to perform: {VIEW_ACTION} on resource: * because no "
            f"identity-based policy allows the {VIEW_ACTION} action"), request_id)
    unknown = sorted(set(request.query_params) - {"by", "since"})
    try:
        if unknown:
            raise ValueError(f"unknown query parameter {unknown[0]!r}: use by and since")
        by = parse_grouping(request.query_params.get("by", "model"))
        raw_since = request.query_params.get("since")
        since = parse_since(raw_since) if raw_since else None
    except ValueError as error:
        return error_response(ValidationException(str(error)), request_id)

    def report() -> list[dict[str, object]]:
        recorder.flush()
        return [row.to_json(by) for row in recorder.store.report(by, since)]

    rows = await asyncio.to_thread(report)
    body = {"by": by, "since": since.isoformat() if since else None, "rows": rows}
    return JSONResponse(body, headers={"x-amzn-RequestId": request_id})
