"""Usage records: one row per invocation in the metadata database, priced when it is recorded, and the report.

:class:`UsageRecorder` is the observer ``create_app`` adds: ``record`` turns an :class:`InvocationRecord` into a row
(with its cost from ``bedrock.pricing``) and queues it; one background thread writes the queue in batches, so the
event loop never waits for the database. ``flush`` waits until everything queued is written (a report in the same
process calls it first); ``close`` writes the rest and stops the thread (the app's shutdown calls it).

:class:`UsageStore` owns the tables and the report, which the CLI (``llamarock usage``) and the HTTP route
(``GET /llamarock/usage``) share. Costs are stored as integer pico-dollars (1e-12 USD), so that SQL sums are exact
on SQLite and PostgreSQL alike for any price with up to six decimals per million tokens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, case, func, select
from sqlalchemy.orm import Mapped, mapped_column, relationship

from llamarock.bedrock import catalog, pricing
from llamarock.errors import ValidationException
from llamarock.observability.outcome import catalog_model_id, counts_as_invocation, outcome
from llamarock.observability.records import InvocationRecord
from llamarock.settings import PriceSettings, Settings
from llamarock.storage.db import Base, Store

log = logging.getLogger(__name__)

Grouping = Literal["model", "principal", "tag", "day"]
GROUPINGS: tuple[Grouping, ...] = ("model", "principal", "tag", "day")
KEY_NAMES: dict[str, str] = {"model": "modelId", "principal": "principal", "tag": "tag", "day": "day"}
PICO = Decimal(10) ** 12


class UsageRow(Base):
    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    day: Mapped[str] = mapped_column(String(10), index=True)
    principal: Mapped[str] = mapped_column(String(256), index=True)
    model_id: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    model_identifier: Mapped[str] = mapped_column(String(2048))
    deployment: Mapped[str | None] = mapped_column(String(128), nullable=True)
    operation: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    counted: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_metadata: Mapped[str] = mapped_column(Text)
    region: Mapped[str] = mapped_column(String(32))
    performance_tier: Mapped[str | None] = mapped_column(String(16), nullable=True)
    provisioned_model_arn: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    cost_picousd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tags: Mapped[list[UsageTagRow]] = relationship(cascade="all, delete-orphan")


class UsageTagRow(Base):
    """One requestMetadata entry of a usage record, apart so that ``--by tag`` is a plain join on any database."""

    __tablename__ = "usage_tags"

    usage_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), index=True)


@dataclass(frozen=True)
class UsageSummary:
    """One row of the report. ``cost`` sums the priced invocations; ``unpriced`` counts the others."""

    key: str
    invocations: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    client_errors: int
    server_errors: int
    throttles: int
    cost: Decimal | None
    unpriced: int

    def to_json(self, by: Grouping) -> dict[str, Any]:
        return {
            KEY_NAMES[by]: self.key,
            "invocations": self.invocations,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "cacheReadInputTokens": self.cache_read_tokens,
            "clientErrors": self.client_errors,
            "serverErrors": self.server_errors,
            "throttles": self.throttles,
            "costUsd": float(self.cost) if self.cost is not None else None,
            "unpricedInvocations": self.unpriced,
        }


def parse_since(text: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 date-time (UTC unless it names an offset)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationException(
            f"since={text!r} is not a date: use YYYY-MM-DD or an ISO 8601 date-time such as 2025-01-31T12:00:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_grouping(text: str) -> Grouping:
    for grouping in GROUPINGS:
        if text == grouping:
            return grouping
    raise ValidationException(f"by={text!r} is not a grouping: use one of {', '.join(GROUPINGS)}")


def to_picousd(cost: Decimal | None) -> int | None:
    if cost is None:
        return None
    return int((cost * PICO).to_integral_value(rounding=ROUND_HALF_EVEN))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UsageStore(Store):
    """The usage tables; the engine is opened at first use."""

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Insert rows built by :meth:`UsageRecorder.row`, in one transaction."""
        with self.db.session(write=True) as session:
            for fields in rows:
                tags = fields["tags"]
                row = UsageRow(**{k: v for k, v in fields.items() if k != "tags"})
                row.tags = [UsageTagRow(key=k, value=v) for k, v in tags.items()]
                session.add(row)

    def report(self, by: Grouping = "model", since: datetime | None = None) -> list[UsageSummary]:
        """Totals per model (catalog id, else the identifier as sent), principal, tag (key=value) or UTC day."""
        keys: list[Any]
        if by == "model":
            keys = [func.coalesce(UsageRow.model_id, UsageRow.model_identifier)]
        elif by == "principal":
            keys = [UsageRow.principal]
        elif by == "day":
            keys = [UsageRow.day]
        else:
            keys = [UsageTagRow.key, UsageTagRow.value]

        def count(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        statement = select(
            *keys,
            count(UsageRow.counted.is_(True)),
            func.coalesce(func.sum(UsageRow.input_tokens), 0),
            func.coalesce(func.sum(UsageRow.output_tokens), 0),
            func.coalesce(func.sum(UsageRow.cache_read_tokens), 0),
            count(UsageRow.outcome == "client_error"),
            count(UsageRow.outcome == "server_error"),
            count(UsageRow.outcome == "throttled"),
            func.sum(UsageRow.cost_picousd),
            count(UsageRow.cost_picousd.is_(None) & UsageRow.counted.is_(True)),
        ).group_by(*keys).order_by(*keys)
        if by == "tag":
            statement = statement.join(UsageTagRow, UsageTagRow.usage_id == UsageRow.id)
        if since is not None:
            statement = statement.where(UsageRow.time >= _utc(since))
        with self.db.session() as session:
            results = session.execute(statement).all()
        summaries = []
        for result in results:
            width = len(keys)
            key = "=".join(str(part) for part in result[:width])
            invocations, inputs, outputs, cached, client, server, throttles = (int(n) for n in result[width:width + 7])
            cost_sum, unpriced = result[width + 7], int(result[width + 8])
            summaries.append(UsageSummary(
                key, invocations, inputs, outputs, cached, client, server, throttles,
                cost=Decimal(int(cost_sum)) / PICO if cost_sum is not None else None, unpriced=unpriced,
            ))
        return summaries


class UsageRecorder:
    """The usage observer: prices and queues each record; a background thread writes them (see module doc)."""

    def __init__(self, settings: Settings, store: UsageStore) -> None:
        self.store = store
        self._prices: Mapping[str, PriceSettings] = settings.prices
        self._cache_fraction = settings.cache_read_price_fraction
        for model_id in settings.prices:
            if catalog.get(model_id) is None:
                log.warning("prices: %r is not a catalog model id; its price is never used", model_id)
        self._lock = threading.Condition()
        self._pending: list[dict[str, Any]] = []
        self._writing = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def row(self, record: InvocationRecord) -> dict[str, Any]:
        """The stored fields of a record (bodies are dropped here, so the queue never holds them)."""
        started = _utc(record.started_at)
        model_id = catalog_model_id(record)
        model_rates = pricing.rates(model_id, self._prices) if model_id else None
        cost = pricing.token_cost(
            model_rates, record.input_tokens, record.output_tokens, record.cache_read_tokens, self._cache_fraction
        )
        if record.provisioned_model_arn:
            # Provisioned Throughput is billed per model unit and hour (pricing.provisioned_cost), not per token.
            cost = Decimal(0)
        return {
            "request_id": record.request_id,
            "time": started,
            "day": started.date().isoformat(),
            "principal": record.principal_arn,
            "model_id": model_id,
            "model_identifier": record.model_identifier,
            "deployment": record.deployment,
            "operation": record.operation,
            "outcome": outcome(record),
            "counted": counts_as_invocation(record),
            "status": record.status,
            "error_code": record.error_code,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cache_read_tokens": record.cache_read_tokens,
            "latency_ms": record.latency_ms,
            "ttft_ms": record.ttft_ms,
            "request_metadata": json.dumps(record.request_metadata, ensure_ascii=False, sort_keys=True),
            "region": record.region,
            "performance_tier": record.performance_latency,
            "provisioned_model_arn": record.provisioned_model_arn,
            "cost_picousd": to_picousd(cost),
            "tags": dict(record.request_metadata),
        }

    def record(self, record: InvocationRecord) -> None:
        row = self.row(record)
        with self._lock:
            if not self._closed:
                self._pending.append(row)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
                    self._thread.start()
                self._lock.notify_all()
                return
        # A stream that finishes after shutdown began: write it here rather than lose it.
        self._write([row], attempts=3)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written; False if that took longer than ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._writing, timeout)

    def close(self) -> None:
        """Write what is queued, stop the writer and release the database."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._writing = len(batch)
            try:
                self._write(batch, attempts=None)
            finally:
                with self._lock:
                    self._writing = 0
                    self._lock.notify_all()

    def _write(self, rows: list[dict[str, Any]], attempts: int | None) -> None:
        """Insert, retrying a failing database every second (forever while running; a few times at shutdown)."""
        tried = 0
        while True:
            try:
                self.store.add(rows)
                return
            except Exception:
                tried += 1
                if (attempts is not None and tried >= attempts) or (self._closed and tried >= 3):
                    log.exception("lost %d usage records: the metadata database refused them", len(rows))
                    return
                log.exception("cannot write %d usage records; retrying", len(rows))
                time.sleep(1)
