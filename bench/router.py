"""Remote engines and their router, on real llama-server replicas (the ``xllamacpp`` wheel, embedded SmolLM2).

Three measurements, one JSON object printed at the end (run by hand; never a test):

* ``affinity``: 8 shared system prompts, each followed by several user questions, sent in a shuffled order over 4
  replicas by the llama-server engine with prefix affinity, then with round-robin (``affinity_prefix_tokens = 0``),
  fresh replicas for each. The figure is the share of the prompt tokens sent that the replicas had to process, from
  their own counters (llama-server's ``/metrics``: ``llamacpp:prompt_tokens_total`` counts processed prompt tokens,
  ``llamacpp:prompt_tokens_cached_total`` those taken from a slot's cache). The replicas keep no host-memory prompt
  cache (``cache_ram_mib = 0``): a replica's cache is its slots' KV, as on a GPU server.
* ``overhead``: the same httpx client sends one raw prompt to a replica's ``/completion`` directly and as InvokeModel
  to llamarock in front of it (one llama-server replica, one token), alternately; the latencies' p50/p99 and those of
  the paired differences. llamarock's path includes its ``/tokenize`` call to the replica.
* ``failover``: concurrent ConverseStream calls (boto3) through llamarock over 2 replicas; one replica SIGKILLed
  while they run; the failed requests are counted (the target is 0).

    python bench/router.py [--part affinity,overhead,failover]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from llama_replicas import LlamaReplica, free_port, start_replicas, stop_replicas  # noqa: E402

MODEL_ID = "meta.llama3-8b-instruct-v1:0"
FAKE_MODEL_ID = "meta.llama3-70b-instruct-v1:0"
WORDS = ("river stone harbor lantern meadow copper violet engine signal orchard summit canvas ember falcon garden "
         "island marble needle ocean pepper quartz ribbon saddle timber velvet willow yonder zephyr anchor basket "
         "candle dragon feather glacier hammer ivory jasmine kettle ladder mirror nectar").split()


def _system_prompt(index: int, words: int) -> str:
    rng = random.Random(index)
    return f"You are assistant number {index}. Rules: " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _affinity_run(replicas: list[LlamaReplica], prefix_tokens: int, requests: list[tuple[str, str]],
                        concurrency: int) -> dict[str, Any]:
    from llamarock.engines.remote import RemoteConfig
    from llamarock.engines.remote_llamaserver import LlamaServerEngine
    from llamarock.engines.router import Endpoint, RouterPolicy
    from llamarock.types import ChatMessage, GenerationRequest, SamplingParams

    engine = LlamaServerEngine("bench", RemoteConfig(
        endpoints=tuple(Endpoint(r.url) for r in replicas), chat_format="other",
        policy=RouterPolicy(affinity_prefix_tokens=prefix_tokens, stall_timeout_s=600)))
    await engine.load()
    before = [r.metrics() for r in replicas]
    sent = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(system: str, question: str) -> int:
        request = GenerationRequest(sampling=SamplingParams(temperature=0, max_tokens=2),
                                    messages=(ChatMessage("system", system), ChatMessage("user", question)))
        async with gate:
            chunks = [c async for c in engine.generate(request)]
        return chunks[0].prompt_tokens or 0

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(s, q) for s, q in requests))
    elapsed = time.perf_counter() - started
    sent = sum(counts)
    after = [r.metrics() for r in replicas]
    processed = [a["llamacpp:prompt_tokens_total"] - b["llamacpp:prompt_tokens_total"]
                 for a, b in zip(after, before, strict=True)]
    cached = [a["llamacpp:prompt_tokens_cached_total"] - b["llamacpp:prompt_tokens_cached_total"]
              for a, b in zip(after, before, strict=True)]
    requests_per_replica = [r["requests"] for r in engine.router.describe()]
    await engine.close()
    return {"prompt_tokens_sent": sent, "processed_by_replicas": int(sum(processed)),
            "cached_on_replicas": int(sum(cached)), "processed_share": round(sum(processed) / sent, 3),
            "requests_per_replica": requests_per_replica, "seconds": round(elapsed, 1)}


def bench_affinity(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    systems = [_system_prompt(i, args.system_words) for i in range(8)]
    requests = [(s, f"Question {q}: what is rule {q + 1}?") for s in systems for q in range(args.questions)]
    rng.shuffle(requests)
    out: dict[str, Any] = {"replicas": 4, "system_prompts": 8, "requests": len(requests),
                           "slots_per_replica": args.slots, "concurrency": args.concurrency}
    for mode, prefix in (("prefix_affinity", args.prefix_tokens), ("round_robin", 0)):
        replicas = start_replicas(4, slots=args.slots, context=args.slots * 1024, threads=1, cache_ram_mib=0)
        try:
            out[mode] = asyncio.run(_affinity_run(replicas, prefix, requests, args.concurrency))
        finally:
            stop_replicas(replicas)
    return out


def _start_gateway(replicas: list[LlamaReplica], tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = tmp / "router.toml"
    endpoints = ", ".join(json.dumps(r.url) for r in replicas)
    config.write_text(f'[[deployments]]\nname = "replicas"\nengine = "llama-server"\nmodels = ["{MODEL_ID}"]\n'
                      f"endpoints = [{endpoints}]\nmax_parallel = 32\n"
                      "router = {health_interval_s = 0.5, eject_s = 2.0}\n\n"
                      '[[deployments]]\nname = "rest"\nengine = "fake"\nmodels = ["*"]\n')
    log = tmp / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
    env["LLAMAROCK_LOG_LEVEL"] = "warning"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir",
                                    str(tmp / "data"), "--config", str(config)], stdout=handle,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return process, url, log
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(log.read_text()[-3000:])


def bench_overhead(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    replicas = start_replicas(1, slots=4, context=4096, threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    gateway, url, _ = _start_gateway(replicas, tmp)
    try:
        # The same raw prompt both ways: the replica's /completion directly, and InvokeModel through llamarock (which
        # tokenizes it on the replica, then calls /completion with the ids). Bearer auth (--auth dev takes any key).
        prompt = "Answer yes or no. Is the sea salty?"
        paths = (
            (replicas[0].url + "/completion", {"prompt": prompt, "n_predict": 1, "temperature": 0}),
            (f"{url}/model/{MODEL_ID}/invoke", {"prompt": prompt, "max_gen_len": 1, "temperature": 0}),
            # llamarock's own floor: the same call to a model id its fake engine serves (no replica involved)
            (f"{url}/model/{FAKE_MODEL_ID}/invoke", {"prompt": prompt, "max_gen_len": 1, "temperature": 0}),
        )
        direct: list[float] = []
        through: list[float] = []
        fake: list[float] = []
        with httpx.Client(timeout=60, headers={"Authorization": "Bearer bench"}) as client:
            for index in range(args.overhead_requests + 20):
                pair = []
                for target, body in paths:
                    started = time.perf_counter()
                    response = client.post(target, json=body)
                    pair.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                if index >= 20:  # warm-up
                    direct.append(pair[0])
                    through.append(pair[1])
                    fake.append(pair[2])
        diffs = [t - d for t, d in zip(through, direct, strict=True)]
        return {
            "requests": len(direct), "max_tokens": 1,
            "direct_ms": {"p50": round(_percentile(direct, 50), 2), "p99": round(_percentile(direct, 99), 2)},
            "through_llamarock_ms": {"p50": round(_percentile(through, 50), 2),
                                     "p99": round(_percentile(through, 99), 2)},
            "llamarock_fake_engine_ms": {"p50": round(_percentile(fake, 50), 2),
                                         "p99": round(_percentile(fake, 99), 2)},
            "overhead_ms": {"p50": round(_percentile(diffs, 50), 2), "p99": round(_percentile(diffs, 99), 2),
                            "mean": round(statistics.fmean(diffs), 2)},
        }
    finally:
        gateway.terminate()
        gateway.wait(20)
        stop_replicas(replicas)


def bench_failover(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    replicas = start_replicas(2, slots=8, context=8192, threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-router-"))
    gateway, url, _ = _start_gateway(replicas, tmp)
    results: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        client = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=url,
                              aws_access_key_id="AKIDLLAMAROCKBENCH", aws_secret_access_key="not-a-secret",
                              config=Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=300))
        for n in range(args.failover_requests // args.concurrency):
            try:
                stream = client.converse_stream(
                    modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": f"Tell story {index}.{n}."}]}],
                    inferenceConfig={"maxTokens": 96, "temperature": 0})
                stop = [e for e in stream["stream"] if "messageStop" in e]
                outcome = "ok" if stop else "no messageStop"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with lock:
                results.append(outcome)

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(args.kill_after_s)
        replicas[0].process.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter() - started
        for thread in threads:
            thread.join()
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            state = json.loads(response.read())["deployments"]["replicas"]
        failures = [r for r in results if r != "ok"]
        return {"requests": len(results), "concurrency": args.concurrency, "killed_after_s": round(killed_at, 1),
                "failed": len(failures), "failures": failures[:5], "retried": state["retried"],
                "resumed": state["resumed"], "seconds": round(time.perf_counter() - started, 1)}
    finally:
        gateway.terminate()
        gateway.wait(20)
        stop_replicas(replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="affinity,overhead,failover")
    parser.add_argument("--system-words", type=int, default=100, help="words of each shared system prompt")
    parser.add_argument("--questions", type=int, default=8, help="user questions per system prompt")
    parser.add_argument("--slots", type=int, default=4, help="slots per replica (affinity)")
    parser.add_argument("--prefix-tokens", type=int, default=64, help="affinity_prefix_tokens")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--overhead-requests", type=int, default=200)
    parser.add_argument("--failover-requests", type=int, default=32)
    parser.add_argument("--kill-after-s", type=float, default=2.0)
    args = parser.parse_args()
    parts = set(args.part.split(","))
    out: dict[str, Any] = {"model": "SmolLM2-135M-Instruct Q4_1 (embedded)", "replica": "llama-server (xllamacpp), "
                           "1 thread each", "cpus": os.cpu_count()}
    if "overhead" in parts:
        out["overhead"] = bench_overhead(args)
    if "failover" in parts:
        out["failover"] = bench_failover(args)
    if "affinity" in parts:
        out["affinity"] = bench_affinity(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
