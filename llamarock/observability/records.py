"""The facts of one finished invocation, and the fan-out that hands them to every observer.

The runtime routes build one :class:`InvocationRecord` per invocation (an operation the operation table marks
``invocation``: InvokeModel, Converse and their streams) — successful, failed, throttled or cancelled midway — and
give it to :class:`Observers.emit` once, when the answer is complete (for streams: after the last frame, or when the
client went away). The edge emits one for invocations the caller's quotas throttle. Observers (usage records,
Prometheus metrics, model invocation logging, quota settlement) must return quickly and never raise into the
request: ``emit`` logs and swallows their failures, so an observer can never fail or slow an invocation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from llamarock.context import RequestContext

log = logging.getLogger(__name__)


@dataclass
class InvocationRecord:
    """One invocation, as the metering, metrics and invocation-log observers see it.

    Token counts are the engine's own, in Converse's terms (the one definition: docs/observability.md):
    ``input_tokens`` are the prompt tokens computed for this request (Converse ``usage.inputTokens``),
    ``cache_read_tokens`` the prompt tokens reused from the prefix cache (not included in ``input_tokens``; their sum
    is the whole prompt, CountTokens' figure and InvokeModel's ``prompt_token_count``), ``output_tokens`` the
    generated ones (also for a stream cancelled midway: what was produced before the client left).
    """

    request_id: str
    operation: str
    model_identifier: str
    principal_arn: str
    region: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    model_id: str | None = None
    deployment: str | None = None
    status: int = 200
    error_code: str | None = None
    cancelled: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    request_metadata: dict[str, str] = field(default_factory=dict)
    performance_latency: str | None = None
    service_tier: str | None = None  # serviceTier as the request named it; None: default
    provisioned_model_arn: str | None = None
    # The application inference profile the caller named, and its tags (cost allocation).
    inference_profile_arn: str | None = None
    resource_tags: dict[str, str] = field(default_factory=dict)
    inference_region: str | None = None
    input_body: bytes | None = None
    input_content_type: str = "application/json"
    output_body: Any = None
    output_content_type: str = "application/json"
    has_images: bool = False
    streaming: bool = False
    # The guardrail the request named (guardrailConfig, or InvokeModel's headers), and what it did: its action
    # (INTERVENED or NONE) and where it intervened (INPUT, OUTPUT).
    guardrail_id: str | None = None
    guardrail_version: str | None = None
    guardrail_action: str | None = None
    guardrail_intervened: tuple[str, ...] = ()
    # Set for a record of a batch inference job (model invocation job): billed at batch_price_multiplier.
    batch_job_arn: str | None = None
    # Set for a charge that is not an invocation (an imported model's Custom Model Units for one 5-minute window,
    # observability/imported.py): the row costs this much, whatever its tokens, and is not counted as an invocation.
    flat_cost_usd: Decimal | None = None

    @property
    def throttled(self) -> bool:
        return self.status == 429 and self.error_code == "ThrottlingException"

    def cost_tags(self) -> dict[str, str]:
        """The tags usage is reported by (``llamarock usage --by tag``): the request's ``requestMetadata``, then the
        tags of the application inference profile it named (which win on a shared key) and that profile's ARN
        (``inferenceProfileArn``)."""
        tags = {**self.request_metadata, **self.resource_tags}
        if self.inference_profile_arn:
            tags["inferenceProfileArn"] = self.inference_profile_arn
        return tags


def new_record(context: RequestContext) -> InvocationRecord:
    """The record of the invocation a request makes, with what is known before it runs."""
    operation = context.operation
    model = context.model
    return InvocationRecord(
        request_id=context.request_id,
        operation=operation.name if operation is not None else "",
        model_identifier=model.identifier if model is not None else "",
        principal_arn=context.principal_arn or "",
        region=context.region,
        streaming=operation is not None and operation.streaming,
    )


class InvocationObserver(Protocol):
    """Anything that wants each finished invocation. ``record`` must not block on I/O for long."""

    def record(self, record: InvocationRecord) -> None: ...


class Observers:
    """The fan-out ``create_app`` builds; the runtime routes and the edge call :meth:`emit`."""

    def __init__(self) -> None:
        self._observers: list[InvocationObserver] = []

    def add(self, observer: InvocationObserver) -> None:
        self._observers.append(observer)

    def emit(self, record: InvocationRecord) -> None:
        for observer in self._observers:
            try:
                observer.record(record)
            except Exception:
                log.exception("observer %s failed on request %s", type(observer).__name__, record.request_id)
