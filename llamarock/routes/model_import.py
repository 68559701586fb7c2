"""Custom Model Import's control-plane operations (``bedrock``): Create/Get/ListModelImportJobs and Get/List/
DeleteImportedModel (the use case is ``services/model_import.py``; docs/model-import.md)."""

from __future__ import annotations

from typing import Any

from llamarock.bedrock.catalog_api import offset_token, token_offset
from llamarock.bedrock.imported_models import CMU_VERSION
from llamarock.routes.control import ControlCall
from llamarock.services.model_import import ImportedModel, ImportedModelService, ImportJob, ListFilter


def _service(call: ControlCall) -> ImportedModelService:
    service: ImportedModelService = call.state.model_import
    return service


def _source(uri: str) -> dict[str, Any]:
    return {"s3DataSource": {"s3Uri": uri}}


def _model_arn(call: ControlCall, job: ImportJob) -> str | None:
    """The imported model's ARN, once the job made it."""
    if job.status != "Completed":
        return None
    return f"arn:aws:bedrock:{job.region}:{call.account_id}:imported-model/{job.model_id}"


def _job_summary(call: ControlCall, job: ImportJob) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "jobArn": job.arn, "jobName": job.name, "status": job.status, "creationTime": job.created,
        "lastModifiedTime": job.last_modified, "importedModelName": job.model_name,
    }
    optional = {"endTime": job.end_time, "importedModelArn": _model_arn(call, job)}
    shown.update({key: value for key, value in optional.items() if value is not None})
    return shown


async def create_model_import_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _service(call).create(region=call.region, account=call.account_id, params=params)
    return {"jobArn": job.arn}


async def get_model_import_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _service(call).get_job(call.region, params["jobIdentifier"])
    shown = _job_summary(call, job)
    shown.update({"roleArn": job.role_arn, "modelDataSource": _source(job.s3_uri)})
    optional = {"failureMessage": job.failure_message, "vpcConfig": job.details.get("vpcConfig")}
    shown.update({key: value for key, value in optional.items() if value is not None})
    return shown


def _filter(call: ControlCall, params: dict[str, Any], operation: str) -> ListFilter:
    return ListFilter(
        region=call.region, status=params.get("statusEquals"), name_contains=params.get("nameContains"),
        created_after=params.get("creationTimeAfter"), created_before=params.get("creationTimeBefore"),
        descending=params.get("sortOrder", "Descending") == "Descending",
        offset=token_offset(params.get("nextToken"), operation), limit=params.get("maxResults", 1000),
    )


async def list_model_import_jobs(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    query = _filter(call, params, "ListModelImportJobs")
    jobs, more = await _service(call).jobs_page(query)
    output: dict[str, Any] = {"modelImportJobSummaries": [_job_summary(call, job) for job in jobs]}
    if more:
        output["nextToken"] = offset_token(query.offset + query.limit)
    return output


def _model_summary(model: ImportedModel) -> dict[str, Any]:
    return {"modelArn": model.arn, "modelName": model.name, "creationTime": model.created,
            "instructSupported": model.instruct, "modelArchitecture": model.architecture}


async def get_imported_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    model = await _service(call).get_model(call.region, params["modelIdentifier"])
    return {
        **_model_summary(model), "jobName": model.job_name, "jobArn": model.job_arn,
        "modelDataSource": _source(model.s3_uri),
        "customModelUnits": {"customModelUnitsPerModelCopy": model.custom_model_units,
                             "customModelUnitsVersion": CMU_VERSION},
    }


async def list_imported_models(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    query = _filter(call, params, "ListImportedModels")
    models, more = await _service(call).models_page(query)
    output: dict[str, Any] = {"modelSummaries": [_model_summary(model) for model in models]}
    if more:
        output["nextToken"] = offset_token(query.offset + query.limit)
    return output


async def delete_imported_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).delete_model(call.region, params["modelIdentifier"])
    return {}
