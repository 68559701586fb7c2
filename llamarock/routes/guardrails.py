"""Guardrails (``bedrock``): CreateGuardrail, GetGuardrail, ListGuardrails, UpdateGuardrail, DeleteGuardrail and
CreateGuardrailVersion. Tags go through the tagging operations (``routes/tags.py``) on the guardrail's ARN."""

from __future__ import annotations

from typing import Any

from llamarock.bedrock import catalog_api
from llamarock.routes.control import ControlCall
from llamarock.routes.inference_profiles import check_pattern
from llamarock.services.guardrails import GuardrailService


def _guardrails(call: ControlCall) -> GuardrailService:
    service: GuardrailService = call.state.guardrails
    return service


def _check(params: dict[str, Any]) -> None:
    """The body members whose patterns the codec leaves to the handler."""
    check_pattern("name", "GuardrailName", params["name"])
    for index, topic in enumerate((params.get("topicPolicyConfig") or {}).get("topicsConfig") or [], start=1):
        check_pattern(f"topicPolicyConfig.topicsConfig.{index}.member.name", "GuardrailTopicName", topic["name"])
    check_pattern("kmsKeyId", "KmsKeyId", params.get("kmsKeyId"))
    cross_region = params.get("crossRegionConfig")
    if cross_region is not None:
        check_pattern("crossRegionConfig.guardrailProfileIdentifier", "GuardrailCrossRegionGuardrailProfileIdentifier",
                      cross_region["guardrailProfileIdentifier"])


async def create_guardrail(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    _check(params)
    check_pattern("clientRequestToken", "IdempotencyToken", params.get("clientRequestToken"))
    guardrail = await _guardrails(call).create(call.region, params)
    return {"guardrailId": guardrail.guardrail_id, "guardrailArn": guardrail.arn, "version": guardrail.version,
            "createdAt": guardrail.created_at}


async def get_guardrail(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("guardrailIdentifier", "GuardrailIdentifier", params["guardrailIdentifier"])
    check_pattern("guardrailVersion", "GuardrailVersion", params.get("guardrailVersion"))
    service = _guardrails(call)
    return service.shown(service.get(call.region, params["guardrailIdentifier"], params.get("guardrailVersion")))


async def list_guardrails(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("guardrailIdentifier", "GuardrailIdentifier", params.get("guardrailIdentifier"))
    service = _guardrails(call)
    summaries = [service.summary(g) for g in service.listed(call.region, params.get("guardrailIdentifier"))]
    shown, token = catalog_api.page(summaries, params.get("maxResults"), params.get("nextToken"), call.operation)
    return {"guardrails": shown, **({"nextToken": token} if token else {})}


async def update_guardrail(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("guardrailIdentifier", "GuardrailIdentifier", params["guardrailIdentifier"])
    _check(params)
    guardrail = await _guardrails(call).update(call.region, params["guardrailIdentifier"], params)
    return {"guardrailId": guardrail.guardrail_id, "guardrailArn": guardrail.arn, "version": guardrail.version,
            "updatedAt": guardrail.updated_at}


async def delete_guardrail(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("guardrailIdentifier", "GuardrailIdentifier", params["guardrailIdentifier"])
    check_pattern("guardrailVersion", "GuardrailNumericalVersion", params.get("guardrailVersion"))
    await _guardrails(call).delete(call.region, params["guardrailIdentifier"], params.get("guardrailVersion"))
    return {}


async def create_guardrail_version(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("guardrailIdentifier", "GuardrailIdentifier", params["guardrailIdentifier"])
    check_pattern("clientRequestToken", "IdempotencyToken", params.get("clientRequestToken"))
    version = await _guardrails(call).create_version(call.region, params["guardrailIdentifier"],
                                                     params.get("description"), params.get("clientRequestToken"))
    return {"guardrailId": version.guardrail_id, "version": version.version}
