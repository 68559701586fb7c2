"""Knowledge bases and their data sources (bedrock-agent): the use cases, and what ingestion and retrieval share.

Ingestion jobs and documents are ``services/knowledge_ingestion.py``; Retrieve, RetrieveAndGenerate and Rerank are
``services/knowledge_retrieval.py``. Both work on the knowledge bases, vector stores and embedding models this module's
:class:`KnowledgeService` looks up.

A knowledge base names an embedding model (``embeddingModelArn``: a catalog embedding id or its ARN, served by the
embedding service) and a vector store: the embedded SQLite one (``<data_dir>/knowledge/vectors.db``) when
``storageConfiguration`` is omitted, or names a type llamarock does not run (OpenSearch Serverless, Pinecone... :
stored in the embedded store, with a warning in the log); PostgreSQL with pgvector for ``RDS`` (``knowledge_rds_url``
or ``knowledge_rds_urls``). Data sources are S3 prefixes (read from the blob store) or CUSTOM (documents sent inline
with IngestKnowledgeBaseDocuments).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from llamarock.errors import (
    BedrockError,
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from llamarock.knowledge import chunking
from llamarock.knowledge.store import VectorStore
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.idempotency import insert_once, request_digest
from llamarock.services.invocation import InvocationService
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError
from llamarock.storage.knowledge import (
    DataSource,
    IngestionJob,
    KnowledgeBase,
    KnowledgeStore,
)

__all__ = ["DataSource", "IngestionJob", "KnowledgeBase", "KnowledgeService"]

log = logging.getLogger(__name__)

_Created = TypeVar("_Created", KnowledgeBase, DataSource, IngestionJob)

RESOURCE_TYPE = "knowledge-base"
_ID = string.ascii_uppercase + string.digits
# Storage types llamarock runs itself; any other is kept in the embedded store (see the module docstring).
LOCAL_STORAGE = ("RDS",)
METADATA_SUFFIX = ".metadata.json"
# At most this many failure reasons are kept per job (Bedrock truncates its list too).
MAX_FAILURE_REASONS = 100
MAX_KNOWLEDGE_BASES = 100  # per region, as Bedrock's default quota
MAX_DATA_SOURCES = 5  # per knowledge base, as Bedrock's default quota
# Documents an ingestion job prepares at once (their texts embedded in one batch) and commits in one transaction.
INGEST_GROUP = 16


def new_id() -> str:
    return "".join(secrets.choice(_ID) for _ in range(10))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bucket_of(bucket_arn: str) -> str:
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
    """Knowledge bases, data sources, their vector stores and embedding models."""

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
        self.clock = clock
        self._vectors: dict[str, VectorStore] = {}
        self._vectors_lock = threading.Lock()  # stores are opened in worker threads, once each
        self._background: set[asyncio.Task[None]] = set()
        tagging.register(RESOURCE_TYPE, TaggableKind(self._exists))
    # ------------------------------------------------------------------------------------------- lifecycle

    def _exists(self, region: str, arn: str) -> bool:
        kb = self.store.kb(arn.rsplit("/", 1)[-1])
        return kb is not None and kb.region == region and kb.arn == arn

    async def start(self) -> None:
        """At start-up: finish the creations, updates and deletions a stopped server left half-done."""
        for kb in await asyncio.to_thread(self.store.kbs):
            if kb.status == "CREATING" or kb.status == "UPDATING":
                self._spawn(self._activate(kb.kb_id))
            elif kb.status == "DELETING":
                self._spawn(self._delete_kb(kb))

    async def close(self) -> None:
        """Stop the background work where it is (it resumes at the next start) and close the vector stores."""
        tasks = list(self._background)
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

    def vectors_of(self, kb: KnowledgeBase) -> VectorStore:
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
                return self.repeat(existing, digest, "CreateKnowledgeBase")
        self._check_kb_config(configuration, storage)
        store_url = self._store_url(storage)
        if storage is not None and storage.get("type") not in LOCAL_STORAGE:
            log.warning("knowledge base %s: storageConfiguration.type %s is not run by llamarock; its vectors are "
                        "kept in the embedded store", params["name"], storage.get("type"))
        if len(await asyncio.to_thread(self.store.kbs, region)) >= MAX_KNOWLEDGE_BASES:
            raise ServiceQuotaExceededException(
                f"This account already has {MAX_KNOWLEDGE_BASES} knowledge bases in {region}. Delete one first."
            )
        now = self.clock()
        kb_id = new_id()
        kb = KnowledgeBase(kb_id, self._kb_arn(region, kb_id), region, params["name"], params.get("description"),
                           params["roleArn"], configuration, storage, store_url, "CREATING", (), now, now, token,
                           digest)
        stored = await asyncio.to_thread(insert_once, self.store, kb, lambda: ConflictException(
            f"A knowledge base named {kb.name} already exists in {region}. Choose another name, or delete it first."
        ))
        if stored is not kb:
            return self.repeat(stored, digest, "CreateKnowledgeBase")
        if tags:
            await self.tagging.put(kb.arn, tags)
        self._spawn(self._activate(kb.kb_id))
        return kb

    @staticmethod
    def repeat(existing: _Created, digest: str, operation: str) -> _Created:
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
            await self.embed_texts(kb, ["knowledge base probe"])
            await asyncio.to_thread(self.vectors_of, kb)
            status, reasons = "ACTIVE", tuple[str, ...]()
        except BedrockError as error:
            status, reasons = "FAILED", (error.message,)
        except Exception as error:  # the vector store could not open: say why, keep the record
            log.exception("knowledge base %s failed to open its store", kb_id)
            status, reasons = "FAILED", (f"The vector store could not be opened: {error}",)
        current = await asyncio.to_thread(self.store.kb, kb_id)
        if current is not None and current.status in ("CREATING", "UPDATING"):
            await asyncio.to_thread(self.store.save_kb,
                                    replace(current, status=status, failure_reasons=reasons, updated_at=self.clock()))

    def kb_in(self, region: str, kb_id: str, *, usable: bool = False) -> KnowledgeBase:
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
        return await asyncio.to_thread(self.kb_in, region, kb_id)

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
                          configuration=configuration, updated_at=self.clock())
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
        deleting = replace(kb, status="DELETING", updated_at=self.clock())
        await asyncio.to_thread(self.store.save_kb, deleting)
        self._spawn(self._delete_kb(deleting))
        return deleting

    async def _delete_kb(self, kb: KnowledgeBase) -> None:
        try:
            vectors = await asyncio.to_thread(self.vectors_of, kb)
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
                return self.repeat(existing, digest, "CreateDataSource")
        self._check_ds_config(configuration, ingestion)
        now = self.clock()
        ds = DataSource(new_id(), kb.kb_id, params["name"], params.get("description"), configuration, ingestion,
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
            return self.repeat(stored, digest, "CreateDataSource")
        return ds

    def ds_in(self, region: str, kb_id: str, ds_id: str) -> tuple[KnowledgeBase, DataSource]:
        kb = self.kb_in(region, kb_id)
        ds = self.store.ds(kb_id, ds_id)
        if ds is None:
            raise ResourceNotFoundException(
                f"The data source {ds_id} doesn't exist in knowledge base {kb_id}. ListDataSources lists them."
            )
        return kb, ds

    async def get_ds(self, region: str, kb_id: str, ds_id: str) -> DataSource:
        return (await asyncio.to_thread(self.ds_in, region, kb_id, ds_id))[1]

    async def list_ds(self, region: str, kb_id: str) -> list[DataSource]:
        kb = await self.get_kb(region, kb_id)
        return await asyncio.to_thread(self.store.data_sources, kb.kb_id)

    async def update_ds(self, region: str, kb_id: str, ds_id: str, params: dict[str, Any]) -> DataSource:
        _, ds = await asyncio.to_thread(self.ds_in, region, kb_id, ds_id)
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
                          updated_at=self.clock())
        await asyncio.to_thread(self.store.save_ds, updated)
        return updated

    async def delete_ds(self, region: str, kb_id: str, ds_id: str) -> DataSource:
        kb, ds = await asyncio.to_thread(self.ds_in, region, kb_id, ds_id)
        if any(job.status in ("STARTING", "IN_PROGRESS", "STOPPING")
               for job in await asyncio.to_thread(self.store.jobs, kb_id, ds_id)):
            raise ConflictException(
                f"The data source {ds_id} has an ingestion job in progress. Stop it (StopIngestionJob) or wait for "
                "it to finish, then delete the data source."
            )
        if ds.deletion_policy == "DELETE":
            vectors = await asyncio.to_thread(self.vectors_of, kb)
            for document in await asyncio.to_thread(self.store.documents, kb_id, ds_id):
                await asyncio.to_thread(vectors.delete_document, kb_id, doc_key(ds_id, document.identifier))
        await asyncio.to_thread(self.store.delete_ds, kb_id, ds_id)
        return replace(ds, status="DELETING")

    # ------------------------------------------------------------------------------------------- embedding models

    async def token_counter(self, kb: KnowledgeBase) -> Callable[[str], int]:
        embedder = await self.embeddings.embedder_for(kb.embedding_model_arn)
        return embedder.count_tokens

    async def window(self, kb: KnowledgeBase) -> int:
        """How many content tokens the knowledge base's embedding model embeds (its limit less its special tokens)."""
        embedder = await self.embeddings.embedder_for(kb.embedding_model_arn)
        return embedder.max_tokens - embedder.count_tokens("")

    async def embed_texts(self, kb: KnowledgeBase, texts: Sequence[str]) -> list[list[float]]:
        embedded = await self.embeddings.embed(kb.embedding_model_arn, texts, dimensions=kb.embedding_dimensions)
        return embedded.vectors

    async def read_uri(self, uri: str) -> bytes:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ValidationException(f"{uri} is not an S3 object URI (s3://bucket/key).")
        bucket, key = uri[5:].split("/", 1)
        try:
            return await asyncio.to_thread(self.blobs.get, bucket, key)
        except BlobStoreError as error:
            raise ValidationException(f"{uri} could not be read from the blob store: {error}") from error


def doc_key(ds_id: str, identifier: str) -> str:
    """A document's id in the vector store: unique across the data sources of a knowledge base."""
    return f"{ds_id}:{identifier}"


def document_location(kind: str, identifier: str) -> dict[str, Any]:
    if kind == "S3":
        return {"type": "S3", "s3Location": {"uri": identifier}}
    return {"type": "CUSTOM", "customDocumentLocation": {"id": identifier}}
