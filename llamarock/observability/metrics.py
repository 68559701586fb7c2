"""Prometheus metrics of one app: Bedrock's CloudWatch runtime metrics (namespace AWS/Bedrock, reference §7) and
live engine gauges, served at ``GET /metrics``.

Every app has its own ``CollectorRegistry`` (never the process-global one), so several apps can live in one
process. CloudWatch metric -> Prometheus series, each labelled ``ModelId`` (see ``outcome.metric_model_id``):

====================================  ===========================================================
CloudWatch (AWS/Bedrock)              Prometheus
====================================  ===========================================================
Invocations                           ``bedrock_invocations_total``
InvocationLatency (ms)                ``bedrock_invocation_latency_milliseconds`` (histogram)
InvocationClientErrors                ``bedrock_invocation_client_errors_total``
InvocationServerErrors                ``bedrock_invocation_server_errors_total``
InvocationThrottles                   ``bedrock_invocation_throttles_total``
InputTokenCount                       ``bedrock_input_tokens_total``
OutputTokenCount                      ``bedrock_output_tokens_total``
CacheReadInputTokenCount              ``bedrock_cache_read_input_tokens_total``
TimeToFirstToken (ms, streams only)   ``bedrock_time_to_first_token_milliseconds`` (histogram)
LegacyModelInvocations                ``bedrock_legacy_model_invocations_total``
====================================  ===========================================================

Model invocation logging's delivery counters (``ModelInvocationLogsS3DeliverySuccess``...) are
``bedrock_model_invocation_logs_s3_delivery_success_total`` and so on.

Engine gauges, labelled ``deployment``, are read from each deployment's ``engine.stats()`` at scrape time (see
:data:`ENGINE_METRICS`); tokens per second is ``rate(llamarock_engine_generated_tokens_total[1m])``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamarock.bedrock import catalog
from llamarock.observability.outcome import catalog_model_id, counts_as_invocation, metric_model_id, outcome
from llamarock.observability.records import InvocationRecord

if TYPE_CHECKING:
    from llamarock.services.deployments import Deployment

MILLISECOND_BUCKETS = (
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000
)

# engine.stats() key -> (Prometheus name, kind, help). Keys an engine reports that are not listed here are exported
# as gauges named llamarock_engine_<key>.
ENGINE_METRICS: dict[str, tuple[str, str, str]] = {
    "active": ("llamarock_engine_active_requests", "gauge", "Generations running or waiting for a slot."),
    "running": ("llamarock_engine_running_sequences", "gauge", "Sequences in the decode batch."),
    "queued": ("llamarock_engine_queued_requests", "gauge", "Requests waiting for a batch slot (queue depth)."),
    "kv_reserved": ("llamarock_engine_kv_cells_reserved", "gauge", "KV cache cells reserved by admitted requests."),
    "kv_cells": ("llamarock_engine_kv_cells", "gauge", "KV cache size in cells (tokens)."),
    "prefix_cached_sequences": (
        "llamarock_engine_prefix_cached_sequences", "gauge", "Finished sequences kept for prefix reuse."
    ),
    "prefix_cached_tokens": (
        "llamarock_engine_prefix_cached_tokens", "gauge", "Tokens of finished sequences kept for prefix reuse."
    ),
    "prefix_cached_in_kv": (
        "llamarock_engine_prefix_cached_in_kv", "gauge",
        "Cached prefixes still in the KV cache (the others are in host memory until reused).",
    ),
    "prefix_hits": ("llamarock_engine_prefix_cache_hits", "counter", "Requests that reused a cached prompt prefix."),
    "generated_tokens": ("llamarock_engine_generated_tokens", "counter", "Tokens generated since the engine started."),
    # Remote engines (engines/remote.py): attempts moved to another replica, and replicas taking requests now.
    "retried": ("llamarock_engine_replica_retries", "counter", "Requests retried on another replica before a token."),
    "resumed": ("llamarock_engine_replica_resumptions", "counter",
                "Streams resumed on another replica after a replica failed mid-stream."),
    "replicas_routable": ("llamarock_engine_replicas_routable", "gauge", "Replicas that may take a request now."),
}
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class EngineCollector(Collector):
    """Reads every deployment's engine counters when Prometheus scrapes."""

    def __init__(self, deployments: Callable[[], Sequence[Deployment]]) -> None:
        self._deployments = deployments

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("llamarock_deployment_ready", "1 once the deployment's engine is loaded.",
                                  labels=["deployment"])
        kv_use = GaugeMetricFamily("llamarock_engine_kv_usage_ratio",
                                   "Share of the KV cache reserved by admitted requests.", labels=["deployment"])
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for deployment in self._deployments():
            is_ready = deployment.error is None and deployment.engine.ready
            ready.add_metric([deployment.name], 1 if is_ready else 0)
            if not is_ready:
                continue
            stats = deployment.engine.stats()
            for key, value in stats.items():
                name, kind, doc = ENGINE_METRICS.get(key, (f"llamarock_engine_{_UNSAFE.sub('_', key)}", "gauge",
                                                             f"Engine statistic {key!r}."))
                family = families.get(name)
                if family is None:
                    family = (CounterMetricFamily(name, doc, labels=["deployment"]) if kind == "counter"
                              else GaugeMetricFamily(name, doc, labels=["deployment"]))
                    families[name] = family
                family.add_metric([deployment.name], value)
            if stats.get("kv_cells"):
                kv_use.add_metric([deployment.name], stats.get("kv_reserved", 0) / stats["kv_cells"])
        yield ready
        yield from families.values()
        if kv_use.samples:
            yield kv_use


class DeliveryCollector(Collector):
    """Model invocation logging's delivery counters (reference §7: ModelInvocationLogsS3DeliverySuccess, ...), as
    ``bedrock_model_invocation_logs_<kind>_total``."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        for name, value in sorted(self._counts().items()):
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("ModelInvocation")).lower()
            family = CounterMetricFamily(f"bedrock_model_invocation_{snake}", f"Model invocation logging: {name}.")
            family.add_metric([], value)
            yield family


class InvocationMetrics:
    """The metrics observer: one ``record`` per finished invocation updates the Bedrock series."""

    def __init__(
        self,
        deployments: Callable[[], Sequence[Deployment]] | None = None,
        delivery: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        labels = ["ModelId"]
        registry = self.registry
        self.invocations = Counter(
            "bedrock_invocations", "Invocations (CloudWatch Invocations): accepted requests, later failures "
            "included; not throttled or validation-rejected ones.", labels, registry=registry)
        self.latency = Histogram(
            "bedrock_invocation_latency_milliseconds", "Request received to last byte sent (InvocationLatency).",
            labels, buckets=MILLISECOND_BUCKETS, registry=registry)
        self.client_errors = Counter(
            "bedrock_invocation_client_errors", "Invocations that failed with a 4xx error.", labels, registry=registry)
        self.server_errors = Counter(
            "bedrock_invocation_server_errors", "Invocations that failed with a 5xx error.", labels, registry=registry)
        self.throttles = Counter(
            "bedrock_invocation_throttles", "Throttled invocations (counted nowhere else).", labels, registry=registry)
        self.input_tokens = Counter(
            "bedrock_input_tokens", "Prompt tokens computed (InputTokenCount).", labels, registry=registry)
        self.output_tokens = Counter(
            "bedrock_output_tokens", "Generated tokens (OutputTokenCount).", labels, registry=registry)
        self.cache_read_tokens = Counter(
            "bedrock_cache_read_input_tokens", "Prompt tokens read from the prefix cache (CacheReadInputTokenCount).",
            labels, registry=registry)
        self.time_to_first_token = Histogram(
            "bedrock_time_to_first_token_milliseconds",
            "Request received to first token sent, streaming operations only (TimeToFirstToken).",
            labels, buckets=MILLISECOND_BUCKETS, registry=registry)
        self.legacy_invocations = Counter(
            "bedrock_legacy_model_invocations", "Invocations of LEGACY-lifecycle models (LegacyModelInvocations).",
            labels, registry=registry)
        # Guardrails (CloudWatch's AWS/Bedrock/Guardrails): one count per check, ApplyGuardrail's and every
        # runtime call's input and output checks alike.
        guard_labels = ["GuardrailId", "GuardrailVersion", "GuardrailContentSource", "Operation"]
        self.guardrail_invocations = Counter(
            "bedrock_guardrail_invocations", "Guardrail checks (Invocations): ApplyGuardrail calls, and the input and "
            "output checks of Converse and InvokeModel calls.", guard_labels, registry=registry)
        self.guardrail_interventions = Counter(
            "bedrock_guardrail_invocations_intervened", "Guardrail checks that intervened (InvocationsIntervened).",
            guard_labels, registry=registry)
        self.guardrail_latency = Histogram(
            "bedrock_guardrail_invocation_latency_milliseconds", "Time to evaluate one guardrail check "
            "(InvocationLatency).", ["GuardrailId", "GuardrailContentSource"], buckets=MILLISECOND_BUCKETS,
            registry=registry)
        self.guardrail_units = Counter(
            "bedrock_guardrail_text_units", "Text units the guardrail's policies processed (TextUnitCount), by "
            "policy (ApplyGuardrail's usage member).", ["GuardrailId", "GuardrailPolicyType"], registry=registry)
        if deployments is not None:
            registry.register(EngineCollector(deployments))
        if delivery is not None:
            registry.register(DeliveryCollector(delivery))

    def guardrail_check(self, guardrail_id: str, version: str, source: str, operation: str,
                        verdict: Mapping[str, Any], latency_ms: int) -> None:
        """One guardrail check (``services/guardrail_runtime.py`` reports each)."""
        self.guardrail_invocations.labels(guardrail_id, version, source, operation).inc()
        if verdict.get("action") == "GUARDRAIL_INTERVENED":
            self.guardrail_interventions.labels(guardrail_id, version, source, operation).inc()
        self.guardrail_latency.labels(guardrail_id, source).observe(latency_ms)
        for policy, units in (verdict.get("usage") or {}).items():
            if isinstance(units, int) and not isinstance(units, bool) and units:
                self.guardrail_units.labels(guardrail_id, policy).inc(units)

    def record(self, record: InvocationRecord) -> None:
        model = metric_model_id(record)
        if record.throttled:
            self.throttles.labels(model).inc()
            return
        if counts_as_invocation(record):
            self.invocations.labels(model).inc()
            self.latency.labels(model).observe(record.latency_ms)
            model_id = catalog_model_id(record)
            entry = catalog.get(model_id) if model_id else None
            if entry is not None and entry.lifecycle == "LEGACY":
                self.legacy_invocations.labels(model).inc()
        kind = outcome(record)
        if kind == "client_error":
            self.client_errors.labels(model).inc()
        elif kind == "server_error":
            self.server_errors.labels(model).inc()
        self.input_tokens.labels(model).inc(record.input_tokens)
        self.output_tokens.labels(model).inc(record.output_tokens)
        self.cache_read_tokens.labels(model).inc(record.cache_read_tokens)
        if record.streaming and record.ttft_ms is not None:
            self.time_to_first_token.labels(model).observe(record.ttft_ms)
