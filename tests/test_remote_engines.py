"""Remote engines through a real llamarock server and boto3: a deployment of two real llama-server replicas
(xllamacpp, the embedded SmolLM2 GGUF) with the router in front; one replica SIGKILLed under load; replicas that
answer 429 and 503; an ejected replica readmitted; capabilities in /healthz.

The replicas that throttle are a few lines of stdlib HTTP server speaking llama-server's dialect (a third party's
behaviour we cannot provoke on demand from a real llama-server), not a stand-in for any part of llamarock.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Server, start_server, stop_server
from llama_replicas import LlamaReplica, start_replicas, stop_replicas

REMOTE_MODEL = "meta.llama3-8b-instruct-v1:0"
THROTTLED_MODEL = "meta.llama3-70b-instruct-v1:0"
UNAVAILABLE_MODEL = "meta.llama3-1-8b-instruct-v1:0"
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


def _busy_replica(status: int, retry_after: str) -> ThreadingHTTPServer:
    """A replica in llama-server's dialect that is healthy but answers every generation with ``status``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, code: int, body: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/props":
                self._json(200, {"default_generation_settings": {"n_ctx": 2048}, "model_alias": "busy",
                                 "chat_template": "<|im_start|>", "modalities": {"vision": False}})
            else:
                self._json(200, {"status": "ok"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/tokenize":
                self._json(200, {"tokens": [1, 2, 3, 4]})
            elif self.path == "/apply-template":
                self._json(200, {"prompt": "hello"})
            else:
                self._json(status, {"error": {"code": status, "message": "busy", "type": "unavailable_error"}},
                           {"Retry-After": retry_after})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _config(replicas: list[LlamaReplica], throttled: ThreadingHTTPServer, unavailable: ThreadingHTTPServer) -> str:
    def url(server: ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    router = ("router = {health_interval_s = 0.3, health_timeout_s = 1.0, eject_s = 1.0, breaker_open_s = 1.0, "
              "stall_timeout_s = 20}")
    return f"""
[[deployments]]
name = "replicas"
engine = "llama-server"
models = ["{REMOTE_MODEL}"]
endpoints = [{", ".join(json.dumps(r.url) for r in replicas)}]
max_parallel = 16
{router}

[[deployments]]
name = "throttled"
engine = "llama-server"
models = ["{THROTTLED_MODEL}"]
endpoints = ["{url(throttled)}"]
{router}

[[deployments]]
name = "unavailable"
engine = "openai"
models = ["{UNAVAILABLE_MODEL}"]
endpoints = ["{url(unavailable)}"]
{router}

[[deployments]]
name = "fake-default"
engine = "fake"
models = ["*"]
"""


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[LlamaReplica]]:
    started = start_replicas(2, slots=8, context=8192)
    yield started
    stop_replicas(started)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, replicas: list[LlamaReplica]) -> Iterator[Server]:
    throttled = _busy_replica(429, "7")
    unavailable = _openai_busy_replica()
    server = start_server(tmp_path_factory.mktemp("remote"), config=_config(replicas, throttled, unavailable))
    yield server
    stop_server(server)
    throttled.shutdown()
    unavailable.shutdown()


def _openai_busy_replica() -> ThreadingHTTPServer:
    """An OpenAI-compatible replica that lists its model and answers every completion 503 with Retry-After."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: object, retry: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry:
                self.send_header("Retry-After", "3")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "busy-model", "max_model_len": 4096}]})
            elif self.path == "/health":
                self._send(200, {})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/tokenize" and body.get("prompt") is not None:
                self._send(200, {"tokens": [1, 2, 3], "count": 3, "max_model_len": 4096})
            elif self.path == "/tokenize":
                self._send(200, {"tokens": [1, 2, 3, 4, 5], "count": 5, "max_model_len": 4096})
            else:
                self._send(503, {"error": {"message": "overloaded", "code": 503}}, retry=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _deployment_state(gateway: Server, name: str = "replicas") -> dict[str, Any]:
    status, body = gateway.health()
    assert status == 200, body
    return body["deployments"][name]


def _stream_text(runtime: Any, prompt: str, max_gen_len: int, events: list[str] | None = None,
                 started: threading.Event | None = None) -> tuple[str, dict[str, Any]]:
    response = runtime.invoke_model_with_response_stream(
        modelId=REMOTE_MODEL, body=json.dumps({"prompt": prompt, "max_gen_len": max_gen_len, "temperature": 0}))
    text = []
    last: dict[str, Any] = {}
    for event in response["body"]:
        chunk = json.loads(event["chunk"]["bytes"])
        text.append(chunk.get("generation", ""))
        if events is not None:
            events.append(chunk.get("generation", ""))
        if started is not None and len(text) >= 3:
            started.set()
        last = chunk
    return "".join(text), last


def test_capabilities_are_probed_and_shown_in_healthz(gateway: Server, replicas: list[LlamaReplica]) -> None:
    state = _deployment_state(gateway)
    caps = state["capabilities"]
    assert caps["dialect"] == "llama-server"
    assert caps["context_length"] == 8192 // 8  # llama-server's per-slot window
    assert caps["chat_format"] == "chatml" and caps["images"] is False
    assert caps["tokenizer"] == "/tokenize"
    assert [r["url"] for r in state["replicas"]] == [r.url for r in replicas]
    assert all(r["state"] == "up" for r in state["replicas"])
    assert state["replicas"][0]["capabilities"]["slots"] == 8
    assert _deployment_state(gateway, "unavailable")["capabilities"]["model"] == "busy-model"
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'llamarock_engine_replicas_routable{deployment="replicas"} 2.0' in metrics


def test_converse_stream_and_invoke_model_on_remote_replicas(gateway: Server) -> None:
    runtime = gateway.client()
    answer = runtime.converse(modelId=REMOTE_MODEL, messages=[{"role": "user", "content": [{"text": "Name a color."}]}],
                              inferenceConfig={"maxTokens": 12, "temperature": 0})
    text = answer["output"]["message"]["content"][0]["text"]
    assert text.strip() and "<|" not in text
    usage = answer["usage"]
    assert usage["inputTokens"] > 5 and 0 < usage["outputTokens"] <= 12
    counted = runtime.count_tokens(modelId=REMOTE_MODEL, input={"converse": {"messages": [
        {"role": "user", "content": [{"text": "Name a color."}]}]}})
    assert counted["inputTokens"] == usage["inputTokens"]

    stream = runtime.converse_stream(modelId=REMOTE_MODEL,
                                     messages=[{"role": "user", "content": [{"text": "Name a color."}]}],
                                     inferenceConfig={"maxTokens": 12, "temperature": 0})
    events = list(stream["stream"])
    streamed = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert streamed == text  # greedy: the same answer whichever replica served it
    assert events[-1]["metadata"]["usage"] == usage

    body = json.loads(runtime.invoke_model(modelId=REMOTE_MODEL, body=json.dumps(
        {"prompt": STORY, "max_gen_len": 16, "temperature": 0}))["body"].read())
    assert body["generation_token_count"] == 16 and body["stop_reason"] == "length"
    assert body["prompt_token_count"] > 10
    streamed_text, last = _stream_text(runtime, STORY, 16)
    assert streamed_text == body["generation"]
    assert last["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 16


def test_replica_throttling_is_throttling_exception_and_503_is_service_unavailable(gateway: Server) -> None:
    runtime = gateway.client()
    messages = [{"role": "user", "content": [{"text": "Hi"}]}]
    with pytest.raises(ClientError) as info:
        runtime.converse(modelId=THROTTLED_MODEL, messages=messages)
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "Retry after about 7 seconds" in info.value.response["Error"]["Message"]
    # Retry-After is honoured: the replica is left alone, so the next request is refused without reaching it.
    replica = _deployment_state(gateway, "throttled")["replicas"][0]
    assert replica["state"] == "throttled" and 0 < replica["retry_after_s"] <= 7
    with pytest.raises(ClientError) as again:
        runtime.converse_stream(modelId=THROTTLED_MODEL, messages=messages)
    assert again.value.response["Error"]["Code"] == "ThrottlingException"
    assert _deployment_state(gateway, "throttled")["replicas"][0]["requests"] == replica["requests"]

    with pytest.raises(ClientError) as unavailable:
        runtime.converse(modelId=UNAVAILABLE_MODEL, messages=messages)
    assert unavailable.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert unavailable.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_sigkill_one_replica_under_load_loses_no_request_and_the_stream_resumes_exactly(
    gateway: Server, replicas: list[LlamaReplica]
) -> None:
    runtime = gateway.client()
    reference, _ = _stream_text(runtime, STORY, 160)  # undisturbed greedy run
    assert len(reference) > 200
    before = _deployment_state(gateway)

    results: dict[str, Any] = {}
    started = threading.Event()

    def watched() -> None:
        try:
            results["watched"] = _stream_text(gateway.client(), STORY, 160, started=started)
        except Exception as exc:
            results["watched"] = exc

    def load(index: int) -> None:
        try:
            results[f"load{index}"] = _stream_text(gateway.client(), f"Story {index}: a {index}-legged cat named", 64)
        except Exception as exc:
            results[f"load{index}"] = exc

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    thread = threading.Thread(target=watched)
    thread.start()
    assert started.wait(60)
    # The replica generating the watched stream, by its own slots: the only one with more than the load's 64 tokens
    # left to generate.
    victims = [r for r in replicas
               if any(slot["is_processing"] and slot["next_token"][0]["n_remain"] > 64
                      for slot in r.get("/slots"))]  # type: ignore[union-attr]
    assert len(victims) == 1
    victim = victims[0]
    victim.kill()
    for t in [thread, *threads]:
        t.join(120)

    failures = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert failures == {}
    assert len(results) == 7
    text, last = results["watched"]
    assert text == reference  # no token repeated, none missing
    assert last["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 160
    after = _deployment_state(gateway)
    assert after["resumed"] > before["resumed"]
    state = next(r for r in after["replicas"] if r["url"] == victim.url)
    assert state["state"] in ("down", "ejected") and state["failures"] >= 1

    # The dead replica is readmitted once it answers again.
    victim.restart()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = next(r for r in _deployment_state(gateway)["replicas"] if r["url"] == victim.url)
        if state["state"] == "up":
            break
        time.sleep(0.2)
    assert state["state"] == "up"
    assert _stream_text(runtime, STORY, 160)[0] == reference


def test_a_stalled_replica_is_ejected_by_its_health_check_and_readmitted(
    gateway: Server, replicas: list[LlamaReplica]
) -> None:
    import signal

    replica = replicas[1]
    replica.process.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = next(r for r in _deployment_state(gateway)["replicas"] if r["url"] == replica.url)
            if state["state"] == "down":
                break
            time.sleep(0.2)
        assert state["state"] == "down"
        # Requests go to the other replica meanwhile.
        runtime = gateway.client()
        for index in range(4):
            _, last = _stream_text(runtime, f"Fact {index}: the sea is", 8)
            assert last["stop_reason"] == "length"
    finally:
        replica.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = next(r for r in _deployment_state(gateway)["replicas"] if r["url"] == replica.url)
        if state["state"] == "up":
            break
        time.sleep(0.2)
    assert state["state"] == "up"


def test_llamarock_models_shows_remote_capabilities(gateway: Server, replicas: list[LlamaReplica],
                                                    tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "models.toml"
    config.write_text(f'[[deployments]]\nname = "replicas"\nengine = "llama-server"\nmodels = ["{REMOTE_MODEL}"]\n'
                      f'endpoints = ["{replicas[0].url}"]\n')
    result = subprocess.run([sys.executable, "-m", "llamarock", "models", "--json", "--config", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    row = next(r for r in json.loads(result.stdout) if r["modelId"] == REMOTE_MODEL)
    assert row["engine"] == "llama-server"
    assert row["capabilities"]["context_length"] == 8192 // 8
    assert row["capabilities"]["replicas"] == [{"url": replicas[0].url, "state": "up"}]


def test_prefix_affinity_is_sticky_but_a_hot_prefix_spreads_under_bounded_load() -> None:
    from llamarock.engines.router import Endpoint, Router, RouterPolicy, affinity_key

    router = Router([Endpoint(f"http://10.0.0.{i}:8000") for i in range(4)],
                    RouterPolicy(load_factor=1.25, replica_slots=1))
    keys = [affinity_key(list(range(p, p + 100)), "", 64) for p in range(8)]
    homes = [router.pick(key) for key in keys]
    assert homes == [router.pick(key) for key in keys]  # idle: the same prefix always lands on the same replica
    # Bounded loads over keys: 8 prefixes on 4 replicas, at most ceil(1.25 × 8 / 4) = 3 on any one.
    assert max(sum(1 for h in homes if h is r) for r in router.replicas) <= 3
    assert len({id(r) for r in homes}) >= 3
    hot = keys[0]
    held = []
    for _ in range(12):  # one hot prefix, 12 requests in flight at once
        replica = router.pick(hot)
        assert replica is not None
        replica.in_flight += 1
        held.append(replica)
    per_replica = sorted(sum(1 for r in held if r is x) for x in router.replicas)
    assert per_replica[-1] <= 4  # the bound: ceil(1.25 × 12 / 4) = 4 at most on any one replica
    assert sum(1 for n in per_replica if n) >= 3
    assert held[0] is homes[0]
