"""The catalog operations of the ``bedrock`` control plane: foundation models and system inference profiles.

Answers come from the catalog (``bedrock/catalog_api.py``) as seen from the region the request was signed for.
"""

from __future__ import annotations

from typing import Any

from llamarock.bedrock import catalog_api
from llamarock.bedrock.regions import RegionMap
from llamarock.routes.control import ControlCall


def _regions(call: ControlCall) -> RegionMap:
    regions: RegionMap = call.state.inference.regions
    return regions


async def list_foundation_models(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return {"modelSummaries": catalog_api.list_foundation_models(_regions(call), call.region, params)}


async def get_foundation_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = catalog_api.get_foundation_model(_regions(call), call.region, params["modelIdentifier"])
    return {"modelDetails": details}


async def list_inference_profiles(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    profiles = []
    if params.get("typeEquals", "SYSTEM_DEFINED") == "SYSTEM_DEFINED":
        profiles = catalog_api.inference_profiles(_regions(call), call.region, call.account_id)
    shown, token = catalog_api.page(profiles, params.get("maxResults"), params.get("nextToken"), call.operation)
    return {"inferenceProfileSummaries": shown, **({"nextToken": token} if token else {})}


async def get_inference_profile(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return catalog_api.get_inference_profile(
        _regions(call), call.region, call.account_id, params["inferenceProfileIdentifier"]
    )
