"""Rendering errors as AWS does: status from botocore's model, ``x-amzn-ErrorType`` and ``{"message": ...}``."""

from __future__ import annotations

import json
from functools import cache

from llamarock.codec.service_model import RUNTIME, error_status, service_model
from llamarock.errors import BedrockError, InternalServerException

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


# Errors AWS's front end sends for any operation: no operation's model lists them, and clients expect them as they are.
FRONT_END_CODES = frozenset({
    "SerializationException", "IncompleteSignatureException", "UnrecognizedClientException",
    "InvalidSignatureException", "MissingAuthenticationTokenException", "UnknownOperationException",
    "RequestTimeoutException", "AccessDeniedException",
})

# What an error becomes where its operation (or its stream) does not declare it: the nearest declared meaning, in
# order of preference. A retryable condition stays retryable where the operation can say so.
_NEAREST: dict[str, tuple[str, ...]] = {
    "ModelNotReadyException": ("ServiceUnavailableException", "ThrottlingException"),
    "ModelTimeoutException": ("ModelStreamErrorException", "ServiceUnavailableException"),
    "ModelErrorException": ("ModelStreamErrorException",),
    "ServiceQuotaExceededException": ("ThrottlingException", "ValidationException"),
    "ResourceNotFoundException": ("ValidationException",),
    "ConflictException": ("ValidationException",),
    "TooManyTagsException": ("ValidationException",),
    "ThrottlingException": ("ServiceUnavailableException",),
    "ServiceUnavailableException": ("InternalServerException",),
}


def declared_codes(service: str, operation: str, stream: bool = False) -> frozenset[str]:
    """The error codes an operation's model declares; with ``stream``, the exception members of its output
    event stream (for errors after the first byte)."""
    return _declared(service, operation, stream)


@cache
def _declared(service: str, operation: str, stream: bool) -> frozenset[str]:
    model = service_model(service).operation_model(operation)
    if not stream:
        return frozenset(shape.name for shape in model.error_shapes)
    output = model.output_shape
    members = output.members.values() if output is not None else ()
    stream_shape = next((m for m in members if m.serialization.get("eventstream")), None)
    if stream_shape is None:
        return frozenset()
    return frozenset(m.name for m in stream_shape.members.values() if m.metadata.get("exception"))


def as_declared(error: BedrockError, service: str, operation: str, stream: bool = False) -> BedrockError:
    """``error`` as one its operation declares (see ``_NEAREST``): clients build their exception classes from the
    model, so an undeclared code would reach them as a generic error. The message is kept; the model's failure is
    kept in the stream's ``originalMessage`` where ModelStreamErrorException carries it."""
    declared = declared_codes(service, operation, stream)
    if not declared or error.code in declared or (error.code in FRONT_END_CODES and not stream):
        return error
    for code in (*_NEAREST.get(error.code, ()), "InternalServerException"):
        if code in declared:
            extra = {"originalStatusCode": error.extra.get("originalStatusCode", status_of(error, service)),
                     "originalMessage": error.extra.get("originalMessage", error.message)} \
                if code == "ModelStreamErrorException" else {}
            return _error_class(code)(error.message, **extra)
    return error


def _error_class(code: str) -> type[BedrockError]:
    found = {cls.code: cls for cls in _subclasses(BedrockError)}
    return found.get(code, InternalServerException)


def _subclasses(cls: type[BedrockError]) -> list[type[BedrockError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out
