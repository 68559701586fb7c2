"""How an invocation ended, in the terms of Bedrock's CloudWatch metrics; metrics and usage reports share it.

``Invocations`` counts the requests a model accepted, later failures included; throttled requests count only in
``InvocationThrottles`` and requests rejected at validation (ValidationException) only in
``InvocationClientErrors`` (reference §7). A stream the client cancelled is an invocation, not an error.
"""

from __future__ import annotations

from typing import Literal

from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import parse_model_ref
from llamarock.errors import BedrockError
from llamarock.observability.records import InvocationRecord

Outcome = Literal["success", "cancelled", "client_error", "server_error", "throttled"]


def outcome(record: InvocationRecord) -> Outcome:
    if record.throttled:
        return "throttled"
    if record.cancelled:
        return "cancelled"
    if record.status >= 500:
        return "server_error"
    if record.status >= 400:
        return "client_error"
    return "success"


def counts_as_invocation(record: InvocationRecord) -> bool:
    """True unless the request was throttled or rejected at validation."""
    return not record.throttled and record.error_code != "ValidationException"


def catalog_model_id(record: InvocationRecord) -> str | None:
    """The catalog base model id of a record: the one the route resolved, else (for a request rejected before it
    was resolved, e.g. a malformed body) the one its identifier names, if it names a catalog model."""
    if record.model_id is not None:
        return record.model_id
    try:
        named = parse_model_ref(record.model_identifier).model_id
    except BedrockError:
        return None
    return named if catalog.get(named) is not None else None


def metric_model_id(record: InvocationRecord) -> str:
    """The ``ModelId`` dimension: the identifier as the client sent it, as CloudWatch shows it, with
    ``+latency-optimized`` for latency-optimized requests and ``+priority``, ``+flex`` or ``+reserved`` for service
    tiers other than ``default`` (CloudWatch's ``model-id+priority`` and ``model-id+flex``). Requests whose identifier
    names no model share one ``unknown`` series, so that a client sending random ids cannot create unbounded
    series."""
    if catalog_model_id(record) is None:
        return "unknown"
    name = record.model_identifier
    if record.performance_latency == "optimized":
        name += "+latency-optimized"
    if record.service_tier is not None and record.service_tier != "default":
        name += f"+{record.service_tier}"
    return name
