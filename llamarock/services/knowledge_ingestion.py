"""Ingestion jobs (Start/Get/List/StopIngestionJob) and documents (Ingest/Delete/Get/ListKnowledgeBaseDocuments).

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
import logging
import mimetypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from llamarock.engines.embedding import Embeddings
from llamarock.errors import BedrockError, ConflictException, ResourceNotFoundException, ValidationException
from llamarock.knowledge import metadata, parsers, pipeline
from llamarock.knowledge.store import VectorStore
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.idempotency import request_digest
from llamarock.services.knowledge import (
    INGEST_GROUP,
    MAX_FAILURE_REASONS,
    METADATA_SUFFIX,
    KnowledgeService,
    SourceDocument,
    bucket_of,
    doc_key,
    document_location,
    new_id,
    sha,
)
from llamarock.storage.blobs import BlobStoreError, BucketMissingError
from llamarock.storage.knowledge import STATISTICS, DataSource, Document, IngestionJob, KnowledgeBase

log = logging.getLogger(__name__)


class IngestionService:
    """Ingestion jobs and the documents of data sources, over :class:`KnowledgeService`'s knowledge bases."""

    def __init__(self, kbs: KnowledgeService) -> None:
        self.kbs = kbs
        self.store = kbs.store
        self.blobs = kbs.blobs
        self.settings = kbs.settings
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._stop: set[str] = set()

    async def start(self) -> None:
        """At start-up: resume the jobs a stopped server left running."""
        for job in await asyncio.to_thread(self.store.unfinished_jobs):
            if job.status == "STOPPING":
                await asyncio.to_thread(self.store.set_job_status, job.job_id, "STOPPED", self.kbs.clock())
                continue
            log.info("resuming ingestion job %s of data source %s", job.job_id, job.ds_id)
            self._runners[job.job_id] = asyncio.create_task(self._run_job(job.job_id))

    async def close(self) -> None:
        """Stop the running jobs where they are (they resume at the next start)."""
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------------------------------- ingestion jobs

    async def start_job(self, region: str, kb_id: str, ds_id: str, params: dict[str, Any]) -> IngestionJob:
        kb, ds = await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        digest = request_digest(params.get("description"))
        token = params.get("clientToken")
        if token is not None:
            existing = await asyncio.to_thread(self.store.job_by_token, ds_id, token)
            if existing is not None:
                return self.kbs.repeat(existing, digest, "StartIngestionJob")
        if kb.status not in ("ACTIVE", "UPDATING"):
            await asyncio.to_thread(self.kbs.kb_in, region, kb_id, usable=True)
        if ds.kind != "S3":
            raise ValidationException(
                f"The data source {ds_id} is {ds.kind}: StartIngestionJob syncs S3 data sources. Send a CUSTOM data "
                "source's documents with IngestKnowledgeBaseDocuments."
            )
        now = self.kbs.clock()
        job = IngestionJob(new_id(), kb_id, ds_id, params.get("description"), "STARTING",
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
            return self.kbs.repeat(stored, digest, "StartIngestionJob")
        self._runners[job.job_id] = asyncio.create_task(self._run_job(job.job_id))
        return job

    async def get_job(self, region: str, kb_id: str, ds_id: str, job_id: str) -> IngestionJob:
        await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        job = await asyncio.to_thread(self.store.job, job_id)
        if job is None or job.ds_id != ds_id or job.kb_id != kb_id:
            raise ResourceNotFoundException(
                f"The ingestion job {job_id} doesn't exist for data source {ds_id}. ListIngestionJobs lists them."
            )
        return job

    async def list_jobs(self, region: str, kb_id: str, ds_id: str) -> list[IngestionJob]:
        await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        return await asyncio.to_thread(self.store.jobs, kb_id, ds_id)

    async def stop_job(self, region: str, kb_id: str, ds_id: str, job_id: str) -> IngestionJob:
        job = await self.get_job(region, kb_id, ds_id, job_id)
        if job.status not in ("STARTING", "IN_PROGRESS"):
            raise ConflictException(
                f"The ingestion job {job_id} is {job.status}; only a STARTING or IN_PROGRESS job can be stopped."
            )
        await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPING", self.kbs.clock(),
                                ("STARTING", "IN_PROGRESS"))
        self._stop.add(job_id)
        if job_id not in self._runners:  # nothing is running it (it never started here): it stops now
            await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPED", self.kbs.clock())
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
                                                                     updated_at=self.kbs.clock()))
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
        await asyncio.to_thread(self.store.set_job_status, job_id, "IN_PROGRESS", self.kbs.clock(), ("STARTING",))
        s3 = ds.configuration.get("s3Configuration") or {}
        bucket = bucket_of(s3.get("bucketArn", ""))
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
        vectors = await asyncio.to_thread(self.kbs.vectors_of, kb)
        seen = {f"s3://{bucket}/{key}" for key in documents}
        # Documents done before a restart were counted then (their outcome was committed with the statistics).
        todo = [key for key in documents if (known.get(f"s3://{bucket}/{key}") or _NEVER).last_job_id != job_id]
        embedder = _BatchingEmbedder(_KnowledgeBaseEmbedder(self.kbs.embeddings, kb, await self.kbs.token_counter(kb)))
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
                await asyncio.to_thread(vectors.delete_document, kb.kb_id, doc_key(ds.ds_id, identifier))
                job = await self._job(job_id)
                stats = dict(job.statistics)
                stats["numberOfDocumentsDeleted"] += 1
                await asyncio.to_thread(self.store.put_document_and_job, None,
                                        replace(job, statistics=stats, updated_at=self.kbs.clock()), identifier)
        if job_id in self._stop:
            await asyncio.to_thread(self.store.set_job_status, job_id, "STOPPED", self.kbs.clock())
            return
        await asyncio.to_thread(self.store.set_job_status, job_id, "COMPLETE", self.kbs.clock(), ("IN_PROGRESS",))

    async def _job(self, job_id: str) -> IngestionJob:
        job = await asyncio.to_thread(self.store.job, job_id)
        assert job is not None
        return job

    async def _finish(self, job_id: str, status: str, reason: str) -> None:
        job = await self._job(job_id)
        await asyncio.to_thread(self.store.save_job, replace(
            job, status=status, failure_reasons=(*job.failure_reasons, reason), updated_at=self.kbs.clock()))

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
            content_hash = sha(data)
            sidecar = await asyncio.to_thread(self.blobs.get, bucket, key + METADATA_SUFFIX) if has_sidecar else None
            metadata_hash = sha(sidecar) if sidecar is not None else None
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
                       self.kbs.clock())
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
                                replace(job, statistics=stats, failure_reasons=reasons, updated_at=self.kbs.clock()))

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
            doc_key(ds.ds_id, document.identifier), document.name, document.data, document.identifier, ds.ds_id,
            document.attributes, document.embed_keys, document_location(document.kind, document.identifier),
        )
        if embedder is None:
            embedder = _KnowledgeBaseEmbedder(self.kbs.embeddings, kb, await self.kbs.token_counter(kb))
        try:
            prepared = await pipeline.prepare(source, ds.chunking or None, embedder, window=await self.kbs.window(kb))
        except parsers.ParseError as error:
            raise _DocumentFailed(f"{document.identifier}: {error}") from error
        except BedrockError as error:
            raise _DocumentFailed(f"{document.identifier}: the embedding model refused it: {error.message}") from error
        await asyncio.to_thread(vectors.upsert, kb.kb_id, source.document_id, prepared.chunks)
        return len(prepared.chunks)

    # ------------------------------------------------------------------------------------------- documents

    async def ingest_documents(self, region: str, kb_id: str, ds_id: str,
                               documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """IngestKnowledgeBaseDocuments: index each document now; its detail says INDEXED or FAILED (why)."""
        kb, ds = await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        await asyncio.to_thread(self.kbs.kb_in, region, kb_id, usable=True)
        vectors = await asyncio.to_thread(self.kbs.vectors_of, kb)
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
            row = Document(kb_id, ds_id, source.identifier, source.kind, sha(source.data), source.metadata_hash,
                           status, reason, chunks, None, self.kbs.clock())
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
                data = await self.kbs.read_uri(uri)
                name = uri.rsplit("/", 1)[-1]
            else:
                raise ValidationException(
                    "content.custom.sourceType must be IN_LINE (inlineContent) or S3_LOCATION (s3Location)."
                )
        else:
            uri = ((content.get("s3") or {}).get("s3Location") or {}).get("uri", "")
            if not uri.startswith("s3://"):
                raise ValidationException("An S3 document needs content.s3.s3Location.uri (s3://bucket/key).")
            identifier, data, name = uri, await self.kbs.read_uri(uri), uri.rsplit("/", 1)[-1]
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
            raw = await self.kbs.read_uri((given.get("s3Location") or {}).get("uri", ""))
            try:
                return dict(metadata.parse_sidecar(raw)), sha(raw)
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
        kb, ds = await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        vectors = await asyncio.to_thread(self.kbs.vectors_of, kb)
        details = []
        for given in identifiers:
            identifier = self._identifier(given)
            await asyncio.to_thread(vectors.delete_document, kb_id, doc_key(ds_id, identifier))
            await asyncio.to_thread(self.store.delete_document, kb_id, ds_id, identifier)
            gone = Document(kb_id, ds_id, identifier, given.get("dataSourceType", ds.kind), None, None, "DELETING",
                            None, 0, None, self.kbs.clock())
            details.append(self._detail(gone))
        return details

    async def get_documents(self, region: str, kb_id: str, ds_id: str,
                            identifiers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _, ds = await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        details = []
        for given in identifiers:
            identifier = self._identifier(given)
            found = await asyncio.to_thread(self.store.document, kb_id, ds_id, identifier)
            if found is None:
                found = Document(kb_id, ds_id, identifier, given.get("dataSourceType", ds.kind), None, None,
                                 "NOT_FOUND", None, 0, None, self.kbs.clock())
            details.append(self._detail(found))
        return details

    async def list_documents(self, region: str, kb_id: str, ds_id: str) -> list[dict[str, Any]]:
        await asyncio.to_thread(self.kbs.ds_in, region, kb_id, ds_id)
        return [self._detail(d) for d in await asyncio.to_thread(self.store.documents, kb_id, ds_id)]


@dataclass
class _KnowledgeBaseEmbedder:
    """A knowledge base's embedding model as kbcore's pipeline wants an embedder: through the embedding service,
    with the knowledge base's dimensions."""

    embeddings: EmbeddingService
    kb: KnowledgeBase
    count_tokens: Callable[[str], int]

    async def embed(self, texts: Sequence[str], *, normalize: bool = True) -> Embeddings:
        return await self.embeddings.embed(self.kb.embedding_model_arn, texts,
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
