"""Bedrock's service tiers (``serviceTier``): the names, and which of them Bedrock itself offers for which model.

The runtime accepts ``serviceTier`` on Converse and ConverseStream (``{"type": ...}``, botocore's ``ServiceTier``
shape) and as the ``X-Amzn-Bedrock-Service-Tier`` header on InvokeModel and its stream (``ServiceTierType``):
``priority``, ``default``, ``flex`` or ``reserved``. No tier means ``default`` (Bedrock's Standard tier).

What Bedrock offers (AWS user guide, "Service tiers for optimizing performance and cost"): Standard (``default``)
for every model; Priority and Flex only for the models in that page's table, which lists OpenAI gpt-oss, Qwen3,
DeepSeek-V3.1 and Amazon Nova Pro/Premier and **no Meta Llama model**; Reserved by arrangement with an AWS account
team. So for every Llama model of the catalog, Bedrock accepts only ``default``; llamarock serves all four (see
docs/observability.md, "Service tiers"). :func:`bedrock_tiers` is the data a strict Bedrock-compatibility mode
refuses the others with.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Final, Literal

ServiceTier = Literal["priority", "default", "flex", "reserved"]
SERVICE_TIERS: Final[tuple[ServiceTier, ...]] = ("priority", "default", "flex", "reserved")
DEFAULT_TIER: Final[ServiceTier] = "default"

# Model ids (base ids, without a geography prefix) for which Bedrock offers Priority and Flex, from the AWS user
# guide's table. None of them is a Meta model.
_PRIORITY_AND_FLEX: Final = frozenset({
    "openai.gpt-oss-120b-1:0",
    "openai.gpt-oss-20b-1:0",
    "qwen.qwen3-235b-a22b-2507-v1:0",
    "qwen.qwen3-coder-480b-a35b-v1:0",
    "qwen.qwen3-coder-30b-a3b-v1:0",
    "qwen.qwen3-32b-v1:0",
    "deepseek.v3-v1:0",
    "amazon.nova-premier-v1:0",
    "amazon.nova-pro-v1:0",
})


def bedrock_tiers(model_id: str) -> frozenset[ServiceTier]:
    """The service tiers Amazon Bedrock accepts on demand for a base model id: ``default`` for every model, plus
    ``priority`` and ``flex`` for the models AWS lists. For every Meta Llama model that is ``{"default"}``.
    (``reserved`` needs a reservation made through an AWS account team, so it is never offered on demand.)"""
    if model_id in _PRIORITY_AND_FLEX:
        return frozenset({"default", "priority", "flex"})
    return frozenset({DEFAULT_TIER})


def tier_of(value: str | None) -> ServiceTier:
    """The tier a request runs in: its (shape-checked) ``serviceTier``, or ``default`` when it named none."""
    for tier in SERVICE_TIERS:
        if value == tier:
            return tier
    return DEFAULT_TIER
