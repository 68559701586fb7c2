"""Provisioned Throughput end to end: boto3's ``bedrock`` client against `llamarock serve`, invocations through the
provisioned-model ARN, state across a restart, accrued cost, and reserved capacity under load on the real engine."""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.auth.actions import model_resources
from llamarock.bedrock.model_ids import parse_model_ref
from llamarock.context import ModelName
from llamarock.errors import ValidationException
from llamarock.services.provisioning import accrued_costs, add_months
from llamarock.settings import PriceSettings
from llamarock.storage.db import Database
from llamarock.storage.provisioned import ProvisionedModel, ProvisionedStore
from tests.conftest import Server, start_server, stop_server

SMALL = "meta.llama3-1-8b-instruct-v1:0"
SLOW = "meta.llama3-8b-instruct-v1:0"
OTHER = "meta.llama3-2-1b-instruct-v1:0"
LLAMA2 = "meta.llama2-13b-chat-v1"
ARN_PATTERN = re.compile(r"^arn:aws:bedrock:us-west-2:000000000000:provisioned-model/[a-z0-9]{12}$")

CONFIG = f"""
provisioning_seconds = 1.5
provisioned_sequences_per_unit = 1

[[deployments]]
name = "fake-small"
engine = "fake"
models = ["{SMALL}"]
max_parallel = 2
max_queue = 1

[[deployments]]
name = "fake-slow"
engine = "fake"
models = ["{SLOW}"]
fake_reply = "one two three four five six seven eight nine ten"
fake_token_delay_ms = 100

[[deployments]]
name = "fake-rest"
engine = "fake"
models = ["*"]
max_parallel = 64
"""


def bedrock(server: Server, region: str = "us-west-2", **config: Any) -> Any:
    return server.client("bedrock", region, **config)


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def in_service(client: Any, arn: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        model = client.get_provisioned_model_throughput(provisionedModelId=arn)
        if model["status"] == "InService" or time.monotonic() > deadline:
            assert model["status"] == "InService"
            return model  # type: ignore[no-any-return]
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("provisioned"), config=CONFIG)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def control(server: Server) -> Any:
    return bedrock(server)


def test_create_is_201_then_creating_then_in_service_and_found_by_arn_name_or_id(control: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    created = control.create_provisioned_model_throughput(
        modelUnits=2, provisionedModelName="first-pt", modelId=OTHER, tags=[{"key": "team", "value": "a"}]
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    arn = created["provisionedModelArn"]
    assert ARN_PATTERN.match(arn)
    model = control.get_provisioned_model_throughput(provisionedModelId=arn)
    assert model["status"] == "Creating"
    assert model["provisionedModelName"] == "first-pt" and model["provisionedModelArn"] == arn
    assert model["modelUnits"] == model["desiredModelUnits"] == 2
    foundation = f"arn:aws:bedrock:us-west-2::foundation-model/{OTHER}"
    assert model["modelArn"] == model["desiredModelArn"] == model["foundationModelArn"] == foundation
    assert "commitmentDuration" not in model and "commitmentExpirationTime" not in model
    assert before <= model["creationTime"] <= datetime.now(UTC)
    done = in_service(control, arn)
    assert done["lastModifiedTime"] > done["creationTime"]
    for identifier in ("first-pt", arn.rsplit("/", 1)[1]):
        assert control.get_provisioned_model_throughput(provisionedModelId=identifier)["provisionedModelArn"] == arn
    control.delete_provisioned_model_throughput(provisionedModelId="first-pt")


def test_create_accepts_a_foundation_model_arn_and_a_context_length_variant(control: Any) -> None:
    variant = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="variant-pt", modelId=f"{OTHER}:128k"
    )["provisionedModelArn"]
    model = control.get_provisioned_model_throughput(provisionedModelId=variant)
    assert model["modelArn"] == f"arn:aws:bedrock:us-west-2::foundation-model/{OTHER}:128k"
    assert model["foundationModelArn"] == f"arn:aws:bedrock:us-west-2::foundation-model/{OTHER}"
    by_arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="arn-pt", modelId=f"arn:aws:bedrock:us-west-2::foundation-model/{LLAMA2}"
    )["provisionedModelArn"]
    assert control.get_provisioned_model_throughput(provisionedModelId=by_arn)["foundationModelArn"].endswith(LLAMA2)
    for arn in (variant, by_arn):
        control.delete_provisioned_model_throughput(provisionedModelId=arn)


def test_create_errors_have_bedrocks_codes(server: Server, control: Any) -> None:
    unchecked = bedrock(server, parameter_validation=False)
    code, status, message = error_of(
        unchecked.create_provisioned_model_throughput, modelUnits=0, provisionedModelName="bad", modelId=OTHER
    )
    assert (code, status) == ("ValidationException", 400) and "modelUnits" in message
    code, status, message = error_of(
        unchecked.create_provisioned_model_throughput, modelUnits=1, provisionedModelName="bad", modelId=OTHER,
        commitmentDuration="TwoYears",
    )
    assert (code, status) == ("ValidationException", 400) and "commitmentDuration" in message
    code, status, message = error_of(
        control.create_provisioned_model_throughput, modelUnits=1, provisionedModelName="bad",
        modelId="meta.llama9-1t-v1:0",
    )
    assert (code, status) == ("ResourceNotFoundException", 404) and "meta.llama9-1t-v1:0" in message
    code, status, message = error_of(
        control.create_provisioned_model_throughput, modelUnits=65, provisionedModelName="bad", modelId=OTHER
    )
    assert (code, status) == ("ServiceQuotaExceededException", 400) and "max_parallel" in message
    code, status, _ = error_of(
        control.create_provisioned_model_throughput, modelUnits=1, provisionedModelName="bad", modelId=OTHER,
        tags=[{"key": f"k{i}", "value": "v"} for i in range(51)],
    )
    assert (code, status) == ("TooManyTagsException", 400)
    arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="taken", modelId=OTHER
    )["provisionedModelArn"]
    code, status, message = error_of(
        control.create_provisioned_model_throughput, modelUnits=1, provisionedModelName="taken", modelId=OTHER
    )
    assert (code, status) == ("ValidationException", 400) and "taken already exists" in message
    # Names are per region, as on Bedrock.
    east = bedrock(server, region="us-east-1")
    east_arn = east.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="taken", modelId=OTHER
    )["provisionedModelArn"]
    assert ":us-east-1:" in east_arn
    code, status, _ = error_of(east.get_provisioned_model_throughput, provisionedModelId=arn)
    assert (code, status) == ("ResourceNotFoundException", 404)
    east.delete_provisioned_model_throughput(provisionedModelId="taken")
    control.delete_provisioned_model_throughput(provisionedModelId=arn)


def test_client_request_token_makes_create_idempotent(control: Any) -> None:
    first = control.create_provisioned_model_throughput(
        clientRequestToken="token-1", modelUnits=1, provisionedModelName="idem", modelId=OTHER
    )["provisionedModelArn"]
    again = control.create_provisioned_model_throughput(
        clientRequestToken="token-1", modelUnits=1, provisionedModelName="idem", modelId=OTHER
    )["provisionedModelArn"]
    assert again == first
    code, _, message = error_of(
        control.create_provisioned_model_throughput, clientRequestToken="token-1", modelUnits=2,
        provisionedModelName="idem", modelId=OTHER,
    )
    assert code == "ValidationException" and "clientRequestToken" in message
    control.delete_provisioned_model_throughput(provisionedModelId=first)


def test_not_found_on_get_update_and_delete(control: Any) -> None:
    missing = "arn:aws:bedrock:us-west-2:000000000000:provisioned-model/zzzzzzzzzzzz"
    for call, kwargs in (
        (control.get_provisioned_model_throughput, {"provisionedModelId": "no-such-pt"}),
        (control.get_provisioned_model_throughput, {"provisionedModelId": missing}),
        (control.update_provisioned_model_throughput,
         {"provisionedModelId": missing, "desiredProvisionedModelName": "x"}),
        (control.delete_provisioned_model_throughput, {"provisionedModelId": "no-such-pt"}),
    ):
        code, status, message = error_of(call, **kwargs)
        assert (code, status) == ("ResourceNotFoundException", 404)
        assert kwargs["provisionedModelId"] in message


def test_list_filters_sorts_and_pages(control: Any) -> None:
    arns = []
    for name, model in (("list-a", OTHER), ("list-b", LLAMA2), ("list-c", OTHER)):
        arns.append(control.create_provisioned_model_throughput(
            modelUnits=1, provisionedModelName=name, modelId=model
        )["provisionedModelArn"])
        time.sleep(0.02)

    def names(**kwargs: Any) -> list[str]:
        summaries = control.list_provisioned_model_throughputs(nameContains="list-", **kwargs)
        return [s["provisionedModelName"] for s in summaries["provisionedModelSummaries"]]

    assert names() == ["list-c", "list-b", "list-a"]
    assert names(sortBy="CreationTime", sortOrder="Ascending") == ["list-a", "list-b", "list-c"]
    assert names(modelArnEquals=f"arn:aws:bedrock:us-west-2::foundation-model/{LLAMA2}") == ["list-b"]
    assert names(statusEquals="Creating") == ["list-c", "list-b", "list-a"]
    second = control.get_provisioned_model_throughput(provisionedModelId="list-b")["creationTime"]
    assert names(creationTimeAfter=second) == ["list-c"]
    assert names(creationTimeBefore=second) == ["list-a"]
    pages = []
    token = None
    while True:
        page = control.list_provisioned_model_throughputs(
            nameContains="list-", maxResults=2, **({"nextToken": token} if token else {})
        )
        pages.append([s["provisionedModelName"] for s in page["provisionedModelSummaries"]])
        token = page.get("nextToken")
        if token is None:
            break
    assert pages == [["list-c", "list-b"], ["list-a"]]
    paginated = control.get_paginator("list_provisioned_model_throughputs").paginate(
        nameContains="list-", PaginationConfig={"PageSize": 1}
    )
    assert [s["provisionedModelName"] for p in paginated for s in p["provisionedModelSummaries"]] == names()
    code, status, message = error_of(control.list_provisioned_model_throughputs, nextToken="not-a-token")
    assert (code, status) == ("ValidationException", 400) and "nextToken" in message
    for arn in arns:
        in_service(control, arn)
    assert names(statusEquals="InService") == ["list-c", "list-b", "list-a"]
    assert names(statusEquals="Creating") == []
    for arn in arns:
        control.delete_provisioned_model_throughput(provisionedModelId=arn)
    assert names() == []


def test_update_renames_at_once_and_changes_model_through_updating(control: Any) -> None:
    arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="upd", modelId=OTHER
    )["provisionedModelArn"]
    code, _, message = error_of(
        control.update_provisioned_model_throughput, provisionedModelId=arn, desiredModelId=LLAMA2
    )
    assert code == "ValidationException" and "Creating" in message
    control.create_provisioned_model_throughput(modelUnits=1, provisionedModelName="upd-other", modelId=OTHER)
    code, _, message = error_of(
        control.update_provisioned_model_throughput, provisionedModelId=arn, desiredProvisionedModelName="upd-other"
    )
    assert code == "ValidationException" and "upd-other already exists" in message
    assert control.update_provisioned_model_throughput(
        provisionedModelId=arn, desiredProvisionedModelName="upd-renamed"
    )["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert control.get_provisioned_model_throughput(provisionedModelId="upd-renamed")["provisionedModelArn"] == arn
    in_service(control, arn)
    control.update_provisioned_model_throughput(provisionedModelId="upd-renamed", desiredModelId=LLAMA2)
    updating = control.get_provisioned_model_throughput(provisionedModelId=arn)
    assert updating["status"] == "Updating"
    assert updating["modelArn"].endswith(OTHER) and updating["desiredModelArn"].endswith(LLAMA2)
    done = in_service(control, arn)
    assert done["modelArn"] == done["desiredModelArn"] == done["foundationModelArn"]
    assert done["modelArn"].endswith(LLAMA2)
    for name in ("upd-renamed", "upd-other"):
        control.delete_provisioned_model_throughput(provisionedModelId=name)


def test_delete_is_refused_before_the_commitment_term_is_over(control: Any) -> None:
    arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="committed", modelId=OTHER, commitmentDuration="OneMonth"
    )["provisionedModelArn"]
    model = control.get_provisioned_model_throughput(provisionedModelId=arn)
    assert model["commitmentDuration"] == "OneMonth"
    expected = add_months(model["creationTime"].astimezone(UTC), 1)
    assert abs((model["commitmentExpirationTime"] - expected).total_seconds()) < 0.001
    code, status, message = error_of(control.delete_provisioned_model_throughput, provisionedModelId=arn)
    assert (code, status) == ("ConflictException", 400)
    assert "before the commitment term is over" in message
    assert control.get_provisioned_model_throughput(provisionedModelId=arn)["provisionedModelArn"] == arn


def test_invoke_stream_converse_and_converse_stream_through_the_provisioned_arn(server: Server, control: Any) -> None:
    runtime = server.client()
    arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="serving", modelId=SMALL
    )["provisionedModelArn"]
    code, status, message = error_of(runtime.invoke_model, modelId=arn, body=json.dumps({"prompt": "hi"}))
    assert (code, status) == ("ModelNotReadyException", 429) and "Creating" in message
    in_service(control, arn)
    body = json.dumps({"prompt": "hello provisioned", "max_gen_len": 20})
    answer = runtime.invoke_model(modelId=arn, body=body)
    assert "hello provisioned" in json.loads(answer["body"].read())["generation"]
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-llamarock-served-by"] == "fake-small"
    events = runtime.invoke_model_with_response_stream(modelId=arn, body=body)["body"]
    text = "".join(json.loads(e["chunk"]["bytes"])["generation"] for e in events)
    assert "hello provisioned" in text
    messages = [{"role": "user", "content": [{"text": "hello converse"}]}]
    reply = runtime.converse(modelId=arn, messages=messages)
    assert "hello converse" in reply["output"]["message"]["content"][0]["text"]
    stream = runtime.converse_stream(modelId=arn, messages=messages)["stream"]
    deltas = "".join(e["contentBlockDelta"]["delta"]["text"] for e in stream if "contentBlockDelta" in e)
    assert "hello converse" in deltas
    elsewhere = server.client("bedrock-runtime", "us-east-1")
    code, status, message = error_of(elsewhere.invoke_model, modelId=arn, body=body)
    assert (code, status) == ("ValidationException", 400) and "signed for us-east-1" in message
    missing = "arn:aws:bedrock:us-west-2:000000000000:provisioned-model/zzzzzzzzzzzz"
    code, status, message = error_of(runtime.invoke_model, modelId=missing, body=body)
    assert (code, status) == ("ResourceNotFoundException", 404) and missing in message
    code, status, _ = error_of(runtime.converse, modelId=missing, messages=messages)
    assert (code, status) == ("ResourceNotFoundException", 404)
    control.delete_provisioned_model_throughput(provisionedModelId=arn)
    code, status, _ = error_of(runtime.invoke_model, modelId=arn, body=body)
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_provisioned_arns_parse_and_name_their_iam_resource() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcd1234efgh"
    ref = parse_model_ref(arn)
    assert (ref.kind, ref.provisioned_id, ref.region, ref.model_id) == (
        "provisioned-model-arn", "abcd1234efgh", "us-east-1", ""
    )
    for bad in ("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/ABCD1234EFGH",
                "arn:aws:bedrock:us-east-1::provisioned-model/abcd1234efgh",
                "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc"):
        with pytest.raises(ValidationException):
            parse_model_ref(bad)
    assert model_resources(ModelName.parse(arn, {}), "us-west-2", "123456789012") == ((arn,), arn)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path, config=CONFIG)
    try:
        client = bedrock(server)
        arn = client.create_provisioned_model_throughput(
            modelUnits=1, provisionedModelName="durable", modelId=SMALL, commitmentDuration="SixMonths"
        )["provisionedModelArn"]
        before = in_service(client, arn)
        pending = client.create_provisioned_model_throughput(
            modelUnits=1, provisionedModelName="pending", modelId=OTHER
        )["provisionedModelArn"]
    finally:
        stop_server(server)
    server = start_server(tmp_path, config=CONFIG)
    try:
        client = bedrock(server)
        after = client.get_provisioned_model_throughput(provisionedModelId="durable")
        after.pop("ResponseMetadata")
        before.pop("ResponseMetadata")
        assert after == before
        # A provisioned model that was Creating at shutdown finishes after the restart.
        assert in_service(client, pending)["provisionedModelName"] == "pending"
        answer = server.client().invoke_model(modelId=arn, body=json.dumps({"prompt": "still here", "max_gen_len": 9}))
        assert "still here" in json.loads(answer["body"].read())["generation"]
        code, _, _ = error_of(client.delete_provisioned_model_throughput, provisionedModelId=arn)
        assert code == "ConflictException"
        quotas = get_json(server.url + "/llamarock/quotas")
        reserved = {r["deployment"]: r["reservedSequences"] for r in quotas["deployments"]}
        assert reserved["fake-small"] == 1
    finally:
        stop_server(server)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _stored(store: ProvisionedStore, pid: str, model_id: str, units: int, created: datetime) -> ProvisionedModel:
    arn = f"arn:aws:bedrock:us-west-2:000000000000:provisioned-model/{pid}"
    fm = f"arn:aws:bedrock:us-west-2::foundation-model/{model_id}"
    model = ProvisionedModel(pid, arn, "us-west-2", f"name-{pid}", model_id, fm, model_id, fm, fm, units, "Creating",
                             None, None, created, created, created, None, None, "digest", ())
    store.insert(model)
    return model


def test_accrued_cost_is_hourly_price_times_units_times_hours_in_service(tmp_path: Path) -> None:
    store = ProvisionedStore(Database.at(tmp_path))
    try:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        llama2 = _stored(store, "aaaaaaaaaaaa", LLAMA2, 2, t0)
        store.save(llama2, bill_from=t0 + timedelta(minutes=30))
        store.delete(llama2.provisioned_id, t0 + timedelta(hours=2))
        unpriced = _stored(store, "bbbbbbbbbbbb", OTHER, 1, t0)
        store.save(unpriced, bill_from=t0)
        costs = {c.provisioned_model_name: c for c in accrued_costs(store, {}, t0, t0 + timedelta(days=1),
                                                                    now=t0 + timedelta(hours=3))}
        # Billed from InService (0:30) until deletion (2:00): 1.5 hours × 2 units × $21.18.
        assert costs["name-aaaaaaaaaaaa"].hours == Decimal("1.5")
        assert costs["name-aaaaaaaaaaaa"].cost_usd == Decimal("63.54")
        assert costs["name-bbbbbbbbbbbb"].hours == Decimal(3) and costs["name-bbbbbbbbbbbb"].cost_usd is None
        # A window clips the intervals; a configured price prices the unpriced model.
        prices = {OTHER: PriceSettings(input=Decimal("0.1"), output=Decimal("0.1"), provisioned_hourly=Decimal("10"))}
        window = accrued_costs(store, prices, t0 + timedelta(hours=1), t0 + timedelta(hours=4),
                               now=t0 + timedelta(hours=3))
        assert sorted((c.provisioned_model_name, c.cost_usd) for c in window) == [
            ("name-aaaaaaaaaaaa", Decimal("42.36")), ("name-bbbbbbbbbbbb", Decimal("20")),
        ]
    finally:
        store.db.close()


def test_add_months_keeps_the_day_or_takes_the_months_last() -> None:
    assert add_months(datetime(2025, 1, 31, 12, tzinfo=UTC), 1) == datetime(2025, 2, 28, 12, tzinfo=UTC)
    assert add_months(datetime(2025, 8, 15, tzinfo=UTC), 6) == datetime(2026, 2, 15, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------- load

REAL_CONFIG = f"""
provisioning_seconds = 0.5
provisioned_sequences_per_unit = 1

[[deployments]]
name = "smollm2-small"
models = ["{SMALL}"]
max_parallel = 2
max_queue = 1
queue_timeout_s = 60

[[deployments]]
name = "fake-rest"
engine = "fake"
models = ["*"]
"""


def test_a_provisioned_caller_keeps_full_speed_while_on_demand_callers_are_throttled(tmp_path: Path) -> None:
    """One model unit reserves one of the deployment's two sequences for its caller (real llama.cpp engine)."""
    server = start_server(tmp_path, config=REAL_CONFIG)
    try:
        arn = bedrock(server).create_provisioned_model_throughput(
            modelUnits=1, provisionedModelName="reserved", modelId=SMALL
        )["provisionedModelArn"]
        in_service(bedrock(server), arn)
        runtime = server.client()
        body = json.dumps({"prompt": "Count from one to twenty:", "max_gen_len": 32, "temperature": 0})

        def timed() -> float:
            started = time.monotonic()
            json.loads(runtime.invoke_model(modelId=arn, body=body)["body"].read())
            return time.monotonic() - started

        timed()
        unloaded = statistics.median(timed() for _ in range(3))

        outcomes: list[str] = []
        on_demand_latencies: list[float] = []
        stop = threading.Event()

        def on_demand() -> None:
            client = server.client()
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.invoke_model(modelId=SMALL, body=body)["body"].read()
                    on_demand_latencies.append(time.monotonic() - started)
                    outcomes.append("ok")
                except ClientError as error:
                    outcomes.append(error.response["Error"]["Code"])
                    time.sleep(0.05)  # a client's backoff before it tries again

        hammers = [threading.Thread(target=on_demand) for _ in range(5)]
        for thread in hammers:
            thread.start()
        try:
            time.sleep(1.0)
            loaded = [timed() for _ in range(5)]
        finally:
            stop.set()
            for thread in hammers:
                thread.join(timeout=120)
        assert "ThrottlingException" in outcomes, outcomes
        assert "ok" in outcomes, outcomes
        assert set(outcomes) <= {"ok", "ThrottlingException"}, outcomes
        # The reserved sequence starts at once: it never waits behind on-demand requests, which queue for their one
        # sequence, so it finishes sooner than they do under the same load. (How close it stays to its unloaded
        # speed depends on the machine's other load, so it is not asserted here.)
        assert statistics.median(loaded) < statistics.median(on_demand_latencies), (loaded, unloaded,
                                                                                 on_demand_latencies)
    finally:
        stop_server(server)


def test_usage_report_shows_the_hourly_cost_provisioned_throughput_accrues(server: Server, control: Any) -> None:
    import subprocess
    import sys

    arn = control.create_provisioned_model_throughput(
        modelUnits=2, provisionedModelName="billed", modelId=LLAMA2
    )["provisionedModelArn"]
    in_service(control, arn)
    time.sleep(0.5)
    data_dir = str(server.log_path.parent / "data")
    command = [sys.executable, "-m", "llamarock", "usage", "--data-dir", data_dir, "--provisioned", "--json"]
    rows = json.loads(subprocess.run(command, capture_output=True, check=True, text=True).stdout)
    (row,) = [r for r in rows if r["provisionedModelArn"] == arn]
    assert (row["modelId"], row["modelUnits"], row["hourlyUsdPerUnit"]) == (LLAMA2, 2, 21.18)
    assert 0 < row["hours"] < 0.1
    assert row["costUsd"] == pytest.approx(row["hours"] * 2 * 21.18)
    table = subprocess.run(command[:-1], capture_output=True, check=True, text=True).stdout
    assert "PROVISIONED THROUGHPUT" in table and "billed" in table and "21.18" in table
