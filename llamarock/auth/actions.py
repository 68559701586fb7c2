"""What a request asks to do, in IAM's words: the action and the Bedrock ARNs it touches."""

from __future__ import annotations

from dataclasses import dataclass

from llamarock.bedrock.model_ids import foundation_model_arn, inference_profile_arn, parse_model_ref
from llamarock.codec.rest_json import split_model_path
from llamarock.codec.routing import match
from llamarock.errors import ValidationException

# path action -> (operation, IAM action). Converse is authorised as InvokeModel, ConverseStream as the stream.
RUNTIME_ACTIONS: dict[str, tuple[str, str]] = {
    "invoke": ("InvokeModel", "bedrock:InvokeModel"),
    "invoke-with-response-stream": ("InvokeModelWithResponseStream", "bedrock:InvokeModelWithResponseStream"),
    "converse": ("Converse", "bedrock:InvokeModel"),
    "converse-stream": ("ConverseStream", "bedrock:InvokeModelWithResponseStream"),
    "count-tokens": ("CountTokens", "bedrock:CountTokens"),
}


@dataclass(frozen=True)
class Access:
    """One request's operation, IAM action, the resources it must be allowed on (all of them) and its model."""

    operation: str
    action: str
    resources: tuple[str, ...]
    model: str


def model_resources(identifier: str, region: str, account: str, aliases: dict[str, str]) -> tuple[tuple[str, ...], str]:
    """The ARNs a model identifier stands for, and the model id quotas count it under.

    An inference profile needs the profile and the foundation model it routes to, as in IAM. A provisioned model
    needs its own ARN, and quotas count it under that ARN (which model it serves is the provisioning store's).
    """
    identifier = aliases.get(identifier, identifier)
    try:
        ref = parse_model_ref(identifier)
    except ValidationException:
        resource = identifier if identifier.startswith("arn:") else foundation_model_arn(identifier, region)
        return (resource,), identifier
    if ref.kind == "provisioned-model-arn":
        return (identifier,), identifier
    model_id = aliases.get(ref.model_id, ref.model_id)
    model_region = ref.region or region
    if ref.kind == "foundation-model-arn":
        return (foundation_model_arn(model_id, model_region),), model_id
    if ref.kind == "model-id":
        return (foundation_model_arn(model_id, region),), model_id
    profile = identifier if ref.kind == "inference-profile-arn" else inference_profile_arn(
        ref.geo or "us", model_id, region, account
    )
    return (profile, foundation_model_arn(model_id, model_region)), model_id


def describe(method: str, raw_path: bytes, region: str, account: str, aliases: dict[str, str]) -> Access | None:
    """The access a request needs; None for paths that name no operation (the router answers those).

    A ``bedrock`` control-plane operation needs ``bedrock:<Operation>`` and counts against no model's quota.
    """
    control = match("bedrock", method, raw_path)
    if control is not None:
        return Access(control[0], f"bedrock:{control[0]}", ("*",), "")
    if method != "POST":
        return None
    identifier, path_action = split_model_path(raw_path)
    entry = RUNTIME_ACTIONS.get(path_action)
    if entry is None or not identifier:
        return None
    resources, model = model_resources(identifier, region, account, aliases)
    return Access(entry[0], entry[1], resources, model)
