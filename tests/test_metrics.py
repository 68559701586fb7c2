"""Prometheus metrics and JSON logs: the Bedrock metric set from invocation records, engine gauges at scrape time,
and the acceptance test — after a known mix of calls against a live server on the real model, /metrics, the usage
report (CLI and HTTP) and the responses' own token counts agree exactly."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from conftest import Server, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families

from llamarock.app import create_app
from llamarock.observability.logs import JsonFormatter
from llamarock.observability.metrics import InvocationMetrics
from llamarock.observability.records import InvocationRecord
from llamarock.settings import load_settings

FAKE = [{"name": "fake", "engine": "fake", "models": ["*"]}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def _record(**fields: Any) -> InvocationRecord:
    base: dict[str, Any] = dict(
        request_id="r", operation="InvokeModel", model_identifier="meta.llama3-1-8b-instruct-v1:0",
        model_id="meta.llama3-1-8b-instruct-v1:0", principal_arn="p", region="us-west-2",
        input_tokens=7, output_tokens=3, latency_ms=40,
    )
    base.update(fields)
    base.setdefault("streaming", base["operation"] in ("InvokeModelWithResponseStream", "ConverseStream"))
    return InvocationRecord(**base)


def test_records_become_the_bedrock_metric_set() -> None:
    from prometheus_client import generate_latest

    metrics = InvocationMetrics()
    model = "meta.llama3-1-8b-instruct-v1:0"
    profile = "us.meta.llama3-1-70b-instruct-v1:0"
    for record in [
        _record(),
        _record(operation="ConverseStream", ttft_ms=15, cache_read_tokens=5),
        _record(status=400, error_code="ValidationException", input_tokens=0, output_tokens=0),
        _record(status=429, error_code="ThrottlingException", input_tokens=0, output_tokens=0),
        _record(status=500, error_code="InternalServerException", output_tokens=1),
        _record(cancelled=True, operation="InvokeModelWithResponseStream", ttft_ms=20, output_tokens=2),
        _record(model_identifier=profile, model_id="meta.llama3-1-70b-instruct-v1:0", performance_latency="optimized"),
        _record(model_identifier="meta.llama2-13b-chat-v1", model_id="meta.llama2-13b-chat-v1"),
        _record(model_identifier="no-such-model", model_id=None, status=404, error_code="ResourceNotFoundException",
                input_tokens=0, output_tokens=0),
    ]:
        metrics.record(record)
    found = samples(generate_latest(metrics.registry).decode())
    assert value(found, "bedrock_invocations_total", ModelId=model) == 4  # not the validation error or throttle
    assert value(found, "bedrock_invocation_throttles_total", ModelId=model) == 1
    assert value(found, "bedrock_invocation_client_errors_total", ModelId=model) == 1
    assert value(found, "bedrock_invocation_server_errors_total", ModelId=model) == 1
    assert value(found, "bedrock_input_tokens_total", ModelId=model) == 7 * 4
    assert value(found, "bedrock_output_tokens_total", ModelId=model) == 3 + 3 + 1 + 2
    assert value(found, "bedrock_cache_read_input_tokens_total", ModelId=model) == 5
    assert value(found, "bedrock_invocation_latency_milliseconds_count", ModelId=model) == 4
    assert value(found, "bedrock_invocation_latency_milliseconds_sum", ModelId=model) == 160
    assert value(found, "bedrock_time_to_first_token_milliseconds_count", ModelId=model) == 2
    assert value(found, "bedrock_time_to_first_token_milliseconds_sum", ModelId=model) == 35
    assert value(found, "bedrock_invocations_total", ModelId=profile + "+latency-optimized") == 1
    assert value(found, "bedrock_invocations_total", ModelId=profile) == 0
    assert value(found, "bedrock_legacy_model_invocations_total", ModelId="meta.llama2-13b-chat-v1") == 1
    assert value(found, "bedrock_legacy_model_invocations_total", ModelId=model) == 0
    assert value(found, "bedrock_invocations_total", ModelId="unknown") == 1
    assert not any(labels and dict(labels).get("ModelId") == "no-such-model" for _, labels in found)


def test_each_app_has_its_own_registry_with_engine_gauges(tmp_path: Path) -> None:
    async def run() -> None:
        apps = [create_app(load_settings(data_dir=tmp_path / str(i), deployments=FAKE)) for i in range(2)]
        first = apps[0]
        await first.state.registry.load_all()
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post("/model/meta.llama3-8b-instruct-v1:0/invoke",
                                       content=json.dumps({"prompt": "count to five", "max_gen_len": 6}))
            assert answer.status_code == 200
            scraped = await client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        found = samples(scraped.text)
        assert value(found, "llamarock_deployment_ready", deployment="fake") == 1
        generated = int(answer.headers["X-Amzn-Bedrock-Output-Token-Count"])
        assert value(found, "llamarock_engine_generated_tokens_total", deployment="fake") == generated
        assert value(found, "llamarock_engine_active_requests", deployment="fake") == 0
        assert value(found, "bedrock_output_tokens_total", ModelId="meta.llama3-8b-instruct-v1:0") == generated
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://test") as second:
            other = samples((await second.get("/metrics")).text)
        assert value(other, "bedrock_output_tokens_total", ModelId="meta.llama3-8b-instruct-v1:0") == 0
        assert value(other, "llamarock_deployment_ready", deployment="fake") == 0  # never loaded
        await first.state.registry.close_all()
        for app in apps:
            app.state.usage.close()

    asyncio.run(run())


def test_metrics_are_open_and_usage_needs_a_key_when_auth_is_enforced(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, deployments=FAKE, auth="enforce"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/metrics")).status_code == 200
            refused = await client.get("/llamarock/usage")
            assert refused.status_code == 403 and "x-amzn-ErrorType" in refused.headers
        app.state.usage.close()

    asyncio.run(run())


def test_json_log_lines_carry_the_request_fields() -> None:
    record = logging.makeLogRecord({
        "name": "llamarock.access", "levelno": logging.INFO, "levelname": "INFO", "msg": "POST %s",
        "args": ("/model/x/invoke",), "request_id": "abc", "status": 200, "latency_ms": 12, "model": None,
    })
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /model/x/invoke" and line["logger"] == "llamarock.access"
    assert (line["request_id"], line["status"], line["latency_ms"], line["level"]) == ("abc", 200, 12, "INFO")
    assert "model" not in line and line["time"].endswith("Z")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        failing = logging.makeLogRecord({"msg": "failed", "levelname": "ERROR", "exc_info": sys.exc_info()})
    text = JsonFormatter().format(failing)
    assert "\n" not in text and "boom" in json.loads(text)["exception"]


# ----------------------------------------------------------------------------------------- acceptance, real model

PRICES = {  # USD per 1M tokens: the spec's, and one from the config below
    "meta.llama2-13b-chat-v1": (Decimal("0.75"), Decimal("1.00")),
    "meta.llama3-1-8b-instruct-v1:0": (Decimal("0.22"), Decimal("0.22")),
    "meta.llama3-8b-instruct-v1:0": (Decimal("0.30"), Decimal("0.60")),
}
CONFIG = '[prices."meta.llama3-8b-instruct-v1:0"]\ninput = 0.30\noutput = 0.60\n'


@pytest.fixture
def metered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("metered")
    server = start_server(tmp, "--log-format", "json", config=CONFIG)
    yield server, tmp / "data"
    stop_server(server)


def _stream_chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(event["chunk"]["bytes"]) for event in response["body"] if "chunk" in event]


def _calls(client: Any) -> tuple[dict[str, Counter[str]], list[tuple[str, str, str]]]:
    """The mix of calls; per model id: invocations, errors and the token counts the responses state."""
    totals: dict[str, Counter[str]] = {m: Counter() for m in PRICES}
    answered: list[tuple[str, str, str]] = []  # (request id, operation, model)

    def count(model: str, inputs: int, outputs: int, cached: int, streamed: bool) -> None:
        totals[model].update(invocations=1, input=inputs, output=outputs, cache=cached, streams=int(streamed))

    llama2, llama31, llama3 = sorted(PRICES)
    plain = client.invoke_model(modelId=llama2, body=json.dumps({"prompt": "Name a colour.", "max_gen_len": 8}))
    headers = plain["ResponseMetadata"]["HTTPHeaders"]
    body = json.loads(plain["body"].read())
    assert int(headers["x-amzn-bedrock-output-token-count"]) == body["generation_token_count"]
    # InvokeModel states the whole prompt; metering counts the part computed and the part read from the cache apart.
    cached = int(headers.get("x-amzn-bedrock-cache-read-input-token-count", 0))
    count(llama2, int(headers["x-amzn-bedrock-input-token-count"]) - cached,
          int(headers["x-amzn-bedrock-output-token-count"]), cached, False)
    answered.append((plain["ResponseMetadata"]["RequestId"], "InvokeModel", llama2))

    streamed = client.invoke_model_with_response_stream(
        modelId=llama31, body=json.dumps({"prompt": "Count: one, two,", "max_gen_len": 8}))
    chunks = _stream_chunks(streamed)
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    cached = metrics.get("cacheReadInputTokenCount", 0)
    count(llama31, metrics["inputTokenCount"] - cached, metrics["outputTokenCount"], cached, True)
    answered.append((streamed["ResponseMetadata"]["RequestId"], "InvokeModelWithResponseStream", llama31))

    conversation = [{"role": "user", "content": [{"text": "Say hello to the metering test, briefly."}]}]
    for _ in range(2):  # the same prompt twice: the second may read it from the prefix cache
        converse = client.converse(modelId=llama31, messages=conversation, inferenceConfig={"maxTokens": 8},
                                   requestMetadata={"team": "search"})
        usage = converse["usage"]
        count(llama31, usage["inputTokens"], usage["outputTokens"], usage.get("cacheReadInputTokens", 0), False)
        answered.append((converse["ResponseMetadata"]["RequestId"], "Converse", llama31))

    stream = client.converse_stream(modelId=llama3, messages=conversation, inferenceConfig={"maxTokens": 8})
    usage = [event["metadata"]["usage"] for event in stream["stream"] if "metadata" in event][-1]
    count(llama3, usage["inputTokens"], usage["outputTokens"], usage.get("cacheReadInputTokens", 0), True)
    answered.append((stream["ResponseMetadata"]["RequestId"], "ConverseStream", llama3))

    with pytest.raises(ClientError) as refused:
        client.invoke_model(modelId=llama2, body=json.dumps({"max_gen_len": 8}))  # no prompt
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    totals[llama2].update(validation_errors=1)
    answered.append((refused.value.response["ResponseMetadata"]["RequestId"], "InvokeModel", llama2))
    return totals, answered


def _scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        return samples(response.read().decode())


def test_metrics_usage_report_and_responses_agree_exactly(metered: tuple[Server, Path]) -> None:
    server, data_dir = metered
    client = server.client()
    totals, answered = _calls(client)
    client.close()  # type: ignore[attr-defined]
    expected_calls = sum(t["invocations"] + t["validation_errors"] for t in totals.values())
    # A stream's record is emitted just after its last frame: wait until the server has seen every call.
    deadline = time.monotonic() + 30
    while True:
        found = _scrape(server)
        seen = sum(v for (name, _), v in found.items() if name in (
            "bedrock_invocations_total", "bedrock_invocation_client_errors_total"))
        if seen >= expected_calls or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    with urllib.request.urlopen(server.url + "/llamarock/usage?by=model", timeout=30) as response:
        http_rows = {row["modelId"]: row for row in json.loads(response.read())["rows"]}
    cli = subprocess.run([sys.executable, "-m", "llamarock", "usage", "--json", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=60, check=True)
    cli_rows = {row["modelId"]: row for row in json.loads(cli.stdout)}
    assert http_rows == cli_rows
    assert set(cli_rows) == set(PRICES)

    for model, want in totals.items():
        assert value(found, "bedrock_invocations_total", ModelId=model) == want["invocations"], model
        assert value(found, "bedrock_invocation_client_errors_total", ModelId=model) == want["validation_errors"]
        assert value(found, "bedrock_invocation_server_errors_total", ModelId=model) == 0
        assert value(found, "bedrock_invocation_throttles_total", ModelId=model) == 0
        assert value(found, "bedrock_input_tokens_total", ModelId=model) == want["input"], model
        assert value(found, "bedrock_output_tokens_total", ModelId=model) == want["output"], model
        assert value(found, "bedrock_cache_read_input_tokens_total", ModelId=model) == want["cache"], model
        assert value(found, "bedrock_invocation_latency_milliseconds_count", ModelId=model) == want["invocations"]
        assert value(found, "bedrock_time_to_first_token_milliseconds_count", ModelId=model) == want["streams"]
        row = cli_rows[model]
        assert (row["invocations"], row["inputTokens"], row["outputTokens"], row["cacheReadInputTokens"]) == (
            want["invocations"], want["input"], want["output"], want["cache"]), model
        assert row["clientErrors"] == want["validation_errors"] and row["unpricedInvocations"] == 0
        price_in, price_out = PRICES[model]
        assert Decimal(str(row["costUsd"])) == (want["input"] * price_in + want["output"] * price_out) / 10**6
    assert sum(v for (name, _), v in found.items() if name == "bedrock_output_tokens_total") == sum(
        t["output"] for t in totals.values())

    with urllib.request.urlopen(server.url + "/llamarock/usage?by=tag", timeout=30) as response:
        (tag_row,) = json.loads(response.read())["rows"]
    assert tag_row["tag"] == "team=search" and tag_row["invocations"] == 2

    assert value(found, "llamarock_deployment_ready", deployment="smollm2-135m-embedded") == 1
    assert value(found, "llamarock_engine_generated_tokens_total", deployment="smollm2-135m-embedded") >= sum(
        t["output"] for t in totals.values())
    assert value(found, "llamarock_engine_kv_cells", deployment="smollm2-135m-embedded") > 0
    _check_dashboard(server)
    _check_access_lines(server, answered)


def _check_dashboard(server: Server) -> None:
    """Every series the Grafana dashboard queries is one the server declares (has a # TYPE line for)."""
    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text())
    queried = {
        name.removesuffix("_bucket") for panel in dashboard["panels"] for target in panel.get("targets", [])
        for name in re.findall(r"\b(?:bedrock|llamarock)_[a-z_]+", target["expr"])
    }
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        declared = set(re.findall(r"^# TYPE (\S+) ", response.read().decode(), re.MULTILINE))
    assert queried and queried <= declared, queried - declared


def _check_access_lines(server: Server, answered: list[tuple[str, str, str]]) -> None:
    """--log-format json: every line of the server's output is a JSON object, with one access line per request."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
        access = {line.get("request_id"): line for line in lines if line["logger"] == "llamarock.access"}
        if all(request_id in access for request_id, _, _ in answered) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    for request_id, operation, model in answered:
        line = access[request_id]
        assert (line["operation"], line["model"], line["method"]) == (operation, model, "POST")
        assert line["status"] in (200, 400) and isinstance(line["latency_ms"], int)
    assert access[answered[-1][0]]["error_code"] == "ValidationException"
