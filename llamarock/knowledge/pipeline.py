"""One document from bytes to stored chunks: parse, chunk, embed, and the chunks' metadata and ids.

``prepare(source, chunking, embedder)`` is what an ingestion job runs per file (the store's ``upsert`` then
replaces the document's chunks atomically). Every chunk's metadata holds the document's attributes (sidecar or
inline), Bedrock's reserved keys (source URI, data source id; the page number for PDFs) and, when the store returns
it, the chunk id. Attributes marked ``includeForEmbedding`` are put before the chunk's text for embedding only.

Chunk ids are deterministic (a UUID from the document id, the chunk's offsets and position), so re-ingesting an
unchanged file gives the same ids.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llamarock.knowledge import chunking, parsers
from llamarock.knowledge.metadata import PAGE_NUMBER_KEY, Metadata, embedding_prefix, reserved
from llamarock.knowledge.store import StoredChunk

_NAMESPACE = uuid.UUID("6f1c7a52-4d0e-4b8e-9a35-2f3c1b9d8e70")


class EmbedderLike(Protocol):
    """What the pipeline needs of ``engines.embedding.Embedder``."""

    async def embed(self, texts: Sequence[str], *, normalize: bool = True) -> Any: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class DocumentSource:
    document_id: str
    name: str  # the file's name: its extension picks the parser
    data: bytes
    source_uri: str = ""
    data_source_id: str = ""
    attributes: Metadata = field(default_factory=dict)
    include_for_embedding: tuple[str, ...] = ()
    location: Mapping[str, Any] = field(default_factory=dict)  # Bedrock's RetrievalResultLocation for every chunk


@dataclass(frozen=True)
class Prepared:
    chunks: list[StoredChunk]
    parsed: parsers.ParsedDocument
    spans: list[chunking.Chunk]  # the chunker's output: offsets into parsed.text, per stored chunk


def chunk_id(document_id: str, index: int, start: int, end: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{document_id}\x00{index}\x00{start}\x00{end}"))


async def prepare(
    source: DocumentSource, chunking_config: Mapping[str, Any] | None, embedder: EmbedderLike,
    *, window: int | None = None,
) -> Prepared:
    """Parse (ParseError), chunk (ValueError for a bad configuration), embed; nothing is stored here.

    ``window`` is the embedding model's input limit in content tokens: with no chunking configuration, chunks are
    Bedrock's default size or that, whichever is smaller, so that no chunk's tail is cut off before it is embedded.
    """
    parsed = await asyncio.to_thread(parsers.parse, source.name, source.data)
    config = chunking.validate(chunking_config) if chunking_config is not None else chunking.default_config(window)

    async def embed(texts: list[str]) -> list[list[float]]:
        result = await embedder.embed(texts)
        vectors: list[list[float]] = result.vectors
        return vectors

    if config["chunkingStrategy"] == "SEMANTIC":
        spans = await chunking.achunk(parsed.text, config, embedder.count_tokens, embed=embed)
    else:
        spans = await asyncio.to_thread(chunking.chunk, parsed.text, config, embedder.count_tokens)
    if not spans:
        return Prepared([], parsed, [])
    prefix = embedding_prefix(source.attributes, source.include_for_embedding)
    vectors = await embed([prefix + span.text for span in spans])
    base: Metadata = {**source.attributes}
    if source.source_uri or source.data_source_id:
        base.update(reserved(source.source_uri, source.data_source_id))
    stored = []
    for index, (span, vector) in enumerate(zip(spans, vectors, strict=True)):
        meta = dict(base)
        page = parsed.page_at(span.start)
        if page is not None:
            meta[PAGE_NUMBER_KEY] = page
        parent_id = parent_text = None
        if span.parent_index is not None and span.parent_start is not None and span.parent_end is not None:
            parent_id = chunk_id(source.document_id, -1 - span.parent_index, span.parent_start, span.parent_end)
            parent_text = parsed.text[span.parent_start : span.parent_end]
        stored.append(
            StoredChunk(
                chunk_id(source.document_id, index, span.start, span.end),
                span.text,
                vector,
                meta,
                dict(source.location),
                parent_id,
                parent_text,
            )
        )
    return Prepared(stored, parsed, spans)
