"""Model identifiers as clients send them: base ids, foundation-model ARNs, inference profiles and their ARNs,
application inference profile ARNs and provisioned-model ARNs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from llamarock.errors import ValidationException

GEO_PREFIXES = ("us", "eu", "apac")

INVALID_MODEL_IDENTIFIER = "The provided model identifier is invalid."

# llamarock answers in the aws partition only (the ARNs it returns say arn:aws).
_ARN = re.compile(
    r"^arn:aws:bedrock:(?P<region>[a-z0-9-]*):(?P<account>\d{12})?:"
    r"(?P<type>foundation-model|inference-profile|application-inference-profile|provisioned-model|imported-model"
    r"|custom-model|custom-model-deployment)/(?P<rest>.+)$"
)
_PROVISIONED_ID = re.compile(r"^[a-z0-9]{12}$")
# Application inference profiles and provisioned models have 12-character lowercase alphanumeric ids, as on AWS.
RESOURCE_ID = _PROVISIONED_ID


@dataclass(frozen=True)
class ModelRef:
    """A parsed model identifier.

    ``model_id`` is the base model id the request names (not yet checked against the catalog), ``kind`` the form
    it came in, ``geo`` the cross-region inference profile's geography (``us``, ``eu``, ``apac``) and ``region``
    the region an ARN carried. A provisioned-model ARN names no model by itself: its ``model_id`` is empty and
    ``provisioned_id`` holds the 12-character id that the provisioning store knows the model by. An application
    inference profile's ARN likewise: ``profile_id`` is the id the profile store knows it by.
    """

    requested: str
    model_id: str
    kind: Literal[
        "model-id", "foundation-model-arn", "inference-profile", "inference-profile-arn", "provisioned-model-arn",
        "application-inference-profile-arn", "imported-model-arn", "custom-model-arn", "custom-model-deployment-arn",
    ]
    geo: str | None = None
    region: str | None = None
    provisioned_id: str | None = None
    account: str | None = None
    profile_id: str | None = None
    # An imported model's ARN (Custom Model Import): the 12-character id the model-import store knows it by.
    imported_id: str | None = None


def _split_profile(identifier: str) -> tuple[str | None, str]:
    head, _, tail = identifier.partition(".")
    if tail and head in GEO_PREFIXES:
        return head, tail
    return None, identifier


def parse_model_ref(identifier: str) -> ModelRef:
    """Parse any identifier form of §1.2 of the wire reference.

    Raises ValidationException("The provided model identifier is invalid.") for a form that is not a model id,
    a foundation-model ARN, an inference-profile id or ARN, an application inference profile's ARN or a
    provisioned-model ARN.
    """
    if not identifier or len(identifier) > 2048:
        raise ValidationException(INVALID_MODEL_IDENTIFIER)
    if identifier.startswith("arn:"):
        match = _ARN.match(identifier)
        if match is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        region = match["region"] or None
        if match["type"] == "foundation-model":
            if match["account"]:
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return ModelRef(identifier, match["rest"], "foundation-model-arn", region=region)
        if match["type"] == "provisioned-model":
            if not match["account"] or not region or not _PROVISIONED_ID.match(match["rest"]):
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return ModelRef(identifier, "", "provisioned-model-arn", region=region, provisioned_id=match["rest"],
                            account=match["account"])
        if match["type"] == "application-inference-profile":
            if not match["account"] or not region or not _PROVISIONED_ID.match(match["rest"]):
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return ModelRef(identifier, "", "application-inference-profile-arn", region=region,
                            account=match["account"], profile_id=match["rest"])
        if match["type"] == "imported-model":
            if not match["account"] or not region or not _PROVISIONED_ID.match(match["rest"]):
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return ModelRef(identifier, "", "imported-model-arn", region=region, account=match["account"],
                            imported_id=match["rest"])
        if match["type"] in ("custom-model", "custom-model-deployment"):
            # A custom model's ARN names its base model (custom-model/<base model id>/<id>); the custom-model store
            # knows it by the whole ARN, as it knows a custom model deployment.
            base, _, resource_id = match["rest"].rpartition("/")
            if not match["account"] or not region or not _PROVISIONED_ID.match(resource_id) or (
                    (match["type"] == "custom-model") != bool(base)):
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return ModelRef(identifier, "", f"{match['type']}-arn", region=region,  # type: ignore[arg-type]
                            account=match["account"])
        geo, model_id = _split_profile(match["rest"])
        # An inference profile's ARN names its region and account (the caller's), as AWS writes it.
        if geo is None or not region or not match["account"]:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        return ModelRef(identifier, model_id, "inference-profile-arn", geo=geo, region=region,
                        account=match["account"])
    geo, model_id = _split_profile(identifier)
    if geo is not None:
        return ModelRef(identifier, model_id, "inference-profile", geo=geo)
    return ModelRef(identifier, identifier, "model-id")


# Identifiers that name one of the account's own resources rather than a catalog model: a request is authorised on
# the identifier's own ARN, quotas count under it, and the resource's service says which model it runs.
RESOURCE_KINDS = ("provisioned-model-arn", "application-inference-profile-arn", "imported-model-arn",
                  "custom-model-arn", "custom-model-deployment-arn")


def runtime_label(identifier: str, ref: ModelRef | None) -> str:
    """``identifier`` as the runtime input shapes' ``modelId`` pattern is to see it. That pattern has no room for the
    ':' of a custom model ARN's base model id (Bedrock runs custom models through Provisioned Throughput, or in batch
    jobs, whose own pattern admits the ARN): where llamarock runs one by its ARN, the custom model lookup checks the
    ARN, and the pattern sees its base model id's ':' as '-'."""
    if ref is None or ref.kind != "custom-model-arn":
        return identifier
    head, _, rest = identifier.partition(":custom-model/")
    return f"{head}:custom-model/{rest.replace(':', '-')}"


def foundation_model_arn(model_id: str, region: str) -> str:
    return f"arn:aws:bedrock:{region}::foundation-model/{model_id}"


def inference_profile_arn(geo: str, model_id: str, region: str, account: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:inference-profile/{geo}.{model_id}"


def provisioned_model_arn(region: str, account: str, provisioned_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:provisioned-model/{provisioned_id}"


def custom_model_arn(region: str, account: str, base_model_id: str, model_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:custom-model/{base_model_id}/{model_id}"


def custom_model_deployment_arn(region: str, account: str, deployment_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:custom-model-deployment/{deployment_id}"


def application_profile_arn(region: str, account: str, profile_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:application-inference-profile/{profile_id}"
