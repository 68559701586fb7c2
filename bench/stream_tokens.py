"""Single-stream decode speed: invoke_model_with_response_stream through `llamarock serve` versus calling
llama-cpp-python directly on the same GGUF, threads, prompt and greedy sampling; plus serve's resident memory.

Usage: .venv/bin/python bench/stream_tokens.py [--threads 2] [--tokens 256] [--runs 3]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def bench_llamarock(threads: int, tokens: int, runs: int) -> dict[str, object]:
    port = _free_port()
    data = tempfile.mkdtemp()
    env = {**os.environ, "LLAMAROCK_THREADS": str(threads)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", data, "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        client = boto3.client(
            "bedrock-runtime", region_name="us-west-2", endpoint_url=url, aws_access_key_id="x",
            aws_secret_access_key="y", config=Config(read_timeout=600, retries={"total_max_attempts": 1}),
        )
        rates, ttfts = [], []
        body = json.dumps({"prompt": PROMPT, "max_gen_len": tokens, "temperature": 0})
        for _ in range(runs + 1):  # the first run warms up
            started = time.perf_counter()
            response = client.invoke_model_with_response_stream(modelId="meta.llama2-70b-v1", body=body)
            first = None
            count = 0
            for event in response["body"]:
                now = time.perf_counter()
                first = first or now
                count = json.loads(event["chunk"]["bytes"])["generation_token_count"]
            finished = time.perf_counter()
            rates.append((count - 1) / (finished - first) if first and count > 1 else 0.0)
            ttfts.append(((first or finished) - started) * 1000)
        memory = _rss_kib(process.pid)
        return {
            "decode_tokens_per_s": round(statistics.median(rates[1:]), 1),
            "ttft_ms": round(statistics.median(ttfts[1:]), 1),
            "tokens": count,
            "serve_rss_mb": round(memory["VmRSS"] / 1024, 1),
            "serve_peak_rss_mb": round(memory["VmHWM"] / 1024, 1),
        }
    finally:
        process.terminate()
        process.wait()


def bench_direct(threads: int, tokens: int, runs: int) -> dict[str, object]:
    from llama_cpp import Llama

    from llamarock.services.deployments import embedded_model_path

    llm = Llama(model_path=str(embedded_model_path()), n_ctx=8192, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    rates, ttfts = [], []
    for _ in range(runs + 1):
        llm.reset()
        started = time.perf_counter()
        first = None
        count = 0
        for _token in llm.generate(prompt, top_k=0, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            now = time.perf_counter()
            first = first or now
            count += 1
            if count >= tokens:
                break
        finished = time.perf_counter()
        rates.append((count - 1) / (finished - first) if first and count > 1 else 0.0)
        ttfts.append(((first or finished) - started) * 1000)
    return {"decode_tokens_per_s": round(statistics.median(rates[1:]), 1),
            "ttft_ms": round(statistics.median(ttfts[1:]), 1), "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    direct = bench_direct(args.threads, args.tokens, args.runs)
    served = bench_llamarock(args.threads, args.tokens, args.runs)
    ratio = float(served["decode_tokens_per_s"]) / float(direct["decode_tokens_per_s"])  # type: ignore[arg-type]
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "threads": args.threads, "prompt": PROMPT,
        "llama_cpp_python_direct": direct, "llamarock_stream": served, "stream_vs_direct": round(ratio, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
