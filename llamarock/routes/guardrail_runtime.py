"""ApplyGuardrail (bedrock-runtime): check content against a guardrail without invoking a model (the use case is
``services/guardrail_runtime.py``, the policies ``services/guardrails.py``)."""

from __future__ import annotations

from starlette.responses import Response

from llamarock.codec.shapes import parse_json_body
from llamarock.routes.common import Call, json_response
from llamarock.services.guardrail_runtime import GuardrailRuntime


async def apply_guardrail(call: Call) -> Response:
    """ApplyGuardrail: ``source`` INPUT or OUTPUT, ``content`` text blocks (with qualifiers), ``outputScope``
    INTERVENTIONS (only what intervened) or FULL; Bedrock's output body, usage units and assessments."""
    labels = call.context.labels
    params = parse_json_body(call.operation, call.body, location_values={
        "guardrailIdentifier": labels.get("guardrailIdentifier", ""),
        "guardrailVersion": labels.get("guardrailVersion", ""),
    })
    service: GuardrailRuntime = call.state().guardrail_runtime
    body = await service.apply(call.region, params["guardrailIdentifier"], params["guardrailVersion"],
                               params["source"], params["content"], params.get("outputScope") or "INTERVENTIONS")
    return json_response(body, {"x-amzn-RequestId": call.request_id})
