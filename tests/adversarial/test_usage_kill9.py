"""Issue 13, item 9: ``kill -9`` must not lose (or double) the usage rows of answered requests.

A live ``llamarock serve`` on slow fake deployments takes a burst of InvokeModel, Converse and ConverseStream calls
from a few boto3 threads and is killed with SIGKILL while requests are in flight, then restarted on the same data
dir; this repeats for ``LLAMAROCK_KILL9_CYCLES`` cycles (5 by default; the issue's target is 20). After every
restart, every request whose response the client received completely (the body read to its end; for a stream, the
loop over its events finished) has exactly one usage row, found by request id, and no request has two. At the end
the server stops normally and ``llamarock usage --json`` (the CLI, another process) counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import UsageJournal, UsageRecorder, UsageStore
from llamarock.settings import Settings
from llamarock.storage.db import Database
from tests.conftest import Server, start_server, stop_server

MODEL = "meta.llama3-8b-instruct-v1:0"
CYCLES = int(os.environ.get("LLAMAROCK_KILL9_CYCLES", "5"))
THREADS = 6
CONFIG = """
[[deployments]]
name = "fake-slow"
engine = "fake"
models = ["*"]
fake_reply = "one two three four five six seven eight"
fake_token_delay_ms = 6
"""


def _data_dir(tmp: Path) -> Path:
    return tmp / "data"


def _one_call(client: Any, kind: int) -> str:
    """One request, read to the end of its response; its request id."""
    if kind == 0:
        answer = client.invoke_model(modelId=MODEL, body=json.dumps({"prompt": "Count.", "max_gen_len": 16}))
        body = json.loads(answer["body"].read())
        assert body["generation"]
    elif kind == 1:
        answer = client.converse(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "Count."}]}])
        assert answer["usage"]["outputTokens"] > 0
    else:
        answer = client.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [{"text": "Count."}]}])
        events = list(answer["stream"])  # ends only at the end of the body
        assert "metadata" in events[-1], events[-1]
    return str(answer["ResponseMetadata"]["RequestId"])


def _burst(server: Server, seconds: float) -> tuple[list[str], int]:
    """Calls from THREADS threads until the server is killed ``seconds`` in: (answered request ids, calls cut)."""
    answered: list[str] = []
    cut = [0]
    lock = threading.Lock()
    stop = threading.Event()
    clients = [server.client() for _ in range(THREADS)]
    started = threading.Barrier(THREADS + 1)

    def work(index: int) -> None:
        started.wait()
        calls = index
        while not stop.is_set():
            calls += 1
            try:
                request_id = _one_call(clients[index], calls % 3)
            except Exception:
                with lock:
                    cut[0] += 1
                continue
            with lock:
                answered.append(request_id)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(seconds)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return answered, cut[0]


def _stored(tmp: Path, server: Server | None) -> Counter[str]:
    """Usage rows per request id, after the running server (if any) wrote what it has (GET /llamarock/usage
    waits for its writer, replayed journals included)."""
    if server is not None:
        with urllib.request.urlopen(server.url + "/llamarock/usage", timeout=60) as response:
            assert response.status == 200
    store = UsageStore(Database.at(_data_dir(tmp)))
    try:
        return Counter(store.request_ids())
    finally:
        store.db.close()


def _journaled(data: Path) -> int:
    """Rows journaled but not yet written (a killed server's journals, read before the restart)."""
    total = 0
    for path in (data / "spool").glob("usage-*.db"):
        # read-only: the restarted server, not this reader, recovers the killed server's WAL
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            total += int(db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    return total


def _check(answered: set[str], stored: Counter[str]) -> tuple[int, int]:
    lost = answered - set(stored)
    doubled = {request_id: n for request_id, n in stored.items() if n > 1}
    return len(lost), len(doubled)


def test_kill_9_loses_no_usage_row_of_an_answered_request(tmp_path: Path) -> None:
    rng = random.Random(9)
    answered: set[str] = set()
    cut = replayed = 0
    figures = []
    server = start_server(tmp_path, config=CONFIG)
    try:
        for cycle in range(CYCLES):
            ids, cut_now = _burst(server, rng.uniform(0.6, 1.4))
            assert ids, f"cycle {cycle}: no call was answered:\n{server.log_path.read_text()[-3000:]}"
            answered.update(ids)
            cut += cut_now
            journaled = _journaled(_data_dir(tmp_path))
            replayed += journaled
            server = start_server(tmp_path, config=CONFIG)  # same data dir: replays the killed server's journal
            lost, doubled = _check(answered, _stored(tmp_path, server))
            figures.append({"cycle": cycle, "answered": len(ids), "cut": cut_now, "journaled": journaled,
                            "lost": lost, "doubled": doubled})
            assert (lost, doubled) == (0, 0), figures
    finally:
        stop_server(server)
    stored = _stored(tmp_path, None)
    assert _check(answered, stored) == (0, 0), figures
    assert cut > 0, "no call was in flight at any kill: the test proves nothing"
    print(json.dumps({"cycles": CYCLES, "answered": len(answered), "cut": cut, "replayed": replayed,
                      "rows": sum(stored.values()),
                      "lost": 0, "doubled": 0}))

    report = subprocess.run(
        [sys.executable, "-m", "llamarock", "usage", "--json", "--by", "model", "--data-dir", str(_data_dir(tmp_path))],
        capture_output=True, text=True, timeout=60, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")},
    )
    rows = json.loads(report.stdout)
    invocations = sum(row["invocations"] for row in rows)
    # Every answered call counts once; calls cut by a kill after their record was made count too (never twice).
    assert len(answered) <= invocations <= sum(stored.values()), (invocations, len(answered), sum(stored.values()))


# -- the journal's recovery paths, on the real SQLite files ------------------------------------------------------------


def _record(n: int) -> InvocationRecord:
    return InvocationRecord(
        request_id=f"req-{n}", operation="InvokeModel", model_identifier=MODEL, model_id=MODEL,
        principal_arn="arn:aws:iam::000000000000:user/dev", region="us-west-2", input_tokens=10, output_tokens=n,
    )


def _recorder(data: Path, database: Database | None = None) -> UsageRecorder:
    return UsageRecorder(Settings(data_dir=data), UsageStore(database or Database.at(data)))


def _died_holding(data: Path, rows: list[dict[str, Any]]) -> None:
    """What a process killed after journaling ``rows`` leaves: a journal with them, its lock released."""
    journal = UsageJournal.claim(data / "spool")
    for row in rows:
        journal.append(row)
    journal.close()


def test_a_replayed_journal_writes_rows_the_database_already_has_once(tmp_path: Path) -> None:
    first = _recorder(tmp_path)
    rows = [first.row(_record(n)) for n in range(5)]
    first.close()
    # Killed after its writer committed a batch of three to the database, before deleting them from the journal.
    _died_holding(tmp_path, rows)
    first.store.add(rows[:3])
    restarted = _recorder(tmp_path)
    try:
        assert restarted.flush(timeout=30)
        assert Counter(restarted.store.request_ids()) == {f"req-{n}": 1 for n in range(5)}
        assert restarted.store.add(rows) == 0  # idempotent by request id
    finally:
        restarted.close()


def test_journals_of_stopped_processes_are_drained_and_live_ones_left_alone(tmp_path: Path) -> None:
    live = _recorder(tmp_path)  # holds usage-0
    live.record(_record(0))
    assert live.flush(timeout=30)
    first, second = UsageJournal.claim(tmp_path / "spool"), UsageJournal.claim(tmp_path / "spool")
    assert (first.path.name, second.path.name) == ("usage-1.db", "usage-2.db")
    for n, journal in ((1, first), (2, first), (3, second)):
        journal.append(live.row(_record(n)))
    first.close()
    second.close()
    restarted = _recorder(tmp_path)  # takes usage-1 as its own (replayed) and drains usage-2
    try:
        assert restarted.journal_path is not None and restarted.journal_path.name == "usage-1.db"
        assert restarted.flush(timeout=30)
        assert Counter(restarted.store.request_ids()) == {f"req-{n}": 1 for n in range(4)}
        restarted.record(_record(4))
        live.record(_record(5))
        assert restarted.flush(timeout=30) and live.flush(timeout=30)
    finally:
        restarted.close()
        live.close()
    assert Counter(UsageStore(Database.at(tmp_path)).request_ids()) == {f"req-{n}": 1 for n in range(6)}
    assert _journaled(tmp_path) == 0


def test_rows_the_database_refuses_at_shutdown_stay_journaled_for_the_next_start(tmp_path: Path) -> None:
    unreachable = Database("sqlite:////proc/llamarock-no-such-dir/llamarock.db")
    refused = _recorder(tmp_path, unreachable)
    for n in range(3):
        refused.record(_record(n))
    assert not refused.flush(timeout=0.5)
    refused.close()  # gives up after a few tries; the rows stay in its journal
    restarted = _recorder(tmp_path)
    try:
        assert restarted.flush(timeout=30)
        assert Counter(restarted.store.request_ids()) == {f"req-{n}": 1 for n in range(3)}
    finally:
        restarted.close()


def test_without_a_journal_records_still_reach_the_database(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "spool").write_text("a file where the spool folder should be")
    recorder = _recorder(tmp_path)
    try:
        assert recorder.journal_path is None and "cannot open a usage journal" in caplog.text
        for n in range(3):
            recorder.record(_record(n))
        assert recorder.flush(timeout=30)
        assert sorted(recorder.store.request_ids()) == [f"req-{n}" for n in range(3)]
    finally:
        recorder.close()
