"""Chunking by Bedrock's configurations with the real embedder's tokenizer (and its vectors for SEMANTIC)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from llamarock.engines.embedding import Embedder, embedded_default
from llamarock.knowledge.chunking import Chunk, achunk, chunk, parents, validate

CATS = [
    "Cats are small domesticated carnivorous mammals.",
    "They have retractable claws and keen night vision.",
    "A cat purrs when it is content or nursing kittens.",
    "Many cats groom themselves for hours each day.",
    "Kittens are born blind and open their eyes after a week.",
]
MARKETS = [
    "The central bank raised interest rates by half a point.",
    "Bond yields climbed as inflation expectations rose.",
    "Equity markets fell sharply on the rate decision.",
    "Analysts expect further tightening of monetary policy.",
    "Currency traders bought the dollar against the euro.",
]
LONG = " ".join((CATS + MARKETS) * 12) + "\n\nA closing paragraph without a full stop"


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    made = embedded_default()
    yield made
    asyncio.run(made.close())


def _exact(text: str, chunks: Sequence[Chunk]) -> None:
    assert chunks
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text == c.text.strip()


def _tokens(embedder: Embedder, text: str) -> int:
    return embedder.count_tokens(text) - embedder.count_tokens("")


def test_default_is_fixed_300_with_20_percent_overlap(embedder: Embedder) -> None:
    text = LONG * 2
    chunks = chunk(text, None, embedder.count_tokens)
    _exact(text, chunks)
    assert chunks == chunk(text, validate(None), embedder.count_tokens)
    sizes = [_tokens(embedder, c.text) for c in chunks]
    assert max(sizes) <= 300 and min(sizes[:-1]) >= 200
    for a, b in itertools.pairwise(chunks):
        overlap = _tokens(embedder, text[b.start : a.end]) if b.start < a.end else 0
        assert 30 <= overlap <= 60  # about 20% of 300 tokens
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())


def test_fixed_size_prefers_sentence_ends(embedder: Embedder) -> None:
    config = {
        "chunkingStrategy": "FIXED_SIZE",
        "fixedSizeChunkingConfiguration": {"maxTokens": 60, "overlapPercentage": 10},
    }
    chunks = chunk(LONG, config, embedder.count_tokens)
    _exact(LONG, chunks)
    assert all(_tokens(embedder, c.text) <= 60 for c in chunks)
    assert sum(c.text.endswith(".") for c in chunks[:-1]) >= 0.9 * (len(chunks) - 1)


def test_none_is_one_chunk_per_file(embedder: Embedder) -> None:
    text = "\n\n  " + LONG + "\n "
    chunks = chunk(text, {"chunkingStrategy": "NONE"}, embedder.count_tokens)
    assert len(chunks) == 1
    _exact(text, chunks)
    assert chunk("   \n", {"chunkingStrategy": "NONE"}, embedder.count_tokens) == []
    assert chunk("", None, embedder.count_tokens) == []


def test_hierarchical_children_inside_parents(embedder: Embedder) -> None:
    config = {
        "chunkingStrategy": "HIERARCHICAL",
        "hierarchicalChunkingConfiguration": {
            "levelConfigurations": [{"maxTokens": 200}, {"maxTokens": 50}],
            "overlapTokens": 10,
        },
    }
    chunks = chunk(LONG, config, embedder.count_tokens)
    _exact(LONG, chunks)
    found = parents(chunks, LONG)
    assert len(found) >= 3 and sorted(found) == list(range(len(found)))
    for c in chunks:
        assert c.parent_start is not None and c.parent_end is not None and c.parent_index is not None
        assert c.parent_start <= c.start < c.end <= c.parent_end
        assert _tokens(embedder, c.text) <= 50
    for start, end, text in found.values():
        assert LONG[start:end] == text and _tokens(embedder, text) <= 200
    per_parent = [sum(1 for c in chunks if c.parent_index == p) for p in found]
    assert min(per_parent) >= 2


def test_semantic_breaks_where_the_topic_changes(embedder: Embedder) -> None:
    text = " ".join(CATS) + " " + " ".join(MARKETS)
    config = {
        "chunkingStrategy": "SEMANTIC",
        "semanticChunkingConfiguration": {"maxTokens": 300, "bufferSize": 1, "breakpointPercentileThreshold": 85},
    }

    def embed_sync(texts: list[str]) -> list[list[float]]:
        return asyncio.run(embedder.embed(texts)).vectors

    chunks = chunk(text, config, embedder.count_tokens, embed=embed_sync)
    _exact(text, chunks)
    boundary = text.index(MARKETS[0])
    assert boundary in {c.start for c in chunks}  # a chunk starts where the markets start
    assert all(not (c.start < boundary < c.end) for c in chunks)

    async def embed_async(texts: list[str]) -> list[list[float]]:
        return (await embedder.embed(texts)).vectors

    assert asyncio.run(achunk(text, config, embedder.count_tokens, embed=embed_async)) == chunks


def test_semantic_respects_max_tokens(embedder: Embedder) -> None:
    config = {
        "chunkingStrategy": "SEMANTIC",
        "semanticChunkingConfiguration": {"maxTokens": 40, "bufferSize": 0, "breakpointPercentileThreshold": 99},
    }

    def embed_sync(texts: list[str]) -> list[list[float]]:
        return asyncio.run(embedder.embed(texts)).vectors

    text = " ".join(CATS * 3)
    chunks = chunk(text, config, embedder.count_tokens, embed=embed_sync)
    _exact(text, chunks)
    assert all(_tokens(embedder, c.text) <= 40 for c in chunks)
    with pytest.raises(ValueError, match="needs the embedder"):
        chunk(text, config, embedder.count_tokens)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"chunkingStrategy": "WORDS"}, "chunkingStrategy must be one of"),
        ({"chunkingStrategy": "FIXED_SIZE"}, "needs fixedSizeChunkingConfiguration"),
        (
            {
                "chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 0, "overlapPercentage": 5},
            },
            "maxTokens",
        ),
        (
            {
                "chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 9, "overlapPercentage": 100},
            },
            "overlapPercentage",
        ),
        (
            {
                "chunkingStrategy": "HIERARCHICAL",
                "hierarchicalChunkingConfiguration": {"levelConfigurations": [{"maxTokens": 100}], "overlapTokens": 1},
            },
            "2 levels",
        ),
        (
            {
                "chunkingStrategy": "HIERARCHICAL",
                "hierarchicalChunkingConfiguration": {
                    "levelConfigurations": [{"maxTokens": 100}, {"maxTokens": 300}],
                    "overlapTokens": 1,
                },
            },
            "must not exceed",
        ),
        (
            {
                "chunkingStrategy": "SEMANTIC",
                "semanticChunkingConfiguration": {
                    "maxTokens": 100,
                    "bufferSize": 2,
                    "breakpointPercentileThreshold": 90,
                },
            },
            "bufferSize",
        ),
        (
            {
                "chunkingStrategy": "SEMANTIC",
                "semanticChunkingConfiguration": {
                    "maxTokens": 100,
                    "bufferSize": 0,
                    "breakpointPercentileThreshold": 40,
                },
            },
            "breakpointPercentileThreshold",
        ),
    ],
)
def test_bad_configurations(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_a_word_longer_than_a_window_is_cut(embedder: Embedder) -> None:
    text = "start " + "x" * 5000 + " end"
    config = {
        "chunkingStrategy": "FIXED_SIZE",
        "fixedSizeChunkingConfiguration": {"maxTokens": 50, "overlapPercentage": 10},
    }
    chunks = chunk(text, config, embedder.count_tokens)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert all(_tokens(embedder, c.text) <= 50 for c in chunks) or len(chunks) > 1
