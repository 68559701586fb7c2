"""What durable usage records cost per record: ``UsageRecorder.record`` (the journal append, on the event loop),
against the alternatives (the old in-memory queue, the journal with ``synchronous=FULL``, a synchronous insert into
the SQLite metadata database).

Usage: .venv/bin/python bench/usage_durability.py [--records 5000] [--dir DIR]
Prints one JSON object (microseconds per record: mean, p50, p99, max). Run by hand; never a test.
``--dir`` puts the data dir on the disk to measure (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import Synchronous, UsageJournal, UsageRecorder, UsageStore
from llamarock.settings import Settings
from llamarock.storage.db import Database

MODEL = "meta.llama3-8b-instruct-v1:0"


def _record(index: int) -> InvocationRecord:
    return InvocationRecord(
        request_id=f"bench-{index:08d}-0000-4000-8000-000000000000", operation="ConverseStream",
        model_identifier=MODEL, model_id=MODEL, principal_arn="arn:aws:iam::000000000000:user/dev",
        region="us-west-2", deployment="default", input_tokens=120, output_tokens=64, latency_ms=850, ttft_ms=40,
        request_metadata={"team": "search", "env": "prod"}, streaming=True,
    )


def _stats(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {
        "n": len(us),
        "mean_us": round(statistics.fmean(us), 1),
        "p50_us": round(us[len(us) // 2], 1),
        "p99_us": round(us[min(len(us) - 1, int(len(us) * 0.99))], 1),
        "max_us": round(us[-1], 1),
    }


def _timed(count: int, call: Callable[[int], Any], interval_s: float = 0.0) -> list[int]:
    samples = []
    for index in range(count):
        start = time.perf_counter_ns()
        call(index)
        samples.append(time.perf_counter_ns() - start)
        if interval_s:
            time.sleep(interval_s)
    return samples


def _journal_appends(directory: Path, sync: Synchronous, count: int, row: dict[str, Any],
                     interval_s: float = 0.0) -> dict[str, float]:
    journal = UsageJournal.claim(directory, sync)
    try:
        return _stats(_timed(count, lambda i: journal.append(row), interval_s))
    finally:
        journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as raw:
        root = Path(raw)
        out: dict[str, Any] = {"records": args.records, "dir": str(root)}

        # 1. What a request pays now: row() + journal append, the writer thread draining into SQLite meanwhile.
        data = root / "recorder"
        settings = Settings(data_dir=data)
        recorder = UsageRecorder(settings, UsageStore(Database.at(data)))
        recorder.record(_record(-1))  # the writer thread starts, the database file is created
        recorder.flush()
        burst = _timed(args.records, lambda i: recorder.record(_record(i)))
        flush_start = time.perf_counter()
        assert recorder.flush(timeout=300)
        out["record_burst"] = _stats(burst) | {"drain_after_burst_s": round(time.perf_counter() - flush_start, 3)}
        paced = _timed(min(args.records, 1000), lambda i: recorder.record(_record(10**7 + i)), interval_s=0.005)
        out["record_paced_200_per_s"] = _stats(paced)
        assert recorder.flush(timeout=300)
        written = recorder.store.request_ids()
        out["rows_written"] = len(written)
        out["duplicates"] = len(written) - len(set(written))
        recorder.close()
        recorder.store.db.close()

        # 2. The pieces: row() alone (the old in-memory queue's whole cost), the journal append alone (JSON encoding
        # included). Paced calls
        # (200 a second, as a busy server makes them) meet cold caches, so both are shown.
        recorder = UsageRecorder(Settings(data_dir=root / "pieces"), UsageStore(Database.at(root / "pieces")))
        memory: list[dict[str, Any]] = []
        out["row_only_in_memory"] = _stats(_timed(args.records, lambda i: memory.append(recorder.row(_record(i)))))
        out["row_only_in_memory_paced_200_per_s"] = _stats(_timed(
            min(args.records, 1000), lambda i: memory.append(recorder.row(_record(i))), interval_s=0.005))
        recorder.close()
        row = memory[0]
        out["journal_append_normal"] = _journal_appends(root / "journal-normal", "NORMAL", args.records, row)
        out["journal_append_normal_paced_200_per_s"] = _journal_appends(
            root / "journal-normal-paced", "NORMAL", min(args.records, 1000), row, interval_s=0.005)
        out["journal_append_full"] = _journal_appends(root / "journal-full", "FULL", min(args.records, 500), row)

        # 3. The alternative: the row itself, inserted and committed into the SQLite metadata database per request.
        store = UsageStore(Database.at(root / "direct"))
        store.add([memory[0]])
        out["direct_sqlite_insert_commit"] = _stats(_timed(min(args.records, 500), lambda i: store.add([
            {**memory[i], "request_id": f"direct-{i}"}
        ])))
        store.db.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
