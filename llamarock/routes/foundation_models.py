"""The catalog operations of the ``bedrock`` control plane: foundation models (with their lifecycle) and model
access (availability, agreements, the use case: ``services/model_access.py``).

Answers come from the catalog (``bedrock/catalog_api.py``) as seen from the region the request was signed for.
"""

from __future__ import annotations

import base64
from typing import Any

from llamarock.bedrock import catalog_api
from llamarock.bedrock.regions import RegionMap
from llamarock.routes.control import ControlCall
from llamarock.services.model_access import ModelAccessService


def _regions(call: ControlCall) -> RegionMap:
    regions: RegionMap = call.state.inference.regions
    return regions


def _hide_ended(call: ControlCall) -> bool:
    return bool(call.state.inference.enforce_end_of_life)


async def list_foundation_models(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return {"modelSummaries": catalog_api.list_foundation_models(_regions(call), call.region, params,
                                                                 _hide_ended(call))}


async def get_foundation_model(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = catalog_api.get_foundation_model(_regions(call), call.region, params["modelIdentifier"],
                                               _hide_ended(call))
    return {"modelDetails": details}


# ---------------------------------------------------------------------------------------------------- model access


def _access(call: ControlCall) -> ModelAccessService:
    service: ModelAccessService = call.state.model_access
    return service


async def get_foundation_model_availability(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return _access(call).availability(call.region, params["modelId"])


async def list_foundation_model_agreement_offers(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return _access(call).offers(params["modelId"])


async def create_foundation_model_agreement(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return {"modelId": await _access(call).agree(params["modelId"], params["offerToken"])}


async def delete_foundation_model_agreement(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _access(call).disagree(params["modelId"])
    return {}


async def get_use_case_for_model_access(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    # A blob member is base64 in JSON.
    return {"formData": base64.b64encode(await _access(call).use_case()).decode("ascii")}


async def put_use_case_for_model_access(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _access(call).put_use_case(params["formData"])
    return {}
