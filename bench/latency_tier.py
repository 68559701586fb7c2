"""Latency-optimized versus standard traffic on one `llamarock serve` (embedded SmolLM2, real llama.cpp engine).

`--standard` workers keep the deployment saturated with standard streamed requests (each up to --tokens tokens)
for --seconds; meanwhile one client sends latency-optimized requests (`performanceConfigLatency=optimized`, Llama
3.1 70B, served by the same deployment) one after another. Both groups' time to first token is measured under the
same load; the issue's target is optimized TTFT p50 <= 0.5x the standard requests' TTFT p50.

Usage: .venv/bin/python bench/latency_tier.py [--threads 2] [--parallel 4] [--standard 12] [--seconds 60]
       [--tokens 64]
Prints one JSON object. Run by hand on a quiet machine; never a test.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from concurrency import _pct, _prompt, llamarock_server

MODEL_ID = "meta.llama3-1-70b-instruct-v1:0"


def _ttft(client: Any, prompt: str, tokens: int, optimized: bool) -> float | None:
    extra = {"performanceConfigLatency": "optimized"} if optimized else {}
    body = json.dumps({"prompt": prompt, "max_gen_len": tokens, "temperature": 0})
    started = time.perf_counter()
    first = None
    response = client.invoke_model_with_response_stream(modelId=MODEL_ID, body=body, **extra)
    for event in response["body"]:
        if "chunk" in event and first is None:
            first = time.perf_counter()
    return (first - started) * 1000 if first is not None else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--standard", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    standard: list[float] = []
    optimized: list[float] = []
    errors: list[str] = []
    deployment = f"max_parallel = {args.parallel}\nmax_queue = {4 * args.standard}\npriority_slots = 1\n"
    with llamarock_server(deployment, args.threads, "llamarock-tier-") as (_, client):
        _ttft(client, _prompt(0), args.tokens, False)  # warm-up
        stop = time.monotonic() + args.seconds
        warmup_end = time.monotonic() + min(5.0, args.seconds / 4)

        def standard_worker(index: int) -> None:
            n = 0
            while time.monotonic() < stop:
                try:
                    value = _ttft(client, _prompt(index * 100 + n), args.tokens, False)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                if value is not None and time.monotonic() > warmup_end:
                    standard.append(value)
                n += 1

        workers = [threading.Thread(target=standard_worker, args=(i,)) for i in range(args.standard)]
        for worker in workers:
            worker.start()
        time.sleep(warmup_end - time.monotonic())
        n = 0
        while time.monotonic() < stop - 2:
            try:
                value = _ttft(client, _prompt(5000 + n), args.tokens, True)
                if value is not None:
                    optimized.append(value)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            n += 1
            time.sleep(0.2)
        for worker in workers:
            worker.join()
    std_p50, opt_p50 = _pct(standard, 50), _pct(optimized, 50)
    print(json.dumps({
        "model": MODEL_ID, "threads": args.threads, "max_parallel": args.parallel, "standard_clients": args.standard,
        "tokens": args.tokens, "seconds": args.seconds,
        "standard": {"requests": len(standard), "ttft_p50_ms": std_p50, "ttft_p95_ms": _pct(standard, 95)},
        "optimized": {"requests": len(optimized), "ttft_p50_ms": opt_p50, "ttft_p95_ms": _pct(optimized, 95)},
        "optimized_over_standard_p50": round(opt_p50 / std_p50, 3) if std_p50 and opt_p50 else None,
        "target_met": bool(std_p50 and opt_p50 and opt_p50 <= 0.5 * std_p50),
        "errors": len(errors), "error_samples": sorted(set(errors))[:3],
    }, indent=2))


if __name__ == "__main__":
    main()
