"""The embedded vector store: one SQLite file, sqlite-vec for vectors, FTS5 for BM25.

Binding: apsw. Python's stock ``sqlite3`` here is built without extension loading; apsw bundles a current SQLite
(3.54: FTS5 with ``contentless_delete``, JSON functions) with extension loading on, is maintained in step with
SQLite's releases, and exposes SQLite's own transaction and busy-timeout control. sqlean-py would also load
extensions, but lags SQLite's releases and adds its own extension bundle we do not need.

Layout per knowledge base (tables named by a per-KB tag from the ``kbs`` table, never by the KB id)::

    c<tag>(id, chunk_id UNIQUE, document_id, text, metadata JSON, location JSON, parent_id, parent_text)
    v<tag> vec0(id, embedding float[dims] cosine)  dense search: sqlite-vec's exact KNN (brute force, in C)
    f<tag> FTS5(text) contentless_delete           lexical search: bm25(), porter stemmer over unicode61

Search is exact (every vector compared): no approximate index loses recall. A filter, a SQL expression over the
metadata JSON, is applied before the top k: for vectors as ``id IN (SELECT ...)`` inside the vec0 KNN query, which
sqlite-vec evaluates before ranking, and for BM25 in the same statement before ``ORDER BY ... LIMIT``.
sqlite-vec's KNN takes at most 4096 neighbours per query (far above Bedrock's 100 results).

Concurrency: one writer connection behind a lock (upserts and deletes are single IMMEDIATE transactions, so a
re-upserted document replaces its old chunks atomically), and one reader connection per thread; WAL lets readers
run while the writer writes. Durable: WAL with ``synchronous=NORMAL`` survives a process crash (an OS crash may lose
the last transactions, never corrupt the file).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import sqlite_vec

from llamarock.knowledge import filters as filters_mod
from llamarock.knowledge.lexical import fts5_query
from llamarock.knowledge.store import Row, StoredChunk, VectorStore, check_vector

MAX_KNN = 4096  # sqlite-vec's limit on k
_SCHEMA = """
CREATE TABLE IF NOT EXISTS kbs (tag INTEGER PRIMARY KEY AUTOINCREMENT, kb_id TEXT NOT NULL UNIQUE, dims INTEGER);
"""


def _blob(vector: Sequence[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


class SqliteVectorStore(VectorStore):
    """Chunks of every knowledge base in one SQLite file (``:memory:`` is not supported: readers need the file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all: list[apsw.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute(_SCHEMA)

    # --- connections ------------------------------------------------------------------------------------------
    def _connect(self) -> apsw.Connection:
        if self._closed:
            raise ValueError("the vector store is closed")
        conn = apsw.Connection(self.path)
        conn.setbusytimeout(10_000)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _reader(self) -> apsw.Connection:
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock, self._all_lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()

    # --- knowledge bases --------------------------------------------------------------------------------------
    @staticmethod
    def _tag(conn: apsw.Connection, kb_id: str) -> tuple[int, int | None] | None:
        row = conn.execute("SELECT tag, dims FROM kbs WHERE kb_id = ?", (kb_id,)).fetchone()
        return (int(row[0]), row[1]) if row else None

    def _create(self, kb_id: str, dims: int) -> int:
        conn = self._writer
        conn.execute("INSERT INTO kbs (kb_id, dims) VALUES (?, ?)", (kb_id, dims))
        tag = int(conn.last_insert_rowid())
        conn.execute(
            f"CREATE TABLE c{tag} (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, document_id TEXT NOT NULL,"
            " text TEXT NOT NULL, metadata TEXT NOT NULL, location TEXT NOT NULL, parent_id TEXT, parent_text TEXT)"
        )
        conn.execute(f"CREATE INDEX c{tag}_doc ON c{tag} (document_id)")
        conn.execute(
            f"CREATE VIRTUAL TABLE v{tag} USING vec0(id INTEGER PRIMARY KEY,"
            f" embedding float[{dims}] distance_metric=cosine)"
        )
        conn.execute(
            f"CREATE VIRTUAL TABLE f{tag} USING fts5(text, content='', contentless_delete=1,"
            " tokenize='porter unicode61 remove_diacritics 2')"
        )
        return tag

    def drop(self, kb_id: str) -> None:
        with self._lock:
            conn = self._writer
            with conn:
                found = self._tag(conn, kb_id)
                if found is None:
                    return
                tag = found[0]
                for table in (f"f{tag}", f"v{tag}", f"c{tag}"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute("DELETE FROM kbs WHERE tag = ?", (tag,))

    # --- writes -----------------------------------------------------------------------------------------------
    def upsert(self, kb_id: str, document_id: str, chunks: Sequence[StoredChunk]) -> None:
        vectors = [check_vector(c.vector, f"the vector of chunk {c.chunk_id!r}") for c in chunks]
        dims = {len(v) for v in vectors}
        if len(dims) > 1:
            raise ValueError(f"the chunks' vectors have different dimensions: {sorted(dims)}")
        ids = [c.chunk_id for c in chunks]
        if len(set(ids)) != len(ids):
            raise ValueError("chunk ids must be unique within a document")
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = self._tag(conn, kb_id)
                if found is None and chunks:
                    tag, have = self._create(kb_id, dims.pop()), None
                elif found is None:
                    conn.execute("COMMIT")
                    return
                else:
                    tag, have = found
                    if dims and have is not None and dims != {have}:
                        raise ValueError(f"the knowledge base stores {have}-dimension vectors; these have {dims.pop()}")
                self._delete(conn, tag, document_id)
                for chunk, vector in zip(chunks, vectors, strict=True):
                    conn.execute(
                        f"INSERT INTO c{tag} (chunk_id, document_id, text, metadata, location, parent_id, parent_text)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            chunk.chunk_id,
                            document_id,
                            chunk.text,
                            json.dumps(chunk.metadata, ensure_ascii=False),
                            json.dumps(dict(chunk.location), ensure_ascii=False),
                            chunk.parent_id,
                            chunk.parent_text,
                        ),
                    )
                    rid = conn.last_insert_rowid()
                    conn.execute(f"INSERT INTO v{tag} (id, embedding) VALUES (?, ?)", (rid, _blob(vector)))
                    conn.execute(f"INSERT INTO f{tag} (rowid, text) VALUES (?, ?)", (rid, chunk.text))
                conn.execute("COMMIT")
            except apsw.ConstraintError as exc:
                conn.execute("ROLLBACK")
                raise ValueError(
                    f"a chunk id is already used by another document of this knowledge base: {exc}"
                ) from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _delete(conn: apsw.Connection, tag: int, document_id: str) -> int:
        old = [r[0] for r in conn.execute(f"SELECT id FROM c{tag} WHERE document_id = ?", (document_id,))]
        for rid in old:
            conn.execute(f"DELETE FROM f{tag} WHERE rowid = ?", (rid,))
            conn.execute(f"DELETE FROM v{tag} WHERE id = ?", (rid,))
        conn.execute(f"DELETE FROM c{tag} WHERE document_id = ?", (document_id,))
        return len(old)

    def delete_document(self, kb_id: str, document_id: str) -> int:
        with self._lock:
            conn = self._writer
            with conn:
                found = self._tag(conn, kb_id)
                removed = 0 if found is None else self._delete(conn, found[0], document_id)
            return removed

    # --- reads ------------------------------------------------------------------------------------------------
    def _select_chunks(self, kb_id: str, columns: str, tail: str = "") -> list[tuple[Any, ...]]:
        conn = self._reader()
        found = self._tag(conn, kb_id)
        if found is None:
            return []
        return [tuple(row) for row in conn.execute(f"SELECT {columns} FROM c{found[0]}{tail}")]

    def _dense(
        self, kb_id: str, vector: list[float], n: int, where: filters_mod.Filter | None
    ) -> list[tuple[int, float]]:
        conn = self._reader()
        found = self._tag(conn, kb_id)
        if found is None:
            return []
        tag, dims = found
        if dims is not None and len(vector) != dims:
            raise ValueError(f"the query vector has {len(vector)} dimensions; the knowledge base stores {dims}")
        params: list[Any] = [_blob(vector), min(n, MAX_KNN)]
        sql = f"SELECT id, distance FROM v{tag} WHERE embedding MATCH ? AND k = ?"
        if where is not None:
            clause, extra = filters_mod.to_sqlite(where)
            sql += f" AND id IN (SELECT c.id FROM c{tag} c WHERE {clause})"
            params += extra
        return [(int(rid), float(d)) for rid, d in conn.execute(sql, params) if d is not None]

    def _lexical(self, kb_id: str, text: str, n: int, where: filters_mod.Filter | None) -> list[tuple[int, float]]:
        query = fts5_query(text)
        conn = self._reader()
        found = self._tag(conn, kb_id)
        if found is None or query is None:
            return []
        tag = found[0]
        params: list[Any] = [query]
        if where is None:
            sql = f"SELECT rowid, -bm25(f{tag}) FROM f{tag} WHERE f{tag} MATCH ? ORDER BY bm25(f{tag}) LIMIT ?"
        else:
            clause, extra = filters_mod.to_sqlite(where)
            sql = (
                f"SELECT f.rowid, -bm25(f{tag}) FROM f{tag} f JOIN c{tag} c ON c.id = f.rowid"
                f" WHERE f{tag} MATCH ? AND {clause} ORDER BY bm25(f{tag}) LIMIT ?"
            )
            params += extra
        params.append(n)
        return [(int(rid), max(0.0, float(s))) for rid, s in conn.execute(sql, params)]

    def _rows(self, kb_id: str, ids: Sequence[int]) -> dict[int, Row]:
        if not ids:
            return {}
        conn = self._reader()
        found = self._tag(conn, kb_id)
        if found is None:
            return {}
        sql = (
            f"SELECT id, chunk_id, document_id, text, metadata, location, parent_id, parent_text FROM c{found[0]}"
            " WHERE id IN (SELECT value FROM json_each(?))"
        )
        out: dict[int, Row] = {}
        for rid, chunk_id, doc, text, metadata, location, parent_id, parent_text in conn.execute(
            sql, (json.dumps(list(ids)),)
        ):
            out[int(rid)] = Row(chunk_id, doc, text, json.loads(metadata), json.loads(location), parent_id, parent_text)
        return out
