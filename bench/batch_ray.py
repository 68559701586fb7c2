"""Batch inference jobs with the local executor against the Ray executor, on one machine (issue 16, item 4).

Starts a Ray head on loopback (``ray start --head --block``, ``--num-cpus`` = this machine's CPUs), a server with
``jobs_executor = "ray"`` (one worker reserving every CPU: ``ray_worker_cpus``) and a server with the local executor,
both on the embedded SmolLM2 model with the same ``max_parallel``, and runs the same ``--records``-record InvokeModel
job on each, after a 2-record warm-up job (the Ray worker's start and weight load are not counted). Reports each
job's wall time (create to Completed, polled every 50 ms), records/s and generated tokens/s.

Usage: python bench/batch_ray.py [--records 64] [--tokens 32] [--parallel 8]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

MODEL = "meta.llama3-1-8b-instruct-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatch"
FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
# Loopback only, and a token of this run's own (tests/test_batch_ray.py says why).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_head(tmp: Path, cpus: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    flags = ("--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port", "--object-manager-port")
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address",
               "127.0.0.1", "--port", str(port), "--num-cpus", str(cpus), "--include-dashboard", "false",
               "--disable-usage-stats", "--temp-dir", str(tmp / "r"), "--object-store-memory", str(100 << 20)]
    for flag in flags:
        command += [flag, str(free_port())]
    log = tmp / "head.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **LOOPBACK_ENV},
                                   start_new_session=True)
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)
    return process, f"127.0.0.1:{port}"


def start_server(tmp: Path, config: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (tmp / "config.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")} | LOOPBACK_ENV
    with (tmp / "server.log").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", str(tmp / "data"),
             "--config", str(tmp / "config.toml")], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError((tmp / "server.log").read_text())
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        time.sleep(0.2)


def client(url: str, service: str) -> Any:
    return boto3.client(service, region_name="us-west-2", endpoint_url=url, aws_access_key_id="AKIDBENCH",
                        aws_secret_access_key="x", config=Config(retries={"max_attempts": 1}))


def run_job(url: str, count: int, tokens: int) -> dict[str, Any]:
    s3, bedrock = client(url, "s3"), client(url, "bedrock")
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    lines = [{"recordId": f"R{i}", "modelInput": {"prompt": f"Write a sentence about the number {i}.",
                                                  "max_gen_len": tokens, "temperature": 0.7}} for i in range(count)]
    s3.put_object(Bucket=bucket, Key="in/r.jsonl", Body="".join(json.dumps(line) + "\n" for line in lines))
    started = time.monotonic()
    arn = bedrock.create_model_invocation_job(
        jobName="bench", roleArn=ROLE, modelId=MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/in/r.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}})["jobArn"]
    while (job := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] not in FINISHED:
        time.sleep(0.05)
    wall = time.monotonic() - started
    out = s3.get_object(Bucket=bucket, Key=f"out/{arn.rsplit('/', 1)[1]}/r.jsonl.out")["Body"].read().decode()
    generated = sum(json.loads(line).get("modelOutput", {}).get("generation_token_count", 0)
                    for line in out.splitlines())
    return {"status": job["status"], "records": count, "wall_s": round(wall, 2),
            "records_per_s": round(count / wall, 2), "output_tokens_per_s": round(generated / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    deployment = f"\n[[deployments]]\nname = \"embedded\"\nmodels = [\"*\"]\nmax_parallel = {args.parallel}\n"
    result: dict[str, Any] = {"cpus": cpus, "records": args.records, "tokens": args.tokens,
                              "max_parallel": args.parallel}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "head").mkdir()
        (tmp / "ray").mkdir()
        (tmp / "local").mkdir()
        head, address = start_head(tmp / "head", cpus)
        processes = [head]
        try:
            for name, config in (
                ("local", f"jobs_executor = \"local\"\nbatch_concurrency = {args.parallel}\n{deployment}"),
                ("ray", f"jobs_executor = \"ray\"\nray_address = \"{address}\"\nray_worker_cpus = {cpus}\n"
                        f"{deployment}"),
            ):
                process, url = start_server(tmp / name, config)
                processes.append(process)
                run_job(url, 2, args.tokens)  # warm-up: the Ray worker starts and loads the weights
                result[name] = run_job(url, args.records, args.tokens)
                process.terminate()
                process.wait(timeout=30)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
    result["ray_over_local_records_per_s"] = round(result["ray"]["records_per_s"] / result["local"]["records_per_s"],
                                                   3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
