"""``GET /llamarock/quotas``: the quotas this server enforces right now, and how much of them is in use.

For each principal and model that a requests- or tokens-per-minute quota has counted since the server started: the
limits and what the current one-minute window has used. For each provisioned model: its model units and the
sequences and tokens per minute they reserve, and how many are in use; for each deployment: how its capacity is
split between provisioned and on-demand traffic. ``llamarock quotas`` prints it.

A caller sees every principal's rows in ``--auth dev`` mode, or when its policy allows ``llamarock:GetQuotas``;
otherwise only its own.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from llamarock.auth.gate import Gate
from llamarock.context import RequestContext
from llamarock.services.inference import InferenceService
from llamarock.services.provisioning import ProvisioningService

VIEW_ALL_ACTION = "llamarock:GetQuotas"


async def get_quotas(request: Request) -> JSONResponse:
    context: RequestContext = request.state.context
    gate: Gate = request.app.state.gate
    inference: InferenceService = request.app.state.inference
    provisioning: ProvisioningService = request.app.state.provisioning
    settings = request.app.state.settings
    everyone, own = gate.allowed(context, VIEW_ALL_ACTION), context.principal_name
    rows = [
        {
            "principal": use.principal, "model": use.model, "rpmLimit": use.rpm, "rpmUsed": use.rpm_used,
            "tpmLimit": use.tpm, "tpmUsed": use.tpm_used,
        }
        for use in gate.quotas.usage()
        if everyone or use.principal == own
    ]
    statuses = {model.arn: model.status for model in provisioning.live()}
    reservations = [
        {
            "provisionedModelArn": r.arn, "provisionedModelName": r.name, "modelId": r.model_id,
            "deployment": r.deployment, "status": statuses.get(r.arn), "modelUnits": r.units,
            "sequences": r.sequences, "sequencesInUse": r.running, "waiting": r.waiting,
            "tpmLimit": r.tokens_per_minute, "tpmUsed": r.tokens_used,
        }
        for r in inference.scheduler.reservations()
    ]
    deployments = [
        {
            "deployment": d.name, "maxParallel": d.max_parallel, "prioritySlots": d.priority_slots,
            "maxQueue": d.max_queue, "reservedSequences": d.reserved, "onDemandSequences": d.on_demand,
            "onDemandInUse": d.on_demand_running, "onDemandWaiting": d.on_demand_waiting,
        }
        for d in inference.scheduler.deployments()
    ]
    body: dict[str, Any] = {
        "defaults": {"rpmLimit": settings.default_rpm, "tpmLimit": settings.default_tpm},
        "quotas": rows,
        "provisioned": reservations,
        "deployments": deployments,
    }
    return JSONResponse(body, headers={"x-amzn-RequestId": context.request_id})
