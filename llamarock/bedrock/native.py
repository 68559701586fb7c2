"""Bedrock's native Meta Llama InvokeModel body: validation and response builders.

The request body (reference §1.4) is validated against a Draft 7 JSON schema, exactly as Bedrock does, and every
failure is reported with Bedrock's everit-json-schema wording::

    Malformed input request: #/temperature: 1.5 is not less or equal to 1, please reformat your input and try again.
    Malformed input request: 2 schema violations found, please reformat your input and try again.
    Malformed input request, please reformat your input and try again.      (empty / not JSON / not UTF-8)

The builders produce the non-streaming response (§1.4) and the streaming chunks (§1.5), the last of which carries
``amazon-bedrock-invocationMetrics``. Everything here is pure: no I/O, no engine access.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from llamarock.bedrock.schema_limits import lone_surrogate
from llamarock.errors import ValidationException
from llamarock.types import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P

__all__ = [
    "DEFAULT_MAX_GEN_LEN",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "MAX_GEN_LEN_LIMIT",
    "NATIVE_REQUEST_SCHEMA",
    "InvocationMetrics",
    "NativeRequest",
    "decode_body",
    "native_response",
    "parse_native_request",
    "raise_malformed",
    "schema_violations",
    "stream_chunk",
]

DEFAULT_MAX_GEN_LEN: Final = DEFAULT_MAX_TOKENS
MAX_GEN_LEN_LIMIT: Final = 2048

NATIVE_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_gen_len": {"type": "integer", "minimum": 1, "maximum": MAX_GEN_LEN_LIMIT},
        "images": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}

Draft7Validator.check_schema(NATIVE_REQUEST_SCHEMA)
_VALIDATOR: Final = Draft7Validator(NATIVE_REQUEST_SCHEMA)

_MALFORMED: Final = "Malformed input request, please reformat your input and try again."
_SUFFIX: Final = ", please reformat your input and try again."
# Bedrock accepts an empty prompt (the Llama tokenizers still give it a BOS token); weights whose tokenizer gives it
# no token at all cannot run it, and the service layer refuses it in everit's words for a string too short.
EMPTY_PROMPT: Final = f"Malformed input request: #/prompt: expected minLength: 1, actual: 0{_SUFFIX}"

# JSON-schema type name -> everit's name for the expected type.
_EVERIT_TYPES: Final = {
    "string": "String",
    "number": "Number",
    "integer": "Integer",
    "boolean": "Boolean",
    "array": "JSONArray",
    "object": "JSONObject",
    "null": "Null",
}


@dataclass(frozen=True)
class NativeRequest:
    """A validated native Llama request with Bedrock's defaults filled in."""

    prompt: str
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_gen_len: int = DEFAULT_MAX_GEN_LEN
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class InvocationMetrics:
    """The ``amazon-bedrock-invocationMetrics`` object on the last stream chunk (latencies in milliseconds).

    ``input_tokens`` is the whole prompt, cached or not (as ``prompt_token_count`` and the InvokeModel header);
    ``cache_read_input_tokens`` is the part of it read from the prefix cache."""

    input_tokens: int
    output_tokens: int
    invocation_latency_ms: int
    first_byte_latency_ms: int
    cache_read_input_tokens: int | None = None

    def to_json(self) -> dict[str, int]:
        """The wire form; ``cacheReadInputTokenCount`` only when it is set."""
        out = {
            "inputTokenCount": self.input_tokens,
            "outputTokenCount": self.output_tokens,
            "invocationLatency": self.invocation_latency_ms,
            "firstByteLatency": self.first_byte_latency_ms,
        }
        if self.cache_read_input_tokens is not None:
            out["cacheReadInputTokenCount"] = self.cache_read_input_tokens
        return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    # A literal such as 1e400 overflows to inf; it is not representable, so it is treated as malformed input.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _found_type(value: Any) -> str:
    """everit's name for the type of a decoded JSON value."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "JSONArray"
    if isinstance(value, dict):
        return "JSONObject"
    return "Null"


def _render(value: Any) -> str:
    """A number as JSON renders it (``1.5``, ``4096``)."""
    return json.dumps(value)


def _pointer(error: ValidationError) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path]
    return "/".join(["#", *parts])


def _violations(error: ValidationError) -> Iterator[str]:
    """The everit messages for one jsonschema error (one per extraneous or missing key)."""
    where = _pointer(error)
    kind, instance, limit = error.validator, cast(Any, error.instance), cast(Any, error.validator_value)
    if kind == "additionalProperties":
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for key in instance:
            if key not in known:
                yield f"{where}: extraneous key [{key}] is not permitted"
    elif kind == "required":
        for key in limit:
            if key not in instance:
                yield f"{where}: required key [{key}] not found"
    elif kind == "type":
        yield f"{where}: expected type: {_EVERIT_TYPES[limit]}, found: {_found_type(instance)}"
    elif kind == "minimum":
        yield f"{where}: {_render(instance)} is not greater or equal to {_render(limit)}"
    elif kind == "maximum":
        yield f"{where}: {_render(instance)} is not less or equal to {_render(limit)}"
    elif kind == "enum":
        shown = instance if isinstance(instance, str) else _render(instance)
        yield f"{where}: {shown} is not a valid enum value"
    elif kind == "minLength":
        yield f"{where}: expected minLength: {limit}, actual: {len(instance)}"
    elif kind == "maxLength":
        yield f"{where}: expected maxLength: {limit}, actual: {len(instance)}"
    elif kind == "minItems":
        yield f"{where}: expected minimum item count: {limit}, found: {len(instance)}"
    elif kind == "maxItems":
        yield f"{where}: expected maximum item count: {limit}, found: {len(instance)}"
    elif kind == "uniqueItems":
        yield f"{where}: array items are not unique"
    else:  # pragma: no cover - the schemas use no other keywords
        yield f"{where}: {error.message}"


# Converse's additionalModelRequestFields: the native body's sampling fields, nothing else, checked as the native
# body is (Bedrock passes them to the model as native fields).
_FIELDS_SCHEMA: Final[dict[str, Any]] = {
    "$schema": NATIVE_REQUEST_SCHEMA["$schema"],
    "type": "object",
    "properties": {key: NATIVE_REQUEST_SCHEMA["properties"][key] for key in ("temperature", "top_p", "max_gen_len")},
    "additionalProperties": False,
}
_FIELDS_VALIDATOR: Final = Draft7Validator(_FIELDS_SCHEMA)


def check_native_fields(fields: Any) -> None:
    """Validate native sampling fields given outside a native body (Converse's additionalModelRequestFields) with
    the native body's rules and Bedrock's wording: types, ranges and unknown keys."""
    raise_malformed(_schema_messages(fields, _FIELDS_VALIDATOR))


def schema_violations(document: Any, validator: Draft7Validator) -> list[str]:
    """Every violation of a model's request schema by ``document``, in Bedrock's (everit's) words."""
    return _schema_messages(document, validator)


def decode_body(body: bytes) -> Any:
    """An InvokeModel body as JSON; Bedrock's "Malformed input request" for an empty, non-JSON or non-UTF-8 one."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationException(_MALFORMED) from None


def raise_malformed(messages: list[str]) -> None:
    """Bedrock's ValidationException for schema violations: one is quoted, several are counted; none: nothing."""
    if len(messages) == 1:
        raise ValidationException(f"Malformed input request: {messages[0]}{_SUFFIX}")
    if messages:
        raise ValidationException(f"Malformed input request: {len(messages)} schema violations found{_SUFFIX}")


def _schema_messages(document: Any, validator: Draft7Validator = _VALIDATOR) -> list[str]:
    messages: list[str] = []
    seen: set[tuple[str, str]] = set()
    for error in validator.iter_errors(document):
        # jsonschema reports one "required" error per missing key; _violations already lists them all.
        group = (_pointer(error), str(error.validator))
        if error.validator in ("required", "additionalProperties"):
            if group in seen:
                continue
            seen.add(group)
        messages.extend(_violations(error))
    return messages


def _surrogate_messages(document: Any) -> list[str]:
    """A string member that is not valid Unicode: ``json.loads`` decodes an unpaired ``\\ud800`` escape into a
    string no UTF-8 encoder (so no tokenizer) accepts."""
    if not isinstance(document, dict):
        return []
    strings = [("#/prompt", document.get("prompt"))]
    images = document.get("images")
    if isinstance(images, list):
        strings += [(f"#/images/{index}", item) for index, item in enumerate(images)]
    messages = []
    for where, value in strings:
        surrogate = lone_surrogate(value) if isinstance(value, str) else None
        if surrogate is not None:
            messages.append(f"{where}: string contains the unpaired surrogate {surrogate} and is not valid UTF-8")
    return messages


def parse_native_request(body: bytes) -> NativeRequest:
    """Validate a native Llama InvokeModel body and return it with defaults applied.

    Raises :class:`ValidationException` with Bedrock's wording for an empty or non-JSON body and for every schema
    violation (one violation is quoted; several are counted).
    """
    document = decode_body(body)
    raise_malformed(_schema_messages(document) + _surrogate_messages(document))

    return NativeRequest(
        prompt=document["prompt"],
        temperature=float(document.get("temperature", DEFAULT_TEMPERATURE)),
        top_p=float(document.get("top_p", DEFAULT_TOP_P)),
        max_gen_len=int(document.get("max_gen_len", DEFAULT_MAX_GEN_LEN)),
        images=tuple(document.get("images", ())),
    )


def native_response(generation: str, prompt_tokens: int, generation_tokens: int, stop_reason: str) -> dict[str, Any]:
    """The InvokeModel response body for a Llama model (§1.4)."""
    return {
        "generation": generation,
        "prompt_token_count": prompt_tokens,
        "generation_token_count": generation_tokens,
        "stop_reason": stop_reason,
    }


def stream_chunk(
    generation: str,
    *,
    prompt_tokens: int | None,
    generation_tokens: int,
    stop_reason: str | None,
    metrics: InvocationMetrics | None = None,
) -> dict[str, Any]:
    """One InvokeModelWithResponseStream chunk (§1.5).

    ``prompt_tokens`` is given on the first chunk only (``None`` -> ``null`` afterwards), ``generation_tokens`` is
    cumulative, ``stop_reason`` is ``None`` until the last chunk, which also carries ``metrics``.
    """
    chunk: dict[str, Any] = {
        "generation": generation,
        "prompt_token_count": prompt_tokens,
        "generation_token_count": generation_tokens,
        "stop_reason": stop_reason,
    }
    if metrics is not None:
        chunk["amazon-bedrock-invocationMetrics"] = metrics.to_json()
    return chunk
