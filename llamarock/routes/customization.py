"""Model customization's control-plane operations (``bedrock``): Create/Get/List/StopModelCustomizationJob and
List/Get/DeleteCustomModel (the use case is ``services/customization.py``; docs/customization.md)."""

from __future__ import annotations

from typing import Any

from llamarock.bedrock.catalog_api import offset_token, token_offset
from llamarock.routes.control import ControlCall
from llamarock.services.customization import (
    CustomizationJob,
    CustomizationService,
    CustomModel,
    ListFilter,
)


def _service(call: ControlCall) -> CustomizationService:
    service: CustomizationService = call.state.customization
    return service


def _base_arn(job: CustomizationJob) -> str:
    return f"arn:aws:bedrock:{job.region}::foundation-model/{job.base_model_identifier}"


def _job_summary(job: CustomizationJob) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "jobArn": job.arn, "baseModelArn": _base_arn(job), "jobName": job.name, "status": job.status,
        "lastModifiedTime": job.last_modified, "creationTime": job.creation_time,
        "customModelName": job.custom_model_name, "customizationType": "FINE_TUNING",
    }
    if job.end_time is not None:
        shown["endTime"] = job.end_time
    if job.status == "Completed":
        shown["customModelArn"] = job.custom_model_arn
    return shown


async def create_model_customization_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _service(call).create(region=call.region, account=call.account_id, params=params)
    return {"jobArn": job.arn}


async def get_model_customization_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _service(call).get(call.region, params["jobIdentifier"])
    request = job.request
    shown: dict[str, Any] = {
        "jobArn": job.arn, "jobName": job.name, "outputModelName": job.custom_model_name, "roleArn": job.role_arn,
        "status": job.status, "creationTime": job.creation_time, "lastModifiedTime": job.last_modified,
        "baseModelArn": _base_arn(job), "hyperParameters": request["hyperParameters"],
        "trainingDataConfig": request["trainingDataConfig"],
        "validationDataConfig": request.get("validationDataConfig") or {"validators": []},
        "outputDataConfig": request["outputDataConfig"], "customizationType": "FINE_TUNING",
    }
    optional: dict[str, Any] = {
        "clientRequestToken": job.client_token, "failureMessage": job.failure_message, "endTime": job.end_time,
        "vpcConfig": request.get("vpcConfig"),
        "outputModelArn": job.custom_model_arn if job.status == "Completed" else None,
    }
    progress = job.progress
    if progress.get("training_loss") is not None:
        optional["trainingMetrics"] = {"trainingLoss": progress["training_loss"]}
    if progress.get("validation_loss") is not None:
        optional["validationMetrics"] = [{"validationLoss": progress["validation_loss"]}]
    shown.update({key: value for key, value in optional.items() if value is not None})
    return shown


async def list_model_customization_jobs(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    offset = token_offset(params.get("nextToken"), "ListModelCustomizationJobs")
    limit = params.get("maxResults", 1000)
    jobs, more = await _service(call).page(ListFilter(
        region=call.region, status=params.get("statusEquals"), name_contains=params.get("nameContains"),
        created_after=params.get("creationTimeAfter"), created_before=params.get("creationTimeBefore"),
        descending=params.get("sortOrder", "Descending") == "Descending", offset=offset, limit=limit,
    ))
    output: dict[str, Any] = {"modelCustomizationJobSummaries": [_job_summary(job) for job in jobs]}
    if more:
        output["nextToken"] = offset_token(offset + limit)
    return output


async def stop_model_customization_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).stop(call.region, params["jobIdentifier"])
    return {}


def _model_summary(model: CustomModel, account: str) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "modelArn": model.arn, "modelName": model.name, "creationTime": model.created_at,
        "baseModelArn": model.base_model_arn, "baseModelName": model.base_model_id.split(":", 1)[0],
        "customizationType": model.customization_type, "ownerAccountId": account, "modelStatus": model.status,
    }
    return shown


async def list_custom_models(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    models = await _service(call).all_models(call.region)
    after, before = params.get("creationTimeAfter"), params.get("creationTimeBefore")
    wanted = [
        model for model in models
        if (params.get("nameContains") is None or params["nameContains"] in model.name)
        and (params.get("baseModelArnEquals") is None or model.base_model_arn == params["baseModelArnEquals"])
        and (params.get("foundationModelArnEquals") is None
             or model.base_model_arn == params["foundationModelArnEquals"])
        and (params.get("modelStatus") is None or model.status == params["modelStatus"])
        and (after is None or model.created_at > after) and (before is None or model.created_at < before)
        and params.get("isOwned", True) is not False
    ]
    if params.get("sortOrder", "Descending") == "Descending":
        wanted.reverse()
    offset = token_offset(params.get("nextToken"), "ListCustomModels")
    limit = params.get("maxResults", 1000)
    output: dict[str, Any] = {"modelSummaries": [_model_summary(m, call.account_id)
                                                 for m in wanted[offset:offset + limit]]}
    if offset + limit < len(wanted):
        output["nextToken"] = offset_token(offset + limit)
    return output


async def get_custom_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    model = await _service(call).model(call.region, params["modelIdentifier"])
    details = model.details
    shown: dict[str, Any] = {
        "modelArn": model.arn, "modelName": model.name, "creationTime": model.created_at,
        "baseModelArn": model.base_model_arn, "customizationType": model.customization_type,
        "modelStatus": model.status,
    }
    if model.job_arn is not None:
        shown["jobArn"] = model.job_arn
    if model.failure_message is not None:
        shown["failureMessage"] = model.failure_message
    for member in ("jobName", "modelKmsKeyArn", "hyperParameters", "trainingDataConfig", "validationDataConfig",
                   "outputDataConfig", "trainingMetrics", "validationMetrics"):
        if details.get(member) not in (None, {}, []):
            shown[member] = details[member]
    return shown


async def delete_custom_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).delete_model(call.region, params["modelIdentifier"])
    return {}
