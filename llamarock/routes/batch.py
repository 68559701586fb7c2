"""Batch inference's control-plane operations (``bedrock``): Create/Get/List/StopModelInvocationJob
(the use case is ``services/batch.py``; docs/batch.md)."""

from __future__ import annotations

from typing import Any

from llamarock.bedrock.catalog_api import offset_token, token_offset
from llamarock.routes.control import ControlCall
from llamarock.services.batch import BatchJob, BatchService, JobFilter


def _service(call: ControlCall) -> BatchService:
    service: BatchService = call.state.batch
    return service


def _summary(service: BatchService, job: BatchJob) -> dict[str, Any]:
    """The members GetModelInvocationJob and the list's summaries share (ModelInvocationJobSummary)."""
    shown: dict[str, Any] = {
        "jobArn": job.arn,
        "jobName": job.name,
        "modelId": job.model_id,
        "roleArn": job.role_arn,
        "status": job.status,
        "submitTime": job.submit_time,
        "lastModifiedTime": job.last_modified,
        "inputDataConfig": job.input_config,
        "outputDataConfig": job.output_config,
        "modelInvocationType": job.invocation_type,
        "processedRecordCount": job.processed,
        "successRecordCount": job.succeeded,
        "errorRecordCount": job.errors,
    }
    optional = {
        "clientRequestToken": job.client_token,
        "message": service.message(job),
        "endTime": job.end_time,
        "vpcConfig": job.vpc_config,
        "timeoutDurationInHours": job.timeout_hours,
        "jobExpirationTime": job.expiration_time,
        "totalRecordCount": job.total,
    }
    shown.update({key: value for key, value in optional.items() if value is not None})
    return shown


async def create_model_invocation_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _service(call).create(region=call.region, account=call.account_id, caller_arn=call.principal_arn,
                                      params=params)
    return {"jobArn": job.arn}


async def get_model_invocation_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    service = _service(call)
    return _summary(service, await service.get(call.region, params["jobIdentifier"]))


async def list_model_invocation_jobs(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    service = _service(call)
    offset = token_offset(params.get("nextToken"), "ListModelInvocationJobs")
    limit = params.get("maxResults", 1000)
    jobs, more = await service.page(JobFilter(
        region=call.region,
        status=params.get("statusEquals"),
        name_contains=params.get("nameContains"),
        submitted_after=params.get("submitTimeAfter"),
        submitted_before=params.get("submitTimeBefore"),
        descending=params.get("sortOrder", "Descending") == "Descending",
        offset=offset,
        limit=limit,
    ))
    output: dict[str, Any] = {"invocationJobSummaries": [_summary(service, job) for job in jobs]}
    if more:
        output["nextToken"] = offset_token(offset + limit)
    return output


async def stop_model_invocation_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).stop(call.region, params["jobIdentifier"])
    return {}
