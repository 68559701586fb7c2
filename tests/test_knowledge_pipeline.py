"""Files to stored chunks with the real embedder and the real SQLite store: metadata, pages, hierarchy, search."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_knowledge_parsing import make_pdf

from llamarock.engines.embedding import Embedder, embedded_default
from llamarock.knowledge import metadata
from llamarock.knowledge.parsers import ParseError
from llamarock.knowledge.pipeline import DocumentSource, prepare
from llamarock.knowledge.sqlite_store import SqliteVectorStore


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    made = embedded_default()
    yield made
    asyncio.run(made.close())


def test_pdf_with_sidecar_to_search(embedder: Embedder, tmp_path: Path) -> None:
    sidecar = metadata.parse_sidecar_full(
        json.dumps(
            {
                "metadataAttributes": {
                    "team": {"value": {"type": "STRING", "stringValue": "astronomy"}, "includeForEmbedding": True},
                    "year": 2021,
                }
            }
        ).encode()
    )
    pdf = make_pdf(["Saturn has rings made of ice and rock.", "Jupiter is the largest planet of the solar system."])
    source = DocumentSource(
        "doc-1",
        "planets.pdf",
        pdf,
        source_uri="s3://bucket/planets.pdf",
        data_source_id="DS1",
        attributes=sidecar.attributes,
        include_for_embedding=sidecar.include_for_embedding,
        location={"type": "S3", "s3Location": {"uri": "s3://bucket/planets.pdf"}},
    )
    config = {
        "chunkingStrategy": "FIXED_SIZE",
        "fixedSizeChunkingConfiguration": {"maxTokens": 14, "overlapPercentage": 10},
    }
    prepared = asyncio.run(prepare(source, config, embedder))
    assert len(prepared.chunks) >= 2
    again = asyncio.run(prepare(source, config, embedder))
    assert [c.chunk_id for c in again.chunks] == [c.chunk_id for c in prepared.chunks]  # deterministic ids
    for stored, span in zip(prepared.chunks, prepared.spans, strict=True):
        assert stored.text == prepared.parsed.text[span.start : span.end]
        assert stored.metadata[metadata.SOURCE_URI_KEY] == "s3://bucket/planets.pdf"
        assert stored.metadata[metadata.DATA_SOURCE_ID_KEY] == "DS1"
    store = SqliteVectorStore(tmp_path / "kb.sqlite")
    try:
        store.upsert("kb", "doc-1", prepared.chunks)
        vector = asyncio.run(embedder.embed(["largest planet"])).vectors[0]
        hits = store.search("kb", "largest planet", vector, 1, "HYBRID")
        assert "Jupiter" in hits[0].text and hits[0].metadata[metadata.PAGE_NUMBER_KEY] == 2
        assert hits[0].location == {"type": "S3", "s3Location": {"uri": "s3://bucket/planets.pdf"}}
        assert hits[0].metadata["team"] == "astronomy" and hits[0].metadata["year"] == 2021
        page_one = {"equals": {"key": metadata.PAGE_NUMBER_KEY, "value": 1}}
        assert "Saturn" in store.search("kb", "largest planet", vector, 1, "HYBRID", page_one)[0].text
        by_source = {"startsWith": {"key": metadata.SOURCE_URI_KEY, "value": "s3://bucket/"}}
        assert len(store.search("kb", "planet", vector, 10, "SEMANTIC", by_source)) == len(prepared.chunks)
    finally:
        store.close()


def test_hierarchical_document_returns_parents(embedder: Embedder, tmp_path: Path) -> None:
    text = " ".join(f"Paragraph {i} talks about subject number {i} in some detail." for i in range(40))
    config = {
        "chunkingStrategy": "HIERARCHICAL",
        "hierarchicalChunkingConfiguration": {
            "levelConfigurations": [{"maxTokens": 120}, {"maxTokens": 30}],
            "overlapTokens": 5,
        },
    }
    prepared = asyncio.run(prepare(DocumentSource("d", "notes.txt", text.encode()), config, embedder))
    assert all(c.parent_id and c.parent_text and c.text in c.parent_text for c in prepared.chunks)
    store = SqliteVectorStore(tmp_path / "kb.sqlite")
    try:
        store.upsert("kb", "d", prepared.chunks)
        vector = asyncio.run(embedder.embed(["subject number 17"])).vectors[0]
        hits = store.search("kb", "subject number 17", vector, 3, "HYBRID")
        parents = {c.parent_id: c.parent_text for c in prepared.chunks}
        assert len({h.chunk_id for h in hits}) == len(hits) and all(h.chunk_id in parents for h in hits)
        assert all(h.text == parents[h.chunk_id] for h in hits)
        assert "number 17 " in hits[0].text
    finally:
        store.close()


def test_semantic_vs_hybrid_with_real_vectors(embedder: Embedder, tmp_path: Path) -> None:
    """A query naming a rare identifier: HYBRID puts the document holding it first; dense embeddings alone do not
    know the identifier and rank by topic."""
    docs = {
        "err": "Error QX-7741 means the flux capacitor lost calibration; recalibrate it.",
        "gen1": "Troubleshooting guide: when the device shows an error code, restart it and check the cables.",
        "gen2": "Error messages on the display usually mean a fault; contact support with the error code shown.",
        "gen3": "Common device errors and their fixes: power cycling solves most error conditions.",
    }
    store = SqliteVectorStore(tmp_path / "kb.sqlite")
    try:
        for doc_id, text in docs.items():
            prepared = asyncio.run(prepare(DocumentSource(doc_id, f"{doc_id}.txt", text.encode()), None, embedder))
            store.upsert("kb", doc_id, prepared.chunks)
        query = "what does error code QX-7741 on my device mean"
        vector = asyncio.run(embedder.embed([query])).vectors[0]
        hybrid = store.search("kb", query, vector, 4, "HYBRID")
        semantic = store.search("kb", query, vector, 4, "SEMANTIC")
        assert hybrid[0].document_id == "err"
        assert {h.document_id for h in semantic} == set(docs)
        assert hybrid[0].score >= semantic[0].score - 1.0  # both 0..1
    finally:
        store.close()


def test_bad_file_is_a_parse_error(embedder: Embedder) -> None:
    with pytest.raises(ParseError, match="PDF"):
        asyncio.run(prepare(DocumentSource("d", "x.pdf", b"%PDF-1.7 broken"), None, embedder))
    empty = asyncio.run(prepare(DocumentSource("d", "x.txt", b"   "), None, embedder))
    assert empty.chunks == []


def test_default_chunks_fit_the_embedding_window(embedder: Embedder) -> None:
    """Bedrock's default chunk (300 tokens) is longer than all-MiniLM-L6-v2 embeds (254 content tokens): with the
    model's window given, default chunks are cut to it, so no chunk's tail is left out of its vector; an explicit
    configuration is kept as given."""
    text = " ".join(f"word{i} alpha beta gamma" for i in range(400))
    window = embedder.max_tokens - embedder.count_tokens("")
    capped = asyncio.run(prepare(DocumentSource("d", "long.txt", text.encode()), None, embedder, window=window))
    assert len(capped.chunks) > 1
    assert all(len(embedder._whole.encode(c.text).ids) <= embedder.max_tokens  # type: ignore[attr-defined]
               for c in capped.chunks)
    wide = asyncio.run(prepare(DocumentSource("d", "long.txt", text.encode()), None, embedder))
    assert max(len(embedder._whole.encode(c.text).ids) for c in wide.chunks) > embedder.max_tokens  # type: ignore[attr-defined]
    explicit = {"chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 300, "overlapPercentage": 20}}
    kept = asyncio.run(prepare(DocumentSource("d", "long.txt", text.encode()), explicit, embedder, window=window))
    assert [c.text for c in kept.chunks] == [c.text for c in wide.chunks]
