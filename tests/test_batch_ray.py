"""The ``ray`` batch executor on a real Ray cluster: a head started here, on loopback, for this module.

A llamarock server with ``jobs_executor = "ray"`` connects to it as a Ray driver; batch inference jobs created with
boto3 (input uploaded with the ``s3`` client, the job with the ``bedrock`` client) run their records on the Ray
worker actors, and their output is what a server with the local executor writes for the same (deterministic, fake
engine) deployments. Where each record ran is the server's debug log line of the record (the worker's pid and Ray
node): the test checks that pid is a ``ray::BatchWorker`` process of the head it started (its process group), not
the server. A worker killed with SIGKILL mid-job is restarted by Ray and the job still writes every record exactly
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, free_port, start_server, stop_server

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'llamarock[ray]'; scripts/install --test installs it)",
)

# The environment of the head and of the servers (Ray drivers). Ray swaps a loopback node address for the
# machine's network address unless told that this "cluster" is one machine: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# every process uses 127.0.0.1 and listens on it only. The cluster requires a token, given to each process here:
# left to itself, Ray 2.60 would write one to ~/.ray/auth_token (a local `ray.init()` does), which every later Ray
# process of the user picks up.
RAY_TOKEN = secrets.token_hex(32)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": RAY_TOKEN}

DEPLOYMENTS = """
[[deployments]]
name = "fake-slow"
engine = "fake"
models = ["meta.llama3-8b-instruct-v1:0"]
fake_reply = "one two three four five six seven eight nine ten"
fake_token_delay_ms = 100
max_parallel = 4

[[deployments]]
name = "fake-batch"
engine = "fake"
models = ["*"]
fake_token_delay_ms = 5
max_parallel = 4
"""
FAST_MODEL = "meta.llama3-1-8b-instruct-v1:0"  # fake-batch
SLOW_MODEL = "meta.llama3-8b-instruct-v1:0"  # fake-slow: about a second a record
RECORD_LINE = re.compile(
    r"batch job (\S+): record (\S+) line (\d+) \((\S+)\) ran on Ray worker pid (\d+) on node (\w+)"
)


@dataclass
class RayHead:
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """``ray start --head --block`` on loopback with 2 CPUs, in a session of its own: every process of this Ray
    instance (GCS, raylet, workers) is in that session, and only those are stopped at the end."""
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    ports = {flag: str(free_port()) for flag in (
        "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
        "--metrics-export-port", "--node-manager-port", "--object-manager-port",
    )}
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
        "--temp-dir", str(tmp / "r"), "--object-store-memory", str(100 * 1024 * 1024),
        *[item for pair in ports.items() for item in pair],
    ]
    log_path = tmp / "head.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **LOOPBACK_ENV}, start_new_session=True)
    head = RayHead(f"127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_head(head)
            raise RuntimeError(f"the Ray head did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    yield head
    _stop_head(head)


def _stop_head(head: RayHead) -> None:
    """SIGTERM to ``ray start --block`` (it stops the GCS and the raylet, whose workers then exit), then SIGKILL to
    whatever is left of its session: the head was started in a session of its own, so only its processes go."""
    head.process.terminate()
    try:
        head.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.process.kill()
        head.process.wait()
    deadline = time.monotonic() + 10
    while _session(head.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _session(head.process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _session(sid: int) -> list[int]:
    """The processes of session ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _config(executor: str, ray_address: str | None = None) -> str:
    lines = [f'jobs_executor = "{executor}"']
    if ray_address is not None:
        lines.append(f'ray_address = "{ray_address}"')
    return "\n".join(lines) + "\n" + DEPLOYMENTS


@pytest.fixture(scope="module")
def ray_server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory,
               monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Server]:
    for key, value in LOOPBACK_ENV.items():
        monkeypatch_module.setenv(key, value)
    srv = start_server(tmp_path_factory.mktemp("ray-server"), "--log-level", "debug",
                       config=_config("ray", ray_head.address))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("local-server"), config=_config("local"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def records(count: int, tag: str) -> list[dict[str, Any]]:
    """InvokeModel records (native Llama bodies) with distinct prompts."""
    return [{"recordId": f"{tag}{i:04d}", "modelInput": {"prompt": f"Say something about the number {i} ({tag}).",
                                                         "max_gen_len": 32, "temperature": 0}}
            for i in range(count)]


def run_job(server: Server, model_id: str, lines: list[dict[str, Any]], name: str,
            while_running: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Upload ``lines`` as a JSONL object, run a job on them, wait for its end; its Get answer and output lines."""
    s3 = server.client("s3")
    bucket = f"batch-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/records.jsonl", Body="\n".join(json.dumps(line) for line in lines) + "\n")
    bedrock = server.client("bedrock")
    arn = bedrock.create_model_invocation_job(
        jobName=name, roleArn="arn:aws:iam::000000000000:role/batch", modelId=model_id,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/in/records.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
    )["jobArn"]
    deadline = time.monotonic() + 120
    while True:
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] in ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"):
            break
        if while_running is not None:
            while_running(job)
        assert time.monotonic() < deadline, f"job still {job['status']}: {job.get('message')}"
        time.sleep(0.2)
    job_id = arn.rsplit("/", 1)[1]
    body = s3.get_object(Bucket=bucket, Key=f"out/{job_id}/records.jsonl.out")["Body"].read().decode()
    return job, [json.loads(line) for line in body.splitlines() if line.strip()]


def ran_on(server: Server, job_arn: str) -> dict[str, int]:
    """recordId → pid of the Ray worker that ran it, from the server's debug lines (one per emitted record)."""
    job_id = job_arn.rsplit("/", 1)[1]
    seen: dict[str, int] = {}
    for match in RECORD_LINE.finditer(server.log_path.read_text()):
        if match.group(1) == job_id:
            assert match.group(4) not in seen, f"record {match.group(4)} emitted twice"
            seen[match.group(4)] = int(match.group(5))
    return seen


def is_head_worker(pid: int, head: RayHead) -> bool:
    """Whether ``pid`` is a BatchWorker actor process of the Ray head this module started (in its session)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return title.startswith("ray::BatchWorker") and os.getsid(pid) == head.process.pid
    except (FileNotFoundError, ProcessLookupError):
        return False


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    result = {line["recordId"]: line for line in lines}
    assert len(result) == len(lines), "a record is in the output twice"
    return result


def test_records_run_on_ray_workers_and_match_the_local_executor(ray_head: RayHead, ray_server: Server,
                                                                  local_server: Server) -> None:
    lines = records(12, "r")
    job, output = run_job(ray_server, FAST_MODEL, lines, "on-ray")
    assert job["status"] == "Completed", job.get("message")
    assert sorted(by_id(output)) == [line["recordId"] for line in lines]
    assert all("modelOutput" in line for line in output), output

    workers = ran_on(ray_server, job["jobArn"])
    assert sorted(workers) == sorted(by_id(output)), "every record's outcome came from a Ray worker"
    assert ray_server.process.pid not in workers.values()
    assert all(is_head_worker(pid, ray_head) for pid in set(workers.values())), workers

    local_job, local_output = run_job(local_server, FAST_MODEL, lines, "local")
    assert local_job["status"] == "Completed", local_job.get("message")
    assert by_id(output) == by_id(local_output)
    assert not ran_on(local_server, local_job["jobArn"])


def test_a_killed_worker_loses_and_repeats_no_record(ray_head: RayHead, ray_server: Server) -> None:
    lines = records(16, "k")
    killed: list[int] = []

    def kill_the_first_worker(job: dict[str, Any]) -> None:
        if killed:
            return
        workers = ran_on(ray_server, job["jobArn"])
        if workers:  # a record is done: the worker has more in flight
            pid = next(iter(workers.values()))
            assert is_head_worker(pid, ray_head)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    job, output = run_job(ray_server, SLOW_MODEL, lines, "killed-worker", kill_the_first_worker)
    assert killed, "the job ended before a worker could be killed"
    assert job["status"] == "Completed", job.get("message")
    assert sorted(by_id(output)) == [line["recordId"] for line in lines]
    assert all(line["modelOutput"]["generation"].startswith("one two") for line in output), output
    workers = ran_on(ray_server, job["jobArn"])
    assert sorted(workers) == sorted(by_id(output))
    assert len(set(workers.values())) == 2, "the records left when the worker died ran on its restarted process"
    assert "failed with" in ray_server.log_path.read_text()


def test_stop_cancels_the_records_in_flight_on_the_workers(ray_server: Server) -> None:
    lines = records(24, "s")
    stopped: list[str] = []

    def stop_after_the_first_records(job: dict[str, Any]) -> None:
        if not stopped and ran_on(ray_server, job["jobArn"]):
            ray_server.client("bedrock").stop_model_invocation_job(jobIdentifier=job["jobArn"])
            stopped.append(job["jobArn"])

    job, output = run_job(ray_server, SLOW_MODEL, lines, "stopped", stop_after_the_first_records)
    assert stopped and job["status"] == "Stopped", job.get("message")
    done = by_id(output)
    assert 0 < len(done) < len(lines), "the stop took effect before the records were all run"
    assert all("modelOutput" in line for line in output), output
    assert sorted(ran_on(ray_server, job["jobArn"])) == sorted(done), "what the workers ran is what was written"


def test_ray_address_local_starts_a_ray_inside_the_server(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LOOPBACK_ENV.items():
        monkeypatch.setenv(key, value)
    server = start_server(tmp_path, "--log-level", "debug", config=_config("ray", "local"))
    try:
        lines = records(3, "l")
        job, output = run_job(server, FAST_MODEL, lines, "local-ray")
        assert job["status"] == "Completed", job.get("message")
        workers = ran_on(server, job["jobArn"])
        assert sorted(workers) == sorted(by_id(output)) == [line["recordId"] for line in lines]
        for pid in set(workers.values()):
            assert pid != server.process.pid
            assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::BatchWorker")
    finally:
        stop_server(server)


def test_the_ray_executor_needs_an_address(tmp_path: Path) -> None:
    from llamarock.errors import ConfigError
    from llamarock.services.batch_ray import make_ray_executor
    from llamarock.settings import Settings

    with pytest.raises(ConfigError, match="needs ray_address"):
        make_ray_executor(Settings(jobs_executor="ray", data_dir=tmp_path))


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    from llamarock.services.batch_ray import RayExecutorError, _reachable

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RayExecutorError, match=f"cannot reach the Ray cluster at {address}"):
        asyncio.run(_reachable(address))
    with pytest.raises(RayExecutorError, match="not a Ray head's host:port"):
        asyncio.run(_reachable("ray-head"))
