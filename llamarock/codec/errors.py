"""Rendering errors as AWS does: status from botocore's model, ``x-amzn-ErrorType`` and ``{"message": ...}``."""

from __future__ import annotations

import json

from llamarock.codec.service_model import RUNTIME, error_status
from llamarock.errors import BedrockError

_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def status_of(error: BedrockError, service: str = RUNTIME) -> int:
    """The HTTP status of an error: botocore's model first, the class's fallback for unmodelled codes."""
    return error_status(error.code, service) or error.fallback_status


def render_error(error: BedrockError, request_id: str, service: str = RUNTIME) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a JSON error response."""
    headers = {
        "Content-Type": "application/json",
        "x-amzn-RequestId": request_id,
        "x-amzn-ErrorType": error.code + _ERROR_TYPE_SUFFIX,
    }
    return status_of(error, service), headers, json.dumps(error.body()).encode()
