"""Inference profiles (``bedrock``): the system-defined cross-region profiles of the catalog, and application
inference profiles (CreateInferenceProfile, GetInferenceProfile, ListInferenceProfiles, DeleteInferenceProfile)."""

from __future__ import annotations

import re
from typing import Any

from llamarock.bedrock import catalog_api
from llamarock.bedrock.regions import RegionMap
from llamarock.codec.service_model import service_model
from llamarock.errors import ValidationException
from llamarock.routes.control import ControlCall
from llamarock.services.profiles import ApplicationProfile, ProfileService


def _regions(call: ControlCall) -> RegionMap:
    regions: RegionMap = call.state.inference.regions
    return regions


def _profiles(call: ControlCall) -> ProfileService:
    service: ProfileService = call.state.profiles
    return service


def check_pattern(member: str, shape: str, value: str | None) -> None:
    """A body member as the service model's pattern constrains it (the codec checks lengths and enums)."""
    if value is None:
        return
    pattern = service_model("bedrock").shape_for(shape).metadata["pattern"]
    if re.fullmatch(pattern, value) is None:
        shown = value.encode("unicode_escape").decode("ascii")
        raise ValidationException(
            f"1 validation error detected: Value '{shown}' at '{member}' failed to satisfy constraint: Member must "
            f"satisfy regular expression pattern: {pattern}"
        )


def _shown(profile: ApplicationProfile) -> dict[str, Any]:
    """An application profile as GetInferenceProfile and the list's summaries show it."""
    shown: dict[str, Any] = {
        "inferenceProfileName": profile.name,
        "inferenceProfileArn": profile.arn,
        "models": [{"modelArn": arn} for arn in profile.models],
        "inferenceProfileId": profile.profile_id,
        "status": "ACTIVE",
        "type": "APPLICATION",
        "createdAt": profile.created_at,
        "updatedAt": profile.updated_at,
    }
    if profile.description is not None:
        shown["description"] = profile.description
    return shown


async def create_inference_profile(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    check_pattern("inferenceProfileName", "InferenceProfileName", params["inferenceProfileName"])
    check_pattern("description", "InferenceProfileDescription", params.get("description"))
    copy_from = params["modelSource"].get("copyFrom")
    if copy_from is None:
        raise ValidationException(
            "modelSource must have copyFrom: the ARN of the foundation model or system-defined inference profile "
            "the profile routes to."
        )
    check_pattern("modelSource.copyFrom", "InferenceProfileModelSourceArn", copy_from)
    profile = await _profiles(call).create(
        region=call.region,
        name=params["inferenceProfileName"],
        copy_from=copy_from,
        description=params.get("description"),
        tags=[(tag["key"], tag["value"]) for tag in params.get("tags") or []],
        client_token=params.get("clientRequestToken"),
    )
    return {"inferenceProfileArn": profile.arn, "status": "ACTIVE"}


async def list_inference_profiles(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    kind = params.get("typeEquals", "SYSTEM_DEFINED")
    profiles: list[dict[str, Any]] = []
    if kind == "SYSTEM_DEFINED":
        profiles = catalog_api.inference_profiles(_regions(call), call.region, call.account_id)
    else:
        profiles = [_shown(p) for p in _profiles(call).listed(call.region)]
    shown, token = catalog_api.page(profiles, params.get("maxResults"), params.get("nextToken"), call.operation)
    return {"inferenceProfileSummaries": shown, **({"nextToken": token} if token else {})}


async def get_inference_profile(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    identifier = params["inferenceProfileIdentifier"]
    service = _profiles(call)
    if service.is_application(identifier):
        return _shown(service.get(call.region, identifier))
    return catalog_api.get_inference_profile(_regions(call), call.region, call.account_id, identifier)


async def delete_inference_profile(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    identifier = params["inferenceProfileIdentifier"]
    service = _profiles(call)
    if not service.is_application(identifier):
        # A system-defined profile exists or not; either way it is not the caller's to delete.
        catalog_api.get_inference_profile(_regions(call), call.region, call.account_id, identifier)
        raise ValidationException(
            f"The inference profile {identifier} is system-defined and can't be deleted. Only application inference "
            "profiles (CreateInferenceProfile) can be deleted."
        )
    await service.delete(call.region, identifier)
    return {}
