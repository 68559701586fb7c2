"""Knowledge bases (bedrock-agent) and retrieval over them (bedrock-agent-runtime): the use cases.

A knowledge base names an embedding model (``embeddingModelArn``: a catalog embedding id or its ARN, served by the
embedding service) and a vector store: the embedded SQLite one (``<data_dir>/knowledge/vectors.db``) when
``storageConfiguration`` is omitted, or names a type llamarock does not run (OpenSearch Serverless, Pinecone... :
stored in the embedded store, with a warning in the log); PostgreSQL with pgvector for ``RDS`` (``knowledge_rds_url``
or ``knowledge_rds_urls``). Data sources are S3 prefixes (read from the blob store) or CUSTOM (documents sent inline
with IngestKnowledgeBaseDocuments).

Ingestion jobs run in this process, one task per job, and keep their state in the database: documents are handled
in groups (their texts embedded in one batch), and a group's outcomes and the job's statistics are written in one
transaction, so a server stopped mid-job resumes the job at start-up without counting or indexing any document twice
(a document's chunks are replaced, never appended, so a group redone after a restart leaves no duplicates).
Re-ingestion is incremental: a document whose content hash and metadata sidecar hash are those it was indexed with is
left alone; changed ones are re-indexed and deleted ones removed. A document that cannot be read, parsed or embedded
is counted in ``numberOfDocumentsFailed`` with its reason in ``failureReasons``; the job goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mimetypes
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from llamarock.bedrock import rag
from llamarock.bedrock.guardrails import check_guardrail
from llamarock.context import ModelName
from llamarock.engines.embedding import Embeddings
from llamarock.errors import (
    BedrockError,
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from llamarock.knowledge import chunking, filters, metadata, parsers, pipeline
from llamarock.knowledge.store import Hit, VectorStore
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.idempotency import insert_once, request_digest
from llamarock.services.invocation import InvocationService
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError, BucketMissingError
from llamarock.storage.knowledge import (
    STATISTICS,
    DataSource,
    Document,
    IngestionJob,
    KnowledgeBase,
    KnowledgeStore,
    RagSession,
)

__all__ = ["RERANK_MODELS", "DataSource", "IngestionJob", "KnowledgeBase", "KnowledgeService"]

log = logging.getLogger(__name__)

_Created = TypeVar("_Created", KnowledgeBase, DataSource, IngestionJob)

RESOURCE_TYPE = "knowledge-base"
_ID = string.ascii_uppercase + string.digits
# Storage types llamarock runs itself; any other is kept in the embedded store (see the module docstring).
LOCAL_STORAGE = ("RDS",)
METADATA_SUFFIX = ".metadata.json"
# At most this many failure reasons are kept per job (Bedrock truncates its list too).
MAX_FAILURE_REASONS = 100
# Embedding batch size during ingestion.
EMBED_BATCH = 32
MAX_KNOWLEDGE_BASES = 100  # per region, as Bedrock's default quota
MAX_DATA_SOURCES = 5  # per knowledge base, as Bedrock's default quota
# Documents an ingestion job prepares at once (their texts embedded in one batch) and commits in one transaction.
INGEST_GROUP = 16


def _new_id() -> str:
    return "".join(secrets.choice(_ID) for _ in range(10))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bucket(bucket_arn: str) -> str:
    return bucket_arn.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class SourceDocument:
    """One document to index: where it came from, its bytes (or text) and its metadata attributes."""

    identifier: str  # the S3 URI, or the CUSTOM id
    kind: str  # S3 | CUSTOM
    name: str  # what the parsers go by (a file name)
    data: bytes
    attributes: dict[str, Any]
    metadata_hash: str | None
    embed_keys: tuple[str, ...] = ()  # typed sidecar attributes marked includeForEmbedding


class KnowledgeService:
    """Knowledge bases, data sources, ingestion jobs, documents, Retrieve, RetrieveAndGenerate and Rerank."""

    def __init__(
        self,
        store: KnowledgeStore,
        blobs: BlobStore,
        embeddings: EmbeddingService,
        invocations: InvocationService,
        tagging: TaggingService,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.embeddings = embeddings
        self.invocations = invocations
        self.tagging = tagging
        self.settings = settings
        self.account = settings.account_id
        self._clock = clock
        self._vectors: dict[str, VectorStore] = {}
        self._vectors_lock = threading.Lock()  # stores are opened in worker threads, once each
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._stop: set[str] = set()
        tagging.register(RESOURCE_TYPE, TaggableKind(self._exists))

    # ------------------------------------------------------------------------------------------- lifecycle

    def _exists(self, region: str, arn: str) -> bool:
        kb = self.store.kb(arn.rsplit("/", 1)[-1])
        return kb is not None and kb.region == region and kb.arn == arn

    async def start(self) -> None:
        """At start-up: resume the jobs a stopped server left running, and finish what it left half-done."""
        for kb in await asyncio.to_thread(self.store.kbs):
            if kb.status == "CREATING" or kb.status == "UPDATING":
                self._spawn(self._activate(kb.kb_id))
            elif kb.status == "DELETING":
                self._spawn(self._delete_kb(kb))
        for job in await asyncio.to_thread(self.store.unfinished_jobs):
            if job.status == "STOPPING":
                await asyncio.to_thread(self.store.set_job_status, job.job_id, "STOPPED", self._clock())
                continue
            log.info("resuming ingestion job %s of data source %s", job.job_id, job.ds_id)
            self._runners[job.job_id] = asyncio.create_task(self._run_job(job.job_id))

    async def close(self) -> None:
        """Stop the running jobs where they are (they resume at the next start) and close the vector stores."""
        tasks = [*self._runners.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for vectors in self._vectors.values():
            await asyncio.to_thread(vectors.close)
        self._vectors.clear()

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------------------------------- vector stores

    def _store_url(self, storage: dict[str, Any] | None) -> str | None:
        """The PostgreSQL URL of an RDS knowledge base; None: the embedded store."""
        if storage is None or storage.get("type") != "RDS":
            return None
        rds = storage.get("rdsConfiguration") or {}
        url = self.settings.knowledge_rds_urls.get(rds.get("resourceArn", "")) or self.settings.knowledge_rds_url
        if not url:
            raise ValidationException(
                "This server has no PostgreSQL database for RDS knowledge bases. Set knowledge_rds_url (a "
                "postgresql:// URL of a database with the pgvector extension), or knowledge_rds_urls by "
                "rdsConfiguration.resourceArn, or omit storageConfiguration to use the embedded store."
            )
        return url

    def _vectors_of(self, kb: KnowledgeBase) -> VectorStore:
        key = kb.store_url or "sqlite"
        with self._vectors_lock:
            return self._vectors.get(key) or self._open_vectors(key, kb)

    def _open_vectors(self, key: str, kb: KnowledgeBase) -> VectorStore:
        """Open a vector store (under ``_vectors_lock``): the embedded SQLite one, or PostgreSQL at ``store_url``."""
        vectors: VectorStore
        if kb.store_url is None:
            from llamarock.knowledge.sqlite_store import SqliteVectorStore

            folder = Path(self.settings.data_dir) / "knowledge"
            folder.mkdir(parents=True, exist_ok=True)
            vectors = SqliteVectorStore(folder / "vectors.db")
        else:
            from llamarock.knowledge.pg_store import PgVectorStore

            vectors = PgVectorStore(kb.store_url)
        self._vectors[key] = vectors
        return vectors

    # ------------------------------------------------------------------------------------------- knowledge bases

    def _kb_arn(self, region: str, kb_id: str) -> str:
        return f"arn:aws:bedrock:{region}:{self.account}:knowledge-base/{kb_id}"

    def _check_kb_config(self, configuration: dict[str, Any], storage: dict[str, Any] | None) -> None:
        kind = configuration.get("type")
        if kind != "VECTOR":
            raise ValidationException(
                f"knowledgeBaseConfiguration.type {kind} is not supported by llamarock: it serves VECTOR knowledge "
                "bases (KENDRA, SQL and MANAGED ones need services it does not run)."
            )
        vector = configuration.get("vectorKnowledgeBaseConfiguration")
        if not vector or not vector.get("embeddingModelArn"):
            raise ValidationException(
                "A VECTOR knowledge base needs knowledgeBaseConfiguration.vectorKnowledgeBaseConfiguration."
                "embeddingModelArn: the ARN of an embedding model, e.g. "
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0."
            )
        if storage is None and self.invocations.compat == "bedrock":
            raise ValidationException(
                "storageConfiguration is required for a VECTOR knowledge base. (llamarock's extended mode uses its "
                "embedded store when it is omitted; --compat bedrock refuses it, as Bedrock does.)"
            )

    async def create_kb(self, region: str, params: dict[str, Any]) -> KnowledgeBase:
        configuration = params["knowledgeBaseConfiguration"]
        storage = params.get("storageConfiguration")
        tags = check_tags(sorted((params.get("tags") or {}).items()))
        digest = request_digest(params["name"], params.get("description"), params["roleArn"], configuration,
                                storage, tags)
        token = params.get("clientToken")
        if token is not None:
            existing = await asyncio.to_thread(self.store.find_token, region, token)
            if existing is not None:
                return self._repeat(existing, digest, "CreateKnowledgeBase")
        self._check_kb_config(configuration, storage)
        store_url = self._store_url(storage)
        if storage is not None and storage.get("type") not in LOCAL_STORAGE:
            log.warning("knowledge base %s: storageConfiguration.type %s is not run by llamarock; its vectors are "
                        "kept in the embedded store", params["name"], storage.get("type"))
        if len(await asyncio.to_thread(self.store.kbs, region)) >= MAX_KNOWLEDGE_BASES:
            raise ServiceQuotaExceededException(
                f"This account already has {MAX_KNOWLEDGE_BASES} knowledge bases in {region}. Delete one first."
            )
        now = self._clock()
        kb_id = _new_id()
        kb = KnowledgeBase(kb_id, self._kb_arn(region, kb_id), region, params["name"], params.get("description"),
                           params["roleArn"], configuration, storage, store_url, "CREATING", (), now, now, token,
                           digest)
        stored = await asyncio.to_thread(insert_once, self.store, kb, lambda: ConflictException(
            f"A knowledge base named {kb.name} already exists in {region}. Choose another name, or delete it first."
        ))
        if stored is not kb:
            return self._repeat(stored, digest, "CreateKnowledgeBase")
        if tags:
            await self.tagging.put(kb.arn, tags)
        self._spawn(self._activate(kb.kb_id))
        return kb

    @staticmethod
    def _repeat(existing: _Created, digest: str, operation: str) -> _Created:
        """The resource an earlier create with the same clientToken made (services/idempotency.py's rule: the same
        request gets it back, a different one is refused)."""
        if existing.request_digest != digest:
            raise ConflictException(
                f"The clientToken was already used for a different {operation} request; use a new token for a new "
                "request."
            )
        return existing

    async def _activate(self, kb_id: str) -> None:
        """CREATING (or UPDATING) -> ACTIVE once the embedding model answers with the configured dimensions and
        the vector store opens; FAILED with the reason otherwise."""
        kb = await asyncio.to_thread(self.store.kb, kb_id)
        if kb is None:
            return
        try:
            await self._embed(kb, ["knowledge base probe"])
            await asyncio.to_thread(self._vectors_of, kb)
            status, reasons = "ACTIVE", tuple[str, ...]()
        except BedrockError as error:
            status, reasons = "FAILED", (error.message,)
        except Exception as error:  # the vector store could not open: say why, keep the record
            log.exception("knowledge base %s failed to open its store", kb_id)
            status, reasons = "FAILED", (f"The vector store could not be opened: {error}",)
        current = await asyncio.to_thread(self.store.kb, kb_id)
        if current is not None and current.status in ("CREATING", "UPDATING"):
            await asyncio.to_thread(self.store.save_kb,
                                    replace(current, status=status, failure_reasons=reasons, updated_at=self._clock()))

    def _kb(self, region: str, kb_id: str, *, usable: bool = False) -> KnowledgeBase:
        kb = self.store.kb(kb_id)
        if kb is None or kb.region != region:
            raise ResourceNotFoundException(
                f"The knowledge base {kb_id} doesn't exist in {region}. ListKnowledgeBases lists this account's "
                "knowledge bases."
            )
        if usable and kb.status not in ("ACTIVE", "UPDATING"):
            raise ConflictException(
                f"The knowledge base {kb_id} is {kb.status}"
                + (f" ({'; '.join(kb.failure_reasons)})" if kb.failure_reasons else "")
                + ". Wait until GetKnowledgeBase says ACTIVE."
            )
        return kb

    async def get_kb(self, region: str, kb_id: str) -> KnowledgeBase:
        return await asyncio.to_thread(self._kb, region, kb_id)

    async def list_kbs(self, region: str) -> list[KnowledgeBase]:
        return await asyncio.to_thread(self.store.kbs, region)

    async def update_kb(self, region: str, kb_id: str, params: dict[str, Any]) -> KnowledgeBase:
        kb = await self.get_kb(region, kb_id)
        configuration = params["knowledgeBaseConfiguration"]
        storage = params.get("storageConfiguration", kb.storage)
        if configuration != kb.configuration or storage != kb.storage:
            if kb.embedding_model_arn != (configuration.get("vectorKnowledgeBaseConfiguration") or {}).get(
                    "embeddingModelArn") or configuration.get("type") != kb.configuration.get("type") \
                    or storage != kb.storage:
                raise ValidationException(
                    "The knowledgeBaseConfiguration's type and embedding model and the storageConfiguration of a "
                    "knowledge base can't be changed (its vectors were made with them). Create a new knowledge base."
                )
        if params["name"] != kb.name and await asyncio.to_thread(self.store.name_taken, region, params["name"]):
            raise ConflictException(f"A knowledge base named {params['name']} already exists in {region}.")
        updated = replace(kb, name=params["name"], description=params.get("description"), role_arn=params["roleArn"],
                          configuration=configuration, updated_at=self._clock())
        await asyncio.to_thread(self.store.save_kb, updated)
        return updated

    async def delete_kb(self, region: str, kb_id: str) -> KnowledgeBase:
        kb = await self.get_kb(region, kb_id)
        running = [job for ds in await asyncio.to_thread(self.store.data_sources, kb_id)
                   for job in await asyncio.to_thread(self.store.jobs, kb_id, ds.ds_id)
                   if job.status in ("STARTING", "IN_PROGRESS", "STOPPING")]
        if running:
            raise ConflictException(
                f"The knowledge base {kb_id} has an ingestion job in progress ({running[0].job_id}). Stop it "
                "(StopIngestionJob) or wait for it to finish, then delete the knowledge base."
            )
        deleting = replace(kb, status="DELETING", updated_at=self._clock())
        await asyncio.to_thread(self.store.save_kb, deleting)
        self._spawn(self._delete_kb(deleting))
        return deleting

    async def _delete_kb(self, kb: KnowledgeBase) -> None:
        try:
            vectors = await asyncio.to_thread(self._vectors_of, kb)
            await asyncio.to_thread(vectors.drop, kb.kb_id)
        except Exception:  # a store that never opened has nothing to drop
            log.warning("knowledge base %s: its vectors could not be dropped", kb.kb_id, exc_info=True)
        await asyncio.to_thread(self.store.delete_kb, kb.kb_id)
        await self.tagging.drop(kb.arn)

    # ------------------------------------------------------------------------------------------- data sources

    def _check_ds_config(self, configuration: dict[str, Any], ingestion: dict[str, Any] | None) -> None:
        kind = configuration.get("type")
        if kind == "S3":
            s3 = configuration.get("s3Configuration")
            if not s3 or not s3.get("bucketArn"):
                raise ValidationException(
                    "An S3 data source needs dataSourceConfiguration.s3Configuration.bucketArn "
                    "(arn:aws:s3:::<bucket>)."
                )
            if not s3["bucketArn"].startswith("arn:aws:s3:::"):
                raise ValidationException(
                    f"The bucketArn {s3['bucketArn']} is not an S3 bucket ARN; write arn:aws:s3:::<bucket>."
                )
        elif kind != "CUSTOM":
            raise ValidationException(
                f"Data source type {kind} is not supported by llamarock: it ingests S3 data sources (from its blob "
                "store) and CUSTOM ones (IngestKnowledgeBaseDocuments)."
            )
        chunking_config = (ingestion or {}).get("chunkingConfiguration")
        if chunking_config:
            try:
                chunking.validate(chunking_config)
            except ValueError as error:
                raise ValidationException(f"vectorIngestionConfiguration.chunkingConfiguration: {error}") from error

    async def create_ds(self, region: str, kb_id: str, params: dict[str, Any]) -> DataSource:
        kb = await self.get_kb(region, kb_id)
        configuration = params["dataSourceConfiguration"]
        ingestion = params.get("vectorIngestionConfiguration")
        policy = params.get("dataDeletionPolicy", "DELETE")
        digest = request_digest(params["name"], params.get("description"), configuration, ingestion, policy)
        token = params.get("clientToken")
        if token is not None:
            existing = await asyncio.to_thread(self.store.ds_by_token, kb.kb_id, token)
            if existing is not None:
                return self._repeat(existing, digest, "CreateDataSource")
        self._check_ds_config(configuration, ingestion)
        now = self._clock()
        ds = DataSource(_new_id(), kb.kb_id, params["name"], params.get("description"), configuration, ingestion,
                        policy, params.get("serverSideEncryptionConfiguration"), "AVAILABLE", (), now, now, token,
                        digest)

        def insert() -> DataSource:
            with self.store.lock:
                if token is not None:
                    found = self.store.ds_by_token(kb.kb_id, token)
                    if found is not None:
                        return found
                if self.store.ds_name_taken(kb.kb_id, ds.name):
                    raise ConflictException(
                        f"The knowledge base {kb.kb_id} already has a data source named {ds.name}. Choose another "
                        "name."
                    )
                if len(self.store.data_sources(kb.kb_id)) >= MAX_DATA_SOURCES:
                    raise ServiceQuotaExceededException(
                        f"The knowledge base {kb.kb_id} already has {MAX_DATA_SOURCES} data sources."
                    )
                self.store.insert_ds(ds)
                return ds

        stored = await asyncio.to_thread(insert)
        if stored is not ds:
            return self._repeat(stored, digest, "CreateDataSource")
        return ds

    def _ds(self, region: str, kb_id: str, ds_id: str) -> tuple[KnowledgeBase, DataSource]:
        kb = self._kb(region, kb_id)
        ds = self.store.ds(kb_id, ds_id)
        if ds is None:
            raise ResourceNotFoundException(
                f"The data source {ds_id} doesn't exist in knowledge base {kb_id}. ListDataSources lists them."
            )
        return kb, ds

    async def get_ds(self, region: str, kb_id: str, ds_id: str) -> DataSource:
        return (await asyncio.to_thread(self._ds, region, kb_id, ds_id))[1]

    async def list_ds(self, region: str, kb_id: str) -> list[DataSource]:
        kb = await self.get_kb(region, kb_id)
        return await asyncio.to_thread(self.store.data_sources, kb.kb_id)

    async def update_ds(self, region: str, kb_id: str, ds_id: str, params: dict[str, Any]) -> DataSource:
        _, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        configuration = params["dataSourceConfiguration"]
        if configuration.get("type") != ds.kind:
            raise ValidationException(
                f"The type of data source {ds_id} is {ds.kind}; it can't be changed to {configuration.get('type')}. "
                "Create a new data source."
            )
        ingestion = params.get("vectorIngestionConfiguration", ds.ingestion)
        if (ingestion or {}).get("chunkingConfiguration") != (ds.ingestion or {}).get("chunkingConfiguration"):
            raise ValidationException(
                "The chunkingConfiguration of a data source can't be changed after it is created (its documents "
                "were chunked with it). Create a new data source with the new chunking."
            )
        self._check_ds_config(configuration, ingestion)
        if params["name"] != ds.name and await asyncio.to_thread(self.store.ds_name_taken, kb_id, params["name"],
                                                                 ds_id):
            raise ConflictException(f"The knowledge base {kb_id} already has a data source named {params['name']}.")
        updated = replace(ds, name=params["name"], description=params.get("description"),
                          configuration=configuration, ingestion=ingestion,
                          deletion_policy=params.get("dataDeletionPolicy", ds.deletion_policy),
                          encryption=params.get("serverSideEncryptionConfiguration", ds.encryption),
                          updated_at=self._clock())
        await asyncio.to_thread(self.store.save_ds, updated)
        return updated

    async def delete_ds(self, region: str, kb_id: str, ds_id: str) -> DataSource:
        kb, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        if any(job.status in ("STARTING", "IN_PROGRESS", "STOPPING")
               for job in await asyncio.to_thread(self.store.jobs, kb_id, ds_id)):
            raise ConflictException(
                f"The data source {ds_id} has an ingestion job in progress. Stop it (StopIngestionJob) or wait for "
                "it to finish, then delete the data source."
            )
        if ds.deletion_policy == "DELETE":
            vectors = await asyncio.to_thread(self._vectors_of, kb)
            for document in await asyncio.to_thread(self.store.documents, kb_id, ds_id):
                await asyncio.to_thread(vectors.delete_document, kb_id, _doc_key(ds_id, document.identifier))
        await asyncio.to_thread(self.store.delete_ds, kb_id, ds_id)
        return replace(ds, status="DELETING")

    # ------------------------------------------------------------------------------------------- ingestion jobs

    async def start_job(self, region: str, kb_id: str, ds_id: str, params: dict[str, Any]) -> IngestionJob:
        kb, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        digest = request_digest(params.get("description"))
        token = params.get("clientToken")
        if token is not None:
            existing = await asyncio.to_thread(self.store.job_by_token, ds_id, token)
            if existing is not None:
                return self._repeat(existing, digest, "StartIngestionJob")
        if kb.status not in ("ACTIVE", "UPDATING"):
            await asyncio.to_thread(self._kb, region, kb_id, usable=True)
        if ds.kind != "S3":
            raise ValidationException(
                f"The data source {ds_id} is {ds.kind}: StartIngestionJob syncs S3 data sources. Send a CUSTOM data "
                "source's documents with IngestKnowledgeBaseDocuments."
            )
        now = self._clock()
        job = IngestionJob(_new_id(), kb_id, ds_id, params.get("description"), "STARTING",
                           {name: 0 for name in STATISTICS}, (), now, now, token, digest)

        def insert() -> IngestionJob:
            with self.store.lock:
                if token is not None:
                    found = self.store.job_by_token(ds_id, token)
                    if found is not None:
                        return found
                running = [j for j in self.store.jobs(kb_id, ds_id)
                           if j.status in ("STARTING", "IN_PROGRESS", "STOPPING")]
                if running:
                    raise ConflictException(
                        f"The data source {ds_id} already has an ingestion job in progress ({running[0].job_id}). "
                        "Wait for it to finish (GetIngestionJob) or stop it (StopIngestionJob)."
                    )
                self.store.insert_job(job)
                return job

        stored = await asyncio.to_thread(insert)
        if stored is not job:
            return self._repeat(stored, digest, "StartIngestionJob")
        self._runners[job.job_id] = asyncio.create_task(self._run_job(job.job_id))
        return job

    async def get_job(self, region: str, kb_id: str, ds_id: str, job_id: str) -> IngestionJob:
        await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        job = await asyncio.to_thread(self.store.job, job_id)
        if job is None or job.ds_id != ds_id or job.kb_id != kb_id:
            raise ResourceNotFoundException(
                f"The ingestion job {job_id} doesn't exist for data source {ds_id}. ListIngestionJobs lists them."
            )
        return job

    async def list_jobs(self, region: str, kb_id: str, ds_id: str) -> list[IngestionJob]:
        await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        return await asyncio.to_thread(self.store.jobs, kb_id, ds_id)

    async def stop_job(self, region: str, kb_id: str, ds_id: str, job_id: str) -> IngestionJob:
        job = await self.get_job(region, kb_id, ds_id, job_id)
        if job.status not in ("STARTING", "IN_PROGRESS"):
            raise ConflictException(
                f"The ingestion job {job_id} is {job.status}; only a STARTING or IN_PROGRESS job can be stopped."
            )
        await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPING", self._clock(),
                                ("STARTING", "IN_PROGRESS"))
        self._stop.add(job_id)
        if job_id not in self._runners:  # nothing is running it (it never started here): it stops now
            await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPED", self._clock())
        return await self.get_job(region, kb_id, ds_id, job_id)

    async def _run_job(self, job_id: str) -> None:
        try:
            await self._ingest(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("ingestion job %s failed", job_id)
            job = await asyncio.to_thread(self.store.job, job_id)
            if job is not None:
                reasons = (*job.failure_reasons, f"The job failed: {error}")[-MAX_FAILURE_REASONS:]
                await asyncio.to_thread(self.store.save_job, replace(job, status="FAILED", failure_reasons=reasons,
                                                                     updated_at=self._clock()))
        finally:
            self._runners.pop(job_id, None)
            self._stop.discard(job_id)

    async def _ingest(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.job, job_id)
        if job is None:
            return
        kb = await asyncio.to_thread(self.store.kb, job.kb_id)
        ds = await asyncio.to_thread(self.store.ds, job.kb_id, job.ds_id)
        if kb is None or ds is None:
            return
        await asyncio.to_thread(self.store.set_job_status, job_id, "IN_PROGRESS", self._clock(), ("STARTING",))
        s3 = ds.configuration.get("s3Configuration") or {}
        bucket = _bucket(s3.get("bucketArn", ""))
        prefixes = list(s3.get("inclusionPrefixes") or [""])
        try:
            keys = sorted({key for prefix in prefixes
                           for key in await asyncio.to_thread(self.blobs.list, bucket, prefix)})
        except BucketMissingError:
            await self._finish(job_id, "FAILED", f"The bucket {bucket} does not exist in the blob store "
                               f"({self.blobs.location}). Create it and upload the documents first.")
            return
        except BlobStoreError as error:
            await self._finish(job_id, "FAILED", f"The blob store could not list bucket {bucket}: {error}")
            return
        sidecars = {key[: -len(METADATA_SUFFIX)] for key in keys if key.endswith(METADATA_SUFFIX)}
        documents = [key for key in keys if not key.endswith(METADATA_SUFFIX) and not key.endswith("/")]
        known = {d.identifier: d for d in await asyncio.to_thread(self.store.documents, kb.kb_id, ds.ds_id)}
        vectors = await asyncio.to_thread(self._vectors_of, kb)
        seen = {f"s3://{bucket}/{key}" for key in documents}
        # Documents done before a restart were counted then (their outcome was committed with the statistics).
        todo = [key for key in documents if (known.get(f"s3://{bucket}/{key}") or _NEVER).last_job_id != job_id]
        embedder = _BatchingEmbedder(_KnowledgeBaseEmbedder(self, kb, await self._token_counter(kb)))
        for start in range(0, len(todo), INGEST_GROUP):
            if job_id in self._stop:
                break
            group = todo[start:start + INGEST_GROUP]
            outcomes = await asyncio.gather(*(
                self._ingest_one(kb, ds, job_id, vectors, bucket, key, f"s3://{bucket}/{key}", key in sidecars,
                                 known.get(f"s3://{bucket}/{key}"), embedder)
                for key in group
            ))
            await self._record(job_id, outcomes)
        if job_id not in self._stop:
            for identifier, previous in known.items():
                if identifier in seen or previous.kind != "S3":
                    continue
                await asyncio.to_thread(vectors.delete_document, kb.kb_id, _doc_key(ds.ds_id, identifier))
                job = await self._job(job_id)
                stats = dict(job.statistics)
                stats["numberOfDocumentsDeleted"] += 1
                await asyncio.to_thread(self.store.put_document_and_job, None,
                                        replace(job, statistics=stats, updated_at=self._clock()), identifier)
        if job_id in self._stop:
            await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPED", self._clock())
            return
        await asyncio.to_thread(self.store.set_job_status, job_id, "COMPLETE", self._clock(), ("IN_PROGRESS",))

    async def _job(self, job_id: str) -> IngestionJob:
        job = await asyncio.to_thread(self.store.job, job_id)
        assert job is not None
        return job

    async def _finish(self, job_id: str, status: str, reason: str) -> None:
        job = await self._job(job_id)
        await asyncio.to_thread(self.store.save_job, replace(
            job, status=status, failure_reasons=(*job.failure_reasons, reason), updated_at=self._clock()))

    async def _ingest_one(self, kb: KnowledgeBase, ds: DataSource, job_id: str, vectors: VectorStore, bucket: str,
                          key: str, uri: str, has_sidecar: bool, previous: Document | None,
                          embedder: _BatchingEmbedder) -> tuple[Document, dict[str, int], str | None]:
        """Index one S3 document if it changed; its row, its share of the statistics and why it failed (None)."""
        stats_delta = {"numberOfDocumentsScanned": 1}
        reason: str | None = None
        status = "INDEXED"
        content_hash = metadata_hash = None
        chunks = previous.chunks if previous is not None else 0
        try:
            if has_sidecar:
                stats_delta["numberOfMetadataDocumentsScanned"] = 1
            data = await asyncio.to_thread(self.blobs.get, bucket, key)
            if len(data) > self.settings.knowledge_max_document_bytes:
                raise _DocumentFailed(
                    f"{uri}: the file is {len(data)} bytes; the largest a knowledge base ingests is "
                    f"{self.settings.knowledge_max_document_bytes} bytes."
                )
            content_hash = _sha(data)
            sidecar = await asyncio.to_thread(self.blobs.get, bucket, key + METADATA_SUFFIX) if has_sidecar else None
            metadata_hash = _sha(sidecar) if sidecar is not None else None
            unchanged = previous is not None and previous.status == "INDEXED" \
                and previous.content_hash == content_hash
            if not (unchanged and previous is not None and previous.metadata_hash == metadata_hash):
                attributes, embed_keys = self._sidecar(uri, sidecar)
                document = SourceDocument(uri, "S3", key.rsplit("/", 1)[-1], data, attributes, metadata_hash,
                                          embed_keys)
                chunks = await self._index(kb, ds, vectors, document, embedder)
                if previous is None or previous.status != "INDEXED":
                    stats_delta["numberOfNewDocumentsIndexed"] = 1
                elif unchanged:
                    stats_delta["numberOfMetadataDocumentsModified"] = 1
                else:
                    stats_delta["numberOfModifiedDocumentsIndexed"] = 1
        except _DocumentFailed as failure:
            status, reason = "FAILED", str(failure)
        except BlobStoreError as error:
            status, reason = "FAILED", f"{uri}: the blob store could not read it: {error}"
        if reason is not None:
            stats_delta = {"numberOfDocumentsScanned": 1, "numberOfDocumentsFailed": 1}
            if has_sidecar:
                stats_delta["numberOfMetadataDocumentsScanned"] = 1
        row = Document(kb.kb_id, ds.ds_id, uri, "S3", content_hash, metadata_hash, status, reason, chunks, job_id,
                       self._clock())
        return row, stats_delta, reason

    async def _record(self, job_id: str, outcomes: Sequence[tuple[Document, dict[str, int], str | None]]) -> None:
        """Commit a group of documents' outcomes with the job's statistics, in one transaction."""
        job = await self._job(job_id)
        stats = dict(job.statistics)
        reasons = job.failure_reasons
        for _, delta, reason in outcomes:
            for name, value in delta.items():
                stats[name] = stats.get(name, 0) + value
            if reason is not None and len(reasons) < MAX_FAILURE_REASONS:
                reasons = (*reasons, reason)
        await asyncio.to_thread(self.store.record_documents, [row for row, _, _ in outcomes],
                                replace(job, statistics=stats, failure_reasons=reasons, updated_at=self._clock()))

    @staticmethod
    def _sidecar(uri: str, sidecar: bytes | None) -> tuple[dict[str, Any], tuple[str, ...]]:
        if sidecar is None:
            return {}, ()
        try:
            parsed = metadata.parse_sidecar_full(sidecar)
            return dict(parsed.attributes), parsed.include_for_embedding
        except ValueError as error:  # metadata.MetadataError
            raise _DocumentFailed(f"{uri}{METADATA_SUFFIX}: {error}") from error

    async def _index(self, kb: KnowledgeBase, ds: DataSource, vectors: VectorStore, document: SourceDocument,
                     embedder: pipeline.EmbedderLike | None = None) -> int:
        """Parse, chunk, embed (kbcore's pipeline) and store one document, its earlier chunks replaced; the number
        of chunks."""
        source = pipeline.DocumentSource(
            _doc_key(ds.ds_id, document.identifier), document.name, document.data, document.identifier, ds.ds_id,
            document.attributes, document.embed_keys, _location(document.kind, document.identifier),
        )
        if embedder is None:
            embedder = _KnowledgeBaseEmbedder(self, kb, await self._token_counter(kb))
        try:
            prepared = await pipeline.prepare(source, ds.chunking or None, embedder, window=await self._window(kb))
        except parsers.ParseError as error:
            raise _DocumentFailed(f"{document.identifier}: {error}") from error
        except BedrockError as error:
            raise _DocumentFailed(f"{document.identifier}: the embedding model refused it: {error.message}") from error
        await asyncio.to_thread(vectors.upsert, kb.kb_id, source.document_id, prepared.chunks)
        return len(prepared.chunks)

    async def _token_counter(self, kb: KnowledgeBase) -> Callable[[str], int]:
        embedder = await self.embeddings.embedder_for(kb.embedding_model_arn)
        return embedder.count_tokens

    async def _window(self, kb: KnowledgeBase) -> int:
        """How many content tokens the knowledge base's embedding model embeds (its limit less its special tokens)."""
        embedder = await self.embeddings.embedder_for(kb.embedding_model_arn)
        return embedder.max_tokens - embedder.count_tokens("")

    async def _embed(self, kb: KnowledgeBase, texts: Sequence[str]) -> list[list[float]]:
        embedded = await self.embeddings.embed(kb.embedding_model_arn, texts, dimensions=kb.embedding_dimensions)
        return embedded.vectors

    # ------------------------------------------------------------------------------------------- documents

    async def ingest_documents(self, region: str, kb_id: str, ds_id: str,
                               documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """IngestKnowledgeBaseDocuments: index each document now; its detail says INDEXED or FAILED (why)."""
        kb, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        await asyncio.to_thread(self._kb, region, kb_id, usable=True)
        vectors = await asyncio.to_thread(self._vectors_of, kb)
        details = []
        for entry in documents:
            source = await self._inline_document(ds, entry)
            reason = None
            chunks = 0
            try:
                chunks = await self._index(kb, ds, vectors, source)
                status = "INDEXED"
            except _DocumentFailed as failure:
                status, reason = "FAILED", str(failure)
            row = Document(kb_id, ds_id, source.identifier, source.kind, _sha(source.data), source.metadata_hash,
                           status, reason, chunks, None, self._clock())
            await asyncio.to_thread(self.store.put_document, row)
            details.append(self._detail(row))
        return details

    async def _inline_document(self, ds: DataSource, entry: dict[str, Any]) -> SourceDocument:
        content = entry["content"]
        kind = content["dataSourceType"]
        if kind != ds.kind:
            raise ValidationException(
                f"The document's dataSourceType is {kind} but data source {ds.ds_id} is {ds.kind}."
            )
        attributes, metadata_hash = await self._inline_metadata(entry.get("metadata"))
        if kind == "CUSTOM":
            custom = content.get("custom") or {}
            identifier = (custom.get("customDocumentIdentifier") or {}).get("id")
            if not identifier:
                raise ValidationException("A CUSTOM document needs content.custom.customDocumentIdentifier.id.")
            source_type = custom.get("sourceType")
            if source_type == "IN_LINE":
                inline = custom.get("inlineContent") or {}
                if inline.get("type") == "TEXT":
                    data = (inline.get("textContent") or {}).get("data", "").encode()
                    name = "inline.txt"
                else:
                    byte = inline.get("byteContent") or {}
                    data = byte.get("data") or b""
                    name = "inline" + (mimetypes.guess_extension(byte.get("mimeType", "")) or ".txt")
            elif source_type == "S3_LOCATION":
                uri = (custom.get("s3Location") or {}).get("uri", "")
                data = await self._read_uri(uri)
                name = uri.rsplit("/", 1)[-1]
            else:
                raise ValidationException(
                    "content.custom.sourceType must be IN_LINE (inlineContent) or S3_LOCATION (s3Location)."
                )
        else:
            uri = ((content.get("s3") or {}).get("s3Location") or {}).get("uri", "")
            if not uri.startswith("s3://"):
                raise ValidationException("An S3 document needs content.s3.s3Location.uri (s3://bucket/key).")
            identifier, data, name = uri, await self._read_uri(uri), uri.rsplit("/", 1)[-1]
        if isinstance(data, str):
            data = data.encode()
        if len(data) > self.settings.knowledge_max_document_bytes:
            raise ValidationException(
                f"The document {identifier} is {len(data)} bytes; the largest a knowledge base ingests is "
                f"{self.settings.knowledge_max_document_bytes} bytes."
            )
        return SourceDocument(identifier, kind, name, data, attributes, metadata_hash)

    async def _inline_metadata(self, given: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
        if not given:
            return {}, None
        if given.get("type") == "S3_LOCATION":
            raw = await self._read_uri((given.get("s3Location") or {}).get("uri", ""))
            try:
                return dict(metadata.parse_sidecar(raw)), _sha(raw)
            except ValueError as error:
                raise ValidationException(f"The document's metadata file: {error}") from error
        attributes: dict[str, Any] = {}
        for attribute in given.get("inlineAttributes") or []:
            value = attribute.get("value") or {}
            kind = value.get("type")
            member = {"STRING": "stringValue", "NUMBER": "numberValue", "BOOLEAN": "booleanValue",
                      "STRING_LIST": "stringListValue"}.get(kind or "")
            if member is None or member not in value:
                raise ValidationException(
                    f"The metadata attribute {attribute.get('key')} needs a value of its type (type {kind})."
                )
            attributes[attribute["key"]] = value[member]
        return attributes, request_digest(sorted(attributes.items()))

    async def _read_uri(self, uri: str) -> bytes:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ValidationException(f"{uri} is not an S3 object URI (s3://bucket/key).")
        bucket, key = uri[5:].split("/", 1)
        try:
            return await asyncio.to_thread(self.blobs.get, bucket, key)
        except BlobStoreError as error:
            raise ValidationException(f"{uri} could not be read from the blob store: {error}") from error

    @staticmethod
    def _identifier(given: dict[str, Any]) -> str:
        if given.get("dataSourceType") == "CUSTOM":
            return str((given.get("custom") or {}).get("id", ""))
        return str((given.get("s3") or {}).get("uri", ""))

    def _detail(self, document: Document) -> dict[str, Any]:
        identifier: dict[str, Any] = {"dataSourceType": document.kind}
        if document.kind == "CUSTOM":
            identifier["custom"] = {"id": document.identifier}
        else:
            identifier["s3"] = {"uri": document.identifier}
        detail: dict[str, Any] = {"knowledgeBaseId": document.kb_id, "dataSourceId": document.ds_id,
                                  "status": document.status, "identifier": identifier,
                                  "updatedAt": document.updated_at}
        if document.status_reason:
            detail["statusReason"] = document.status_reason
        return detail

    async def delete_documents(self, region: str, kb_id: str, ds_id: str,
                               identifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kb, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        vectors = await asyncio.to_thread(self._vectors_of, kb)
        details = []
        for given in identifiers:
            identifier = self._identifier(given)
            await asyncio.to_thread(vectors.delete_document, kb_id, _doc_key(ds_id, identifier))
            await asyncio.to_thread(self.store.delete_document, kb_id, ds_id, identifier)
            gone = Document(kb_id, ds_id, identifier, given.get("dataSourceType", ds.kind), None, None, "DELETING",
                            None, 0, None, self._clock())
            details.append(self._detail(gone))
        return details

    async def get_documents(self, region: str, kb_id: str, ds_id: str,
                            identifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _, ds = await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        details = []
        for given in identifiers:
            identifier = self._identifier(given)
            found = await asyncio.to_thread(self.store.document, kb_id, ds_id, identifier)
            if found is None:
                found = Document(kb_id, ds_id, identifier, given.get("dataSourceType", ds.kind), None, None,
                                 "NOT_FOUND", None, 0, None, self._clock())
            details.append(self._detail(found))
        return details

    async def list_documents(self, region: str, kb_id: str, ds_id: str) -> list[dict[str, Any]]:
        await asyncio.to_thread(self._ds, region, kb_id, ds_id)
        return [self._detail(d) for d in await asyncio.to_thread(self.store.documents, kb_id, ds_id)]

    # ------------------------------------------------------------------------------------------- Retrieve

    async def retrieve(self, region: str, kb_id: str, query: str, configuration: dict[str, Any] | None,
                       guardrail: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Retrieve's ``retrievalResults`` for ``query``."""
        check_guardrail((guardrail or {}).get("guardrailId"), (guardrail or {}).get("guardrailVersion"))
        kb = await asyncio.to_thread(self._kb, region, kb_id, usable=True)
        search = (configuration or {}).get("vectorSearchConfiguration") or {}
        if search.get("implicitFilterConfiguration"):
            raise ValidationException(
                "implicitFilterConfiguration is not supported by llamarock (it asks a model to write the filter). "
                "Pass an explicit vectorSearchConfiguration.filter instead."
            )
        filter_ = search.get("filter")
        if filter_ is not None:
            try:
                filters.validate(filter_)
            except ValueError as error:
                raise ValidationException(f"retrievalConfiguration.vectorSearchConfiguration.filter: {error}") \
                    from error
        k = int(search.get("numberOfResults", 5))
        search_type = search.get("overrideSearchType", "HYBRID")
        vector = (await self._embed(kb, [query]))[0]
        vectors = await asyncio.to_thread(self._vectors_of, kb)
        reranking = search.get("rerankingConfiguration")
        wanted = k
        if reranking:
            wanted = max(k, int((reranking.get("bedrockRerankingConfiguration") or {}).get(
                "numberOfRerankedResults", k)) * 2)
        hits = await asyncio.to_thread(vectors.search, kb.kb_id, query, vector, wanted, search_type, filter_)
        results = [_result(hit) for hit in hits]
        if reranking:
            order = await self._rerank_scores(query, [hit.text for hit in hits])
            results = [dict(results[i], score=score) for i, score in order][:k]
        return results[:k]

    # ------------------------------------------------------------------------------------------- Rerank

    async def _rerank_scores(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """Indexes of ``texts`` by relevance to ``query``, best first, with a score in [0, 1]: the default
        embedder's cosine similarity, fused with BM25 over the candidates (see docs/knowledge-bases.md)."""
        embedded = await self.embeddings.embed(RERANK_EMBEDDER, [query, *texts])
        return rag.rerank_scores(query, list(texts), embedded.vectors[0], embedded.vectors[1:])

    async def rerank(self, queries: list[dict[str, Any]], sources: list[dict[str, Any]],
                     configuration: dict[str, Any]) -> list[dict[str, Any]]:
        """Rerank's ``results``."""
        model = ((configuration.get("bedrockRerankingConfiguration") or {}).get("modelConfiguration") or {})
        model_arn = model.get("modelArn", "")
        if not any(known in model_arn for known in RERANK_MODELS):
            raise ValidationException(
                f"The reranking model {model_arn} is not served. Use one of: "
                + ", ".join(f"arn:aws:bedrock:<region>::foundation-model/{m}" for m in RERANK_MODELS) + "."
            )
        if len(queries) != 1:
            raise ValidationException("Rerank takes exactly one query.")
        texts = []
        for source in sources:
            inline = source.get("inlineDocumentSource") or {}
            if inline.get("type") == "JSON":
                import json

                texts.append(json.dumps(inline.get("jsonDocument"), sort_keys=True))
            else:
                texts.append(str((inline.get("textDocument") or {}).get("text", "")))
        top = (configuration.get("bedrockRerankingConfiguration") or {}).get("numberOfResults", len(texts))
        order = await self._rerank_scores(queries[0]["textQuery"]["text"], texts)
        return [{"index": index, "relevanceScore": score} for index, score in order[:top]]

    # ------------------------------------------------------------------------------------------- RetrieveAndGenerate

    async def session(self, session_id: str | None) -> RagSession:
        if session_id is None:
            return RagSession(f"{_new_id().lower()}-{secrets.token_hex(8)}")
        found = await asyncio.to_thread(self.store.session, session_id)
        if found is None:
            raise ResourceNotFoundException(
                f"The session {session_id} was not found. Leave sessionId out to start a session, then pass the "
                "sessionId the response returns for follow-up questions."
            )
        return found

    async def sources(self, region: str, params: dict[str, Any], query: str,
                      turns: Sequence[tuple[str, str]]) -> tuple[list[rag.Source], str, dict[str, Any]]:
        """The retrieved sources, the model ARN and the generation configuration of a RetrieveAndGenerate call."""
        configuration = params["retrieveAndGenerateConfiguration"]
        kind = configuration["type"]
        for flavour in ("knowledgeBaseConfiguration", "externalSourcesConfiguration"):
            guardrail = ((configuration.get(flavour) or {}).get("generationConfiguration") or {}).get(
                "guardrailConfiguration") or {}
            check_guardrail(guardrail.get("guardrailId"), guardrail.get("guardrailVersion"))
        if kind == "KNOWLEDGE_BASE":
            kb_config = configuration.get("knowledgeBaseConfiguration")
            if not kb_config:
                raise ValidationException(
                    "retrieveAndGenerateConfiguration.type KNOWLEDGE_BASE needs knowledgeBaseConfiguration "
                    "(knowledgeBaseId and modelArn)."
                )
            if kb_config.get("orchestrationConfiguration", {}).get("queryTransformationConfiguration"):
                raise ValidationException(
                    "orchestrationConfiguration.queryTransformationConfiguration (query decomposition) is not "
                    "supported by llamarock; leave it out."
                )
            results = await self.retrieve(region, kb_config["knowledgeBaseId"], rag.retrieval_query(query, turns),
                                          kb_config.get("retrievalConfiguration"))
            found = [rag.Source(r["content"].get("text", ""), _reference(r)) for r in results]
            return found, kb_config["modelArn"], kb_config.get("generationConfiguration") or {}
        external = configuration.get("externalSourcesConfiguration")
        if not external:
            raise ValidationException(
                "retrieveAndGenerateConfiguration.type EXTERNAL_SOURCES needs externalSourcesConfiguration "
                "(modelArn and sources)."
            )
        found = []
        for source in external["sources"]:
            if source["sourceType"] == "S3":
                uri = (source.get("s3Location") or {}).get("uri", "")
                name, data = uri.rsplit("/", 1)[-1], await self._read_uri(uri)
                location: dict[str, Any] = {"type": "S3", "s3Location": {"uri": uri}}
            else:
                byte = source.get("byteContent") or {}
                if not byte:
                    raise ValidationException("A BYTE_CONTENT source needs byteContent (identifier, contentType, "
                                              "data).")
                extension = mimetypes.guess_extension(byte["contentType"]) or ".txt"
                name = byte["identifier"] if parsers.is_supported(byte["identifier"]) else "source" + extension
                data = byte["data"]
                location = {"type": "CUSTOM", "customDocumentLocation": {"id": byte["identifier"]}}
            try:
                parsed = await asyncio.to_thread(parsers.parse, name, data)
            except parsers.ParseError as error:
                raise ValidationException(f"The external source {name} could not be read: {error}") from error
            text = parsed.text
            found.append(rag.Source(text, {"content": {"type": "TEXT", "text": text}, "location": location}))
        return found, external["modelArn"], external.get("generationConfiguration") or {}

    async def generate(self, region: str, model_arn: str, prompt: rag.Prompt, generation: dict[str, Any],
                       request_id: str) -> AsyncIterator[str]:
        """The model's answer to ``prompt``, as text deltas, through the runtime's Converse use case."""
        model = ModelName.parse(model_arn, self.settings.aliases, self.account)
        model.parsed()  # a malformed modelArn is Bedrock's ValidationException
        params: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": prompt.user}]}]}
        if prompt.system:
            params["system"] = [{"text": prompt.system}]
        text_config = (generation.get("inferenceConfig") or {}).get("textInferenceConfig") or {}
        inference = {name: text_config[name] for name in ("maxTokens", "temperature", "topP", "stopSequences")
                     if name in text_config}
        if inference:
            params["inferenceConfig"] = inference
        latency = (generation.get("performanceConfig") or {}).get("latency")
        if latency:
            params["performanceConfig"] = {"latency": latency}
        invocation = self.invocations.converse(model, region, params, request_id, time.monotonic(), streaming=True)
        async with contextlib.aclosing(invocation.events) as events:
            async for name, event in events:
                if name == "contentBlockDelta":
                    delta = (event.get("delta") or {}).get("text")
                    if delta:
                        yield delta

    async def remember(self, session: RagSession, query: str, answer: str) -> None:
        session.turns.append((query, answer))
        session.turns[:] = session.turns[-20:]
        await asyncio.to_thread(self.store.save_session, session, self._clock())


RERANK_MODELS = ("amazon.rerank-v1:0", "cohere.rerank-v3-5:0")
# The embedding model whose vectors the local reranker compares (the embedded default serves it).
RERANK_EMBEDDER = "amazon.titan-embed-text-v2:0"


@dataclass
class _KnowledgeBaseEmbedder:
    """A knowledge base's embedding model as kbcore's pipeline wants an embedder: through the embedding service,
    with the knowledge base's dimensions."""

    service: KnowledgeService
    kb: KnowledgeBase
    count_tokens: Callable[[str], int]

    async def embed(self, texts: Sequence[str], *, normalize: bool = True) -> Embeddings:
        return await self.service.embeddings.embed(self.kb.embedding_model_arn, texts,
                                                   dimensions=self.kb.embedding_dimensions, normalize=normalize)


class _BatchingEmbedder:
    """Embeds the texts of documents prepared concurrently in one call to the embedding model (the embedder is much
    faster on one batch than on many single texts); a batch that fails is retried call by call, so that one
    document's failure stays its own."""

    def __init__(self, inner: _KnowledgeBaseEmbedder) -> None:
        self.inner = inner
        self.count_tokens = inner.count_tokens
        self._pending: list[tuple[list[str], bool, asyncio.Future[Embeddings]]] = []

    async def embed(self, texts: Sequence[str], *, normalize: bool = True) -> Embeddings:
        future: asyncio.Future[Embeddings] = asyncio.get_running_loop().create_future()
        self._pending.append((list(texts), normalize, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0.005)  # let the other documents of the group reach their embedding
        batch, self._pending = self._pending, []
        for normalize in (True, False):
            calls = [call for call in batch if call[1] is normalize]
            if not calls:
                continue
            texts = [text for call in calls for text in call[0]]
            try:
                result = await self.inner.embed(texts, normalize=normalize)
            except Exception:
                for call_texts, _, future in calls:
                    try:
                        future.set_result(await self.inner.embed(call_texts, normalize=normalize))
                    except Exception as error:
                        future.set_exception(error)
                continue
            at = 0
            for call_texts, _, future in calls:
                end = at + len(call_texts)
                future.set_result(Embeddings(result.vectors[at:end], result.token_counts[at:end]))
                at = end


class _DocumentFailed(Exception):
    """One document could not be indexed (its message is the job's failure reason)."""


# A document the knowledge base has never seen (no job has handled it).
_NEVER = Document("", "", "", "S3", None, None, "", None, 0, None, datetime.min.replace(tzinfo=UTC))


def _doc_key(ds_id: str, identifier: str) -> str:
    """A document's id in the vector store: unique across the data sources of a knowledge base."""
    return f"{ds_id}:{identifier}"


def _location(kind: str, identifier: str) -> dict[str, Any]:
    if kind == "S3":
        return {"type": "S3", "s3Location": {"uri": identifier}}
    return {"type": "CUSTOM", "customDocumentLocation": {"id": identifier}}


def _result(hit: Hit) -> dict[str, Any]:
    """One Retrieve result (KnowledgeBaseRetrievalResult) from a store hit."""
    found_metadata = dict(hit.metadata or {})
    found_metadata["x-amz-bedrock-kb-chunk-id"] = hit.chunk_id
    location = hit.location or _location("CUSTOM", hit.document_id)
    return {
        "content": {"type": "TEXT", "text": hit.text},
        "location": location,
        "score": float(hit.score),
        "metadata": found_metadata,
        "documentId": hit.document_id,
    }


def _reference(result: dict[str, Any]) -> dict[str, Any]:
    """A Retrieve result as a citation's retrievedReference (content, location, metadata)."""
    return {key: result[key] for key in ("content", "location", "metadata") if key in result}


