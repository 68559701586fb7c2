"""Batch inference (issue 16) against live servers: throughput, pick-up overhead, effect on online TTFT, kill -9.

1. ``throughput``: ``--records`` InvokeModel records (``--tokens`` generated each) as one batch job, against as many
   requests of the same form sent online by ``batch_concurrency`` threads, on the embedded SmolLM2 model, in
   ``--rounds`` alternating online/batch passes; output tokens per second of each (a job's from create to
   Completed, polled every 50 ms) and their ratio (target >= 0.9).
2. ``pickup``: a 1-record job's wall time (create to Completed) minus the same request's online latency
   (target < 5 s).
3. ``ttft``: online ConverseStream time to first token, p50/p95 over ``--ttft-requests`` sequential requests, with
   no batch job running and with one running (target: p95 at most +20%).
4. ``kill``: a ``--kill-records``-record job on a paced fake engine, the server killed with SIGKILL ``--kills``
   times and restarted; counts records lost and duplicated in the output (target 0 and 0).

Usage: python bench/batch.py [--records 200] [--rounds 2] [--tokens 32] [--ttft-requests 30] [--kill-records 300]
       [--kills 5] [--only throughput,pickup,ttft,kill] [--batch-concurrency 4]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

MODEL = "meta.llama3-1-8b-instruct-v1:0"
ROLE = "arn:aws:iam::123456789012:role/BedrockBatch"
FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
PACED = """
batch_concurrency = 4
[[deployments]]
name = "fake-paced"
engine = "fake"
models = ["*"]
fake_reply = "{prompt} one two three four"
fake_token_delay_ms = 30
"""


class Server:
    def __init__(self, data: Path, config: str | None = None) -> None:
        self.data, self.config = data, config
        self.start()

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", str(self.data)]
        if self.config is not None:
            (self.data.parent / "bench.toml").write_text(self.config)
            command += ["--config", str(self.data.parent / "bench.toml")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
        log = (self.data.parent / "server.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name="us-west-2", endpoint_url=self.url, aws_access_key_id="AKIDBENCH",
                            aws_secret_access_key="bench", config=Config(retries={"max_attempts": 1},
                                                                         read_timeout=600, max_pool_connections=32))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def prompts(n: int) -> list[str]:
    topics = ["rivers", "mountains", "the moon", "bread", "bicycles", "owls", "glass", "rain", "chess", "tea"]
    return [f"Write one sentence about {topics[i % len(topics)]} (note {i})." for i in range(n)]


def put_job(s3: Any, bucket: str, key: str, records: list[dict[str, Any]]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(r) + "\n" for r in records).encode())


def run_job(bedrock: Any, bucket: str, key: str, model: str = MODEL, poll: float = 0.05) -> tuple[str, float]:
    started = time.monotonic()
    arn = bedrock.create_model_invocation_job(
        jobName=f"bench-{int(time.time() * 1000)}", roleArn=ROLE, modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{key}"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
    )["jobArn"]
    while bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] not in FINISHED:
        time.sleep(poll)
    return arn, time.monotonic() - started


def manifest(s3: Any, bucket: str, arn: str) -> dict[str, Any]:
    key = f"out/{arn.rsplit('/', 1)[-1]}/manifest.json.out"
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def throughput(server: Server, records: int, tokens: int, concurrency: int, rounds: int = 2) -> dict[str, Any]:
    """Online and batch passes alternate (online, batch, online, batch, ...) so that a change in the machine's load
    falls on both; each pass has prompts of its own, of the same form and length (no pass reuses another's prefix
    cache), and the ratio is of the summed tokens per summed seconds."""
    s3, bedrock, runtime = server.client("s3"), server.client("bedrock"), server.client("bedrock-runtime")
    labels = ["note", "item", "entry", "line", "card", "page", "step", "mark"]

    def bodies(label: str) -> list[dict[str, Any]]:
        return [{"prompt": text.replace("(note ", f"({label} "), "max_gen_len": tokens, "temperature": 0}
                for text in prompts(records)]

    def call(body: dict[str, Any]) -> int:
        answer = json.loads(runtime.invoke_model(modelId=MODEL, body=json.dumps(body))["body"].read())
        return int(answer["generation_token_count"])

    passes: list[dict[str, Any]] = []
    for round_ in range(rounds):
        online_bodies, batch_bodies = bodies(labels[2 * round_ % 8]), bodies(labels[(2 * round_ + 1) % 8])
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            online_tokens = sum(pool.map(call, online_bodies))
        online_s = time.monotonic() - started
        key = f"tput-{round_}.jsonl"
        put_job(s3, "bench", key, [{"recordId": f"T{i}", "modelInput": b} for i, b in enumerate(batch_bodies)])
        arn, batch_s = run_job(bedrock, "bench", key)
        batch_tokens = manifest(s3, "bench", arn)["outputTokenCount"]
        passes.append({"online_tokens": online_tokens, "online_s": round(online_s, 2),
                       "batch_tokens": batch_tokens, "batch_s": round(batch_s, 2),
                       "ratio": round((batch_tokens / batch_s) / (online_tokens / online_s), 3)})
    online_rate = sum(p["online_tokens"] for p in passes) / sum(p["online_s"] for p in passes)
    batch_rate = sum(p["batch_tokens"] for p in passes) / sum(p["batch_s"] for p in passes)
    return {"records": records, "max_gen_len": tokens, "concurrency": concurrency, "rounds": passes,
            "online_tokens_per_s": round(online_rate, 1), "batch_tokens_per_s": round(batch_rate, 1),
            "ratio": round(batch_rate / online_rate, 3)}


def pickup(server: Server, tokens: int, trials: int = 5) -> dict[str, Any]:
    s3, bedrock, runtime = server.client("s3"), server.client("bedrock"), server.client("bedrock-runtime")
    body = {"prompt": "Name a colour.", "max_gen_len": tokens, "temperature": 0}
    overheads, walls = [], []
    for trial in range(trials):
        started = time.monotonic()
        runtime.invoke_model(modelId=MODEL, body=json.dumps(body))["body"].read()
        online = time.monotonic() - started
        put_job(s3, "bench", f"one-{trial}.jsonl", [{"recordId": "only", "modelInput": body}])
        _, wall = run_job(bedrock, "bench", f"one-{trial}.jsonl", poll=0.02)
        walls.append(wall)
        overheads.append(wall - online)
    return {"trials": trials, "wall_s_median": round(statistics.median(walls), 3),
            "overhead_s_median": round(statistics.median(overheads), 3), "overhead_s_max": round(max(overheads), 3)}


def ttfts(runtime: Any, n: int) -> list[float]:
    values = []
    for i in range(n):
        started = time.monotonic()
        stream = runtime.converse_stream(modelId=MODEL, messages=[{"role": "user", "content": [
            {"text": f"Say hello to person {i}."}]}], inferenceConfig={"maxTokens": 16})["stream"]
        first = None
        for event in stream:
            if first is None and "contentBlockDelta" in event:
                first = time.monotonic() - started
        values.append(first if first is not None else time.monotonic() - started)
    return values


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def ttft(server: Server, n: int, tokens: int) -> dict[str, Any]:
    s3, bedrock, runtime = server.client("s3"), server.client("bedrock"), server.client("bedrock-runtime")
    ttfts(runtime, 3)  # warm up
    alone = ttfts(runtime, n)
    bodies = [{"prompt": text, "max_gen_len": tokens, "temperature": 0} for text in prompts(2000)]
    put_job(s3, "bench", "background.jsonl", [{"recordId": f"B{i}", "modelInput": b} for i, b in enumerate(bodies)])
    arn = bedrock.create_model_invocation_job(
        jobName="bench-background", roleArn=ROLE, modelId=MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://bench/background.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://bench/out/"}},
    )["jobArn"]
    while bedrock.get_model_invocation_job(jobIdentifier=arn)["processedRecordCount"] < 4:
        time.sleep(0.1)
    busy = ttfts(runtime, n)
    running = bedrock.get_model_invocation_job(jobIdentifier=arn)
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    return {"requests": n, "alone_p50_ms": p(alone, 0.5), "alone_p95_ms": p(alone, 0.95),
            "with_batch_p50_ms": p(busy, 0.5), "with_batch_p95_ms": p(busy, 0.95),
            "p95_ratio": round(p(busy, 0.95) / p(alone, 0.95), 3),
            "batch_records_done_meanwhile": running["processedRecordCount"]}


def kill(work: Path, records: int, kills: int) -> dict[str, Any]:
    server = Server(work / "data", PACED)
    try:
        s3, bedrock = server.client("s3"), server.client("bedrock")
        s3.create_bucket(Bucket="kill")
        put_job(s3, "kill", "in.jsonl", [{"recordId": f"K{i:05d}", "modelInput": {"prompt": f"record {i}"}}
                                         for i in range(records)])
        arn = bedrock.create_model_invocation_job(
            jobName="bench-kill", roleArn=ROLE, modelId=MODEL,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://kill/in.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://kill/out/"}},
        )["jobArn"]
        rng = random.Random(5)
        at_kill = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 2.0))
            at_kill.append(bedrock.get_model_invocation_job(jobIdentifier=arn)["processedRecordCount"])
            server.kill()
            server.start()
            s3, bedrock = server.client("s3"), server.client("bedrock")
        while (job := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] not in FINISHED:
            time.sleep(0.1)
        key = f"out/{arn.rsplit('/', 1)[-1]}/in.jsonl.out"
        ids = [json.loads(line)["recordId"] for line in
               s3.get_object(Bucket="kill", Key=key)["Body"].read().decode().splitlines()]
        expected = {f"K{i:05d}" for i in range(records)}
        return {"records": records, "kills": kills, "processed_at_each_kill": at_kill, "status": job["status"],
                "lost": len(expected - set(ids)), "duplicated": len(ids) - len(set(ids))}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating online/batch pass pairs")
    parser.add_argument("--ttft-requests", type=int, default=30)
    parser.add_argument("--kill-records", type=int, default=300)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--only", default="throughput,pickup,ttft,kill")
    parser.add_argument("--batch-concurrency", type=int, default=2, help="the server's batch_concurrency")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    result: dict[str, Any] = {"load_average": os.getloadavg()}
    if wanted & {"throughput", "pickup", "ttft"}:
        (work / "real").mkdir()
        server = Server(work / "real" / "data", f"batch_concurrency = {args.batch_concurrency}\n")
        try:
            server.client("s3").create_bucket(Bucket="bench")
            concurrency = args.batch_concurrency
            if "throughput" in wanted:
                result["throughput"] = throughput(server, args.records, args.tokens, concurrency, args.rounds)
            if "pickup" in wanted:
                result["pickup"] = pickup(server, args.tokens)
            if "ttft" in wanted:
                result["ttft"] = ttft(server, args.ttft_requests, args.tokens)
        finally:
            server.stop()
    if "kill" in wanted:
        (work / "kill").mkdir()
        result["kill"] = kill(work / "kill", args.kill_records, args.kills)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
