"""Custom models served as LoRA adapters (``bedrock``): CreateCustomModel and the custom model deployments
(Create/Get/List/Update/DeleteCustomModelDeployment). Get/List/DeleteCustomModel belong to the customization jobs'
routes; both sides share the custom-model store."""

from __future__ import annotations

from typing import Any

from llamarock.bedrock.catalog_api import offset_token, token_offset
from llamarock.routes.control import ControlCall
from llamarock.services.custom_models import CustomModelService, deployment_shape


def _service(call: ControlCall) -> CustomModelService:
    service: CustomModelService = call.state.custom_models
    return service


async def create_custom_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    source = (params.get("modelSourceConfig") or {}).get("s3DataSource") or {}
    model = await _service(call).create(
        region=call.region, account=call.account_id, name=params["modelName"], s3_uri=source.get("s3Uri"),
        tags=[(tag["key"], tag["value"]) for tag in params.get("modelTags") or []],
        client_token=params.get("clientRequestToken"),
    )
    return {"modelArn": model.arn}


async def create_custom_model_deployment(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    deployment = await _service(call).create_deployment(
        region=call.region, account=call.account_id, name=params["modelDeploymentName"],
        model_arn=params["modelArn"], description=params.get("description"),
        tags=[(tag["key"], tag["value"]) for tag in params.get("tags") or []],
        client_token=params.get("clientRequestToken"),
    )
    return {"customModelDeploymentArn": deployment.arn}


async def get_custom_model_deployment(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    deployment = await _service(call).get_deployment(call.region, params["customModelDeploymentIdentifier"])
    return deployment_shape(deployment)


async def list_custom_model_deployments(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    deployments = await _service(call).list_deployments(call.region)
    if params.get("nameContains"):
        deployments = [d for d in deployments if params["nameContains"] in d.name]
    if params.get("statusEquals"):
        deployments = [d for d in deployments if d.status == params["statusEquals"]]
    if params.get("modelArnEquals"):
        deployments = [d for d in deployments if d.model_arn == params["modelArnEquals"]]
    if params.get("createdAfter"):
        deployments = [d for d in deployments if d.created_at > params["createdAfter"]]
    if params.get("createdBefore"):
        deployments = [d for d in deployments if d.created_at < params["createdBefore"]]
    if params.get("sortOrder", "Descending") == "Descending":
        deployments.reverse()
    offset = token_offset(params.get("nextToken"), "ListCustomModelDeployments")
    limit = params.get("maxResults", 1000)
    page = deployments[offset: offset + limit]
    output: dict[str, Any] = {"modelDeploymentSummaries": [{
        "customModelDeploymentArn": d.arn, "customModelDeploymentName": d.name, "modelArn": d.model_arn,
        "createdAt": d.created_at, "status": d.status, "lastUpdatedAt": d.updated_at,
        **({"failureMessage": d.failure_message} if d.failure_message else {}),
    } for d in page]}
    if offset + limit < len(deployments):
        output["nextToken"] = offset_token(offset + limit)
    return output


async def update_custom_model_deployment(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    deployment = await _service(call).update_deployment(call.region, params["customModelDeploymentIdentifier"],
                                                        params["modelArn"])
    return {"customModelDeploymentArn": deployment.arn}


async def delete_custom_model_deployment(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _service(call).delete_deployment(call.region, params["customModelDeploymentIdentifier"])
    return {}
