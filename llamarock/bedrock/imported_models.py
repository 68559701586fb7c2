"""Custom Model Import's Bedrock vocabulary, pure: imported-model ARNs, Custom Model Units (CMUs) and their price,
the catalog entry an imported model is served under, and the InvokeModel body formats Bedrock accepts for imported
models beside the native one (OpenAI's completion and chat-completion formats).

Custom Model Units. Bedrock bills an imported model per CMU per minute, in 5-minute windows counted from the first
successful inference call, for each model copy that is running (a copy scaled to zero costs nothing). It decides a
model's CMUs per copy at import and does not publish how; ours is an estimate from what a copy must hold: the weights
in 16-bit and the KV cache of the full context window in 16-bit, one CMU per 24 GB, at least one. That reproduces the
figures AWS quotes for Llama 3.1 8B at 128K (2 CMUs) and Llama 3.1 70B (8 CMUs), and gives 1 for Llama 3.2 1B and 3B.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from llamarock.bedrock.catalog import CatalogModel
from llamarock.errors import ValidationException

CMU_VERSION = "v1.0"
CMU_BYTES = 24_000_000_000
BILLING_WINDOW_S = 300  # Bedrock's 5-minute billing window
IMPORTED_FAMILY = "Imported"
MALFORMED = "Malformed input request, please reformat your input and try again."

BodyKind = Literal["bedrock", "openai-completion", "openai-chat"]

# Members of OpenAI's completion body (legacy /v1/completions) that Bedrock's native Llama body lacks: a body with a
# prompt and any of these is the OpenAI completion format.
OPENAI_COMPLETION_MEMBERS = frozenset({
    "max_tokens", "stop", "n", "stream", "model", "seed", "echo", "best_of", "logprobs", "suffix", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "stream_options",
})
# What the OpenAI completion format takes here; the others are refused unless they hold their default.
OPENAI_COMPLETION_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (1,), "echo": (False,), "best_of": (1,), "logprobs": (None,), "suffix": (None,),
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": (None, {}), "stream_options": (None,),
}


def imported_model_arn(region: str, account: str, model_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:imported-model/{model_id}"


def is_imported_model_arn(identifier: str) -> bool:
    return identifier.startswith("arn:") and ":imported-model/" in identifier


def model_import_job_arn(region: str, account: str, job_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:model-import-job/{job_id}"


def custom_model_units(parameters: int, blocks: int, kv_heads: int, head_dim: int, context: int) -> int:
    """CMUs per model copy (module docstring): 16-bit weights plus a full-context 16-bit KV cache, per 24 GB."""
    weights = parameters * 2
    kv_cache = blocks * kv_heads * head_dim * 2 * 2 * context
    return max(1, math.ceil((weights + kv_cache) / CMU_BYTES))


def window_cost(units: int, price_per_cmu_minute: Decimal) -> Decimal:
    """What one copy costs for one 5-minute billing window."""
    return price_per_cmu_minute * units * (BILLING_WINDOW_S // 60)


def catalog_entry(arn: str, name: str, region: str, context_length: int, parameters: int,
                  instruct: bool) -> CatalogModel:
    """The catalog entry an imported model is served under (its id is its ARN: usage and metrics show that)."""
    return CatalogModel(
        model_id=arn, name=name, family=IMPORTED_FAMILY, parameters_billion=parameters / 1e9,
        context_window=context_length, input_modalities=("TEXT",), output_modalities=("TEXT",),
        capabilities=("TEXT_GENERATION",), max_gen_len=4096, max_output_tokens=4096,
        prompt_format="chat template" if instruct else "plain", instruct=instruct, tool_use=False,
        fine_tuning=False, latency_optimized=False, regions=(region,), geo_profiles=(), on_demand_regions=(region,),
        vendor="Imported", provisioned=False,
    )


# ------------------------------------------------------------------------------------------------------ bodies


def body_kind(body: bytes) -> BodyKind:
    """Which of Bedrock's three formats for imported models a body is in: ``messages`` is OpenAI's chat completion;
    a ``prompt`` with an OpenAI-only member (``max_tokens``, ``stop``, ``stream``...) is OpenAI's completion; any
    other body is Bedrock's native completion (checked by the native schema)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return "bedrock"
    if not isinstance(document, dict):
        return "bedrock"
    if "messages" in document:
        return "openai-chat"
    if "prompt" in document and OPENAI_COMPLETION_MEMBERS & document.keys():
        return "openai-completion"
    return "bedrock"


@dataclass(frozen=True)
class CompletionRequest:
    """A checked OpenAI completion body."""

    prompt: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    stream: bool
    seed: int | None


def _number(document: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValidationException(f"Malformed input request: #/{key}: {json.dumps(value)} must be a number from "
                                  f"{low:g} to {high:g}, please reformat your input and try again.")
    return float(value)


def parse_completion(body: bytes) -> CompletionRequest:
    """Check an OpenAI completion body (``prompt``, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
    ``stream``); ValidationException in Bedrock's "Malformed input request" words otherwise."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationException(MALFORMED) from None
    if not isinstance(document, dict):
        raise ValidationException(MALFORMED)
    known = {"prompt", "temperature", "top_p", "max_tokens", "stop", "seed", "stream", "model", "user",
             *OPENAI_COMPLETION_DEFAULTS}
    unknown = sorted(set(document) - known)
    if unknown:
        raise ValidationException(f"Malformed input request: extraneous key [{unknown[0]}] is not permitted, please "
                                  "reformat your input and try again.")
    for key, defaults in OPENAI_COMPLETION_DEFAULTS.items():
        if key in document and not any(document[key] == d and type(document[key]) is type(d) for d in defaults):
            raise ValidationException(f"Malformed input request: #/{key}: only {json.dumps(defaults[0])} is "
                                      "supported for imported models, please reformat your input and try again.")
    prompt = document.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValidationException("Malformed input request: #/prompt: expected type: String, please reformat your "
                                  "input and try again.")
    max_tokens = document.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ValidationException("Malformed input request: #/max_tokens: must be a positive integer, please "
                                  "reformat your input and try again.")
    stop = document.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = tuple(s for s in stop if s)
    elif stop is not None:
        raise ValidationException("Malformed input request: #/stop: a string or up to 4 strings, please reformat "
                                  "your input and try again.")
    seed = document.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValidationException("Malformed input request: #/seed: expected type: Integer, please reformat your "
                                  "input and try again.")
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise ValidationException("Malformed input request: #/stream: expected type: Boolean, please reformat your "
                                  "input and try again.")
    return CompletionRequest(prompt, max_tokens, _number(document, "temperature", 0, 2),
                             _number(document, "top_p", 0, 1), stops, stream,
                             seed % 2**32 if seed is not None else None)


def chat_body(body: bytes, arn: str) -> bytes:
    """An OpenAI chat-completion InvokeModel body as the Chat Completions parser takes it: ``model`` is the
    imported model's ARN (InvokeModel names the model in its path, so the body need not)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationException(MALFORMED) from None
    if not isinstance(document, dict):
        raise ValidationException(MALFORMED) from None
    document["model"] = arn
    return json.dumps(document).encode()


FINISH = {"stop": "stop", "length": "length"}


def completion_response(identifier: str, model: str, created: int, text: str, stop_reason: str,
                        prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's ``text_completion`` object."""
    return {
        "id": identifier, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": FINISH.get(stop_reason, "stop")}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def completion_chunk(identifier: str, model: str, created: int, text: str,
                     stop_reason: str | None) -> dict[str, Any]:
    """One streamed piece of a ``text_completion``."""
    return {
        "id": identifier, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None,
                     "finish_reason": FINISH.get(stop_reason, "stop") if stop_reason is not None else None}],
    }
