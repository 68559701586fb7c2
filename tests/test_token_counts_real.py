"""One definition of token counts (docs/observability.md), on the REAL model, whose prefix cache makes repeated
requests read their prompt from the cache: InvokeModel's body, header and stream metrics and CountTokens state the
whole prompt on every run; Converse's ``inputTokens + cacheReadInputTokens`` is that same figure on every run;
the usage report and /metrics count what the responses state."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from conftest import Server
from test_metrics import samples, value

NATIVE_MODEL = "meta.llama3-1-8b-instruct-v1:0"
CHAT_MODEL = "meta.llama3-2-3b-instruct-v1:0"  # metered below: no other real-model test uses it
LONG_SYSTEM = "You are a meticulous assistant for a shipping company; answer in one short sentence. " * 25
RUNS = 3


def _invoke(runtime: Any, prompt: str) -> tuple[dict[str, Any], dict[str, str]]:
    response = runtime.invoke_model(modelId=NATIVE_MODEL, body=json.dumps({"prompt": prompt, "max_gen_len": 3}))
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


def _stream(runtime: Any, prompt: str) -> list[dict[str, Any]]:
    response = runtime.invoke_model_with_response_stream(
        modelId=NATIVE_MODEL, body=json.dumps({"prompt": prompt, "max_gen_len": 3}))
    return [json.loads(event["chunk"]["bytes"]) for event in response["body"] if "chunk" in event]


def test_invoke_model_states_the_whole_prompt_every_run(runtime: Any) -> None:
    prompt = LONG_SYSTEM + "Where is my parcel?"
    counted = runtime.count_tokens(
        modelId=NATIVE_MODEL, input={"invokeModel": {"body": json.dumps({"prompt": prompt})}})["inputTokens"]
    cached = []
    for _ in range(RUNS):
        body, headers = _invoke(runtime, prompt)
        assert body["prompt_token_count"] == counted
        assert int(headers["x-amzn-bedrock-input-token-count"]) == body["prompt_token_count"]
        assert int(headers["x-amzn-bedrock-output-token-count"]) == body["generation_token_count"]
        cached.append(int(headers["x-amzn-bedrock-cache-read-input-token-count"]))
        chunks = _stream(runtime, prompt)
        metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
        assert chunks[0]["prompt_token_count"] == metrics["inputTokenCount"] == counted
        cached.append(metrics["cacheReadInputTokenCount"])
    # Every run after the first read most of the prompt from the prefix cache, and still stated all of it.
    assert all(0 < c < counted for c in cached[1:])


def _usage_of_stream(runtime: Any, **request: Any) -> dict[str, int]:
    stream = runtime.converse_stream(**request)
    usage: dict[str, int] = [e["metadata"]["usage"] for e in stream["stream"] if "metadata" in e][-1]
    return usage


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def test_converse_input_plus_cache_reads_is_count_tokens_every_run(runtime: Any) -> None:
    system = [{"text": LONG_SYSTEM}]
    requests = [
        {"messages": [_user("Where is my parcel?")], "system": system},
        {"messages": [_user("How much does shipping to Oslo cost?")], "system": system},  # shares the system prompt
        {"messages": [_user("Hi"), {"role": "assistant", "content": [{"text": "Hello!"}]}, _user("Bye")]},
        {"messages": [_user("Count to three.")]},
    ]
    shared_reads = []
    for index, request in enumerate(requests):
        counted = runtime.count_tokens(modelId=NATIVE_MODEL, input={"converse": request})["inputTokens"]
        for run in range(RUNS):
            for usage in (
                runtime.converse(modelId=NATIVE_MODEL, inferenceConfig={"maxTokens": 2}, **request)["usage"],
                _usage_of_stream(runtime, modelId=NATIVE_MODEL, inferenceConfig={"maxTokens": 2}, **request),
            ):
                assert usage["inputTokens"] + usage["cacheReadInputTokens"] == counted, (index, run, usage)
                assert usage["totalTokens"] == counted + usage["outputTokens"]
                assert "cacheWriteInputTokens" not in usage
                if run > 0:  # repeated: read from the prefix cache, yet the same sum
                    assert usage["cacheReadInputTokens"] > 0
        if index == 1:
            first = runtime.converse(modelId=NATIVE_MODEL, inferenceConfig={"maxTokens": 2},
                                     messages=[_user("A question never asked before?")], system=system)["usage"]
            shared_reads.append(first["cacheReadInputTokens"])
    # A new question under the long system prompt reads that prompt from the cache.
    assert shared_reads and shared_reads[0] > 300


def _scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return samples(response.read().decode())


def _report(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/llamarock/usage?by=model", timeout=30) as response:
        rows = json.loads(response.read())["rows"]
    row: dict[str, Any] = next((r for r in rows if r["modelId"] == CHAT_MODEL), {})
    return row


def test_usage_report_and_metrics_count_what_the_responses_state(server: Server, runtime: Any) -> None:
    prompt = LONG_SYSTEM + "Is the parcel insured?"
    before_metrics, before_row = _scrape(server), _report(server)
    whole = sent = 0
    expected = {"input": 0, "cache": 0, "output": 0}
    for _ in range(RUNS):
        response = runtime.invoke_model(modelId=CHAT_MODEL, body=json.dumps({"prompt": prompt, "max_gen_len": 2}))
        body = json.loads(response["body"].read())
        headers = response["ResponseMetadata"]["HTTPHeaders"]
        cached = int(headers["x-amzn-bedrock-cache-read-input-token-count"])
        expected["input"] += body["prompt_token_count"] - cached
        expected["cache"] += cached
        expected["output"] += body["generation_token_count"]
        whole += body["prompt_token_count"]
        usage = runtime.converse(modelId=CHAT_MODEL, messages=[_user(prompt)], inferenceConfig={"maxTokens": 2})[
            "usage"]
        expected["input"] += usage["inputTokens"]
        expected["cache"] += usage["cacheReadInputTokens"]
        expected["output"] += usage["outputTokens"]
        whole += usage["inputTokens"] + usage["cacheReadInputTokens"]
        sent += 2
    assert expected["input"] + expected["cache"] == whole and expected["cache"] > 0

    deadline = time.monotonic() + 30
    while True:
        after_metrics = _scrape(server)
        seen = value(after_metrics, "bedrock_invocations_total", ModelId=CHAT_MODEL) - value(
            before_metrics, "bedrock_invocations_total", ModelId=CHAT_MODEL)
        if seen >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    after_row = _report(server)

    def metric(name: str) -> float:
        return value(after_metrics, name, ModelId=CHAT_MODEL) - value(before_metrics, name, ModelId=CHAT_MODEL)

    def reported(name: str) -> int:
        return int(after_row.get(name, 0)) - int(before_row.get(name, 0))

    assert metric("bedrock_invocations_total") == reported("invocations") == sent
    assert metric("bedrock_input_tokens_total") == reported("inputTokens") == expected["input"]
    assert metric("bedrock_cache_read_input_tokens_total") == reported("cacheReadInputTokens") == expected["cache"]
    assert metric("bedrock_output_tokens_total") == reported("outputTokens") == expected["output"]
