"""What a request asks to do, in IAM's words: the Bedrock ARNs its operation's action touches.

The action itself is the operation table's (``routes/operations.py``); the model identifier was parsed once by the
edge (:class:`~llamarock.context.ModelName`).
"""

from __future__ import annotations

import json

from llamarock.bedrock.model_ids import (
    RESOURCE_ID,
    RESOURCE_KINDS,
    application_profile_arn,
    foundation_model_arn,
    inference_profile_arn,
    provisioned_model_arn,
)
from llamarock.context import ModelName


def model_resources(model: ModelName, region: str, account: str) -> tuple[tuple[str, ...], str]:
    """The ARNs a model identifier stands for, and the model id quotas count it under.

    An inference profile needs the profile and the foundation model it routes to, as in IAM. A provisioned model
    or an application inference profile needs its own ARN, and quotas count it under that ARN (which model it
    serves is the provisioning or profile store's).
    """
    ref = model.ref
    if ref is None:
        identifier = model.identifier
        resource = identifier if identifier.startswith("arn:") else foundation_model_arn(identifier, region)
        return (resource,), identifier
    if ref.kind in RESOURCE_KINDS:
        return (ref.requested,), model.model_id
    model_id = model.model_id
    model_region = ref.region or region
    if ref.kind == "foundation-model-arn":
        return (foundation_model_arn(model_id, model_region),), model_id
    if ref.kind == "model-id":
        return (foundation_model_arn(model_id, region),), model_id
    profile = ref.requested if ref.kind == "inference-profile-arn" else inference_profile_arn(
        ref.geo or "us", model_id, region, account
    )
    return (profile, foundation_model_arn(model_id, model_region)), model_id


# The quota bucket of identifiers that name no model (made-up ids must not grow the quota table).
UNKNOWN_MODEL = "(unknown model)"


def label_resources(kind: str, labels: dict[str, str], region: str, account: str, body: bytes = b"") -> tuple[str, ...]:
    """The ARN a control-plane operation's action is on, from its URI label (``*`` for account-wide operations).

    A provisioned model named by its name or id becomes its ARN's form, so that a policy on
    ``arn:aws:bedrock:*:*:provisioned-model/*`` governs Create, Get, Update and Delete alike (Create, whose model
    has no id yet, is on ``provisioned-model/*``). The tagging operations are on the ``resourceARN`` of their body.
    Model invocation jobs' operations are on the job's ARN (``model-invocation-job/*`` for Create).
    Knowledge-base operations are on the knowledge base's ARN (CreateKnowledgeBase and ListKnowledgeBases, which name
    none, are on ``*``, as in IAM).
    """
    if kind == "tagged-resource":
        return (_body_arn(body),)
    if kind == "knowledge-base":
        # bedrock-agent's tagging operations name the resource by ARN in the path; every other knowledge-base
        # operation by its knowledgeBaseId label (a data source or ingestion job is authorised on its knowledge base).
        if labels.get("resourceArn"):
            return (labels["resourceArn"],)
        return (f"arn:aws:bedrock:{region}:{account}:knowledge-base/{labels.get('knowledgeBaseId') or '*'}",)
    if kind in ("s3-bucket", "s3-object"):  # S3's ARNs have no region or account
        bucket = labels.get("Bucket", "")
        return (f"arn:aws:s3:::{bucket}/{labels.get('Key', '')}" if kind == "s3-object" else f"arn:aws:s3:::{bucket}",)
    label = next(iter(labels.values()), "")
    if kind == "model-invocation-job":
        # Batch inference: Get and Stop are on the job's ARN (an id becomes its ARN's form), Create, whose job has
        # no id yet, on model-invocation-job/*, as in IAM.
        if label.startswith("arn:"):
            return (label,)
        return (f"arn:aws:bedrock:{region}:{account}:model-invocation-job/{label or '*'}",)
    if kind in ("model-import-job", "imported-model"):  # Custom Model Import: on the ARN (Create on the kind's *)
        return (label,) if label.startswith("arn:") else (f"arn:aws:bedrock:{region}:{account}:{kind}/{label or '*'}",)
    if kind == "*" or (not label and kind != "provisioned-model"):
        return ("*",)
    if label.startswith("arn:"):
        return (label,)
    if kind == "provisioned-model":
        return (provisioned_model_arn(region, account, label or "*"),)
    if kind == "foundation-model":
        return (foundation_model_arn(label, region),)
    if kind == "inference-profile":
        if RESOURCE_ID.match(label):  # an application inference profile's id
            return (application_profile_arn(region, account, label),)
        return (f"arn:aws:bedrock:{region}:{account}:inference-profile/{label}",)
    if kind == "guardrail":  # a guardrail's id (its ARN is handled above)
        return (f"arn:aws:bedrock:{region}:{account}:guardrail/{label}",)
    return ("*",)


def _body_arn(body: bytes) -> str:
    """The ``resourceARN`` of a tagging operation's JSON body (``*`` when it has none: the handler refuses it)."""
    try:
        document = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # the handler's codec answers malformed or absurdly nested JSON
        return "*"
    arn = document.get("resourceARN") if isinstance(document, dict) else None
    return arn if isinstance(arn, str) and arn else "*"
