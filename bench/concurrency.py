"""Concurrent streaming throughput: `llamarock serve` versus llama.cpp's llama-server (the prebuilt one inside the
PyPI wheel `xllamacpp`, over real HTTP on loopback, OpenAI `/v1/completions` SSE) versus sequential
llama-cpp-python, on the same GGUF, threads, n_ctx, prompts and greedy sampling; plus a shared-prefix TTFT test
against llamarock and each server's peak resident memory (VmHWM).

Each concurrency level sends max(--requests, level) streamed requests of up to --tokens tokens through a thread
pool of `level` workers. Prompts are counting sequences, which rarely stop early; tok/s use the tokens actually
produced. llama-cpp-python has no concurrency: it runs the same request set one after another, once.

Usage: .venv/bin/python bench/concurrency.py [--threads N] [--concurrency 1,4,8,16,32] [--requests 16]
       [--tokens 128] [--parallel 8] [--client httpx|boto3] [--skip-llama-server] [--skip-direct] [--skip-prefix]
Prints one JSON object. Run by hand; never a test. Needs `pip install xllamacpp` for the llama-server side.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

N_CTX = 8192
MODEL_ID = "meta.llama2-70b-v1"


def _prompt(index: int) -> str:
    start = 1 + 7 * index
    return "Counting: " + ", ".join(str(n) for n in range(start, start + 10)) + ","


def _prefix() -> str:
    colors = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
    lines = [f"Box {n} is {colors[n % len(colors)]} and holds {n * 3} marbles." for n in range(1, 73)]
    return "Inventory list.\n" + "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmHWM":
                return round(int(value.split()[0]) / 1024, 1)
    except OSError:
        return None
    return None


def _pct(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)], 1)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before becoming healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {seconds} s")


# One request: returns {"ok": bool, "ttft_ms", "tokens", "kind": "throttled"|"dropped"|"error", "message"}.
Request = Callable[[str, int], dict[str, Any]]


def _run_level(request: Request, concurrency: int, count: int, tokens: int) -> dict[str, Any]:
    prompts = [_prompt(i) for i in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: request(p, tokens), prompts))
    wall = time.perf_counter() - started
    ok = [r for r in results if r["ok"]]
    ttfts = [r["ttft_ms"] for r in ok]
    produced = sum(r["tokens"] for r in ok)
    failures = [r for r in results if not r["ok"]]
    return {
        "requests": count,
        "ok": len(ok),
        "aggregate_tok_s": round(produced / wall, 1) if wall else 0.0,
        "tokens": produced,
        "wall_s": round(wall, 2),
        "ttft_p50_ms": _pct(ttfts, 50),
        "ttft_p95_ms": _pct(ttfts, 95),
        "errors": sum(1 for r in failures if r["kind"] != "throttled"),
        "throttled": sum(1 for r in failures if r["kind"] == "throttled"),
        "dropped": sum(1 for r in failures if r["kind"] == "dropped"),
        "error_samples": sorted({r["message"][:200] for r in failures})[:3],
    }


def _sweep(request: Request, levels: list[int], requests: int, tokens: int) -> dict[str, Any]:
    request(_prompt(0), tokens)  # warm-up: one full request, untimed
    return {str(level): _run_level(request, level, max(requests, level), tokens) for level in levels}


# ----------------------------------------------------------------------------------------------- llamarock


def _read_stream(client: Any, body: str) -> tuple[float, float | None, list[dict[str, Any]]]:
    """Stream one invoke_model_with_response_stream: start time, first-chunk time, decoded chunks."""
    started = time.perf_counter()
    first = None
    chunks: list[dict[str, Any]] = []
    response = client.invoke_model_with_response_stream(modelId=MODEL_ID, body=body)
    for event in response["body"]:
        first = first or time.perf_counter()
        if "chunk" in event:
            chunks.append(json.loads(event["chunk"]["bytes"]))
    return started, first, chunks


def _bedrock_request(client: Any) -> Request:
    from botocore.exceptions import ClientError, ConnectionError, ReadTimeoutError

    def request(prompt: str, tokens: int) -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "max_gen_len": tokens, "temperature": 0})
        try:
            started, first, chunks = _read_stream(client, body)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            kind = "throttled" if code == "ThrottlingException" else "error"
            return {"ok": False, "kind": kind, "message": f"{code}: {exc}"}
        except (ConnectionError, ReadTimeoutError) as exc:
            return {"ok": False, "kind": "dropped", "message": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            return {"ok": False, "kind": "error", "message": f"{type(exc).__name__}: {exc}"}
        return _stream_result(started, first, chunks)

    return request


def _stream_result(started: float, first: float | None, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One InvokeModelWithResponseStream call's outcome from its decoded chunks (the last one carries the counts)."""
    last = chunks[-1] if chunks else {}
    if first is None or last.get("stop_reason") is None:
        return {"ok": False, "kind": "dropped", "message": "stream ended without a final chunk"}
    metrics = last.get("amazon-bedrock-invocationMetrics") or {}
    return {"ok": True, "ttft_ms": (first - started) * 1000, "tokens": int(last["generation_token_count"]),
            "cache_read": metrics.get("cacheReadInputTokenCount", 0)}


def _eventstream_request(client: Any, url: str) -> Request:
    """The same InvokeModelWithResponseStream call over plain httpx (unsigned: `serve` runs with --auth dev), its
    event stream parsed by botocore's EventStreamBuffer: the same client library as the llama-server side, so
    that TTFT compares the servers rather than boto3 with httpx."""
    import httpx
    from botocore.eventstream import EventStreamBuffer

    def request(prompt: str, tokens: int) -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "max_gen_len": tokens, "temperature": 0})
        started = time.perf_counter()
        first = None
        chunks: list[dict[str, Any]] = []
        try:
            with client.stream("POST", url, content=body, headers={"Content-Type": "application/json"}) as response:
                if response.status_code != 200:
                    text = response.read().decode(errors="replace")
                    kind = "throttled" if response.status_code == 429 else "error"
                    return {"ok": False, "kind": kind, "message": f"HTTP {response.status_code}: {text}"}
                frames = EventStreamBuffer()
                for data in response.iter_raw():
                    frames.add_data(data)
                    for message in frames:
                        if message.headers.get(":event-type") != "chunk":
                            return {"ok": False, "kind": "error", "message": message.payload.decode(errors="replace")}
                        first = first or time.perf_counter()
                        chunks.append(json.loads(base64.b64decode(json.loads(message.payload)["bytes"])))
        except httpx.TransportError as exc:
            return {"ok": False, "kind": "dropped", "message": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            return {"ok": False, "kind": "error", "message": f"{type(exc).__name__}: {exc}"}
        return _stream_result(started, first, chunks)

    return request


def _prefix_test(client: Any, runs: int) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = _prefix()
    ttfts, cached, prompt_tokens = [], [], None
    for index in range(runs):
        body = json.dumps({"prompt": prefix + f"Question {index}: how many marbles are in box {index * 5 + 3}?",
                           "max_gen_len": 16, "temperature": 0})
        try:
            started, first, chunks = _read_stream(client, body)
        except (BotoCoreError, ClientError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        last = chunks[-1] if chunks else {}
        prompt_tokens = prompt_tokens or (chunks[0].get("prompt_token_count") if chunks else None)
        ttfts.append(((first or time.perf_counter()) - started) * 1000)
        cached.append((last.get("amazon-bedrock-invocationMetrics") or {}).get("cacheReadInputTokenCount", 0))
    later = statistics.median(ttfts[1:]) if len(ttfts) > 1 else None
    return {
        "prompt_tokens": prompt_tokens,
        "requests": runs,
        "first_ttft_ms": round(ttfts[0], 1),
        "later_ttft_p50_ms": round(later, 1) if later is not None else None,
        "later_over_first": round(later / ttfts[0], 3) if later is not None and ttfts[0] else None,
        "cache_read_input_tokens": cached,
    }


@contextlib.contextmanager
def llamarock_server(deployment: str, threads: int, prefix: str) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """`llamarock serve` on a free port with one ``[[deployments]]`` entry (TOML lines after the header), once
    healthy; yields the process and a boto3 bedrock-runtime client without retries (its ``meta.endpoint_url`` is
    the server's URL). Stopped on exit."""
    import boto3
    from botocore.config import Config

    port = _free_port()
    data = tempfile.mkdtemp(prefix=prefix)
    config = Path(data) / "bench.toml"
    config.write_text('[[deployments]]\nname = "bench"\nmodels = ["*"]\n' + deployment)
    env = {**os.environ, "LLAMAROCK_THREADS": str(threads)}
    with open(Path(data) / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", data,
             "--log-level", "warning", "--config", str(config)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url + "/healthz", process)
            client = boto3.client(
                "bedrock-runtime", region_name="us-west-2", endpoint_url=url, aws_access_key_id="x",
                aws_secret_access_key="y",
                config=Config(retries={"total_max_attempts": 1}, max_pool_connections=64, read_timeout=600),
            )
            yield process, client
        finally:
            process.terminate()
            process.wait()


def bench_llamarock(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    deployment = f"context_length = {N_CTX}\nmax_parallel = {args.parallel}\nmax_queue = {args.max_queue}\n"
    with llamarock_server(deployment, args.threads, "llamarock-bench-") as (process, client):
        if args.client == "boto3":
            swept = _sweep(_bedrock_request(client), levels, args.requests, args.tokens)
        else:
            import httpx

            url = f"{client.meta.endpoint_url}/model/{MODEL_ID}/invoke-with-response-stream"
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            with httpx.Client(timeout=httpx.Timeout(600.0), limits=limits) as http:
                swept = _sweep(_eventstream_request(http, url), levels, args.requests, args.tokens)
        result: dict[str, Any] = {"client": args.client, "levels": swept}
        if not args.skip_prefix:
            result["shared_prefix"] = _prefix_test(client, args.prefix_requests)
        result["peak_rss_mb"] = _peak_rss_mb(process.pid)
    result["max_parallel"] = args.parallel
    result["max_queue"] = args.max_queue
    return result


# ---------------------------------------------------------------------------------------- llama-server


def _xllamacpp_worker(port: int, threads: int, parallel: int) -> None:
    """Child process: start xllamacpp's embedded llama-server HTTP server and idle until terminated."""
    import xllamacpp

    from llamarock.services.deployments import embedded_model_path

    params = xllamacpp.CommonParams()
    params.model.path = str(embedded_model_path())
    params.n_parallel = parallel
    params.n_ctx = N_CTX
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = port
    server = xllamacpp.Server(params)
    print(json.dumps({"listening": server.listening_address}), flush=True)
    threading.Event().wait()


def _openai_request(client: Any, url: str) -> Request:
    import httpx

    def request(prompt: str, tokens: int) -> dict[str, Any]:
        payload = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first = None
        text_chunks = 0
        usage_tokens = None
        finished = False
        try:
            with client.stream("POST", url, json=payload) as response:
                if response.status_code != 200:
                    body = response.read().decode(errors="replace")
                    kind = "throttled" if response.status_code == 429 else "error"
                    return {"ok": False, "kind": kind, "message": f"HTTP {response.status_code}: {body}"}
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"].get("completion_tokens")
                    timings = chunk.get("timings") or {}
                    usage_tokens = usage_tokens or timings.get("predicted_n")
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):
                            first = first or time.perf_counter()
                            text_chunks += 1
                        if choice.get("finish_reason"):
                            finished = True
        except httpx.TransportError as exc:
            return {"ok": False, "kind": "dropped", "message": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            return {"ok": False, "kind": "error", "message": f"{type(exc).__name__}: {exc}"}
        if not finished or first is None:
            return {"ok": False, "kind": "dropped", "message": "stream ended without finish_reason"}
        return {"ok": True, "ttft_ms": (first - started) * 1000, "tokens": int(usage_tokens or text_chunks)}

    return request


def bench_llama_server(args: argparse.Namespace, levels: list[int]) -> dict[str, Any]:
    import httpx
    import xllamacpp

    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="xllamacpp-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, __file__, "--xllamacpp-worker", str(port), "--threads", str(args.threads),
         "--parallel", str(args.parallel)],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url + "/health", process)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(timeout=httpx.Timeout(600.0), limits=limits) as client:
            levels_out = _sweep(_openai_request(client, url + "/v1/completions"), levels, args.requests, args.tokens)
        return {
            "server": f"llama-server prebuilt in xllamacpp {xllamacpp.__version__} (PyPI wheel), HTTP on loopback, "
                      "OpenAI /v1/completions streaming",
            "n_parallel": args.parallel,
            "n_ctx": N_CTX,
            "n_ctx_per_slot": N_CTX // args.parallel,
            "levels": levels_out,
            "peak_rss_mb": _peak_rss_mb(process.pid),
        }
    finally:
        process.terminate()
        process.wait()
        log.close()
        os.unlink(log.name)


# ------------------------------------------------------------------------------------ llama-cpp-python


def _direct_worker(threads: int, requests: int, tokens: int) -> None:
    """Child process: the request set one after another through llama-cpp-python; prints one JSON line."""
    import llama_cpp
    from llama_cpp import Llama

    from llamarock.services.deployments import embedded_model_path

    llm = Llama(model_path=str(embedded_model_path()), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    vocab = llm._model.vocab

    def one(prompt_text: str, limit: int) -> tuple[float, int]:
        prompt = llm.tokenize(prompt_text.encode(), add_bos=True, special=True)
        llm.reset()
        started = time.perf_counter()
        first = None
        count = 0
        for token in llm.generate(prompt, top_k=0, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            first = first or time.perf_counter()
            count += 1
            if count >= limit:
                break
        return ((first or time.perf_counter()) - started) * 1000, count

    one(_prompt(0), tokens)  # warm-up: one full request, untimed
    started = time.perf_counter()
    runs = [one(_prompt(i), tokens) for i in range(requests)]
    wall = time.perf_counter() - started
    ttfts = [ttft for ttft, _ in runs]
    produced = sum(count for _, count in runs)
    print(json.dumps({
        "requests": requests,
        "sequential_tok_s": round(produced / wall, 1),
        "tokens": produced,
        "wall_s": round(wall, 2),
        "ttft_p50_ms": _pct(ttfts, 50),
        "ttft_p95_ms": _pct(ttfts, 95),
        "errors": 0,
        "peak_rss_mb": _peak_rss_mb(os.getpid()),
    }))


def bench_direct(args: argparse.Namespace) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--direct-worker", "--threads", str(args.threads), "--requests",
         str(args.requests), "--tokens", str(args.tokens)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        return {"error": completed.stderr[-2000:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- main


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _targets(rock: dict[str, Any], server: dict[str, Any] | None, ratios: dict[str, Any]) -> dict[str, Any]:
    levels = rock["levels"]
    out: dict[str, Any] = {}
    if "8" in ratios and server is not None:
        out["c8_aggregate_ge_1.1x_llama_server"] = (ratios["8"]["aggregate_tok_s"] or 0) >= 1.1
        rock_ttft, server_ttft = levels["8"]["ttft_p50_ms"], server["levels"]["8"]["ttft_p50_ms"]
        both = rock_ttft is not None and server_ttft is not None
        out["c8_ttft_p50_le_llama_server"] = both and rock_ttft <= server_ttft
    if "1" in ratios:
        out["c1_aggregate_ge_0.95x_llama_server"] = (ratios["1"]["aggregate_tok_s"] or 0) >= 0.95
    prefix = rock.get("shared_prefix") or {}
    if prefix.get("later_over_first") is not None:
        out["prefix_later_ttft_le_25pct_of_first"] = prefix["later_over_first"] <= 0.25
    for level in ("16", "32"):
        if level in levels:
            out[f"c{level}_zero_errors"] = levels[level]["errors"] == 0
    if rock.get("peak_rss_mb") is not None:
        out["serve_peak_rss_le_500mb"] = rock["peak_rss_mb"] <= 500
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", default="1,4,8,16,32", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least the level)")
    parser.add_argument("--tokens", type=int, default=128, help="max tokens per request")
    parser.add_argument("--parallel", type=int, default=8, help="llamarock max_parallel = llama-server n_parallel")
    parser.add_argument("--max-queue", type=int, default=64, help="llamarock max_queue")
    parser.add_argument("--prefix-requests", type=int, default=5, help="shared-prefix requests (first + later)")
    parser.add_argument("--client", choices=["httpx", "boto3"], default="httpx",
                        help="llamarock's client: httpx (the same library as the llama-server side; default) or "
                        "boto3 (what SDK users see, its own parsing included)")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--skip-prefix", action="store_true")
    parser.add_argument("--xllamacpp-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.xllamacpp_worker:
        _xllamacpp_worker(args.xllamacpp_worker, args.threads, args.parallel)
        return
    if args.direct_worker:
        _direct_worker(args.threads, args.requests, args.tokens)
        return

    from llamarock.services.deployments import embedded_model_path

    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    out: dict[str, Any] = {
        "model": Path(str(embedded_model_path())).name, "threads": args.threads, "n_ctx": N_CTX,
        "concurrency": levels, "requests_per_level": {str(c): max(args.requests, c) for c in levels},
        "max_tokens": args.tokens, "sampling": "greedy (temperature 0), no ignore_eos on either side",
        "prompt_example": _prompt(0),
    }
    # One system at a time, so that none competes with another for the cores.
    if not args.skip_direct:
        out["llama_cpp_python_sequential"] = bench_direct(args)
    server = None if args.skip_llama_server else bench_llama_server(args, levels)
    if server is not None:
        out["llama_server"] = server
    rock = bench_llamarock(args, levels)
    out["llamarock"] = rock
    if server is not None:
        ratios = {
            level: {
                "aggregate_tok_s": _ratio(rock["levels"][level]["aggregate_tok_s"], stats["aggregate_tok_s"]),
                "ttft_p50": _ratio(rock["levels"][level]["ttft_p50_ms"], stats["ttft_p50_ms"]),
                "ttft_p95": _ratio(rock["levels"][level]["ttft_p95_ms"], stats["ttft_p95_ms"]),
            }
            for level, stats in server["levels"].items()
        }
        ratios["peak_rss"] = {"mb": _ratio(rock["peak_rss_mb"], server["peak_rss_mb"])}
        out["llamarock_over_llama_server"] = ratios
    else:
        ratios = {}
    direct = out.get("llama_cpp_python_sequential") or {}
    if direct.get("sequential_tok_s"):
        out["llamarock_over_sequential_llama_cpp_python"] = {
            level: _ratio(stats["aggregate_tok_s"], direct["sequential_tok_s"])
            for level, stats in rock["levels"].items()
        }
    out["targets"] = _targets(rock, server, {k: v for k, v in ratios.items() if k != "peak_rss"})
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
