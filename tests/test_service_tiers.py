"""Service tiers (serviceTier) end to end on the fake engine: validated and echoed on every runtime operation,
applied by the scheduler (priority ahead of default, flex behind it until it has aged), priced per tier in the
usage records and counted per tier in /metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Server, start_server, stop_server
from test_metrics import samples, value

from llamarock.bedrock import catalog
from llamarock.bedrock.service_tiers import SERVICE_TIERS, bedrock_tiers, tier_of
from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import UsageRecorder, UsageStore
from llamarock.settings import load_settings
from llamarock.storage.db import Database, open_engine

LONG_REPLY = " ".join(["word"] * 100)
STRICT = "meta.llama3-8b-instruct-v1:0"  # one slot, flex never ages within a test
AGING = "meta.llama3-70b-instruct-v1:0"  # one slot, flex ages at once
PRICED = "meta.llama3-2-1b-instruct-v1:0"  # configured prices, many slots
CONFIG = f"""
[[deployments]]
name = "strict"
engine = "fake"
models = ["{STRICT}"]
max_parallel = 1
priority_slots = 0
max_queue = 8
flex_aging_s = 600
fake_reply = "{LONG_REPLY}"
fake_token_delay_ms = 40

[[deployments]]
name = "aging"
engine = "fake"
models = ["{AGING}"]
max_parallel = 1
priority_slots = 0
max_queue = 8
flex_aging_s = 0
fake_reply = "{LONG_REPLY}"
fake_token_delay_ms = 40

[[deployments]]
name = "rest"
engine = "fake"
models = ["*"]

[prices."{PRICED}"]
input = 3
output = 7

[tier_price_multipliers]
flex = 0.4
"""
MESSAGES = [{"role": "user", "content": [{"text": "hello there"}]}]
BLOCKER_TOKENS = 80  # 3.2 s on one slot: time enough to queue the others behind it


@pytest.fixture(scope="module")
def tiered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("tiers"), config=CONFIG)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def client(tiered: Server) -> Any:
    return tiered.client()


def _get(server: Server, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if path != "/metrics" else samples(body)


# ------------------------------------------------------------------------------------------- validated, echoed


@pytest.mark.parametrize("tier", SERVICE_TIERS)
def test_every_tier_is_echoed_on_every_operation(client: Any, tier: str) -> None:
    converse = client.converse(modelId=PRICED, messages=MESSAGES, serviceTier={"type": tier})
    assert converse["serviceTier"] == {"type": tier}
    stream = client.converse_stream(modelId=PRICED, messages=MESSAGES, serviceTier={"type": tier})
    metadata = [event["metadata"] for event in stream["stream"] if "metadata" in event]
    assert [m["serviceTier"] for m in metadata] == [{"type": tier}]
    body = json.dumps({"prompt": "hello", "max_gen_len": 4})
    invoked = client.invoke_model(modelId=PRICED, body=body, serviceTier=tier)
    assert invoked["serviceTier"] == tier
    assert invoked["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-service-tier"] == tier
    invoked["body"].read()
    streamed = client.invoke_model_with_response_stream(modelId=PRICED, body=body, serviceTier=tier)
    assert streamed["serviceTier"] == tier
    assert [e for e in streamed["body"] if "chunk" in e]


def test_no_tier_named_means_none_echoed(client: Any) -> None:
    converse = client.converse(modelId=PRICED, messages=MESSAGES)
    assert "serviceTier" not in converse
    invoked = client.invoke_model(modelId=PRICED, body=json.dumps({"prompt": "hello", "max_gen_len": 2}))
    assert "x-amzn-bedrock-service-tier" not in invoked["ResponseMetadata"]["HTTPHeaders"]


@pytest.mark.parametrize("operation", ["converse", "converse_stream", "invoke_model", "invoke_stream"])
def test_an_unknown_tier_is_a_validation_exception(client: Any, operation: str) -> None:
    body = json.dumps({"prompt": "hello"})
    calls: dict[str, Callable[[], Any]] = {
        "converse": lambda: client.converse(modelId=PRICED, messages=MESSAGES, serviceTier={"type": "gold"}),
        "converse_stream": lambda: client.converse_stream(modelId=PRICED, messages=MESSAGES,
                                                          serviceTier={"type": "standard"}),
        "invoke_model": lambda: client.invoke_model(modelId=PRICED, body=body, serviceTier="gold"),
        "invoke_stream": lambda: client.invoke_model_with_response_stream(modelId=PRICED, body=body,
                                                                          serviceTier="PRIORITY"),
    }
    with pytest.raises(ClientError) as caught:
        calls[operation]()
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "priority, default, flex, reserved" in error["Error"]["Message"]


# ------------------------------------------------------------------------------------------- applied in order


def _deployment(server: Server, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in _get(server, "/llamarock/quotas")["deployments"] if d["deployment"] == name)
    return found


def _wait_for(server: Server, name: str, running: int, waiting: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        use = _deployment(server, name)
        if (use["onDemandInUse"], use["onDemandWaiting"]) == (running, waiting):
            return
        assert time.monotonic() < deadline, use
        time.sleep(0.005)


def _served_order(server: Server, client: Any, model_id: str, deployment: str, tiers: list[str]) -> list[str]:
    """Hold the deployment's one slot, queue one request per tier in ``tiers`` (in that order, each waiting before
    the next is sent), and return the order in which they finished."""
    finished: list[str] = []
    lock = threading.Lock()

    def run(label: str, tier: str | None, tokens: int) -> None:
        extra = {"serviceTier": {"type": tier}} if tier else {}
        client.converse(modelId=model_id, messages=MESSAGES, inferenceConfig={"maxTokens": tokens}, **extra)
        with lock:
            finished.append(label)

    blocker = threading.Thread(target=run, args=("blocker", None, BLOCKER_TOKENS))
    blocker.start()
    _wait_for(server, deployment, 1, 0)
    threads = []
    for index, tier in enumerate(tiers):
        thread = threading.Thread(target=run, args=(f"{tier}{index}", tier, 2))
        thread.start()
        threads.append(thread)
        _wait_for(server, deployment, 1, index + 1)
    for thread in [blocker, *threads]:
        thread.join(timeout=60)
    assert finished[0] == "blocker"
    return finished[1:]


def test_the_scheduler_serves_priority_then_default_then_flex(tiered: Server, client: Any) -> None:
    order = _served_order(tiered, client, STRICT, "strict", ["flex", "default", "priority", "flex", "reserved"])
    assert order == ["priority2", "reserved4", "default1", "flex0", "flex3"]


def test_flex_that_has_aged_is_served_in_arrival_order(tiered: Server, client: Any) -> None:
    # flex_aging_s = 0: a waiting flex request is never behind the default requests that arrived after it.
    order = _served_order(tiered, client, AGING, "aging", ["default", "flex", "default", "priority"])
    assert order == ["priority3", "default0", "flex1", "default2"]


# -------------------------------------------------------------------------------------------- priced, counted


def _tier_rows(server: Server) -> dict[str, dict[str, Any]]:
    return {row["serviceTier"]: row for row in _get(server, "/llamarock/usage?by=tier")["rows"]}


@pytest.mark.parametrize("tier", ["flex", "priority", "default", "reserved"])
def test_each_tier_is_priced_with_its_multiplier_and_counted_in_its_own_series(
    tiered: Server, client: Any, tier: str
) -> None:
    series = PRICED if tier == "default" else f"{PRICED}+{tier}"
    before_rows, before_metrics = _tier_rows(tiered), _get(tiered, "/metrics")
    usage = client.converse(modelId=PRICED, messages=MESSAGES, inferenceConfig={"maxTokens": 5},
                            serviceTier={"type": tier})["usage"]
    after_rows, after_metrics = _tier_rows(tiered), _get(tiered, "/metrics")

    def delta(name: str) -> float:
        return value(after_metrics, name, ModelId=series) - value(before_metrics, name, ModelId=series)

    assert delta("bedrock_invocations_total") == 1
    assert delta("bedrock_input_tokens_total") == usage["inputTokens"]
    assert delta("bedrock_output_tokens_total") == usage["outputTokens"]
    multiplier = {"flex": Decimal("0.4"), "priority": Decimal("1.75"), "default": Decimal(1), "reserved": Decimal(1)}
    before = before_rows.get(tier, {"invocations": 0, "costUsd": 0})
    assert after_rows[tier]["invocations"] - before["invocations"] == 1
    cost = (usage["inputTokens"] * 3 + usage["outputTokens"] * 7) * multiplier[tier] / 10**6
    assert Decimal(str(after_rows[tier]["costUsd"])) - Decimal(str(before["costUsd"] or 0)) == cost


def test_the_usage_report_groups_and_prices_by_tier(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, tier_price_multipliers={"priority": Decimal(2)})
    assert settings.tier_price_multipliers == {
        "priority": Decimal(2), "default": Decimal(1), "flex": Decimal("0.5"), "reserved": Decimal(1)}
    recorder = UsageRecorder(settings, UsageStore(Database.at(tmp_path)))
    model = "meta.llama2-13b-chat-v1"  # the spec's prices: 0.75 in, 1.00 out per 1M tokens
    tiers = [None, "default", "priority", "flex", "flex", "reserved"]
    for index, tier in enumerate(tiers):
        recorder.record(InvocationRecord(
            request_id=f"r{index}", operation="Converse", model_identifier=model, model_id=model,
            principal_arn="p", region="us-west-2", input_tokens=1000, output_tokens=2000, service_tier=tier))
    assert recorder.flush(timeout=30)
    rows = {row.key: row for row in recorder.store.report("tier")}
    recorder.close()
    base = (1000 * Decimal("0.75") + 2000 * Decimal("1.00")) / 10**6
    assert {key: (row.invocations, row.cost) for key, row in rows.items()} == {
        "default": (2, 2 * base), "priority": (1, 2 * base), "flex": (2, base), "reserved": (1, base)}


def test_a_database_from_before_tiers_gets_the_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = open_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE usage_records DROP COLUMN service_tier")
        connection.exec_driver_sql("DROP TABLE alembic_version")  # it was also made before migrations existed
    engine.dispose()
    store = UsageStore(Database(url))
    recorder = UsageRecorder(load_settings(data_dir=tmp_path), store)
    recorder.record(InvocationRecord(request_id="r", operation="Converse", model_identifier=STRICT, model_id=STRICT,
                                     principal_arn="p", region="us-west-2", service_tier="flex"))
    assert recorder.flush(timeout=30)
    recorder.close()
    assert [row.key for row in store.report("tier")] == ["flex"]


def test_bedrock_offers_only_the_default_tier_for_llama() -> None:
    assert all(bedrock_tiers(model.model_id) == {"default"} for model in catalog.MODELS)
    assert bedrock_tiers("openai.gpt-oss-120b-1:0") == {"default", "priority", "flex"}
    assert [tier_of(t) for t in (None, "flex", "priority", "reserved")] == ["default", "flex", "priority", "reserved"]
