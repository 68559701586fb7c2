"""The vector store interface, its records, and the hybrid fusion both stores share.

A store holds chunks per knowledge base (``kb_id``), each with its vector, its text for the lexical index, its
metadata (filterable) and its location (opaque JSON, returned as stored). ``search`` ranks by the query vector
(SEMANTIC), by BM25 over the text (LEXICAL, llamarock's own, for benches), or by both fused (HYBRID, Bedrock's other
search type). Filters are applied inside the store before the top k is taken, so a selective filter still returns
``k`` results when ``k`` match.

Hierarchical chunking stores child chunks with their parent's id and text: the children are searched, and a hit
returns its parent (once, at its best child's rank), as Bedrock does.

Scores are Bedrock-like: higher is better, in 0..1. SEMANTIC: (1 + cosine) / 2. LEXICAL: bm25 / (1 + bm25). HYBRID:
the fused score (see :class:`Fusion`), also in 0..1.

All methods are synchronous and thread-safe; callers on the event loop run them in a thread.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from llamarock.knowledge import filters as filters_mod
from llamarock.knowledge.metadata import CHUNK_ID_KEY, Metadata

SearchType = Literal["HYBRID", "SEMANTIC", "LEXICAL"]
SEARCH_TYPES: tuple[str, ...] = ("HYBRID", "SEMANTIC", "LEXICAL")


@dataclass(frozen=True)
class StoredChunk:
    """One chunk to store. ``text`` is what is embedded and indexed; ``parent_*`` only for hierarchical children."""

    chunk_id: str
    text: str
    vector: Sequence[float]
    metadata: Metadata = field(default_factory=dict)
    location: Mapping[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    parent_text: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk (or, for a hierarchical child, its parent) with its score."""

    chunk_id: str
    document_id: str
    text: str
    score: float
    metadata: Metadata
    location: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """A stored chunk as a store reads it back (no vector)."""

    chunk_id: str
    document_id: str
    text: str
    metadata: Metadata
    location: dict[str, Any]
    parent_id: str | None
    parent_text: str | None


@dataclass(frozen=True)
class Fusion:
    """How HYBRID fuses the dense and lexical rankings.

    ``method="convex"``: each list's scores min-max normalised over its candidates, then
    ``alpha * dense + (1 - alpha) * lexical`` (a candidate missing from a list gets 0 there).
    ``method="rrf"``: reciprocal rank fusion, ``sum 1 / (rrf_k + rank)``, scaled to 0..1 by its maximum.
    ``depth``: candidates taken from each list before fusing. The defaults (convex, alpha 0.45, depth 200) are the
    best mean nDCG@10 over the SciFact and NFCorpus train splits (800 queries each) of 75 candidates, RRF with
    k in 5..100 among them (``bench/kb_retrieval.py --tune``); the test splits were never used to choose.
    """

    method: Literal["convex", "rrf"] = "convex"
    alpha: float = 0.45
    rrf_k: int = 60
    depth: int = 200


DEFAULT_FUSION = Fusion()


def fuse(
    dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, float]], fusion: Fusion
) -> list[tuple[int, float]]:
    """Fuse two rankings of (row id, raw score, higher is better) into one, best first, scores in 0..1."""
    fused: dict[int, float] = {}
    if fusion.method == "rrf":
        top = 2.0 / (fusion.rrf_k + 1)
        for ranking in (dense, lexical):
            for rank, (rid, _) in enumerate(ranking, start=1):
                fused[rid] = fused.get(rid, 0.0) + 1.0 / (fusion.rrf_k + rank) / top
    else:
        for ranking, weight in ((dense, fusion.alpha), (lexical, 1.0 - fusion.alpha)):
            if not ranking:
                continue
            scores = [s for _, s in ranking]
            low, high = min(scores), max(scores)
            spread = high - low
            for rid, s in ranking:
                norm = (s - low) / spread if spread > 0 else 1.0
                fused[rid] = fused.get(rid, 0.0) + weight * norm
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def dense_score(cosine_distance: float) -> float:
    """Bedrock-like similarity in 0..1 from a cosine distance in 0..2."""
    return min(1.0, max(0.0, 1.0 - cosine_distance / 2.0))


def lexical_score(bm25: float) -> float:
    """A BM25 score (>= 0, higher is better) mapped into 0..1."""
    return bm25 / (1.0 + bm25) if bm25 > 0 else 0.0


def check_vector(vector: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in vector]
    if not values:
        raise ValueError(f"{what} is empty")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} has a value that is not a finite number")
    return values


class VectorStore(ABC):
    """Chunks per knowledge base, searched by vector, by BM25, or both; synchronous and thread-safe."""

    fusion: Fusion = DEFAULT_FUSION

    @abstractmethod
    def upsert(self, kb_id: str, document_id: str, chunks: Sequence[StoredChunk]) -> None:
        """Replace the document's chunks with these, atomically (an empty list removes the document)."""

    @abstractmethod
    def delete_document(self, kb_id: str, document_id: str) -> int:
        """Remove the document's chunks; returns how many were removed (0 for an unknown document or KB)."""

    def count(self, kb_id: str) -> int:
        """Chunks stored for the knowledge base (0 when it has none)."""
        rows = self._select_chunks(kb_id, "count(*)")
        return int(rows[0][0]) if rows else 0

    def documents(self, kb_id: str) -> dict[str, int]:
        """Document id -> its number of chunks."""
        return {str(doc): int(n) for doc, n in self._select_chunks(kb_id, "document_id, count(*)",
                                                                   " GROUP BY document_id")}

    @abstractmethod
    def _select_chunks(self, kb_id: str, columns: str, tail: str = "") -> list[tuple[Any, ...]]:
        """``SELECT <columns> FROM <the knowledge base's chunk table><tail>`` ([] when it has no table)."""

    @abstractmethod
    def drop(self, kb_id: str) -> None:
        """Remove everything stored for the knowledge base."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable after."""

    # --- what each store provides to search ---------------------------------------------------------------
    @abstractmethod
    def _dense(
        self, kb_id: str, vector: list[float], n: int, where: filters_mod.Filter | None
    ) -> list[tuple[int, float]]:
        """Up to n (row id, cosine distance) nearest first, filter applied before the limit."""

    @abstractmethod
    def _lexical(self, kb_id: str, text: str, n: int, where: filters_mod.Filter | None) -> list[tuple[int, float]]:
        """Up to n (row id, BM25-like score >= 0) best first, filter applied before the limit."""

    @abstractmethod
    def _rows(self, kb_id: str, ids: Sequence[int]) -> dict[int, Row]:
        """The rows with these ids."""

    # --- search ---------------------------------------------------------------------------------------------
    def search(
        self,
        kb_id: str,
        query_text: str,
        query_vector: Sequence[float] | None,
        k: int,
        search_type: str = "SEMANTIC",
        filter: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The best k hits for the query (fewer only when fewer chunks match the filter)."""
        if search_type not in SEARCH_TYPES:
            raise ValueError(f"search type {search_type!r} is not one of {', '.join(SEARCH_TYPES)}")
        if k < 1:
            raise ValueError("the number of results must be at least 1")
        where = filters_mod.validate(filter) if filter is not None else None
        vector: list[float] = []
        if search_type != "LEXICAL":
            if query_vector is None:
                raise ValueError(f"a {search_type} search needs a query vector")
            vector = check_vector(query_vector, "the query vector")
        n = k
        while True:
            ranked, exhausted = self._ranked(kb_id, query_text, vector, n, search_type, where)
            rows = self._rows(kb_id, [rid for rid, _ in ranked])
            hits = _collapse(ranked, rows, k)
            if len(hits) >= k or exhausted:
                return hits
            n *= 4  # hierarchical children of one parent collapsed: look deeper

    def _ranked(
        self, kb_id: str, text: str, vector: list[float], n: int, search_type: str, where: filters_mod.Filter | None
    ) -> tuple[list[tuple[int, float]], bool]:
        """Up to n (row id, score) best first, and whether the store has no more candidates than these."""
        if search_type == "SEMANTIC":
            dense = self._dense(kb_id, vector, n, where)
            return [(rid, dense_score(d)) for rid, d in dense], len(dense) < n
        if search_type == "LEXICAL":
            lexical = self._lexical(kb_id, text, n, where)
            return [(rid, lexical_score(s)) for rid, s in lexical], len(lexical) < n
        depth = max(n, self.fusion.depth)
        scored = [(rid, dense_score(d)) for rid, d in self._dense(kb_id, vector, depth, where)]
        found = self._lexical(kb_id, text, depth, where)
        exhausted = len(scored) < depth and len(found) < depth
        return fuse(scored, found, self.fusion)[:n], exhausted and n >= len(scored) + len(found)


def _collapse(ranked: Sequence[tuple[int, float]], rows: Mapping[int, Row], k: int) -> list[Hit]:
    """Hits in rank order; hierarchical children replaced by their parent, each parent once."""
    hits: list[Hit] = []
    seen: set[str] = set()
    for rid, score in ranked:
        row = rows.get(rid)
        if row is None:
            continue
        chunk_id = row.parent_id or row.chunk_id
        if chunk_id in seen:
            continue
        seen.add(chunk_id)
        metadata = dict(row.metadata)
        metadata[CHUNK_ID_KEY] = chunk_id
        text = row.parent_text if row.parent_id is not None and row.parent_text is not None else row.text
        hits.append(Hit(chunk_id, row.document_id, text, round(score, 6), metadata, row.location))
        if len(hits) == k:
            break
    return hits
