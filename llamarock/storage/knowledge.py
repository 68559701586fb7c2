"""Knowledge bases, their data sources, ingestion jobs, documents and RetrieveAndGenerate sessions (bedrock-agent and
bedrock-agent-runtime), in the metadata database.

The chunks and vectors themselves live in a vector store (``llamarock/knowledge/``); these tables are the record of
what exists, and of what each source document looked like when it was last indexed (its content hash and its
metadata sidecar's hash), which is what makes re-ingestion incremental and a resumed job free of duplicates. The
configurations Bedrock takes as nested structures are kept as JSON text, as the caller sent them. All times are UTC.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, Store

# The statistics of an ingestion job, as Bedrock names them (IngestionJobStatistics).
STATISTICS = (
    "numberOfDocumentsScanned", "numberOfMetadataDocumentsScanned", "numberOfNewDocumentsIndexed",
    "numberOfModifiedDocumentsIndexed", "numberOfMetadataDocumentsModified", "numberOfDocumentsDeleted",
    "numberOfDocumentsFailed", "numberOfDocumentsSkipped",
)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# ------------------------------------------------------------------------------------------------ knowledge bases


class KnowledgeBaseRow(Base):
    __tablename__ = "knowledge_bases"

    kb_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    role_arn: Mapped[str] = mapped_column(String(2048))
    configuration: Mapped[str] = mapped_column(Text)
    storage: Mapped[str | None] = mapped_column(Text, nullable=True)
    store_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    failure_reasons: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class KnowledgeBase:
    """One knowledge base. ``configuration`` is its knowledgeBaseConfiguration and ``storage`` its
    storageConfiguration (None: the embedded store), as sent; ``store_url`` is the PostgreSQL URL of an RDS one
    (None: the embedded SQLite store)."""

    kb_id: str
    arn: str
    region: str
    name: str
    description: str | None
    role_arn: str
    configuration: dict[str, Any]
    storage: dict[str, Any] | None
    store_url: str | None
    status: str
    failure_reasons: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    client_token: str | None
    request_digest: str

    @property
    def embedding_model_arn(self) -> str:
        vector = self.configuration.get("vectorKnowledgeBaseConfiguration") or {}
        return str(vector.get("embeddingModelArn", ""))

    @property
    def embedding_dimensions(self) -> int | None:
        vector = self.configuration.get("vectorKnowledgeBaseConfiguration") or {}
        bedrock = (vector.get("embeddingModelConfiguration") or {}).get("bedrockEmbeddingModelConfiguration") or {}
        dimensions = bedrock.get("dimensions")
        return int(dimensions) if dimensions is not None else None


def _kb(row: KnowledgeBaseRow) -> KnowledgeBase:
    return KnowledgeBase(
        row.kb_id, row.arn, row.region, row.name, row.description, row.role_arn, json.loads(row.configuration),
        _loads(row.storage), row.store_url, row.status, tuple(json.loads(row.failure_reasons or "[]")),
        _utc(row.created_at), _utc(row.updated_at), row.client_token, row.request_digest,
    )


# ------------------------------------------------------------------------------------------------ data sources


class DataSourceRow(Base):
    __tablename__ = "knowledge_base_data_sources"

    ds_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    kb_id: Mapped[str] = mapped_column(String(10), index=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    configuration: Mapped[str] = mapped_column(Text)
    ingestion: Mapped[str | None] = mapped_column(Text, nullable=True)
    deletion_policy: Mapped[str] = mapped_column(String(16))
    encryption: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    failure_reasons: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class DataSource:
    """One data source of a knowledge base: ``configuration`` is its dataSourceConfiguration, ``ingestion`` its
    vectorIngestionConfiguration (chunking), as sent."""

    ds_id: str
    kb_id: str
    name: str
    description: str | None
    configuration: dict[str, Any]
    ingestion: dict[str, Any] | None
    deletion_policy: str
    encryption: dict[str, Any] | None
    status: str
    failure_reasons: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    client_token: str | None
    request_digest: str

    @property
    def kind(self) -> str:
        return str(self.configuration.get("type", ""))

    @property
    def chunking(self) -> dict[str, Any]:
        return dict((self.ingestion or {}).get("chunkingConfiguration") or {})


def _ds(row: DataSourceRow) -> DataSource:
    return DataSource(
        row.ds_id, row.kb_id, row.name, row.description, json.loads(row.configuration), _loads(row.ingestion),
        row.deletion_policy, _loads(row.encryption), row.status, tuple(json.loads(row.failure_reasons or "[]")),
        _utc(row.created_at), _utc(row.updated_at), row.client_token, row.request_digest,
    )


# ------------------------------------------------------------------------------------------------ ingestion jobs


class IngestionJobRow(Base):
    __tablename__ = "knowledge_base_ingestion_jobs"

    job_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    kb_id: Mapped[str] = mapped_column(String(10), index=True)
    ds_id: Mapped[str] = mapped_column(String(10), index=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    statistics: Mapped[str] = mapped_column(Text)
    failure_reasons: Mapped[str] = mapped_column(Text, default="[]")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class IngestionJob:
    """One ingestion job: its status, Bedrock's statistics and the reasons files failed (at most a few hundred)."""

    job_id: str
    kb_id: str
    ds_id: str
    description: str | None
    status: str
    statistics: dict[str, int]
    failure_reasons: tuple[str, ...]
    started_at: datetime
    updated_at: datetime
    client_token: str | None
    request_digest: str


def _job(row: IngestionJobRow) -> IngestionJob:
    statistics = {name: 0 for name in STATISTICS} | json.loads(row.statistics)
    return IngestionJob(
        row.job_id, row.kb_id, row.ds_id, row.description, row.status, statistics,
        tuple(json.loads(row.failure_reasons or "[]")), _utc(row.started_at), _utc(row.updated_at),
        row.client_token, row.request_digest,
    )


# ------------------------------------------------------------------------------------------------ documents


class DocumentRow(Base):
    __tablename__ = "knowledge_base_documents"

    kb_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    ds_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    # The S3 URI of an S3 document, the caller's id of a CUSTOM one.
    identifier: Mapped[str] = mapped_column(String(2048), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # S3 | CUSTOM
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metadata_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    last_job_id: Mapped[str | None] = mapped_column(String(10), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Document:
    """What a knowledge base knows of one source document: its hashes when last indexed, its status (Bedrock's
    DocumentStatus) and the job that last looked at it."""

    kb_id: str
    ds_id: str
    identifier: str
    kind: str
    content_hash: str | None
    metadata_hash: str | None
    status: str
    status_reason: str | None
    chunks: int
    last_job_id: str | None
    updated_at: datetime


def _doc(row: DocumentRow) -> Document:
    return Document(row.kb_id, row.ds_id, row.identifier, row.kind, row.content_hash, row.metadata_hash,
                    row.status, row.status_reason, row.chunks, row.last_job_id, _utc(row.updated_at))


# ------------------------------------------------------------------------------------------------ sessions


class RagSessionRow(Base):
    __tablename__ = "knowledge_base_sessions"

    session_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    history: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


@dataclass
class RagSession:
    """A RetrieveAndGenerate session: the questions and answers so far, oldest first."""

    session_id: str
    turns: list[tuple[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ the store


class KnowledgeStore(Store):
    """Every knowledge-base table. ``lock`` serialises check-then-write sequences (unique names, idempotency tokens)
    within the process."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    # knowledge bases --------------------------------------------------------------------------------------------

    def insert_kb(self, kb: KnowledgeBase) -> None:
        with self.db.session(write=True) as session:
            session.add(KnowledgeBaseRow(
                kb_id=kb.kb_id, arn=kb.arn, region=kb.region, name=kb.name, description=kb.description,
                role_arn=kb.role_arn, configuration=json.dumps(kb.configuration), storage=_json(kb.storage),
                store_url=kb.store_url, status=kb.status, failure_reasons=json.dumps(list(kb.failure_reasons)),
                created_at=kb.created_at, updated_at=kb.updated_at, client_token=kb.client_token,
                request_digest=kb.request_digest,
            ))

    def save_kb(self, kb: KnowledgeBase) -> None:
        """Write a knowledge base's changeable fields (name, description, role, configuration, status)."""
        with self.db.session(write=True) as session:
            row = session.get(KnowledgeBaseRow, kb.kb_id)
            if row is None:
                return
            row.name, row.description, row.role_arn = kb.name, kb.description, kb.role_arn
            row.configuration, row.storage = json.dumps(kb.configuration), _json(kb.storage)
            row.status, row.failure_reasons = kb.status, json.dumps(list(kb.failure_reasons))
            row.updated_at = kb.updated_at

    def kb(self, kb_id: str) -> KnowledgeBase | None:
        with self.db.session() as session:
            row = session.get(KnowledgeBaseRow, kb_id)
            return _kb(row) if row is not None else None

    def kbs(self, region: str | None = None) -> list[KnowledgeBase]:
        with self.db.session() as session:
            query = select(KnowledgeBaseRow).order_by(KnowledgeBaseRow.created_at, KnowledgeBaseRow.kb_id)
            if region is not None:
                query = query.where(KnowledgeBaseRow.region == region)
            return [_kb(row) for row in session.execute(query).scalars()]

    def find_token(self, region: str, token: str) -> KnowledgeBase | None:
        with self.db.session() as session:
            row = session.execute(select(KnowledgeBaseRow).where(
                KnowledgeBaseRow.region == region, KnowledgeBaseRow.client_token == token
            )).scalars().first()
            return _kb(row) if row is not None else None

    def name_taken(self, region: str, name: str) -> bool:
        with self.db.session() as session:
            return session.execute(select(KnowledgeBaseRow.kb_id).where(
                KnowledgeBaseRow.region == region, KnowledgeBaseRow.name == name
            )).scalars().first() is not None

    def insert(self, kb: KnowledgeBase) -> None:
        """:func:`~llamarock.services.idempotency.insert_once`'s write."""
        self.insert_kb(kb)

    def delete_kb(self, kb_id: str) -> None:
        """Remove a knowledge base and everything under it."""
        with self.db.session(write=True) as session:
            for table, column in ((DocumentRow, DocumentRow.kb_id), (IngestionJobRow, IngestionJobRow.kb_id),
                                  (DataSourceRow, DataSourceRow.kb_id), (KnowledgeBaseRow, KnowledgeBaseRow.kb_id)):
                session.execute(delete(table).where(column == kb_id))

    # data sources -----------------------------------------------------------------------------------------------

    def insert_ds(self, ds: DataSource) -> None:
        with self.db.session(write=True) as session:
            session.add(DataSourceRow(
                ds_id=ds.ds_id, kb_id=ds.kb_id, name=ds.name, description=ds.description,
                configuration=json.dumps(ds.configuration), ingestion=_json(ds.ingestion),
                deletion_policy=ds.deletion_policy, encryption=_json(ds.encryption), status=ds.status,
                failure_reasons=json.dumps(list(ds.failure_reasons)), created_at=ds.created_at,
                updated_at=ds.updated_at, client_token=ds.client_token, request_digest=ds.request_digest,
            ))

    def save_ds(self, ds: DataSource) -> None:
        with self.db.session(write=True) as session:
            row = session.get(DataSourceRow, ds.ds_id)
            if row is None:
                return
            row.name, row.description = ds.name, ds.description
            row.configuration, row.ingestion = json.dumps(ds.configuration), _json(ds.ingestion)
            row.deletion_policy, row.encryption = ds.deletion_policy, _json(ds.encryption)
            row.status, row.failure_reasons = ds.status, json.dumps(list(ds.failure_reasons))
            row.updated_at = ds.updated_at

    def ds(self, kb_id: str, ds_id: str) -> DataSource | None:
        with self.db.session() as session:
            row = session.get(DataSourceRow, ds_id)
            return _ds(row) if row is not None and row.kb_id == kb_id else None

    def data_sources(self, kb_id: str) -> list[DataSource]:
        with self.db.session() as session:
            rows = session.execute(select(DataSourceRow).where(DataSourceRow.kb_id == kb_id)
                                   .order_by(DataSourceRow.created_at, DataSourceRow.ds_id))
            return [_ds(row) for row in rows.scalars()]

    def ds_by_token(self, kb_id: str, token: str) -> DataSource | None:
        with self.db.session() as session:
            row = session.execute(select(DataSourceRow).where(
                DataSourceRow.kb_id == kb_id, DataSourceRow.client_token == token
            )).scalars().first()
            return _ds(row) if row is not None else None

    def ds_name_taken(self, kb_id: str, name: str, other_than: str | None = None) -> bool:
        with self.db.session() as session:
            ids = session.execute(select(DataSourceRow.ds_id).where(
                DataSourceRow.kb_id == kb_id, DataSourceRow.name == name
            )).scalars().all()
            return any(found != other_than for found in ids)

    def delete_ds(self, kb_id: str, ds_id: str) -> None:
        with self.db.session(write=True) as session:
            session.execute(delete(DocumentRow).where(DocumentRow.kb_id == kb_id, DocumentRow.ds_id == ds_id))
            session.execute(delete(IngestionJobRow).where(IngestionJobRow.ds_id == ds_id))
            session.execute(delete(DataSourceRow).where(DataSourceRow.ds_id == ds_id))

    # ingestion jobs ---------------------------------------------------------------------------------------------

    def insert_job(self, job: IngestionJob) -> None:
        with self.db.session(write=True) as session:
            session.add(IngestionJobRow(
                job_id=job.job_id, kb_id=job.kb_id, ds_id=job.ds_id, description=job.description,
                status=job.status, statistics=json.dumps(job.statistics),
                failure_reasons=json.dumps(list(job.failure_reasons)), started_at=job.started_at,
                updated_at=job.updated_at, client_token=job.client_token, request_digest=job.request_digest,
            ))

    def save_job(self, job: IngestionJob) -> None:
        with self.db.session(write=True) as session:
            row = session.get(IngestionJobRow, job.job_id)
            if row is None:
                return
            row.status, row.statistics = job.status, json.dumps(job.statistics)
            row.failure_reasons, row.updated_at = json.dumps(list(job.failure_reasons)), job.updated_at

    def set_job_status(self, job_id: str, status: str, now: datetime, only_from: tuple[str, ...] = ()) -> bool:
        """Set a job's status (only from one of ``only_from``, when given); whether it was set."""
        with self.db.session(write=True) as session:
            row = session.get(IngestionJobRow, job_id)
            if row is None or (only_from and row.status not in only_from):
                return False
            row.status, row.updated_at = status, now
            return True

    def job(self, job_id: str) -> IngestionJob | None:
        with self.db.session() as session:
            row = session.get(IngestionJobRow, job_id)
            return _job(row) if row is not None else None

    def jobs(self, kb_id: str, ds_id: str) -> list[IngestionJob]:
        with self.db.session() as session:
            rows = session.execute(select(IngestionJobRow).where(
                IngestionJobRow.kb_id == kb_id, IngestionJobRow.ds_id == ds_id
            ).order_by(IngestionJobRow.started_at, IngestionJobRow.job_id))
            return [_job(row) for row in rows.scalars()]

    def unfinished_jobs(self) -> list[IngestionJob]:
        """Jobs a stopped server left STARTING, IN_PROGRESS or STOPPING (to resume or stop at start-up)."""
        with self.db.session() as session:
            rows = session.execute(select(IngestionJobRow).where(
                IngestionJobRow.status.in_(("STARTING", "IN_PROGRESS", "STOPPING"))
            ).order_by(IngestionJobRow.started_at))
            return [_job(row) for row in rows.scalars()]

    def job_by_token(self, ds_id: str, token: str) -> IngestionJob | None:
        with self.db.session() as session:
            row = session.execute(select(IngestionJobRow).where(
                IngestionJobRow.ds_id == ds_id, IngestionJobRow.client_token == token
            )).scalars().first()
            return _job(row) if row is not None else None

    # documents --------------------------------------------------------------------------------------------------

    def documents(self, kb_id: str, ds_id: str) -> list[Document]:
        with self.db.session() as session:
            rows = session.execute(select(DocumentRow).where(
                DocumentRow.kb_id == kb_id, DocumentRow.ds_id == ds_id
            ).order_by(DocumentRow.identifier))
            return [_doc(row) for row in rows.scalars()]

    def document(self, kb_id: str, ds_id: str, identifier: str) -> Document | None:
        with self.db.session() as session:
            row = session.get(DocumentRow, (kb_id, ds_id, identifier))
            return _doc(row) if row is not None else None

    def put_document(self, document: Document) -> None:
        with self.db.session(write=True) as session:
            row = session.get(DocumentRow, (document.kb_id, document.ds_id, document.identifier))
            if row is None:
                row = DocumentRow(kb_id=document.kb_id, ds_id=document.ds_id, identifier=document.identifier)
                session.add(row)
            row.kind, row.content_hash, row.metadata_hash = document.kind, document.content_hash, \
                document.metadata_hash
            row.status, row.status_reason, row.chunks = document.status, document.status_reason, document.chunks
            row.last_job_id, row.updated_at = document.last_job_id, document.updated_at

    def put_document_and_job(self, document: Document | None, job: IngestionJob, forget: str | None = None) -> None:
        """Record one document's outcome and the job's statistics in one transaction (so a resumed job neither
        counts a document twice nor loses one); ``forget`` removes that document's row instead."""
        self.record_documents([document] if document is not None else [], job, forget=forget)

    def record_documents(self, documents: list[Document], job: IngestionJob, forget: str | None = None) -> None:
        """Record a group of documents' outcomes and the job's statistics in one transaction; ``forget`` removes
        that document's row."""
        with self.db.session(write=True) as session:
            if forget is not None:
                session.execute(delete(DocumentRow).where(
                    DocumentRow.kb_id == job.kb_id, DocumentRow.ds_id == job.ds_id, DocumentRow.identifier == forget
                ))
            for document in documents:
                row = session.get(DocumentRow, (document.kb_id, document.ds_id, document.identifier))
                if row is None:
                    row = DocumentRow(kb_id=document.kb_id, ds_id=document.ds_id, identifier=document.identifier)
                    session.add(row)
                row.kind, row.content_hash, row.metadata_hash = document.kind, document.content_hash, \
                    document.metadata_hash
                row.status, row.status_reason, row.chunks = document.status, document.status_reason, \
                    document.chunks
                row.last_job_id, row.updated_at = document.last_job_id, document.updated_at
            job_row = session.get(IngestionJobRow, job.job_id)
            if job_row is not None:
                job_row.statistics = json.dumps(job.statistics)
                job_row.failure_reasons = json.dumps(list(job.failure_reasons))
                job_row.updated_at = job.updated_at

    def delete_document(self, kb_id: str, ds_id: str, identifier: str) -> None:
        with self.db.session(write=True) as session:
            session.execute(delete(DocumentRow).where(
                DocumentRow.kb_id == kb_id, DocumentRow.ds_id == ds_id, DocumentRow.identifier == identifier
            ))

    # sessions ---------------------------------------------------------------------------------------------------

    def session(self, session_id: str) -> RagSession | None:
        with self.db.session() as session:
            row = session.get(RagSessionRow, session_id)
            if row is None:
                return None
            return RagSession(row.session_id, [(q, a) for q, a in json.loads(row.history)])

    def save_session(self, rag: RagSession, now: datetime) -> None:
        with self.db.session(write=True) as session:
            row = session.get(RagSessionRow, rag.session_id)
            if row is None:
                row = RagSessionRow(session_id=rag.session_id, created_at=now)
                session.add(row)
            row.history = json.dumps(rag.turns)
            row.updated_at = now


