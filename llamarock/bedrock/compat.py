"""Compatibility modes: ``extended`` (the default) serves what Bedrock serves plus what llamarock adds for Llama;
``bedrock`` (``serve --compat bedrock``) refuses, with Bedrock's own errors and messages, everything Bedrock refuses
for Meta models, so that a team's CI catches code that would fail on AWS.

:data:`DIFFERENCES` is the one list of what the two modes do differently; ``docs/compat.md`` is generated from it
(``python -m llamarock.docsgen``) and each row names the test that shows both sides. The checks below are called by
the use cases at the point where the request has been parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.service_tiers import bedrock_tiers
from llamarock.errors import ValidationException

Compat = Literal["extended", "bedrock"]

# Models AWS serves only through cross-region inference profiles (reference: Bedrock's model ids for Meta).
PROFILE_ONLY_PREFIXES = ("meta.llama3-2-", "meta.llama3-3-", "meta.llama4-")


@dataclass(frozen=True)
class Difference:
    """One behaviour that differs between the modes."""

    feature: str
    extended: str
    bedrock: str
    test: str


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "toolChoice `any` and `tool` (Converse, ConverseStream)",
        "enforced by constrained decoding: the answer is a valid call of the named tool(s)",
        "ValidationException: This model doesn't support the toolConfig.toolChoice.any field. Remove "
        "toolConfig.toolChoice.any and try again. (`.tool` likewise)",
        "tests/test_compat.py::test_tool_choice",
    ),
    Difference(
        "Tool use in ConverseStream",
        "streamed: toolUse blocks with their input as JSON fragments",
        "ValidationException: This model doesn't support tool use in streaming mode.",
        "tests/test_compat.py::test_streaming_tool_use",
    ),
    Difference(
        "Structured output (`outputConfig.textFormat`)",
        "enforced by constrained decoding: the answer always parses and validates",
        "ValidationException: This model doesn't support the outputConfig.textFormat field. Remove "
        "outputConfig.textFormat and try again.",
        "tests/test_compat.py::test_structured_output",
    ),
    Difference(
        "Prompt caching counts (`cacheReadInputTokens`, `X-Amzn-Bedrock-Cache-Read-Input-Token-Count`)",
        "reported: prefixes reused from the prefix cache are counted as cache reads",
        "not reported, as Bedrock reports none for Llama: `inputTokens` is the whole prompt",
        "tests/test_compat.py::test_cache_counts",
    ),
    Difference(
        "`cachePoint` blocks (system, messages, tools)",
        "honoured: the prompt up to each (at most 4) stays in the prefix cache as its own entry, evicted after "
        "entries no cachePoint asked for",
        "accepted and ignored, as on Bedrock for Llama",
        "tests/test_compat.py::test_cache_points",
    ),
    Difference(
        "`serviceTier` other than `default`",
        "`priority`, `flex` and `reserved` applied by the scheduler and priced per tier",
        "ValidationException: The service tier {tier} isn't supported for this model. Retry with the default "
        "service tier.",
        "tests/test_compat.py::test_service_tier",
    ),
    Difference(
        "Base model id (or foundation-model ARN) of Llama 3.2, 3.3 and 4 on demand",
        "Llama 3.2 and 3.3 on demand in us-west-2 (the spec's examples), elsewhere through their inference "
        "profiles; Llama 4 only through its profiles, as on AWS",
        "ValidationException: Invocation of model ID … with on-demand throughput isn’t supported. Retry your "
        "request with the ID or ARN of an inference profile that contains this model. (in every region)",
        "tests/test_compat.py::test_profile_only_models",
    ),
    Difference(
        "Models past their end of life on Bedrock (Llama 2)",
        "served, listed as LEGACY with their end-of-life date (unless `enforce_end_of_life` is set)",
        "404 ResourceNotFoundException: This model version has reached the end of its life. Please refer to the "
        "AWS documentation for more details. (and left out of ListFoundationModels)",
        "tests/test_compat.py::test_end_of_life",
    ),
    Difference(
        "OpenAI Chat Completions (`/openai/v1/chat/completions`, `/openai/v1/models`) for Llama ids",
        "served for every Llama id and profile, through the same use case as Converse",
        "404 `model_not_found` (OpenAI's error shape), and `/openai/v1/models` lists no Llama id: Bedrock serves "
        "Chat Completions only for its OpenAI open-weight models",
        "tests/test_compat.py::test_openai_chat_completions",
    ),
    Difference(
        "CreateKnowledgeBase (VECTOR) without `storageConfiguration`",
        "accepted: the knowledge base keeps its vectors in the embedded SQLite store (docs/knowledge-bases.md)",
        "ValidationException: storageConfiguration is required for a VECTOR knowledge base. (Storage types "
        "llamarock does not run, such as OPENSEARCH_SERVERLESS or PINECONE, are accepted in both modes and kept in "
        "the embedded store, with a warning in the server log.)",
        "tests/test_compat.py::test_knowledge_base_storage",
    ),
    Difference(
        "Guardrails on tool use (Converse, ConverseStream `guardrailConfig`)",
        "tool results and tool specs (name, description, input schema) are checked with the input, and the tool "
        "calls the model writes with the output (an intervention withholds the calls)",
        "not checked, as on Bedrock: only text, guardContent and the answer's text are",
        "tests/test_compat.py::test_guardrail_tool_checks",
    ),
    Difference(
        "A custom model (its ARN or name) invoked on demand",
        "served: the base model's deployment applies the custom model's LoRA adapter (docs/architecture.md)",
        "ValidationException: The provided model identifier is invalid. (InvokeModel, a name); Converse's modelId "
        "pattern refuses the ARN. Bedrock runs a custom model through Provisioned Throughput or a custom model "
        "deployment only; both work in either mode",
        "tests/test_compat.py::test_custom_model_on_demand",
    ),
)


def checks_beyond_bedrock(compat: Compat) -> bool:
    """Whether a guardrail also checks tool results, tool specs and tool calls, which Bedrock's does not."""
    return compat != "bedrock"


def enforces_end_of_life(compat: Compat, enforce_end_of_life: bool) -> bool:
    """Whether models past their end of life are refused (and hidden from listings): the ``enforce_end_of_life``
    setting, and always in ``bedrock`` mode."""
    return enforce_end_of_life or compat == "bedrock"


def serves_openai_chat(compat: Compat, model_id: str) -> bool:
    """Whether ``/openai/v1/chat/completions`` serves the model: Bedrock serves Chat Completions only for its OpenAI
    open-weight models, so in ``bedrock`` mode no Meta model."""
    return compat != "bedrock" or not model_id.startswith("meta.")


def serves_custom_models_on_demand(compat: Compat) -> bool:
    """Whether a custom model's ARN or name is invocable on demand; Bedrock requires Provisioned Throughput (or a
    custom model deployment)."""
    return compat != "bedrock"


def profile_only(model_id: str) -> bool:
    """Whether AWS serves this model only through inference profiles."""
    return model_id.startswith(PROFILE_ONLY_PREFIXES)


def _not_supported(field: str) -> ValidationException:
    return ValidationException(f"This model doesn't support the {field} field. Remove {field} and try again.")


def check_converse(compat: Compat, params: dict[str, Any], streaming: bool, model_id: str) -> None:
    """Refuse, in ``bedrock`` mode, the Converse features Bedrock refuses for Meta models."""
    if compat != "bedrock":
        return
    tool_config = params.get("toolConfig") or {}
    choice = tool_config.get("toolChoice") or {}
    for kind in ("any", "tool"):
        if kind in choice:
            raise _not_supported(f"toolConfig.toolChoice.{kind}")
    if streaming and tool_config.get("tools"):
        raise ValidationException("This model doesn't support tool use in streaming mode.")
    if (params.get("outputConfig") or {}).get("textFormat") is not None:
        raise _not_supported("outputConfig.textFormat")
    tier = (params.get("serviceTier") or {}).get("type")
    check_tier(compat, tier, model_id)


def check_tier(compat: Compat, tier: str | None, model_id: str) -> None:
    """Refuse, in ``bedrock`` mode, a service tier Bedrock does not offer for the model (only ``default`` for Meta
    models: ``bedrock/service_tiers.py``)."""
    if compat == "bedrock" and tier is not None and tier not in bedrock_tiers(model_id):
        raise ValidationException(
            f"The service tier {tier} isn't supported for this model. Retry with the default service tier."
        )


def on_demand_overrides(compat: Compat, models: tuple[CatalogModel, ...],
                        configured: dict[str, list[str]]) -> dict[str, list[str]]:
    """``on_demand_regions`` for ``bedrock`` mode: the profile-only models get none (unless configured)."""
    if compat != "bedrock":
        return dict(configured)
    overrides: dict[str, list[str]] = {m.model_id: [] for m in models if profile_only(m.model_id)}
    return {**overrides, **configured}


def honours_cache_points(compat: Compat) -> bool:
    """Whether ``cachePoint`` blocks mark what the prefix cache keeps: not in ``bedrock`` mode."""
    return compat != "bedrock"


def reports_cache(compat: Compat) -> bool:
    """Whether usage reports prefix-cache reads (``cacheReadInputTokens``): not in ``bedrock`` mode."""
    return compat != "bedrock"


def markdown() -> str:
    """``docs/compat.md``."""
    lines = [
        "# Compatibility modes",
        "",
        "Generated from `llamarock/bedrock/compat.py` by `python -m llamarock.docsgen`; do not edit by hand.",
        "",
        "`llamarock serve` runs in `extended` mode by default: Bedrock's API, plus what llamarock adds for Llama.",
        "`llamarock serve --compat bedrock` (setting `compat`, `LLAMAROCK_COMPAT=bedrock`) refuses everything Bedrock",
        "refuses for Meta models, with Bedrock's own errors, so that code tested against it also runs on AWS.",
        "Everything not listed here behaves the same in both modes.",
        "",
        "| Feature | `extended` (default) | `bedrock` | Test |",
        "|---|---|---|---|",
    ]
    for row in DIFFERENCES:
        cells = (row.feature, row.extended, row.bedrock, f"`{row.test}`")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)
