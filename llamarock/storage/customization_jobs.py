"""The model customization job store: each fine-tuning job as CreateModelCustomizationJob made it, its status and
its progress (the trainer's last step, epoch and losses, copied in by the job service as the trainer reports them).
All times are UTC. The trainer's own files (rows, checkpoint, adapter) are under the data dir, not here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, ListFilter, Store
from llamarock.storage.provisioned import utc

FINISHED = ("Completed", "Failed", "Stopped")


class CustomizationJobRow(Base):
    __tablename__ = "customization_jobs"

    job_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    base_model_id: Mapped[str] = mapped_column(String(256))
    base_model_identifier: Mapped[str] = mapped_column(String(2048))
    custom_model_name: Mapped[str] = mapped_column(String(63))
    custom_model_arn: Mapped[str] = mapped_column(String(1011))
    role_arn: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    creation_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    request: Mapped[str] = mapped_column(Text)  # the request's members, as JSON (configs, tags, hyperparameters)
    progress: Mapped[str] = mapped_column(Text, default="{}")


@dataclass(frozen=True)
class CustomizationJob:
    """A model customization job as stored. ``request`` holds the create request's members as given (with the
    hyperparameters completed by their defaults); ``progress`` what the trainer reported last (``step``,
    ``total_steps``, ``epoch``, ``epochs``, ``training_loss``, ``validation_loss``, ``checkpoint_step``)."""

    job_id: str
    arn: str
    region: str
    name: str
    base_model_id: str
    base_model_identifier: str
    custom_model_name: str
    custom_model_arn: str
    role_arn: str
    status: str
    creation_time: datetime
    last_modified: datetime
    request_digest: str
    request: dict[str, Any]
    failure_message: str | None = None
    end_time: datetime | None = None
    client_token: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED




def _job(row: CustomizationJobRow) -> CustomizationJob:
    return CustomizationJob(
        row.job_id, row.arn, row.region, row.name, row.base_model_id, row.base_model_identifier,
        row.custom_model_name, row.custom_model_arn, row.role_arn, row.status, utc(row.creation_time),
        utc(row.last_modified), row.request_digest, json.loads(row.request), row.failure_message,
        utc(row.end_time) if row.end_time else None, row.client_token, json.loads(row.progress or "{}"),
    )


class CustomizationJobStore(Store):
    """Model customization jobs in the metadata database; ``lock`` serialises the create's check-then-write."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def insert(self, job: CustomizationJob) -> None:
        with self.db.session(write=True) as session:
            session.add(CustomizationJobRow(
                job_id=job.job_id, arn=job.arn, region=job.region, name=job.name, base_model_id=job.base_model_id,
                base_model_identifier=job.base_model_identifier, custom_model_name=job.custom_model_name,
                custom_model_arn=job.custom_model_arn, role_arn=job.role_arn, status=job.status,
                failure_message=job.failure_message, creation_time=job.creation_time,
                last_modified=job.last_modified, end_time=job.end_time, client_token=job.client_token,
                request_digest=job.request_digest, request=json.dumps(job.request),
                progress=json.dumps(job.progress),
            ))

    def get(self, job_id: str) -> CustomizationJob | None:
        with self.db.session() as session:
            row = session.get(CustomizationJobRow, job_id)
            return _job(row) if row is not None else None

    def find(self, region: str, identifier: str) -> CustomizationJob | None:
        """A job of ``region`` by ARN or name (the newest of that name)."""
        with self.db.session() as session:
            column = CustomizationJobRow.arn if identifier.startswith("arn:") else CustomizationJobRow.name
            row = session.execute(select(CustomizationJobRow).where(
                CustomizationJobRow.region == region, column == identifier,
            ).order_by(CustomizationJobRow.creation_time.desc())).scalars().first()
            return _job(row) if row is not None else None

    def find_token(self, region: str, token: str) -> CustomizationJob | None:
        with self.db.session() as session:
            row = session.execute(select(CustomizationJobRow).where(
                CustomizationJobRow.region == region, CustomizationJobRow.client_token == token)).scalars().first()
            return _job(row) if row is not None else None

    def name_taken(self, region: str, name: str) -> bool:
        """Whether a job of ``region`` already has this name (Bedrock's job names are unique per account and
        region)."""
        with self.db.session() as session:
            return session.execute(select(CustomizationJobRow.job_id).where(
                CustomizationJobRow.region == region, CustomizationJobRow.name == name)).first() is not None

    def model_name_taken(self, region: str, name: str) -> bool:
        """Whether a job of ``region`` that did not fail or stop is making a custom model of this name."""
        with self.db.session() as session:
            return session.execute(select(CustomizationJobRow.job_id).where(
                CustomizationJobRow.region == region, CustomizationJobRow.custom_model_name == name,
                CustomizationJobRow.status.in_(("InProgress", "Stopping")))).first() is not None

    def unfinished(self) -> list[CustomizationJob]:
        with self.db.session() as session:
            rows = session.execute(select(CustomizationJobRow).where(CustomizationJobRow.status.not_in(FINISHED))
                                   .order_by(CustomizationJobRow.creation_time)).scalars()
            return [_job(row) for row in rows]

    def page(self, query: ListFilter) -> tuple[list[CustomizationJob], bool]:
        statement = select(CustomizationJobRow).where(CustomizationJobRow.region == query.region)
        if query.status is not None:
            statement = statement.where(CustomizationJobRow.status == query.status)
        if query.name_contains is not None:
            statement = statement.where(CustomizationJobRow.name.contains(query.name_contains, autoescape=True))
        if query.created_after is not None:
            statement = statement.where(CustomizationJobRow.creation_time > query.created_after)
        if query.created_before is not None:
            statement = statement.where(CustomizationJobRow.creation_time < query.created_before)
        created = CustomizationJobRow.creation_time
        statement = statement.order_by(created.desc() if query.descending else created.asc(),
                                       CustomizationJobRow.job_id)
        with self.db.session() as session:
            rows = list(session.execute(statement.offset(query.offset).limit(query.limit + 1)).scalars())
            return [_job(row) for row in rows[: query.limit]], len(rows) > query.limit

    def set_status(self, job_id: str, status: str, now: datetime, failure_message: str | None = None, *,
                   only_from: tuple[str, ...] | None = None) -> CustomizationJob | None:
        """Move a job to ``status`` (only from one of ``only_from`` when given); the job as it is afterwards."""
        with self.db.session(write=True) as session:
            row = session.get(CustomizationJobRow, job_id)
            if row is None:
                return None
            if only_from is None or row.status in only_from:
                row.status = status
                row.last_modified = now
                if failure_message is not None:
                    row.failure_message = failure_message
                if status in FINISHED:
                    row.end_time = now
            return _job(row)

    def set_progress(self, job_id: str, progress: dict[str, Any], now: datetime) -> None:
        with self.db.session(write=True) as session:
            row = session.get(CustomizationJobRow, job_id)
            if row is not None:
                row.progress = json.dumps(progress)
                row.last_modified = now

    def counts_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(CustomizationJobRow.status, func.count())
                                   .group_by(CustomizationJobRow.status))
            return {status: int(count) for status, count in rows}
