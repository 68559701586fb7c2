"""The socket layer: `llamarock serve` on hypercorn (HTTP/1.1 and HTTP/2 on one port) versus the same app on uvicorn
(HTTP/1.1 only, what `serve` ran before), on the embedded model.

Three ways in: HTTP/1.1 through uvicorn, HTTP/1.1 through hypercorn, HTTP/2 (h2c with prior knowledge, every
request multiplexed on one connection) through hypercorn; both servers run at once, each with its own engine, and
only one is under load at a time. Each measurement sends max(--requests, level) InvokeModelWithResponseStream calls
of up to --tokens tokens (greedy, counting prompts) through a pool of `level` threads sharing one httpx client;
TTFT is the first event-stream chunk. Measurements are interleaved: each trial measures every way in at each level
in turn (rotating who goes first), so load from elsewhere on the machine lands on all of them alike, and the
summary gives, besides medians, the median over trials of each way's figure divided by uvicorn's in the same trial.

The uvicorn side runs the whole `llamarock serve` command with only `cli/http_protocol.serve` swapped for
`uvicorn.run` with the settings serve passed it before hypercorn (the header-deadline protocol left out: a
timer per connection).

The HTTP/2 TTFT at concurrency 8 measures httpx as much as the server: httpcore's synchronous HTTP/2 client serialises
the threads sharing its one connection (docs/architecture.md has the figures, and Node's HTTP/2 client's).

Usage: .venv/bin/python bench/http2.py [--concurrency 1,8] [--requests 2] [--tokens 32] [--trials 4] [--threads 1]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import _eventstream_request, _free_port, _run_level, _wait_healthy

MODEL_ID = "meta.llama2-70b-v1"  # a base model id: the counting prompts are completed as they are
WAYS = {  # name: (server, httpx protocol)
    "uvicorn_http1": ("uvicorn", "HTTP/1.1"),
    "hypercorn_http1": ("hypercorn", "HTTP/1.1"),
    "hypercorn_http2": ("hypercorn", "HTTP/2"),
}


def _uvicorn_worker(argv: list[str]) -> int:
    """`llamarock serve ARGV` with uvicorn as the socket layer."""
    import uvicorn

    from llamarock.cli import http_protocol, main
    from llamarock.settings import Settings

    def on_uvicorn(app: Any, settings: Settings) -> None:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                    log_config=None, timeout_keep_alive=settings.idle_timeout_s)

    http_protocol.serve = on_uvicorn  # type: ignore[assignment]
    return main(["serve", *argv])


@contextmanager
def _server(kind: str, threads: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    data = tempfile.mkdtemp(prefix=f"llamarock-http2-{kind}-")
    argv = ["--port", str(port), "--data-dir", data, "--log-level", "warning"]
    command = [sys.executable, __file__, "--uvicorn-worker", *argv] if kind == "uvicorn" else \
        [sys.executable, "-m", "llamarock", "serve", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")} | {"LLAMAROCK_THREADS": str(threads)}
    with open(Path(data) / "serve.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url + "/healthz", process)
        yield url, process
    finally:
        process.terminate()
        process.wait()


def _level(client: Any, url: str, level: int, args: argparse.Namespace) -> dict[str, Any]:
    request = _eventstream_request(client, f"{url}/model/{MODEL_ID}/invoke-with-response-stream")
    return _run_level(request, level, max(args.requests, level), args.tokens)


def main() -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads per server (1: steadier figures on a shared machine)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=2, help="requests per level and trial (at least the level)")
    parser.add_argument("--tokens", type=int, default=32, help="max tokens per request")
    parser.add_argument("--trials", type=int, default=4, help="times each way in is measured, interleaved")
    parser.add_argument("--uvicorn-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvicorn_worker is not None:
        return _uvicorn_worker(args.uvicorn_worker)
    levels = [int(level) for level in args.concurrency.split(",")]
    started = time.monotonic()
    trials: dict[str, dict[str, list[dict[str, Any]]]] = {way: {str(lv): [] for lv in levels} for way in WAYS}
    with _server("uvicorn", args.threads) as (uvicorn_url, _), _server("hypercorn", args.threads) as (hyper_url, _):
        urls = {"uvicorn": uvicorn_url, "hypercorn": hyper_url}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        clients = {way: httpx.Client(timeout=httpx.Timeout(600.0), limits=limits, http1=protocol == "HTTP/1.1",
                                     http2=protocol == "HTTP/2") for way, (_, protocol) in WAYS.items()}
        try:
            for way, (kind, protocol) in WAYS.items():
                health = clients[way].get(urls[kind] + "/healthz")
                assert health.http_version == protocol, f"{way}: the server answered {health.http_version}"
                # uvicorn names itself in a Server header; llamarock's hypercorn sends none
                assert (health.headers.get("server") == "uvicorn") == (kind == "uvicorn"), health.headers
            ways = list(WAYS)
            # Trial 0 is a warm-up, not kept: afterwards every prompt is in both servers' prefix caches alike.
            for trial in range(args.trials + 1):
                for level in levels:
                    for way in ways[trial % len(ways):] + ways[:trial % len(ways)]:  # rotate who goes first
                        kind, _ = WAYS[way]
                        result = _level(clients[way], urls[kind], level, args)
                        if trial:
                            trials[way][str(level)].append(result)
        finally:
            for client in clients.values():
                client.close()

    def ratio(way: str, level: str, key: str) -> float | None:
        """Median over trials of this way's figure over uvicorn's in the same trial (paired: load cancels out)."""
        pairs = [(mine[key], base[key]) for mine, base in zip(trials[way][level], trials["uvicorn_http1"][level],
                                                              strict=True) if mine[key] and base[key]]
        return round(statistics.median(m / b for m, b in pairs), 3) if pairs else None

    summary = {way: {level: {
        "aggregate_tok_s_median": statistics.median(r["aggregate_tok_s"] for r in results),
        "ttft_p50_ms_median": statistics.median(r["ttft_p50_ms"] or 0.0 for r in results),
        "tok_s_vs_uvicorn": ratio(way, level, "aggregate_tok_s"),
        "ttft_vs_uvicorn": ratio(way, level, "ttft_p50_ms"),
        "errors": sum(r["errors"] + r["dropped"] for r in results),
    } for level, results in by_level.items()} for way, by_level in trials.items()}
    print(json.dumps({
        "model": "embedded SmolLM2-135M-Instruct Q4_1", "model_id": MODEL_ID, "threads": args.threads,
        "tokens": args.tokens, "requests": args.requests, "trials": args.trials, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "wall_s": round(time.monotonic() - started, 1), "summary": summary,
        "per_trial": {way: {level: [(r["aggregate_tok_s"], r["ttft_p50_ms"]) for r in results]
                            for level, results in by_level.items()} for way, by_level in trials.items()},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
