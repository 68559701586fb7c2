"""Provisioned Throughput's control-plane operations (``bedrock``): Create/Get/List/Update/Delete
ProvisionedModelThroughput."""

from __future__ import annotations

import re
from typing import Any

from llamarock.bedrock.catalog_api import offset_token, token_offset
from llamarock.codec.service_model import service_model
from llamarock.errors import ValidationException
from llamarock.routes.control import ControlCall
from llamarock.services.provisioning import ListFilter, ProvisionedModel, ProvisioningService


def _service(call: ControlCall) -> ProvisioningService:
    service: ProvisioningService = call.state.provisioning
    return service


def _summary(model: ProvisionedModel) -> dict[str, Any]:
    """The members GetProvisionedModelThroughput and the list's summaries share."""
    shown: dict[str, Any] = {
        "provisionedModelName": model.name,
        "provisionedModelArn": model.arn,
        "modelArn": model.model_arn,
        "desiredModelArn": model.desired_model_arn,
        "foundationModelArn": model.foundation_model_arn,
        "modelUnits": model.units,
        "desiredModelUnits": model.units,
        "status": model.status,
        "creationTime": model.created_at,
        "lastModifiedTime": model.updated_at,
    }
    if model.commitment is not None:
        shown["commitmentDuration"] = model.commitment
        shown["commitmentExpirationTime"] = model.commitment_expires_at
    return shown


def _check_name(member: str, name: str | None) -> None:
    """A provisioned model's name as the service model constrains it (its pattern; the codec checks lengths)."""
    if name is None:
        return
    shape = service_model("bedrock").shape_for("ProvisionedModelName")
    pattern = shape.metadata["pattern"]
    if re.fullmatch(pattern, name) is None:
        shown = name.encode("unicode_escape").decode("ascii")
        raise ValidationException(
            f"1 validation error detected: Value '{shown}' at '{member}' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: {pattern}"
        )


async def create_provisioned_model_throughput(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    _check_name("provisionedModelName", params["provisionedModelName"])
    model = await _service(call).create(
        region=call.region,
        account=call.account_id,
        name=params["provisionedModelName"],
        model_identifier=params["modelId"],
        units=params["modelUnits"],
        commitment=params.get("commitmentDuration"),
        tags=[(tag["key"], tag["value"]) for tag in params.get("tags") or []],
        client_token=params.get("clientRequestToken"),
    )
    return {"provisionedModelArn": model.arn}


async def get_provisioned_model_throughput(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    model = await _service(call).get(call.region, params["provisionedModelId"])
    shown = _summary(model)
    if model.failure_message:
        shown["failureMessage"] = model.failure_message
    return shown


async def list_provisioned_model_throughputs(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    offset = token_offset(params.get("nextToken"), "ListProvisionedModelThroughputs")
    limit = params.get("maxResults", 1000)
    models, more = await _service(call).page(ListFilter(
        region=call.region,
        status=params.get("statusEquals"),
        model_arn=params.get("modelArnEquals"),
        name_contains=params.get("nameContains"),
        created_after=params.get("creationTimeAfter"),
        created_before=params.get("creationTimeBefore"),
        descending=params.get("sortOrder", "Descending") == "Descending",
        offset=offset,
        limit=limit,
    ))
    output: dict[str, Any] = {"provisionedModelSummaries": [_summary(m) for m in models]}
    if more:
        output["nextToken"] = offset_token(offset + limit)
    return output


async def update_provisioned_model_throughput(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    _check_name("desiredProvisionedModelName", params.get("desiredProvisionedModelName"))
    await _service(call).update(
        call.region, params["provisionedModelId"], params.get("desiredProvisionedModelName"),
        params.get("desiredModelId"),
    )
    return {}


async def delete_provisioned_model_throughput(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).delete(call.region, params["provisionedModelId"])
    return {}
