"""The vector stores against real SQLite (apsw + sqlite-vec + FTS5) and real PostgreSQL (pgserver + pgvector).

Vectors here are constructed (the store is what is under test); every filter operator is checked on both stores
against the reference evaluator ``filters.matches``, which is itself pinned by hand-written expectations.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamarock.knowledge import filters
from llamarock.knowledge.metadata import CHUNK_ID_KEY
from llamarock.knowledge.sqlite_store import SqliteVectorStore
from llamarock.knowledge.store import StoredChunk, VectorStore

DIMS = 16


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL (pgserver's bundled binaries, pgvector included) for the module."""
    pgserver = pytest.importorskip("pgserver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    made: VectorStore
    if request.param == "sqlite":
        made = SqliteVectorStore(tmp_path / "kb.sqlite")
    else:
        from llamarock.knowledge.pg_store import PgVectorStore

        made = PgVectorStore(request.getfixturevalue("pg_url"))
    kb = f"kb-{request.node.name}"
    made.drop(kb)
    try:
        yield made
    finally:
        made.drop(kb)
        made.close()


def _kb(request: pytest.FixtureRequest) -> str:
    return f"kb-{request.node.name}"


def _unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIMS)
    return (v / np.linalg.norm(v)).tolist()


METADATA: dict[str, dict[str, Any]] = {
    "d0": {"genre": "drama", "year": 1994, "public": True, "tags": ["a", "b"], "title": "The Shawshank"},
    "d1": {"genre": "comedy", "year": 2001.5, "public": False, "tags": ["b"], "date": "2020-01-05"},
    "d2": {"genre": "3", "year": 3, "tags": [], "title": "Shawn of the Dead", "date": "2019-12-31"},
    "d3": {},
    "d4": {"genre": "drama", "year": "1994", "public": 1, "title": "drama at the shore"},
    "d5": {"genre": ["drama"], "tags": ["drama queen", "x"], "year": 2024},
}

# (filter, the documents it must keep): pins the reference semantics by hand.
PINNED: list[tuple[dict[str, Any], set[str]]] = [
    ({"equals": {"key": "genre", "value": "drama"}}, {"d0", "d4"}),
    ({"equals": {"key": "year", "value": 1994}}, {"d0"}),
    ({"equals": {"key": "year", "value": 1994.0}}, {"d0"}),
    ({"equals": {"key": "genre", "value": 3}}, set()),
    ({"equals": {"key": "public", "value": True}}, {"d0"}),
    ({"equals": {"key": "public", "value": 1}}, {"d4"}),
    ({"notEquals": {"key": "genre", "value": "drama"}}, {"d1", "d2", "d3", "d5"}),
    ({"notEquals": {"key": "public", "value": False}}, {"d0", "d2", "d3", "d4", "d5"}),
    ({"greaterThan": {"key": "year", "value": 1994}}, {"d1", "d5"}),
    ({"greaterThanOrEquals": {"key": "year", "value": 1994}}, {"d0", "d1", "d5"}),
    ({"lessThan": {"key": "year", "value": 1994}}, {"d2"}),
    ({"lessThanOrEquals": {"key": "year", "value": 2001.5}}, {"d0", "d1", "d2"}),
    ({"greaterThan": {"key": "date", "value": "2020-01-01"}}, {"d1"}),
    ({"lessThan": {"key": "year", "value": "2000"}}, {"d4"}),
    ({"in": {"key": "genre", "value": ["comedy", "3", 1994]}}, {"d1", "d2"}),
    ({"in": {"key": "year", "value": [3, 2024, "1994"]}}, {"d2", "d4", "d5"}),
    ({"in": {"key": "genre", "value": []}}, set()),
    ({"notIn": {"key": "genre", "value": ["drama", "comedy"]}}, {"d2", "d3", "d5"}),
    ({"startsWith": {"key": "title", "value": "Shaw"}}, {"d2"}),
    ({"startsWith": {"key": "title", "value": "shaw"}}, set()),
    ({"startsWith": {"key": "title", "value": "The Shaw"}}, {"d0"}),
    ({"startsWith": {"key": "tags", "value": "drama"}}, {"d5"}),
    ({"listContains": {"key": "tags", "value": "b"}}, {"d0", "d1"}),
    ({"listContains": {"key": "genre", "value": "drama"}}, {"d5"}),
    ({"listContains": {"key": "tags", "value": "drama"}}, set()),
    ({"stringContains": {"key": "title", "value": "Sha"}}, {"d0", "d2"}),
    ({"stringContains": {"key": "tags", "value": "queen"}}, {"d5"}),
    ({"stringContains": {"key": "genre", "value": "ram"}}, {"d0", "d4", "d5"}),
    (
        {"andAll": [{"equals": {"key": "genre", "value": "drama"}}, {"equals": {"key": "public", "value": True}}]},
        {"d0"},
    ),
    (
        {"orAll": [{"equals": {"key": "genre", "value": "comedy"}}, {"lessThan": {"key": "year", "value": 10}}]},
        {"d1", "d2"},
    ),
    (
        {
            "orAll": [
                {
                    "andAll": [
                        {"listContains": {"key": "tags", "value": "b"}},
                        {"notIn": {"key": "year", "value": [1994]}},
                    ]
                },
                {"startsWith": {"key": "title", "value": "drama"}},
            ]
        },
        {"d1", "d4"},
    ),
]


@pytest.mark.parametrize(("flt", "expected"), PINNED, ids=[str(i) for i in range(len(PINNED))])
def test_reference_semantics(flt: dict[str, Any], expected: set[str]) -> None:
    assert {d for d, m in METADATA.items() if filters.matches(flt, m)} == expected


def _load(store: VectorStore, kb: str) -> None:
    for i, (doc, meta) in enumerate(METADATA.items()):
        store.upsert(kb, doc, [StoredChunk(f"{doc}-0", f"text of {doc} about movies", _unit(i), meta)])


def test_every_filter_operator_before_top_k(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    _load(store, kb)
    ops_seen = set()
    for flt, expected in PINNED:
        node = filters.validate(flt)
        stack: list[filters.Filter] = [node]
        while stack:
            item = stack.pop()
            ops_seen.add(item.op)
            if isinstance(item, filters.Group):
                stack.extend(item.members)
        for search_type in ("SEMANTIC", "HYBRID", "LEXICAL"):
            hits = store.search(kb, "movies", _unit(0), 10, search_type, flt)
            assert {h.document_id for h in hits} == expected, (search_type, flt)
        if expected:
            # the query vector is d3's (no metadata, matches few filters): unfiltered top-1 is d3, filtered top-1
            # must still be a matching document, not an empty list
            top = store.search(kb, "movies", _unit(3), 1, "SEMANTIC", flt)
            assert len(top) == 1 and top[0].document_id in expected
    assert ops_seen == set(filters.OPERATORS)


def test_semantic_ranks_by_cosine_and_scores_like_bedrock(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    _load(store, kb)
    hits = store.search(kb, "", _unit(2), 3, "SEMANTIC")
    assert hits[0].document_id == "d2" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].metadata[CHUNK_ID_KEY] == "d2-0" and hits[0].metadata["genre"] == "3"


def test_hybrid_finds_the_exact_term_semantic_misses(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    texts = [f"general notes on topic number {i} about gardening and weather" for i in range(20)]
    texts[7] = "the zygomorphic flower of the orchid family"
    for i, text in enumerate(texts):
        store.upsert(kb, f"doc{i}", [StoredChunk(f"c{i}", text, _unit(100 + i))])
    query_vector = _unit(100 + 3)  # the vector points at doc3; the words point at doc7
    semantic = store.search(kb, "zygomorphic orchid", query_vector, 3, "SEMANTIC")
    hybrid = store.search(kb, "zygomorphic orchid", query_vector, 3, "HYBRID")
    lexical = store.search(kb, "zygomorphic orchid", None, 3, "LEXICAL")
    assert semantic[0].document_id == "doc3" and "doc7" not in {h.document_id for h in semantic}
    assert lexical[0].document_id == "doc7"
    assert {"doc3", "doc7"} <= {h.document_id for h in hybrid}
    assert all(0.0 <= h.score <= 1.0 for h in hybrid + lexical)


def test_reupsert_replaces_and_delete_removes(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    store.upsert(kb, "a", [StoredChunk(f"a{i}", f"apple pie number {i}", _unit(i)) for i in range(3)])
    store.upsert(kb, "b", [StoredChunk("b0", "banana bread", _unit(9))])
    assert store.count(kb) == 4 and store.documents(kb) == {"a": 3, "b": 1}
    store.upsert(kb, "a", [StoredChunk("a-new", "cherry tart", _unit(5))])
    assert store.documents(kb) == {"a": 1, "b": 1}
    assert store.search(kb, "apple", None, 5, "LEXICAL") == []
    assert [h.chunk_id for h in store.search(kb, "cherry", None, 5, "LEXICAL")] == ["a-new"]
    assert {h.chunk_id for h in store.search(kb, "", _unit(0), 5, "SEMANTIC")} == {"a-new", "b0"}
    assert store.delete_document(kb, "a") == 1
    assert store.delete_document(kb, "a") == 0
    assert store.documents(kb) == {"b": 1}
    store.drop(kb)
    assert store.count(kb) == 0 and store.search(kb, "banana", _unit(9), 3, "HYBRID") == []


def test_failed_upsert_keeps_the_old_chunks(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    store.upsert(kb, "a", [StoredChunk("a0", "old text", _unit(1))])
    store.upsert(kb, "b", [StoredChunk("b0", "other", _unit(2))])
    with pytest.raises(ValueError, match="already used"):
        store.upsert(kb, "a", [StoredChunk("a1", "new", _unit(3)), StoredChunk("b0", "clash", _unit(4))])
    with pytest.raises(ValueError, match="dimension"):
        store.upsert(kb, "a", [StoredChunk("a1", "new", [0.1, 0.2])])
    assert store.documents(kb) == {"a": 1, "b": 1}
    assert [h.chunk_id for h in store.search(kb, "old", None, 3, "LEXICAL")] == ["a0"]
    with pytest.raises(ValueError, match="dimensions"):
        store.search(kb, "x", [1.0, 0.0], 3, "SEMANTIC")


def test_hierarchical_children_return_their_parent_once(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    parent_a = "Parent A: alpha one. alpha two. alpha three."
    parent_b = "Parent B: beta one. beta two."
    chunks = [
        StoredChunk("a-c0", "alpha one.", _unit(1), parent_id="A", parent_text=parent_a),
        StoredChunk("a-c1", "alpha two.", _unit(2), parent_id="A", parent_text=parent_a),
        StoredChunk("a-c2", "alpha three.", _unit(3), parent_id="A", parent_text=parent_a),
        StoredChunk("b-c0", "beta one.", _unit(4), parent_id="B", parent_text=parent_b),
    ]
    store.upsert(kb, "doc", chunks)
    # the query is closest to a-c0 then (by construction) other A children: B must still come back second
    hits = store.search(kb, "alpha beta", _unit(1), 2, "SEMANTIC")
    assert [h.chunk_id for h in hits] == ["A", "B"]
    assert hits[0].text == parent_a and hits[1].text == parent_b
    assert hits[0].metadata[CHUNK_ID_KEY] == "A"
    hybrid = store.search(kb, "alpha", _unit(1), 5, "HYBRID")
    assert [h.chunk_id for h in hybrid].count("A") == 1


def test_concurrent_writers_and_readers(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(10):
                doc = f"w{worker}-{i % 4}"  # re-upserts too
                store.upsert(
                    kb, doc, [StoredChunk(f"{doc}-{j}", f"worker {worker} text {j}", _unit(i + j)) for j in range(3)]
                )
                store.search(kb, "worker text", _unit(i), 5, "HYBRID")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count(kb) == 4 * 4 * 3
    assert all(n == 3 for n in store.documents(kb).values())


def test_sqlite_store_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    first = SqliteVectorStore(path)
    first.upsert("kb", "doc", [StoredChunk("c", "persisted words", _unit(1), {"k": "v"})])
    first.close()
    second = SqliteVectorStore(path)
    try:
        hits = second.search("kb", "persisted", _unit(1), 1, "HYBRID", {"equals": {"key": "k", "value": "v"}})
        assert [h.chunk_id for h in hits] == ["c"]
    finally:
        second.close()


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({}, "exactly one operator, found none"),
        ({"equals": {"key": "a", "value": 1}, "notEquals": {"key": "a", "value": 2}}, "exactly one operator"),
        ({"andAll": [{"equals": {"key": "a", "value": 1}}]}, "at least 2"),
        ({"orAll": []}, "at least 2"),
        ({"like": {"key": "a", "value": 1}}, "unknown operator 'like'"),
        ({"equals": {"key": "", "value": 1}}, "1 to 100 characters"),
        ({"equals": {"key": "a"}}, '"key"'),
        ({"equals": {"key": "a", "value": [1]}}, "string, number or boolean"),
        ({"in": {"key": "a", "value": "x"}}, "must be a list"),
        ({"greaterThan": {"key": "a", "value": True}}, "must be a number"),
        ({"startsWith": {"key": "a", "value": 3}}, "must be a string"),
        ({"stringContains": {"key": "a", "value": None}}, "must be a string"),
        ({"stringContains": None}, "exactly one operator, found none"),
        ({"andAll": [{"equals": {"key": "a", "value": 1}}, {"in": {"key": "b", "value": [{}]}}]}, r"andAll\[1\]"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(flt: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        filters.validate(flt)


def test_search_refuses_bad_arguments(tmp_path: Path) -> None:
    store = SqliteVectorStore(tmp_path / "kb.sqlite")
    try:
        with pytest.raises(ValueError, match="search type"):
            store.search("kb", "x", _unit(1), 1, "KEYWORD")
        with pytest.raises(ValueError, match="at least 1"):
            store.search("kb", "x", _unit(1), 0)
        with pytest.raises(ValueError, match="query vector"):
            store.search("kb", "x", None, 1, "HYBRID")
        with pytest.raises(ValueError, match="exactly one operator"):
            store.search("kb", "x", _unit(1), 1, "HYBRID", {})
        assert store.search("kb", "x", _unit(1), 3, "HYBRID") == []
    finally:
        store.close()


def test_lexical_ranks_by_bm25(store: VectorStore, request: pytest.FixtureRequest) -> None:
    kb = _kb(request)
    store.upsert(kb, "short", [StoredChunk("s", "apples and apples", _unit(1))])
    store.upsert(kb, "long", [StoredChunk("l", "apples with pears, plums, cherries, grapes and lemons", _unit(2))])
    store.upsert(kb, "none", [StoredChunk("n", "nothing relevant here at all", _unit(3))])
    assert [h.chunk_id for h in store.search(kb, "apple", None, 5, "LEXICAL")] == ["s", "l"]
    # the rarer word weighs more: "plums" is in one chunk, "apples" in two
    assert store.search(kb, "apples plums", None, 5, "LEXICAL")[0].chunk_id == "l"


def test_postgres_document_frequencies_follow_writes(pg_url: str) -> None:
    import psycopg

    from llamarock.knowledge.pg_store import PgVectorStore

    store = PgVectorStore(pg_url)
    try:
        store.drop("kb-df")
        for round_ in range(3):
            for doc in range(4):
                words = " ".join(f"w{(doc + round_ + i) % 7}" for i in range(3))
                store.upsert("kb-df", f"d{doc}", [StoredChunk(f"d{doc}-{round_}", words, _unit(doc))])
        store.delete_document("kb-df", "d1")
        with psycopg.connect(pg_url) as conn:
            (tag,) = conn.execute("SELECT tag FROM llamarock_kbs WHERE kb_id = 'kb-df'").fetchone()  # type: ignore[misc]
            kept = dict(conn.execute(f"SELECT term, df FROM llamarock_kb{tag}_df").fetchall())
            actual = dict(
                conn.execute(f"SELECT word, ndoc FROM ts_stat('SELECT tsv FROM llamarock_kb{tag}')").fetchall()
            )
        assert kept == actual and len(actual) >= 3
    finally:
        store.drop("kb-df")
        store.close()
