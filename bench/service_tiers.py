"""Service tiers under load on one `llamarock serve`: priority, default and flex clients at once.

--clients closed-loop clients (16 by default: a quarter priority, half default, a quarter flex) send streamed
InvokeModelWithResponseStream requests (each up to --tokens tokens, `serviceTier` header set) for --seconds,
keeping the deployment saturated (--parallel slots, 1 priority slot). Each tier's time to first token is measured
under the same load, and every flex request is followed to its end. The targets: priority TTFT p95 <= 0.5x the
default tier's p95, and every flex request completes (no throttling, no timeout: flex is never starved).

--engine llamacpp (default) runs the embedded SmolLM2-135M on --threads threads; --engine fake runs the scripted
fake engine with --fake-delay-ms per token, for machines too slow for the real one.

Usage: .venv/bin/python bench/service_tiers.py [--engine llamacpp|fake] [--threads 2] [--parallel 4]
       [--clients 16] [--seconds 60] [--tokens 48] [--flex-aging 10]
Prints one JSON object. Run by hand on a quiet machine; never a test.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from concurrency import _pct, _prompt, llamarock_server

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
TIERS = ("priority", "default", "flex")


def _one(client: Any, prompt: str, tokens: int, tier: str) -> tuple[float | None, bool]:
    """(TTFT in ms, whether the stream ended with its stop reason)."""
    body = json.dumps({"prompt": prompt, "max_gen_len": tokens, "temperature": 0})
    started = time.perf_counter()
    first = None
    ended = False
    response = client.invoke_model_with_response_stream(modelId=MODEL_ID, body=body, serviceTier=tier)
    assert response.get("serviceTier") == tier
    for event in response["body"]:
        if "chunk" in event:
            if first is None:
                first = time.perf_counter()
            if json.loads(event["chunk"]["bytes"]).get("stop_reason") is not None:
                ended = True
    return ((first - started) * 1000 if first is not None else None), ended


def _mix(clients: int) -> list[str]:
    priority = max(1, clients // 4)
    flex = max(1, clients // 4)
    return ["priority"] * priority + ["flex"] * flex + ["default"] * (clients - priority - flex)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["llamacpp", "fake"], default="llamacpp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--flex-aging", type=float, default=10.0)
    parser.add_argument("--fake-delay-ms", type=int, default=25)
    args = parser.parse_args()

    ttft: dict[str, list[float]] = {tier: [] for tier in TIERS}
    sent = {tier: 0 for tier in TIERS}
    completed = {tier: 0 for tier in TIERS}
    errors: dict[str, list[str]] = {tier: [] for tier in TIERS}
    lock = threading.Lock()
    deployment = (f"max_parallel = {args.parallel}\npriority_slots = 1\nmax_queue = {4 * args.clients}\n"
                  f"queue_timeout_s = 600\nflex_aging_s = {args.flex_aging}\n")
    if args.engine == "fake":
        deployment += f'engine = "fake"\nfake_token_delay_ms = {args.fake_delay_ms}\n'
        deployment += f'fake_reply = "{" ".join(str(n) for n in range(args.tokens + 8))}"\n'
    with llamarock_server(deployment, args.threads, "llamarock-tiers-") as (_, client):
        _one(client, _prompt(0), args.tokens, "default")  # warm-up
        stop = time.monotonic() + args.seconds
        warmup_end = time.monotonic() + min(5.0, args.seconds / 4)

        def worker(index: int, tier: str) -> None:
            n = 0
            while time.monotonic() < stop:
                with lock:
                    sent[tier] += 1
                try:
                    value, ended = _one(client, _prompt(index * 1000 + n), args.tokens, tier)
                except Exception as exc:
                    with lock:
                        errors[tier].append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                finally:
                    n += 1
                with lock:
                    completed[tier] += int(ended)
                    if value is not None and time.monotonic() > warmup_end:
                        ttft[tier].append(value)

        workers = [threading.Thread(target=worker, args=(i, tier)) for i, tier in enumerate(_mix(args.clients))]
        started = time.monotonic()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.monotonic() - started

    per_tier = {
        tier: {
            "clients": _mix(args.clients).count(tier), "requests": sent[tier], "completed": completed[tier],
            "errors": len(errors[tier]), "error_samples": sorted(set(errors[tier]))[:3],
            "ttft_p50_ms": _pct(ttft[tier], 50), "ttft_p95_ms": _pct(ttft[tier], 95),
            "ttft_max_ms": _pct(ttft[tier], 100),
        }
        for tier in TIERS
    }
    priority_p95, default_p95 = per_tier["priority"]["ttft_p95_ms"], per_tier["default"]["ttft_p95_ms"]
    ratio = round(priority_p95 / default_p95, 3) if priority_p95 and default_p95 else None
    flex_done = sent["flex"] > 0 and completed["flex"] == sent["flex"]
    print(json.dumps({
        "engine": args.engine, "model": MODEL_ID, "threads": args.threads, "max_parallel": args.parallel,
        "priority_slots": 1, "clients": args.clients, "tokens": args.tokens, "seconds": round(elapsed, 1),
        "flex_aging_s": args.flex_aging,
        **({"fake_token_delay_ms": args.fake_delay_ms} if args.engine == "fake" else {}),
        "tiers": per_tier,
        "priority_over_default_ttft_p95": ratio,
        "flex_all_completed": flex_done,
        "target_met": bool(ratio is not None and ratio <= 0.5 and flex_done),
    }, indent=2))


if __name__ == "__main__":
    main()
