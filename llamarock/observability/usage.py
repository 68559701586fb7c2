"""Usage records: one row per invocation in the metadata database, priced when it is recorded, and the report.

:class:`UsageRecorder` is the observer ``create_app`` adds. ``record`` turns an :class:`InvocationRecord` into a row
(with its cost from ``bedrock.pricing``) and, before it returns, appends the row to the process's *usage journal*;
one background thread moves journaled rows into the metadata database in batches and only then deletes them from the
journal. ``flush`` waits until everything recorded is in the database (a report in the same process calls it
first); ``close`` writes the rest, stops the thread and releases the journal (the app's shutdown calls it).

Durability: a usage row is on disk before the response's last byte leaves the server, so killing the server
(``kill -9``, the OOM killer, a crash in llama.cpp) never loses the usage of an answered request, and never counts
one twice. Why that ordering holds: ``Observers.emit`` calls ``record`` synchronously. For a whole response
(InvokeModel, Converse, any JSON error) the runtime dispatcher emits before it returns the response to Starlette,
so the row is journaled before the first byte is sent. For a stream, ``routes/common.py:event_stream`` emits in its
body generator's ``finally``, which runs when Starlette asks for the chunk after the last frame — after the last
frame was handed to the server, but before Starlette sends the final empty body (``more_body: False``), which is
what ends the response (the terminating ``0``-length chunk of chunked encoding, or closing the connection). What a
client can rely on: once it has seen the *end* of the response body (boto3: the loop over the event stream
finished), the invocation's usage row is durable. Having parsed the last event (``metadata``) is not enough: a
server killed between that frame and the end of the body may have no row for the request, and the client sees
the stream cut off rather than ended.

The journal, and why this design: the row itself cannot be written to the metadata database on the request path
(it may be PostgreSQL across a network, or SQLite in rollback-journal mode, whose commit costs several fsyncs), and
``record`` runs on the event loop. Instead it is one INSERT into a small local SQLite file in WAL mode with
``synchronous=NORMAL``: a commit is a ``write()`` into the WAL, no fsync, a few tens of microseconds
(``bench/usage_durability.py`` measures it). The data is then in the kernel's page cache, which survives the
process dying; a power loss or kernel crash can roll back the last commits (``synchronous=FULL`` would cover that
for one fsync per record, measured by the same bench, and would have to leave the event loop). The journal's
automatic checkpoints are off on the appending connection; the writer thread checkpoints, every ``CHECKPOINT_ROWS``
rows, so the event loop pays one fsync per that many records (the append that restarts the WAL syncs its header).
If the journal cannot be opened or written (a read-only or full disk), rows are kept in memory, as
before, and an error is logged: the server still answers, but a crash then loses the rows not yet written.

Exactly once: the metadata database and the journal are two databases, so moving a batch cannot be one
transaction. Instead :meth:`UsageStore.add` is idempotent by request id (unique per invocation: the edge mints one
per request): it skips ids already stored. A crash after the batch was committed to the database but before it was
deleted from the journal makes the next start write it again, and ``add`` skips it.

One journal per process, always local: ``<data_dir>/spool/usage-<n>.db``, owned through an exclusive ``flock`` on
``usage-<n>.lock`` that the kernel releases when the process dies, however it dies. A starting recorder takes the
lowest free ``<n>`` and replays what that journal holds, and also drains every other journal whose lock is free
(left by a process that died and was not restarted, when several servers share a data dir). This holds with
``database_url`` pointing at PostgreSQL too: the journal is the replica's own outbox under its data dir, never the
shared database. Lock files are never deleted (so two processes can never lock two different files of one name);
an empty journal is a few KiB and the next process reuses it. ``flock`` is POSIX (Linux, macOS).

:class:`UsageStore` owns the tables and the report, which the CLI (``llamarock usage``) and the HTTP route
(``GET /llamarock/usage``) share. Costs are stored as integer pico-dollars (1e-12 USD), so that SQL sums are exact
on SQLite and PostgreSQL alike for any price with up to six decimals per million tokens.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import case, func, select

from llamarock.bedrock import catalog, pricing
from llamarock.bedrock.imported_models import is_imported_model_arn
from llamarock.bedrock.service_tiers import DEFAULT_TIER, ServiceTier, tier_of
from llamarock.errors import ValidationException
from llamarock.observability.outcome import catalog_model_id, counts_as_invocation, outcome
from llamarock.observability.records import InvocationRecord
from llamarock.settings import PriceSettings, Settings
from llamarock.storage.db import Store
from llamarock.storage.usage import UsageRow, UsageTagRow

log = logging.getLogger(__name__)

BATCH_TIER = "batch"  # the report's service tier of batch inference records
Grouping = Literal["model", "principal", "tag", "day", "tier"]
GROUPINGS: tuple[Grouping, ...] = ("model", "principal", "tag", "day", "tier")
KEY_NAMES: dict[str, str] = {"model": "modelId", "principal": "principal", "tag": "tag", "day": "day",
                             "tier": "serviceTier"}
PICO = Decimal(10) ** 12


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

    def add(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows built by :meth:`UsageRecorder.row`, in one transaction; the number inserted.

        Idempotent by request id: a row whose request id is already stored (or repeated in ``rows``) is skipped, so
        that a journal replayed after a crash writes each invocation once (see the module docstring).
        """
        with self.db.session(write=True) as session:
            wanted = sorted({fields["request_id"] for fields in rows})
            stored: set[str] = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                stored.update(session.scalars(select(UsageRow.request_id).where(UsageRow.request_id.in_(chunk))))
            inserted = 0
            for fields in rows:
                if fields["request_id"] in stored:
                    continue
                stored.add(fields["request_id"])
                inserted += 1
                tags = fields["tags"]
                row = UsageRow(**{k: v for k, v in fields.items() if k != "tags"})
                row.tags = [UsageTagRow(key=k, value=v) for k, v in tags.items()]
                session.add(row)
        return inserted

    def request_ids(self) -> list[str]:
        """The request id of every stored row, oldest first (a request id appears once unless something is wrong)."""
        with self.db.session() as session:
            return list(session.scalars(select(UsageRow.request_id).order_by(UsageRow.id)))

    def report(self, by: Grouping = "model", since: datetime | None = None) -> list[UsageSummary]:
        """Totals per model (catalog id, else the identifier as sent), principal, tag (key=value), UTC day or
        service tier."""
        keys: list[Any]
        if by == "model":
            keys = [func.coalesce(UsageRow.model_id, UsageRow.model_identifier)]
        elif by == "principal":
            keys = [UsageRow.principal]
        elif by == "day":
            keys = [UsageRow.day]
        elif by == "tier":
            keys = [func.coalesce(UsageRow.service_tier, DEFAULT_TIER)]
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


JOURNAL_BATCH = 500
# The writer checkpoints the journal's WAL every this many rows: each checkpoint makes the next append restart the
# WAL, which syncs its header once (an fsync on the event loop, ~0.3 ms here), so it must stay rare; the WAL holds
# up to a few MiB in between.
CHECKPOINT_ROWS = 1000
_JOURNAL_LOCK = re.compile(r"usage-\d+\.lock")
_JOURNAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, row TEXT NOT NULL)"
)
Synchronous = Literal["NORMAL", "FULL"]


def _encode(row: dict[str, Any]) -> str:
    return json.dumps({**row, "time": row["time"].isoformat()}, ensure_ascii=False, separators=(",", ":"))


def _decode(text: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(text)
    row["time"] = datetime.fromisoformat(row["time"])
    return row


def _try_lock(path: Path) -> int | None:
    """A descriptor holding an exclusive ``flock`` on ``path`` (created if missing); None while another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    if not path.exists():  # owner-only, like the other data files (SQLite gives its -wal and -shm the same mode)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    # isolation_level=None: each statement commits on its own; WAL, so that a commit is one write() (module doc).
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    except BaseException:
        db.close()
        raise
    return db


class UsageJournal:
    """One process's journal of usage rows not yet in the metadata database (see the module docstring).

    Thread-safe: the event loop appends while the writer thread takes and removes, each one short statement under
    one lock; the writer's checkpoints (the only fsyncs) run on a second connection, outside that lock.
    """

    def __init__(self, path: Path, lock_fd: int, synchronous: Synchronous = "NORMAL") -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._synchronous: Synchronous = synchronous
        self._lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        try:
            self._db = _connect(path, synchronous)
            try:
                self._db.execute("PRAGMA wal_autocheckpoint=0")  # never a checkpoint inside an append
                self._db.execute(_JOURNAL_SCHEMA)
            except BaseException:
                self._db.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def claim(cls, directory: Path, synchronous: Synchronous = "NORMAL") -> UsageJournal:
        """The lowest-numbered journal in ``directory`` that no live process holds, created if there is none."""
        directory.mkdir(parents=True, exist_ok=True)
        number = 0
        while True:
            fd = _try_lock(directory / f"usage-{number}.lock")
            if fd is not None:
                return cls(directory / f"usage-{number}.db", fd, synchronous)
            number += 1

    @classmethod
    def orphans(cls, directory: Path, exclude: UsageJournal | None) -> list[UsageJournal]:
        """The other journals in ``directory`` that hold rows and no live process: locked here, for draining."""
        found: list[UsageJournal] = []
        for lock_path in sorted(directory.glob("usage-*.lock")):
            path = lock_path.with_suffix(".db")
            if not _JOURNAL_LOCK.fullmatch(lock_path.name) or not path.exists():
                continue
            if exclude is not None and path == exclude.path:
                continue
            try:
                fd = _try_lock(lock_path)
                if fd is None:
                    continue  # a live process's own journal (or one it is draining)
                journal = cls(path, fd)
                if journal.count():
                    found.append(journal)
                else:
                    journal.close()
            except (OSError, sqlite3.Error) as error:
                log.error("cannot read the usage journal %s, left by a stopped process: %s", path, error)
        return found

    def append(self, row: dict[str, Any]) -> None:
        """Journal a row built by :meth:`UsageRecorder.row` (one committed INSERT: on disk when this returns)."""
        text = _encode(row)
        with self._lock:
            self._db.execute("INSERT INTO usage (request_id, row) VALUES (?, ?)", (row["request_id"], text))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    def take(self, limit: int) -> list[tuple[int, str]]:
        """The oldest ``limit`` entries (id, encoded row); they stay until :meth:`remove`."""
        with self._lock:
            return [(int(i), str(r)) for i, r in self._db.execute(
                "SELECT id, row FROM usage ORDER BY id LIMIT ?", (limit,)
            )]

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM usage WHERE id IN ({','.join('?' * len(ids))})", ids)

    def checkpoint(self) -> None:
        """Copy the WAL into the journal file (the writer thread's job: this is where the fsyncs are)."""
        if self._checkpointer is None:
            self._checkpointer = _connect(self.path, self._synchronous)
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Close the journal and release its lock (the rows it still holds stay for the next process)."""
        with self._lock:
            try:
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self._db.close()
            finally:
                os.close(self._lock_fd)


class UsageRecorder:
    """The usage observer: prices and journals each record; a background thread writes them (see module doc)."""

    def __init__(self, settings: Settings, store: UsageStore) -> None:
        self.store = store
        self._prices: Mapping[str, PriceSettings] = settings.prices
        self._cache_fraction = settings.cache_read_price_fraction
        self._tier_multipliers: Mapping[ServiceTier, Decimal] = settings.tier_price_multipliers
        self._batch_multiplier = settings.batch_price_multiplier
        for model_id in settings.prices:
            if catalog.get(model_id) is None:
                log.warning("prices: %r is not a catalog model id; its price is never used", model_id)
        self._lock = threading.Condition()
        self._memory: list[dict[str, Any]] = []  # rows the journal could not take: written, but not crash-proof
        self._queued = 0  # rows recorded here or found in journals, not yet in the database
        self._closed = False
        self._stopped = False  # the writer gave up at shutdown: what is left stays in the journals
        self._journal_failing = False
        self._since_checkpoint = 0
        self._thread: threading.Thread | None = None
        self._journal: UsageJournal | None = None
        self._orphans: list[UsageJournal] = []
        directory = settings.data_dir / "spool"
        try:
            journal = UsageJournal.claim(directory)
            try:
                self._queued = journal.count()  # left by this journal's previous owner, killed before writing them
            except sqlite3.Error:
                journal.close()
                raise
            self._journal = journal
        except (OSError, sqlite3.Error) as error:
            log.error("cannot open a usage journal in %s (%s): usage records wait in memory until written, and a "
                      "crash loses those not yet written", directory, error)
        for orphan in UsageJournal.orphans(directory, self._journal) if directory.is_dir() else []:
            try:
                self._queued += orphan.count()
                self._orphans.append(orphan)
            except sqlite3.Error as error:
                log.error("cannot read the usage journal %s, left by a stopped process: %s", orphan.path, error)
                orphan.close()
        if self._queued:
            log.info("writing %d usage records journaled by a process that stopped before writing them", self._queued)
            self._start()

    @property
    def journal_path(self) -> Path | None:
        """This process's journal (None when it could not be opened)."""
        return self._journal.path if self._journal is not None else None

    def row(self, record: InvocationRecord) -> dict[str, Any]:
        """The stored fields of a record (bodies are dropped here, so the journal never holds them)."""
        started = _utc(record.started_at)
        model_id = catalog_model_id(record)
        model_rates = pricing.rates(model_id, self._prices) if model_id else None
        tier = tier_of(record.service_tier)
        # A batch inference record is billed at batch_price_multiplier (Bedrock's batch: 50% of on-demand); its rows
        # are the service tier "batch" in the report.
        multiplier = self._tier_multipliers.get(tier, Decimal(1))
        if record.batch_job_arn is not None:
            multiplier = self._batch_multiplier
        cost = pricing.token_cost(
            model_rates, record.input_tokens, record.output_tokens, record.cache_read_tokens, self._cache_fraction,
            multiplier,
        )
        if record.provisioned_model_arn or (model_id is not None and is_imported_model_arn(model_id)):
            # Provisioned Throughput is billed per model unit and hour (pricing.provisioned_cost), and an imported
            # model per Custom Model Unit and 5-minute window (observability/imported.py), not per token.
            cost = Decimal(0)
        if record.flat_cost_usd is not None:
            cost = record.flat_cost_usd
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
            "counted": counts_as_invocation(record) and record.flat_cost_usd is None,
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
            "service_tier": BATCH_TIER if record.batch_job_arn is not None else tier,
            "provisioned_model_arn": record.provisioned_model_arn,
            "cost_picousd": to_picousd(cost),
            "tags": record.cost_tags(),
        }

    def record(self, record: InvocationRecord) -> None:
        """Journal the record's row before returning (the durability point: module doc); the writer does the rest."""
        row = self.row(record)
        with self._lock:
            if not self._closed:
                self._keep(row)
                self._queued += 1
                self._start()
                self._lock.notify_all()
                return
        # A stream that finishes after shutdown began: write it here rather than lose it.
        if not self._write([row], attempts=3):
            log.error("lost the usage record of request %s: the metadata database refused it", row["request_id"])

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record is written; False if that took longer than ``timeout`` seconds."""
        with self._lock:
            self._lock.wait_for(lambda: not self._queued or self._stopped, timeout)
            return not self._queued

    def close(self) -> None:
        """Write what is left, stop the writer and release the journals (the app closes the database)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=60)
            if thread.is_alive():
                log.error("the usage writer did not finish in time; the records it has not written stay in %s and "
                          "are written at the next start", self.journal_path)
                return
        with self._lock:
            journals = [*self._orphans, *([self._journal] if self._journal is not None else [])]
            self._orphans, self._journal = [], None
        for journal in journals:
            journal.close()

    def _keep(self, row: dict[str, Any]) -> None:
        """Append ``row`` to the journal, or to memory when the journal cannot take it (called with the lock)."""
        if self._journal is not None:
            try:
                self._journal.append(row)
                if self._journal_failing:
                    self._journal_failing = False
                    log.warning("the usage journal %s takes records again", self._journal.path)
                return
            except sqlite3.Error:
                if not self._journal_failing:
                    self._journal_failing = True
                    log.exception("cannot append to the usage journal %s: usage records wait in memory until "
                                  "written, and a crash loses those not yet written", self._journal.path)
        self._memory.append(row)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def _settle(self, written: int) -> None:
        with self._lock:
            self._queued -= written
            self._lock.notify_all()

    def _stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._queued:
            log.error("%d usage records are not written yet: they stay in the usage journal and are written at the "
                      "next start", self._queued)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queued or self._closed)
                if not self._queued:
                    return
                memory, self._memory = self._memory, []
            if memory:
                if not self._write(memory, attempts=None):
                    log.error("lost %d usage records: the metadata database refused them", len(memory))
                self._settle(len(memory))
                continue
            try:
                if not self._drain():
                    self._stop()
                    return
            except sqlite3.Error:
                log.exception("cannot read or update the usage journal")
                if self._closed:
                    self._stop()
                    return
                time.sleep(1)

    def _drain(self) -> bool:
        """Move one batch from a journal (stopped processes' first) into the database; False if it was refused."""
        for journal in [*self._orphans, *([self._journal] if self._journal is not None else [])]:
            entries = journal.take(JOURNAL_BATCH)
            if not entries:
                if journal is not self._journal:
                    with self._lock:
                        self._orphans.remove(journal)
                    journal.close()
                continue
            rows = []
            for entry_id, text in entries:
                try:
                    rows.append(_decode(text))
                except (ValueError, KeyError, TypeError):
                    log.error("dropping entry %d of the usage journal %s: it cannot be read", entry_id, journal.path)
            if rows and not self._write(rows, attempts=None):
                return False
            journal.remove([entry_id for entry_id, _ in entries])
            self._since_checkpoint += len(entries)
            if self._since_checkpoint >= CHECKPOINT_ROWS:  # an orphan is checkpointed when it is closed
                journal.checkpoint()
                self._since_checkpoint = 0
            self._settle(len(entries))
            return True
        with self._lock:  # nothing to take although the count said so: recount (appends wait for the lock)
            own = self._journal.count() if self._journal is not None else 0
            self._queued = len(self._memory) + own + sum(orphan.count() for orphan in self._orphans)
            self._lock.notify_all()
        return True

    def _write(self, rows: list[dict[str, Any]], attempts: int | None) -> bool:
        """Insert, retrying a failing database every second (forever while running; a few times at shutdown)."""
        tried = 0
        while True:
            try:
                self.store.add(rows)
                return True
            except Exception:
                tried += 1
                if (attempts is not None and tried >= attempts) or (self._closed and tried >= 3):
                    return False
                log.exception("cannot write %d usage records; retrying", len(rows))
                time.sleep(1)
