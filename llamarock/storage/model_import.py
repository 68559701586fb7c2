"""The Custom Model Import store: model import jobs and the imported models they make. All times are UTC.

An imported model's weights are one GGUF file under the data dir (``gguf_path``, relative to it), written by the job
before the model row exists: a model row therefore always has whole weights, and a job that died midway leaves
only a ``.part`` file that its resumed run overwrites.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Boolean, DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, ListFilter, Store
from llamarock.storage.provisioned import utc

JobStatus = Literal["InProgress", "Completed", "Failed"]


class ModelImportJobRow(Base):
    __tablename__ = "model_import_jobs"

    job_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    model_id: Mapped[str] = mapped_column(String(12))
    model_name: Mapped[str] = mapped_column(String(63))
    role_arn: Mapped[str] = mapped_column(String(2048))
    s3_uri: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_modified: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text, default="{}")


class ImportedModelRow(Base):
    __tablename__ = "imported_models"

    model_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    job_arn: Mapped[str] = mapped_column(String(256))
    job_name: Mapped[str] = mapped_column(String(63))
    s3_uri: Mapped[str] = mapped_column(String(1024))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    architecture: Mapped[str] = mapped_column(String(64))
    gguf_path: Mapped[str] = mapped_column(Text)
    parameters: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    custom_model_units: Mapped[int] = mapped_column(Integer)
    instruct: Mapped[bool] = mapped_column(Boolean)
    context_length: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True)
class ImportJob:
    """A model import job as stored. ``model_id`` is the id its imported model gets (chosen at create, so that a
    resumed run makes the same model); ``details`` keeps what only Get shows (vpcConfig, the model's tags, KMS key)."""

    job_id: str
    arn: str
    region: str
    name: str
    model_id: str
    model_name: str
    role_arn: str
    s3_uri: str
    status: JobStatus
    created: datetime
    last_modified: datetime
    client_token: str | None
    request_digest: str
    failure_message: str | None = None
    end_time: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportedModel:
    """An imported model: its GGUF weights (``gguf_path``, relative to the data dir) and what Bedrock shows of it."""

    model_id: str
    arn: str
    region: str
    name: str
    job_arn: str
    job_name: str
    s3_uri: str
    created: datetime
    architecture: str
    gguf_path: str
    parameters: int
    size_bytes: int
    custom_model_units: int
    instruct: bool
    context_length: int


def _job(row: ModelImportJobRow) -> ImportJob:
    return ImportJob(
        row.job_id, row.arn, row.region, row.name, row.model_id, row.model_name, row.role_arn, row.s3_uri,
        row.status, utc(row.created), utc(row.last_modified), row.client_token,  # type: ignore[arg-type]
        row.request_digest, row.failure_message, utc(row.end_time) if row.end_time else None,
        json.loads(row.details or "{}"),
    )


def _model(row: ImportedModelRow) -> ImportedModel:
    return ImportedModel(
        row.model_id, row.arn, row.region, row.name, row.job_arn, row.job_name, row.s3_uri, utc(row.created),
        row.architecture, row.gguf_path, row.parameters, row.size_bytes, row.custom_model_units, row.instruct,
        row.context_length,
    )


class ModelImportStore(Store):
    """Model import jobs and imported models. ``lock`` serialises check-then-write sequences (unique names,
    idempotency tokens) within the process."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- jobs

    def insert(self, job: ImportJob) -> None:
        with self.db.session(write=True) as session:
            session.add(ModelImportJobRow(
                job_id=job.job_id, arn=job.arn, region=job.region, name=job.name, model_id=job.model_id,
                model_name=job.model_name, role_arn=job.role_arn, s3_uri=job.s3_uri, status=job.status,
                failure_message=job.failure_message, created=job.created, last_modified=job.last_modified,
                end_time=job.end_time, client_token=job.client_token, request_digest=job.request_digest,
                details=json.dumps(job.details),
            ))

    def find_token(self, region: str, token: str) -> ImportJob | None:
        with self.db.session() as session:
            row = session.execute(select(ModelImportJobRow).where(
                ModelImportJobRow.region == region, ModelImportJobRow.client_token == token)).scalars().first()
            return _job(row) if row is not None else None

    def name_taken(self, region: str, name: str) -> bool:
        """Whether a job of ``region`` has this name (job names are unique in a region)."""
        with self.db.session() as session:
            return session.execute(select(ModelImportJobRow.job_id).where(
                ModelImportJobRow.region == region, ModelImportJobRow.name == name)).first() is not None

    def model_name_taken(self, region: str, name: str) -> bool:
        """Whether an imported model, or a job still making one, has this name in ``region``."""
        with self.db.session() as session:
            if session.execute(select(ImportedModelRow.model_id).where(
                    ImportedModelRow.region == region, ImportedModelRow.name == name)).first() is not None:
                return True
            return session.execute(select(ModelImportJobRow.job_id).where(
                ModelImportJobRow.region == region, ModelImportJobRow.model_name == name,
                ModelImportJobRow.status == "InProgress")).first() is not None

    def job(self, region: str, identifier: str) -> ImportJob | None:
        """A job of ``region`` by ARN, id or name."""
        with self.db.session() as session:
            for column in (ModelImportJobRow.arn, ModelImportJobRow.job_id, ModelImportJobRow.name):
                row = session.execute(select(ModelImportJobRow).where(
                    ModelImportJobRow.region == region, column == identifier)).scalars().first()
                if row is not None:
                    return _job(row)
        return None

    def get_job(self, job_id: str) -> ImportJob | None:
        with self.db.session() as session:
            row = session.get(ModelImportJobRow, job_id)
            return _job(row) if row is not None else None

    def in_progress(self) -> list[ImportJob]:
        with self.db.session() as session:
            rows = session.execute(select(ModelImportJobRow).where(ModelImportJobRow.status == "InProgress")
                                   .order_by(ModelImportJobRow.created)).scalars()
            return [_job(row) for row in rows]

    def finish(self, job: ImportJob, now: datetime, model: ImportedModel | None = None,
               failure: str | None = None) -> ImportJob:
        """End a job: Completed with its model (both written in one transaction), or Failed with ``failure``."""
        status: JobStatus = "Completed" if model is not None else "Failed"
        with self.db.session(write=True) as session:
            row = session.get(ModelImportJobRow, job.job_id)
            if row is None:
                raise KeyError(job.job_id)
            row.status, row.last_modified, row.end_time, row.failure_message = status, now, now, failure
            if model is not None and session.get(ImportedModelRow, model.model_id) is None:
                session.add(ImportedModelRow(
                    model_id=model.model_id, arn=model.arn, region=model.region, name=model.name,
                    job_arn=model.job_arn, job_name=model.job_name, s3_uri=model.s3_uri, created=model.created,
                    architecture=model.architecture, gguf_path=model.gguf_path, parameters=model.parameters,
                    size_bytes=model.size_bytes, custom_model_units=model.custom_model_units,
                    instruct=model.instruct, context_length=model.context_length,
                ))
        return replace(job, status=status, last_modified=now, end_time=now, failure_message=failure)

    def jobs_page(self, query: ListFilter) -> tuple[list[ImportJob], bool]:
        statement = select(ModelImportJobRow).where(ModelImportJobRow.region == query.region)
        if query.status is not None:
            statement = statement.where(ModelImportJobRow.status == query.status)
        if query.name_contains is not None:
            statement = statement.where(ModelImportJobRow.name.contains(query.name_contains, autoescape=True))
        if query.created_after is not None:
            statement = statement.where(ModelImportJobRow.created > query.created_after)
        if query.created_before is not None:
            statement = statement.where(ModelImportJobRow.created < query.created_before)
        created = ModelImportJobRow.created
        statement = statement.order_by(created.desc() if query.descending else created.asc(),
                                       ModelImportJobRow.job_id)
        with self.db.session() as session:
            rows = list(session.execute(statement.offset(query.offset).limit(query.limit + 1)).scalars())
            return [_job(row) for row in rows[: query.limit]], len(rows) > query.limit

    # ------------------------------------------------------------------------------------------------- models

    def model(self, region: str, identifier: str) -> ImportedModel | None:
        """An imported model of ``region`` by ARN, name or id."""
        with self.db.session() as session:
            for column in (ImportedModelRow.arn, ImportedModelRow.name, ImportedModelRow.model_id):
                row = session.execute(select(ImportedModelRow).where(
                    ImportedModelRow.region == region, column == identifier)).scalars().first()
                if row is not None:
                    return _model(row)
        return None

    def get_model(self, model_id: str) -> ImportedModel | None:
        with self.db.session() as session:
            row = session.get(ImportedModelRow, model_id)
            return _model(row) if row is not None else None

    def models_page(self, query: ListFilter) -> tuple[list[ImportedModel], bool]:
        statement = select(ImportedModelRow).where(ImportedModelRow.region == query.region)
        if query.name_contains is not None:
            statement = statement.where(ImportedModelRow.name.contains(query.name_contains, autoescape=True))
        if query.created_after is not None:
            statement = statement.where(ImportedModelRow.created > query.created_after)
        if query.created_before is not None:
            statement = statement.where(ImportedModelRow.created < query.created_before)
        created = ImportedModelRow.created
        statement = statement.order_by(created.desc() if query.descending else created.asc(),
                                       ImportedModelRow.model_id)
        with self.db.session() as session:
            rows = list(session.execute(statement.offset(query.offset).limit(query.limit + 1)).scalars())
            return [_model(row) for row in rows[: query.limit]], len(rows) > query.limit

    def delete_model(self, model_id: str) -> bool:
        with self.db.session(write=True) as session:
            row = session.get(ImportedModelRow, model_id)
            if row is None:
                return False
            session.delete(row)
            return True
