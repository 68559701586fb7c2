"""The socket layer: `llamarock serve` on hypercorn (HTTP/1.1 and HTTP/2 on one port) versus the same app on uvicorn
(HTTP/1.1 only, what `serve` ran before), on the embedded model.

Three ways in, each on a fresh server: HTTP/1.1 through uvicorn, HTTP/1.1 through hypercorn, HTTP/2 (h2c with prior
knowledge, every request multiplexed on one connection) through hypercorn. Each concurrency level sends
max(--requests, level) InvokeModelWithResponseStream calls of up to --tokens tokens (greedy, counting prompts)
through a pool of `level` threads sharing one httpx client; TTFT is the first event-stream chunk. The servers run in
turn, --rounds times (round-robin, so load from elsewhere on the machine lands on all of them alike); the summary is
the median over rounds.

The uvicorn side runs the whole `llamarock serve` command with only `cli/http_protocol.serve` swapped for
`uvicorn.run` with the settings serve passed it before hypercorn (the header-deadline protocol left out: a
timer per connection).

Usage: .venv/bin/python bench/http2.py [--concurrency 1,8] [--requests 8] [--tokens 64] [--rounds 2]
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
from concurrency import _eventstream_request, _free_port, _prompt, _run_level, _wait_healthy

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


def _measure(way: str, levels: list[int], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    kind, protocol = WAYS[way]
    with _server(kind, args.threads) as (url, _):
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(timeout=httpx.Timeout(600.0), limits=limits, http1=protocol == "HTTP/1.1",
                          http2=protocol == "HTTP/2") as client:
            health = client.get(url + "/healthz")
            assert health.http_version == protocol, f"{way}: the server answered {health.http_version}"
            # uvicorn names itself in a Server header; llamarock's hypercorn sends none
            assert (health.headers.get("server") == "uvicorn") == (kind == "uvicorn"), health.headers
            request = _eventstream_request(client, f"{url}/model/{MODEL_ID}/invoke-with-response-stream")
            request(_prompt(0), args.tokens)  # warm-up, untimed
            return {str(level): _run_level(request, level, max(args.requests, level), args.tokens)
                    for level in levels}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=8, help="requests per level (at least the level)")
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="times each server is measured, in turn")
    parser.add_argument("--uvicorn-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvicorn_worker is not None:
        return _uvicorn_worker(args.uvicorn_worker)
    levels = [int(level) for level in args.concurrency.split(",")]
    started = time.monotonic()
    rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            rounds[way].append(_measure(way, levels, args))
    summary = {
        way: {str(level): {
            "aggregate_tok_s": statistics.median(r[str(level)]["aggregate_tok_s"] for r in results),
            "ttft_p50_ms": statistics.median(r[str(level)]["ttft_p50_ms"] or 0.0 for r in results),
            "errors": sum(r[str(level)]["errors"] + r[str(level)]["dropped"] for r in results),
        } for level in levels}
        for way, results in rounds.items()
    }
    print(json.dumps({
        "model": "embedded SmolLM2-135M-Instruct Q4_1", "model_id": MODEL_ID, "threads": args.threads,
        "tokens": args.tokens, "requests": args.requests, "rounds": args.rounds, "cpus": os.cpu_count(),
        "wall_s": round(time.monotonic() - started, 1), "summary": summary, "per_round": rounds,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
