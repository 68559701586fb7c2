"""The invocation-log spool: a bounded, durable queue of log records waiting for delivery, in one SQLite file.

Records are appended by the request path (a single small insert) and taken out by the delivery thread in
*batches*. A batch is claimed before it is delivered — its id is written onto its rows — so that a retry after a
failed or interrupted put (sink down, process killed) delivers exactly the same records under exactly the same
object key: the store ends up with each record once, whatever happened in between. Rows are deleted only after
their batch was written (or when the delivery thread gives a destination up, :meth:`Spool.drop_destination`).

Batches are per destination, and destinations do not wait on each other: :meth:`Spool.next_batches` skips the
destinations the caller names (those waiting out a retry backoff) and, for every other destination, hands out the
batches it claimed earlier or, when it has none outstanding, claims new ones. A destination that keeps failing thus
holds back only its own records.

The spool is local to the process's data dir (not the metadata database, which several replicas may share): it is
the replica's own outbox. The bound is on bytes; appending beyond it fails, and the caller counts the drop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL,
    destination TEXT NOT NULL,
    hour TEXT NOT NULL,
    meta BLOB NOT NULL,
    input_body BLOB,
    output_body BLOB,
    size INTEGER NOT NULL,
    batch TEXT
);
CREATE INDEX IF NOT EXISTS records_batch ON records (batch);
CREATE INDEX IF NOT EXISTS records_destination ON records (destination, batch, id);
"""


class SpoolError(Exception):
    """The spool file cannot be read or written."""


@dataclass(frozen=True)
class SpooledRecord:
    """One record as it waits: the log record without bodies (JSON), and the bodies as they were received."""

    uuid: str
    meta: bytes
    input_body: bytes | None
    output_body: bytes | None


@dataclass(frozen=True)
class Batch:
    """Records for one destination and one hour, delivered together as one object."""

    id: str
    destination: str
    hour: str
    records: list[SpooledRecord]


class Spool:
    """The queue. Thread-safe: one connection, one lock, each operation a short transaction."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: explicit BEGIN/COMMIT; WAL so that the reader never blocks the appender.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0])
            # Unclaimed records per destination, kept in step by append and claim, so that finding the destinations
            # with new records never scans the table (the spool is this process's own: nobody else appends).
            self._unclaimed: Counter[str] = Counter({
                str(destination): int(count) for destination, count in self._db.execute(
                    "SELECT destination, COUNT(*) FROM records WHERE batch IS NULL GROUP BY destination"
                )
            })
        except (OSError, sqlite3.Error) as error:
            raise SpoolError(f"cannot open the invocation-log spool {path}: {error}") from error

    @property
    def size(self) -> int:
        """Bytes of records waiting."""
        return self._bytes

    def pending(self) -> int:
        """Records waiting, claimed or not."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def append(self, destination: str, hour: str, meta: bytes, input_body: bytes | None,
               output_body: bytes | None) -> bool:
        """Queue one record; False when the spool is full or cannot be written (the record is not kept)."""
        size = len(meta) + len(input_body or b"") + len(output_body or b"")
        with self._lock:
            if self._bytes + size > self.max_bytes:
                return False
            try:
                self._db.execute(
                    "INSERT INTO records (uuid, destination, hour, meta, input_body, output_body, size) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (str(uuid.uuid4()), destination, hour, meta, input_body, output_body, size),
                )
            except sqlite3.Error:
                log.exception("cannot append to the invocation-log spool %s", self.path)
                return False
            self._bytes += size
            self._unclaimed[destination] += 1
            return True

    def next_batches(self, skip: Collection[str] = (), max_records: int = 500,
                     max_bytes: int = 16 * 1024 * 1024) -> list[Batch]:
        """Batches to deliver, none for a destination in ``skip``: per destination, the batches claimed earlier (a
        retry, oldest first), else newly claimed ones (at most ``max_records`` and ``max_bytes`` per destination)."""
        with self._lock:
            try:
                claimed = self._db.execute(
                    "SELECT batch, MIN(destination) FROM records WHERE batch IS NOT NULL GROUP BY batch "
                    "ORDER BY MIN(id)"
                ).fetchall()
                outstanding = {str(destination) for _, destination in claimed}
                ready = [str(batch) for batch, destination in claimed if destination not in skip]
                for destination in list(self._unclaimed):
                    if destination not in skip and destination not in outstanding:
                        ready += self._claim(destination, max_records, max_bytes)
                return [self._load(batch) for batch in ready]
            except sqlite3.Error as error:
                raise SpoolError(f"cannot read the invocation-log spool {self.path}: {error}") from error

    def _claim(self, destination: str, max_records: int, max_bytes: int) -> list[str]:
        rows = self._db.execute(
            "SELECT id, hour, size FROM records WHERE destination = ? AND batch IS NULL ORDER BY id LIMIT ?",
            (destination, max_records),
        ).fetchall()
        groups: dict[str, list[int]] = {}
        total = 0
        for row_id, hour, size in rows:
            if groups and total + size > max_bytes:
                break
            total += size
            groups.setdefault(hour, []).append(row_id)
        batches = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for ids in groups.values():
                batch = uuid.uuid4().hex
                self._db.executemany("UPDATE records SET batch = ? WHERE id = ?", [(batch, i) for i in ids])
                batches.append(batch)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        claimed = sum(len(ids) for ids in groups.values())
        left = self._unclaimed[destination] - claimed
        if left <= 0 or (claimed == len(rows) < max_records):
            del self._unclaimed[destination]  # none left (the count is a hint; the table is the truth)
        else:
            self._unclaimed[destination] = left
        return batches

    def _load(self, batch: str) -> Batch:
        rows = self._db.execute(
            "SELECT uuid, destination, hour, meta, input_body, output_body FROM records WHERE batch = ? ORDER BY id",
            (batch,),
        ).fetchall()
        return Batch(batch, rows[0][1], rows[0][2], [SpooledRecord(r[0], r[3], r[4], r[5]) for r in rows])

    def remove(self, batch: str) -> None:
        """Forget a delivered batch."""
        with self._lock:
            try:
                freed = int(self._db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM records WHERE batch = ?", (batch,)
                ).fetchone()[0])
                self._db.execute("DELETE FROM records WHERE batch = ?", (batch,))
            except sqlite3.Error as error:
                raise SpoolError(f"cannot update the invocation-log spool {self.path}: {error}") from error
            self._bytes -= freed

    def drop_destination(self, destination: str) -> int:
        """Forget every record waiting for ``destination``, claimed or not; how many there were."""
        with self._lock:
            try:
                count, freed = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE destination = ?", (destination,)
                ).fetchone()
                self._db.execute("DELETE FROM records WHERE destination = ?", (destination,))
            except sqlite3.Error as error:
                raise SpoolError(f"cannot update the invocation-log spool {self.path}: {error}") from error
            self._bytes -= int(freed)
            self._unclaimed.pop(destination, None)
            return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
