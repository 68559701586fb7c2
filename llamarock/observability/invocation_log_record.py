"""One model invocation log record in Bedrock's schema (``schemaType`` ModelInvocationLog, version 1.0), and its
JSON schema.

A record is built in two steps. :func:`record_meta` runs on the request path and takes everything but the bodies
(cheap); :func:`complete_record` runs in the delivery thread and adds the bodies: parsed back into JSON, image bytes
blanked when image delivery is off, and bodies over :data:`LARGE_BODY_BYTES` replaced by a reference to an object
holding them (``inputBodyS3Path`` / ``outputBodyS3Path``), as Bedrock does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC
from typing import Any

from llamarock.observability.records import InvocationRecord

# Bedrock moves a body larger than 100 KB out of the record into its own object.
LARGE_BODY_BYTES = 100 * 1024

# CreateChatCompletion: OpenAI Chat Completions on /openai/v1/chat/completions (its bodies are OpenAI's).
OPERATIONS = ["InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream", "CreateChatCompletion"]

_COUNT = {"type": "integer", "minimum": 0}
_S3_PATH = {"type": "string", "pattern": r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\.json\.gz$"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Amazon Bedrock model invocation log record (as written by llamarock)",
    "type": "object",
    "required": ["schemaType", "schemaVersion", "timestamp", "accountId", "identity", "region", "requestId",
                 "operation", "modelId", "input", "output"],
    "additionalProperties": False,
    "properties": {
        "schemaType": {"const": "ModelInvocationLog"},
        "schemaVersion": {"const": "1.0"},
        "timestamp": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
        "accountId": {"type": "string", "pattern": r"^\d{12}$"},
        "identity": {
            "type": "object", "required": ["arn"], "additionalProperties": False,
            "properties": {"arn": {"type": "string", "minLength": 1}},
        },
        "region": {"type": "string", "minLength": 1},
        "requestId": {"type": "string", "minLength": 1},
        "operation": {"enum": OPERATIONS},
        "modelId": {"type": "string", "minLength": 1},
        "inferenceRegion": {"type": "string"},
        "errorCode": {"type": "string", "minLength": 1},
        "requestMetadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "performanceConfig": {
            "type": "object", "required": ["latency"], "additionalProperties": False,
            "properties": {"latency": {"enum": ["standard", "optimized"]}},
        },
        "input": {
            "type": "object", "required": ["inputContentType", "inputTokenCount"], "additionalProperties": False,
            "not": {"required": ["inputBodyJson", "inputBodyS3Path"]},
            "properties": {
                "inputContentType": {"type": "string"},
                "inputBodyJson": {},
                "inputBodyS3Path": _S3_PATH,
                "inputTokenCount": _COUNT,
                "cacheReadInputTokenCount": _COUNT,
                "cacheWriteInputTokenCount": _COUNT,
            },
        },
        "output": {
            "type": "object", "required": ["outputContentType", "outputTokenCount"], "additionalProperties": False,
            "not": {"required": ["outputBodyJson", "outputBodyS3Path"]},
            "properties": {
                "outputContentType": {"type": "string"},
                "outputBodyJson": {},
                "outputBodyS3Path": _S3_PATH,
                "outputTokenCount": _COUNT,
            },
        },
    },
}

Offload = Callable[[str, bytes], "str | None"]
"""``offload(kind, json_bytes)`` stores a large body (kind ``input`` or ``output``) and returns its ``s3://`` path,
or None when the destination has nowhere to put large bodies (the body is then left out)."""


def record_meta(record: InvocationRecord, account_id: str) -> dict[str, Any]:
    """The log record without its bodies."""
    meta: dict[str, Any] = {
        "schemaType": "ModelInvocationLog",
        "schemaVersion": "1.0",
        "timestamp": record.started_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "accountId": account_id,
        "identity": {"arn": record.principal_arn},
        "region": record.region,
        "requestId": record.request_id,
        "operation": record.operation,
        # What the caller named (model id, profile id or ARN), like the ModelId dimension of the metrics.
        "modelId": record.model_identifier,
        "input": {
            "inputContentType": record.input_content_type,
            "inputTokenCount": record.input_tokens,
            "cacheReadInputTokenCount": record.cache_read_tokens,
            "cacheWriteInputTokenCount": 0,
        },
        "output": {"outputContentType": record.output_content_type, "outputTokenCount": record.output_tokens},
    }
    if record.error_code:
        meta["errorCode"] = record.error_code
    if record.request_metadata:
        meta["requestMetadata"] = dict(record.request_metadata)
    if record.performance_latency:
        meta["performanceConfig"] = {"latency": record.performance_latency}
    if record.inference_region and record.inference_region != record.region:
        meta["inferenceRegion"] = record.inference_region
    if record.guardrail_id:
        guardrail: dict[str, Any] = {"guardrailId": record.guardrail_id, "guardrailVersion": record.guardrail_version}
        if record.guardrail_action is not None:
            guardrail["action"] = record.guardrail_action
        if record.guardrail_intervened:
            guardrail["intervenedOn"] = list(record.guardrail_intervened)
        meta["guardrail"] = guardrail
    return meta


def strip_images(body: Any) -> Any:
    """The body with every image's bytes blanked: native Llama ``images`` entries and Converse image blocks
    (``{"image": {"source": {"bytes": ...}}}``, also inside tool results). Formats and positions stay."""
    if isinstance(body, list):
        return [strip_images(item) for item in body]
    if not isinstance(body, dict):
        return body
    stripped: dict[str, Any] = {}
    for key, value in body.items():
        if key == "images" and isinstance(value, list) and all(isinstance(item, str) for item in value):
            stripped[key] = ["" for _ in value]
        elif key == "image" and isinstance(value, dict) and isinstance(value.get("source"), dict):
            source = {k: ("" if k == "bytes" else v) for k, v in value["source"].items()}
            stripped[key] = {**value, "source": source}
        else:
            stripped[key] = strip_images(value)
    return stripped


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        # InvokeModel takes any bytes; a body that is not JSON is logged as its text.
        return body.decode("utf-8", errors="replace")


def _place(section: dict[str, Any], kind: str, body: bytes, images: bool, offload: Offload) -> None:
    value = _parsed(body)
    if not images:
        value = strip_images(value)
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    if len(data) <= LARGE_BODY_BYTES:
        section[f"{kind}BodyJson"] = value
        return
    path = offload(kind, data)
    if path is not None:
        section[f"{kind}BodyS3Path"] = path


def complete_record(meta: bytes, input_body: bytes | None, output_body: bytes | None, *, images: bool,
                    offload: Offload) -> dict[str, Any]:
    """The full record from a spooled one; bodies are None when text delivery was off."""
    record: dict[str, Any] = json.loads(meta)
    if input_body is not None:
        _place(record["input"], "input", input_body, images, offload)
    if output_body is not None:
        _place(record["output"], "output", output_body, images, offload)
    return record
