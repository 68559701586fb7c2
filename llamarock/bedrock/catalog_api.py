"""The catalog as the ``bedrock`` control plane shows it: ListFoundationModels, GetFoundationModel,
ListInferenceProfiles and GetInferenceProfile output shapes (botocore's ``FoundationModelSummary``,
``FoundationModelDetails`` and ``InferenceProfileSummary``), per region, as Bedrock lists them per endpoint.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import foundation_model_arn, inference_profile_arn
from llamarock.bedrock.regions import GEOGRAPHY_LABELS, Availability, RegionMap
from llamarock.errors import ResourceNotFoundException, ValidationException

_FM_ARN_PREFIX = ":foundation-model/"
_PROFILE_ARN_PREFIX = ":inference-profile/"


def model_summary(where: Availability, region: str) -> dict[str, Any]:
    """A ``FoundationModelSummary`` (also the ``FoundationModelDetails`` of GetFoundationModel) in ``region``."""
    model = where.model
    return {
        "modelArn": foundation_model_arn(model.model_id, region),
        "modelId": model.model_id,
        "modelName": model.name,
        "providerName": model.provider,
        "inputModalities": list(model.input_modalities),
        "outputModalities": list(model.output_modalities),
        "responseStreamingSupported": not model.is_embedding,
        "customizationsSupported": ["FINE_TUNING"] if model.fine_tuning else [],
        "inferenceTypesSupported": where.inference_types(region),
        "modelLifecycle": lifecycle(model.dates),
    }


def lifecycle(dates: catalog.Lifecycle, now: datetime | None = None) -> dict[str, Any]:
    """botocore's ``FoundationModelLifecycle``: the status now and the dates known (timestamps)."""
    shown: dict[str, Any] = {"status": dates.status(now)}
    for member, moment in (("startOfLifeTime", dates.start), ("endOfLifeTime", dates.end_of_life),
                           ("legacyTime", dates.legacy), ("publicExtendedAccessTime", dates.public_extended_access)):
        if moment is not None:
            shown[member] = moment
    return shown


def list_foundation_models(regions: RegionMap, region: str, filters: dict[str, Any],
                           hide_ended: bool = False) -> list[dict[str, Any]]:
    """The models ``region`` offers, narrowed by ListFoundationModels' ``by*`` filters (all of them must match).

    ``hide_ended`` leaves out the models past their end of life, as Bedrock does (``enforce_end_of_life``).
    """
    provider = filters.get("byProvider")
    modality = filters.get("byOutputModality")
    inference_type = filters.get("byInferenceType")
    customization = filters.get("byCustomizationType")
    found = []
    for model in catalog.MODELS:
        where = regions.of(model)
        if not where.listed_in(region) or (hide_ended and model.dates.ended()):
            continue
        summary = model_summary(where, region)
        if provider is not None and provider.lower() != model.provider.lower():
            continue
        if modality is not None and modality not in summary["outputModalities"]:
            continue
        if inference_type is not None and inference_type not in summary["inferenceTypesSupported"]:
            continue
        if customization is not None and customization not in summary["customizationsSupported"]:
            continue
        found.append(summary)
    return found


def get_foundation_model(regions: RegionMap, region: str, identifier: str,
                         hide_ended: bool = False) -> dict[str, Any]:
    """GetFoundationModel's ``modelDetails`` for a model id or foundation-model ARN of ``region``."""
    model_id = identifier
    if identifier.startswith("arn:"):
        head, _, model_id = identifier.partition(_FM_ARN_PREFIX)
        arn_region = head.split(":")[3] if head.count(":") >= 3 else ""
        if arn_region and arn_region != region:
            raise ValidationException(
                f"Could not find model with identifier {identifier}: the ARN names {arn_region}, but the request was "
                f"signed for {region}. Sign for {arn_region}, or use the model id."
            )
    model = catalog.get(model_id)
    where = regions.of(model) if model is not None else None
    if where is None or not where.listed_in(region) or (hide_ended and where.model.dates.ended()):
        raise ValidationException(
            f"Could not find model with identifier {identifier} in {region}. ListFoundationModels lists the models "
            f"{region} offers."
        )
    return model_summary(where, region)


def inference_profiles(regions: RegionMap, region: str, account: str) -> list[dict[str, Any]]:
    """The system-defined inference profiles a request signed for ``region`` may use (its geography's)."""
    found = []
    for model in catalog.MODELS:
        where = regions.of(model)
        geo = where.profile_from(region)
        if geo is None:
            continue
        destinations = where.profile_regions(geo)
        label = GEOGRAPHY_LABELS[geo]
        found.append({
            "inferenceProfileName": f"{label} Meta {model.name}",
            "description": f"Routes requests to Meta {model.name} in {', '.join(destinations)}.",
            "inferenceProfileArn": inference_profile_arn(geo, model.model_id, region, account),
            "models": [{"modelArn": foundation_model_arn(model.model_id, r)} for r in destinations],
            "inferenceProfileId": f"{geo}.{model.model_id}",
            "status": "ACTIVE",
            "type": "SYSTEM_DEFINED",
        })
    return found


def get_inference_profile(regions: RegionMap, region: str, account: str, identifier: str) -> dict[str, Any]:
    """GetInferenceProfile for a system-defined profile id or ARN usable from ``region``."""
    profile_id = identifier
    if identifier.startswith("arn:"):
        head, _, profile_id = identifier.partition(_PROFILE_ARN_PREFIX)
        fields = head.split(":")
        if not profile_id or len(fields) < 5 or (fields[3] and fields[3] != region):
            raise ResourceNotFoundException(
                f"The inference profile {identifier} doesn't exist in {region}. Use a system-defined profile's id or "
                f"its ARN in {region}; ListInferenceProfiles lists them."
            )
    for profile in inference_profiles(regions, region, account):
        if profile["inferenceProfileId"] == profile_id:
            return profile
    raise ResourceNotFoundException(
        f"The inference profile {identifier} doesn't exist in {region}. ListInferenceProfiles lists the profiles "
        f"{region} can use."
    )


def page(items: list[dict[str, Any]], max_results: int | None, next_token: str | None, operation: str,
         default_size: int = 1000) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a list result and the ``nextToken`` for the rest (None on the last page)."""
    start = 0
    if next_token is not None:
        try:
            kind, _, offset = base64.urlsafe_b64decode(next_token.encode()).decode().partition(":")
            start = int(offset)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            kind = ""
        if kind != operation or not 0 <= start <= len(items):
            raise ValidationException(
                f"The nextToken is invalid. Pass the nextToken of the previous {operation} response unchanged."
            )
    end = start + (max_results or default_size)
    token = base64.urlsafe_b64encode(f"{operation}:{end}".encode()).decode() if end < len(items) else None
    return items[start:end], token


def offset_token(offset: int) -> str:
    """The ``nextToken`` of a list paged in the store by offset (ListProvisionedModelThroughputs,
    ListModelInvocationJobs): :func:`token_offset` reads it back."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def token_offset(token: str | None, operation: str) -> int:
    """The offset an :func:`offset_token` stands for (0 without a token); ValidationException for any other token."""
    if token is None:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValidationException(
            f"The nextToken is invalid. Pass the nextToken of the previous {operation} response unchanged, or leave "
            "it out to start from the first page."
        )
    return offset
