"""The batch inference store: model invocation jobs, and each finished record's output line.

Why the results live here (and not in an append-only file beside the output): a record counts as processed when its
result row is committed, in the same transaction that moves the job's counters, and the row's primary key
``(job_id, file, line)`` makes a second commit of the same record a no-op. So after a ``kill -9`` the job's
counters and its results can never disagree, and a record run twice by a resumed job is stored once; the output
files are written from these rows, in input order, only when the job ends (Bedrock also writes them at the end).
An append-only file would need its own fsync'd index and a reconciliation step at start-up to get the same.
All times are UTC.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, String, Text, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, Store

FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")


class BatchJobRow(Base):
    __tablename__ = "batch_jobs"

    job_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    model_id: Mapped[str] = mapped_column(String(2048))
    role_arn: Mapped[str] = mapped_column(String(2048))
    invocation_type: Mapped[str] = mapped_column(String(16))
    input_config: Mapped[str] = mapped_column(Text)
    output_config: Mapped[str] = mapped_column(Text)
    vpc_config: Mapped[str | None] = mapped_column(Text, nullable=True)
    timeout_hours: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    submit_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expiration_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    caller_arn: Mapped[str] = mapped_column(String(2048))


class BatchResultRow(Base):
    __tablename__ = "batch_results"

    job_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    file: Mapped[str] = mapped_column(String(1024), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class BatchJob:
    """A model invocation job as stored. ``input_config``/``output_config``/``vpc_config`` are the request's
    members as given; the counters are what the committed results say."""

    job_id: str
    arn: str
    region: str
    name: str
    model_id: str
    role_arn: str
    invocation_type: str
    input_config: dict[str, Any]
    output_config: dict[str, Any]
    vpc_config: dict[str, Any] | None
    timeout_hours: int | None
    status: str
    message: str | None
    submit_time: datetime
    last_modified: datetime
    end_time: datetime | None
    expiration_time: datetime | None
    client_token: str | None
    request_digest: str
    caller_arn: str
    total: int | None = None
    processed: int = 0
    succeeded: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tags: tuple[tuple[str, str], ...] = field(default=())

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class JobFilter:
    """ListModelInvocationJobs' filters, sort and page."""

    region: str
    status: str | None = None
    name_contains: str | None = None
    submitted_after: datetime | None = None
    submitted_before: datetime | None = None
    descending: bool = True
    offset: int = 0
    limit: int = 1000


def utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _job(row: BatchJobRow) -> BatchJob:
    return BatchJob(
        row.job_id, row.arn, row.region, row.name, row.model_id, row.role_arn, row.invocation_type,
        json.loads(row.input_config), json.loads(row.output_config),
        json.loads(row.vpc_config) if row.vpc_config else None, row.timeout_hours, row.status, row.message,
        utc(row.submit_time), utc(row.last_modified), utc(row.end_time) if row.end_time else None,
        utc(row.expiration_time) if row.expiration_time else None, row.client_token, row.request_digest,
        row.caller_arn, row.total, row.processed, row.succeeded, row.errors, row.input_tokens, row.output_tokens,
    )


class BatchStore(Store):
    """Model invocation jobs and their results in the metadata database. ``lock`` serialises check-then-write
    sequences (a unique name, an idempotency token) within the process."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def insert(self, job: BatchJob) -> None:
        with self.db.session(write=True) as session:
            session.add(BatchJobRow(
                job_id=job.job_id, arn=job.arn, region=job.region, name=job.name, model_id=job.model_id,
                role_arn=job.role_arn, invocation_type=job.invocation_type,
                input_config=json.dumps(job.input_config), output_config=json.dumps(job.output_config),
                vpc_config=json.dumps(job.vpc_config) if job.vpc_config is not None else None,
                timeout_hours=job.timeout_hours, status=job.status, message=job.message,
                submit_time=job.submit_time, last_modified=job.last_modified, end_time=job.end_time,
                expiration_time=job.expiration_time, total=job.total, processed=0, succeeded=0, errors=0,
                input_tokens=0, output_tokens=0, client_token=job.client_token, request_digest=job.request_digest,
                caller_arn=job.caller_arn,
            ))

    def get(self, job_id: str) -> BatchJob | None:
        with self.db.session() as session:
            row = session.get(BatchJobRow, job_id)
            return _job(row) if row is not None else None

    def find_token(self, region: str, token: str) -> BatchJob | None:
        with self.db.session() as session:
            row = session.execute(select(BatchJobRow).where(
                BatchJobRow.region == region, BatchJobRow.client_token == token)).scalars().first()
            return _job(row) if row is not None else None

    def name_taken(self, region: str, name: str) -> bool:
        """Whether a job of ``region`` that has not finished has this name (a finished job's name may be reused)."""
        with self.db.session() as session:
            row = session.execute(select(BatchJobRow.job_id).where(
                BatchJobRow.region == region, BatchJobRow.name == name, BatchJobRow.status.not_in(FINISHED),
            )).scalars().first()
            return row is not None

    def unfinished(self) -> list[BatchJob]:
        """Every job not finished, oldest first."""
        with self.db.session() as session:
            rows = session.execute(select(BatchJobRow).where(BatchJobRow.status.not_in(FINISHED))
                                   .order_by(BatchJobRow.submit_time, BatchJobRow.job_id)).scalars()
            return [_job(row) for row in rows]

    def page(self, query: JobFilter) -> tuple[list[BatchJob], bool]:
        statement = select(BatchJobRow).where(BatchJobRow.region == query.region)
        if query.status is not None:
            statement = statement.where(BatchJobRow.status == query.status)
        if query.name_contains is not None:
            statement = statement.where(BatchJobRow.name.contains(query.name_contains, autoescape=True))
        if query.submitted_after is not None:
            statement = statement.where(BatchJobRow.submit_time > query.submitted_after)
        if query.submitted_before is not None:
            statement = statement.where(BatchJobRow.submit_time < query.submitted_before)
        submitted = BatchJobRow.submit_time
        statement = statement.order_by(submitted.desc() if query.descending else submitted.asc(), BatchJobRow.job_id)
        with self.db.session() as session:
            rows = list(session.execute(statement.offset(query.offset).limit(query.limit + 1)).scalars())
            return [_job(row) for row in rows[: query.limit]], len(rows) > query.limit

    def set_status(self, job_id: str, status: str, now: datetime, message: str | None = None, *,
                   only_from: tuple[str, ...] | None = None, total: int | None = None) -> BatchJob | None:
        """Move a job to ``status`` (only from one of ``only_from``, when given); the job as it is afterwards."""
        with self.db.session(write=True) as session:
            row = session.get(BatchJobRow, job_id)
            if row is None:
                return None
            if only_from is None or row.status in only_from:
                row.status = status
                row.last_modified = now
                if message is not None:
                    row.message = message
                if total is not None:
                    row.total = total
                if status in FINISHED:
                    row.end_time = now
            return _job(row)

    def set_message(self, job_id: str, message: str, now: datetime) -> None:
        with self.db.session(write=True) as session:
            row = session.get(BatchJobRow, job_id)
            if row is not None:
                row.message = message
                row.last_modified = now

    def commit_result(self, job_id: str, file: str, line: int, ok: bool, output: dict[str, Any],
                      input_tokens: int, output_tokens: int, now: datetime) -> bool:
        """Store a finished record and count it, in one transaction; False (nothing changed) when it was stored
        before."""
        with self.db.session(write=True) as session:
            inserted = session.execute(sqlite_insert(BatchResultRow).values(
                job_id=job_id, file=file, line=line, ok=ok, output=json.dumps(output, ensure_ascii=False),
            ).on_conflict_do_nothing()) if self.db.url.startswith("sqlite") else None
            if inserted is None:
                if session.get(BatchResultRow, (job_id, file, line)) is not None:
                    return False
                session.add(BatchResultRow(job_id=job_id, file=file, line=line, ok=ok,
                                           output=json.dumps(output, ensure_ascii=False)))
                session.flush()
            elif not inserted.rowcount:  # type: ignore[attr-defined]
                return False
            row = session.get(BatchJobRow, job_id)
            if row is not None:
                row.processed += 1
                row.succeeded += 1 if ok else 0
                row.errors += 0 if ok else 1
                row.input_tokens += input_tokens
                row.output_tokens += output_tokens
                row.last_modified = now
            return True

    def done_lines(self, job_id: str) -> set[tuple[str, int]]:
        """The (file, line) of every record of the job already stored."""
        with self.db.session() as session:
            rows = session.execute(select(BatchResultRow.file, BatchResultRow.line)
                                   .where(BatchResultRow.job_id == job_id))
            return {(file, line) for file, line in rows}

    def results(self, job_id: str, file: str) -> list[str]:
        """The stored output lines of one input file, in input order."""
        with self.db.session() as session:
            rows = session.execute(select(BatchResultRow.output).where(
                BatchResultRow.job_id == job_id, BatchResultRow.file == file).order_by(BatchResultRow.line))
            return [output for (output,) in rows]

    def counts_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(BatchJobRow.status, func.count()).group_by(BatchJobRow.status))
            return {status: int(count) for status, count in rows}

