"""Batch inference (issue 16): Create/Get/List/StopModelInvocationJob on a live server, with real boto3 ``bedrock``
and ``s3`` clients, input and output on the server's own S3 endpoint.

The fake engine gives deterministic answers for the protocol checks; one job runs on the real embedded model; and a
server is killed with SIGKILL mid-job, repeatedly, to show that the output then has every record exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Server, start_server, stop_server

ROLE = "arn:aws:iam::123456789012:role/BedrockBatch"
FINISHED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
ECHO_MODEL = "meta.llama3-3-70b-instruct-v1:0"  # fake-echo: the answer is the prompt's last user text
SLOW_MODEL = "meta.llama3-8b-instruct-v1:0"  # fake-slow: 16 tokens, 200 ms each

KILL_CONFIG = """
batch_concurrency = 4

[[deployments]]
name = "fake-paced"
engine = "fake"
models = ["*"]
fake_reply = "{prompt} one two three four"
fake_token_delay_ms = 30
"""


def native(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "max_gen_len": 32}


def put_lines(s3: Any, bucket: str, key: str, lines: list[Any]) -> None:
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())


def create(bedrock: Any, bucket: str, input_key: str, model: str = ECHO_MODEL, **extra: Any) -> str:
    arn: str = bedrock.create_model_invocation_job(
        jobName=extra.pop("jobName", f"job-{uuid.uuid4().hex[:10]}"), roleArn=ROLE, modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{input_key}", "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}}, **extra,
    )["jobArn"]
    return arn


def wait(bedrock: Any, arn: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = bedrock.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] in FINISHED or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def output(s3: Any, bucket: str, arn: str, name: str) -> list[dict[str, Any]]:
    key = f"out/{arn.rsplit('/', 1)[-1]}/{name}"
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in text.splitlines()]


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


@pytest.fixture(scope="module")
def bedrock(fake_server: Server) -> Any:
    return fake_server.client("bedrock")


@pytest.fixture(scope="module")
def unchecked(fake_server: Server) -> Any:
    """A bedrock client that sends what botocore would refuse to (the server must refuse it)."""
    return fake_server.client("bedrock", parameter_validation=False)


@pytest.fixture(scope="module")
def s3(fake_server: Server) -> Any:
    return fake_server.client("s3")


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------------------------------------ the happy path


def test_create_runs_to_completed_with_output_and_manifest(bedrock: Any, s3: Any, bucket: str) -> None:
    records = [{"recordId": f"R{i:03d}", "modelInput": native(f"say number {i}")} for i in range(7)]
    put_lines(s3, bucket, "happy/input.jsonl", records)
    arn = create(bedrock, bucket, "happy/input.jsonl", tags=[{"key": "team", "value": "ml"}])
    assert arn.startswith("arn:aws:bedrock:us-west-2:000000000000:model-invocation-job/")
    job = wait(bedrock, arn)
    assert job["status"] == "Completed", job
    assert (job["totalRecordCount"], job["processedRecordCount"], job["successRecordCount"],
            job["errorRecordCount"]) == (7, 7, 7, 0)
    assert job["modelInvocationType"] == "InvokeModel"
    assert job["endTime"] >= job["submitTime"]
    assert job["jobExpirationTime"] > job["submitTime"]
    lines = output(s3, bucket, arn, "input.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    for line, record in zip(lines, records, strict=True):
        assert line["modelInput"] == record["modelInput"]
        assert set(line) == {"recordId", "modelInput", "modelOutput"}
        # fake-echo answers with the prompt itself: each record got its own answer
        assert record["modelInput"]["prompt"] in line["modelOutput"]["generation"]
        assert line["modelOutput"]["generation_token_count"] > 0
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"out/{arn.rsplit('/', 1)[-1]}/manifest.json.out")
                          ["Body"].read())
    assert manifest["totalRecordCount"] == manifest["processedRecordCount"] == manifest["successRecordCount"] == 7
    assert manifest["errorRecordCount"] == 0
    assert manifest["inputTokenCount"] > 0 and manifest["outputTokenCount"] > 0
    assert manifest["outputTokenCount"] == sum(line["modelOutput"]["generation_token_count"] for line in lines)
    tags = bedrock.list_tags_for_resource(resourceARN=arn)["tags"]
    assert tags == [{"key": "team", "value": "ml"}]


def test_converse_type_and_every_file_under_a_prefix(bedrock: Any, s3: Any, bucket: str) -> None:
    def converse(text: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": [{"text": text}]}], "inferenceConfig": {"maxTokens": 20}}

    put_lines(s3, bucket, "conv/a.jsonl", [{"recordId": "A1", "modelInput": converse("alpha")}])
    put_lines(s3, bucket, "conv/b.jsonl", [{"recordId": "B1", "modelInput": converse("bravo")},
                                           {"recordId": "B2", "modelInput": converse("charlie")}])
    s3.put_object(Bucket=bucket, Key="conv/notes.txt", Body=b"not a record file")
    arn = create(bedrock, bucket, "conv/", modelInvocationType="Converse")
    job = wait(bedrock, arn)
    assert job["status"] == "Completed", job
    assert job["totalRecordCount"] == 3 and job["modelInvocationType"] == "Converse"
    a, b = output(s3, bucket, arn, "a.jsonl.out"), output(s3, bucket, arn, "b.jsonl.out")
    assert [line["recordId"] for line in a + b] == ["A1", "B1", "B2"]
    for line, word in zip(a + b, ["alpha", "bravo", "charlie"], strict=True):
        message = line["modelOutput"]["output"]["message"]
        assert message["role"] == "assistant" and word in message["content"][0]["text"]
        assert line["modelOutput"]["stopReason"] in ("end_turn", "max_tokens")
        assert line["modelOutput"]["usage"]["outputTokens"] > 0


def test_bad_records_are_error_lines_not_a_failed_job(bedrock: Any, s3: Any, bucket: str) -> None:
    put_lines(s3, bucket, "mixed/input.jsonl", [
        {"recordId": "ok1", "modelInput": native("fine")},
        "{not json",
        {"modelInput": native("no record id")},
        {"recordId": "extra", "modelInput": native("x"), "surprise": 1},
        {"recordId": "badbody", "modelInput": {"prompt": "x", "temperature": 7}},
        {"recordId": "ok2", "modelInput": native("also fine")},
    ])
    arn = create(bedrock, bucket, "mixed/input.jsonl")
    job = wait(bedrock, arn)
    assert job["status"] == "PartiallyCompleted", job
    assert (job["totalRecordCount"], job["successRecordCount"], job["errorRecordCount"]) == (6, 2, 4)
    assert "4 of 6 records failed" in job["message"]
    lines = output(s3, bucket, arn, "input.jsonl.out")
    assert len(lines) == 6
    assert "modelOutput" in lines[0] and "modelOutput" in lines[5]
    for line in lines[1:5]:
        assert "modelOutput" not in line and line["error"]["errorCode"] == 400, line
    assert "not valid JSON" in lines[1]["error"]["errorMessage"]
    assert "recordId" in lines[2]["error"]["errorMessage"]
    assert "surprise" in lines[3]["error"]["errorMessage"]
    assert lines[4]["recordId"] == "badbody" and "temperature" in lines[4]["error"]["errorMessage"]


def test_missing_input_fails_the_job_with_a_message(bedrock: Any, bucket: str) -> None:
    arn = create(bedrock, bucket, "nothing/here.jsonl")
    job = wait(bedrock, arn)
    assert job["status"] == "Failed"
    assert "s3://" in job["message"] and "does not exist" in job["message"]
    missing_bucket = bedrock.create_model_invocation_job(
        jobName="no-bucket", roleArn=ROLE, modelId=ECHO_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://no-such-bucket-here/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://no-such-bucket-here/out/"}},
    )["jobArn"]
    job = wait(bedrock, missing_bucket)
    assert job["status"] == "Failed" and "no-such-bucket-here" in job["message"]


def test_stop_takes_effect_within_a_record(bedrock: Any, s3: Any, bucket: str) -> None:
    # fake-slow takes about 3 s a record, 2 at a time: the job is stopped long before its 40 records are done
    put_lines(s3, bucket, "slow/input.jsonl", [{"recordId": f"S{i}", "modelInput": native(f"n {i}")}
                                               for i in range(40)])
    arn = create(bedrock, bucket, "slow/input.jsonl", model=SLOW_MODEL)
    deadline = time.monotonic() + 30
    while bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] != "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] in ("Stopping", "Stopped")
    job = wait(bedrock, arn, timeout=30)
    assert job["status"] == "Stopped", job
    assert job["processedRecordCount"] <= 8  # the records running when it was stopped, at most one round more
    lines = output(s3, bucket, arn, "input.jsonl.out")
    assert len(lines) == job["processedRecordCount"]
    code, status, _ = error_of(bedrock.stop_model_invocation_job, jobIdentifier=arn)
    assert (code, status) == ("ConflictException", 400)


def test_provisioned_model_arn_as_model_id(bedrock: Any, s3: Any, bucket: str) -> None:
    # botocore's modelId pattern for batch admits a provisioned model's name or id (not its ARN). Created while the
    # provisioned model is still Creating: its records wait (retried) until it is InService, then run on it.
    name = f"batch-pt-{uuid.uuid4().hex[:6]}"
    arn = bedrock.create_provisioned_model_throughput(modelUnits=1, provisionedModelName=name,
                                                      modelId=ECHO_MODEL)["provisionedModelArn"]
    assert bedrock.get_provisioned_model_throughput(provisionedModelId=arn)["status"] == "Creating"
    put_lines(s3, bucket, "pt/input.jsonl", [{"recordId": "P1", "modelInput": native("provisioned hello")}])
    job_arn = create(bedrock, bucket, "pt/input.jsonl", model=name)
    job = wait(bedrock, job_arn, timeout=60)
    assert job["status"] == "Completed", job
    assert job["modelId"] == name
    assert bedrock.get_provisioned_model_throughput(provisionedModelId=arn)["status"] == "InService"
    code, _, message = error_of(bedrock.create_model_invocation_job, jobName="pt-arn", roleArn=ROLE, modelId=arn,
                                inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/pt/input.jsonl"}},
                                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}})
    assert code == "ValidationException" and "modelId" in message
    assert "provisioned hello" in output(s3, bucket, job_arn, "input.jsonl.out")[0]["modelOutput"]["generation"]
    bedrock.delete_provisioned_model_throughput(provisionedModelId=arn)


def test_list_filters_and_pagination(bedrock: Any, s3: Any, bucket: str) -> None:
    put_lines(s3, bucket, "list/input.jsonl", [{"recordId": "L1", "modelInput": native("hi")}])
    marker = uuid.uuid4().hex[:6]
    arns = [create(bedrock, bucket, "list/input.jsonl", jobName=f"listed-{marker}-{i}") for i in range(3)]
    for arn in arns:
        wait(bedrock, arn)
    named = bedrock.list_model_invocation_jobs(nameContains=marker)["invocationJobSummaries"]
    assert sorted(job["jobArn"] for job in named) == sorted(arns)
    assert [job["jobArn"] for job in named] == arns[::-1]  # newest first by default
    ascending = bedrock.list_model_invocation_jobs(nameContains=marker, sortOrder="Ascending")
    assert [job["jobArn"] for job in ascending["invocationJobSummaries"]] == arns
    first = bedrock.list_model_invocation_jobs(nameContains=marker, maxResults=2)
    assert len(first["invocationJobSummaries"]) == 2 and "nextToken" in first
    second = bedrock.list_model_invocation_jobs(nameContains=marker, maxResults=2, nextToken=first["nextToken"])
    assert len(second["invocationJobSummaries"]) == 1 and "nextToken" not in second
    failed = bedrock.list_model_invocation_jobs(statusEquals="Failed")["invocationJobSummaries"]
    assert all(job["status"] == "Failed" for job in failed)
    assert not {job["jobArn"] for job in failed} & set(arns)
    later = bedrock.list_model_invocation_jobs(nameContains=marker, submitTimeAfter=time.time() + 3600)
    assert later["invocationJobSummaries"] == []
    earlier = bedrock.list_model_invocation_jobs(nameContains=marker, submitTimeBefore=time.time() + 3600,
                                                 submitTimeAfter=time.time() - 3600)
    assert len(earlier["invocationJobSummaries"]) == 3
    paginator = bedrock.get_paginator("list_model_invocation_jobs")
    pages = list(paginator.paginate(nameContains=marker, PaginationConfig={"PageSize": 1}))
    assert sum(len(page["invocationJobSummaries"]) for page in pages) == 3
    code, _, message = error_of(bedrock.list_model_invocation_jobs, nextToken="garbage!")
    assert code == "ValidationException" and "nextToken" in message


def test_client_request_token_is_idempotent(bedrock: Any, s3: Any, bucket: str) -> None:
    put_lines(s3, bucket, "token/input.jsonl", [{"recordId": "T1", "modelInput": native("hi")}])
    token = uuid.uuid4().hex
    first = create(bedrock, bucket, "token/input.jsonl", jobName="same-token", clientRequestToken=token)
    again = create(bedrock, bucket, "token/input.jsonl", jobName="same-token", clientRequestToken=token)
    assert first == again
    code, _, _ = error_of(bedrock.create_model_invocation_job, jobName="other-name", roleArn=ROLE,
                          modelId=ECHO_MODEL, clientRequestToken=token,
                          inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/token/input.jsonl"}},
                          outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}})
    assert code == "ConflictException"


def test_bad_requests_get_bedrock_errors(bedrock: Any, unchecked: Any, bucket: str) -> None:
    def attempt(**changes: Any) -> tuple[str, int, str]:
        request: dict[str, Any] = {
            "jobName": "bad-job", "roleArn": ROLE, "modelId": ECHO_MODEL,
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/x.jsonl"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
        }
        request.update(changes)
        return error_of(unchecked.create_model_invocation_job, **request)

    code, status, message = attempt(timeoutDurationInHours=2)
    assert (code, status) == ("ValidationException", 400) and "timeoutDurationInHours" in message
    code, status, message = attempt(jobName="bad name!")
    assert (code, status) == ("ValidationException", 400) and "jobName" in message
    code, status, message = attempt(modelId="meta.no-such-model-v9:0")
    assert status in (400, 404) and code in ("ValidationException", "ResourceNotFoundException")
    code, status, message = attempt(inputDataConfig={"s3InputDataConfig": {"s3Uri": "https://example.com/x"}})
    assert (code, status) == ("ValidationException", 400) and "s3Uri" in message
    code, status, message = attempt(modelInvocationType="Embeddings")
    assert (code, status) == ("ValidationException", 400)
    code, status, _ = error_of(bedrock.get_model_invocation_job, jobIdentifier="abcdefabcdef")
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, status, _ = error_of(bedrock.stop_model_invocation_job, jobIdentifier="abcdefabcdef")
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, status, _ = error_of(unchecked.get_model_invocation_job, jobIdentifier="NOT-AN-ID")
    assert (code, status) == ("ValidationException", 400)


def test_vpc_config_is_accepted_and_shown(bedrock: Any, s3: Any, bucket: str) -> None:
    put_lines(s3, bucket, "vpc/input.jsonl", [{"recordId": "V1", "modelInput": native("hi")}])
    vpc = {"subnetIds": ["subnet-0123456789abcdef0"], "securityGroupIds": ["sg-0123456789abcdef0"]}
    arn = create(bedrock, bucket, "vpc/input.jsonl", vpcConfig=vpc, timeoutDurationInHours=24)
    job = wait(bedrock, arn)
    assert job["vpcConfig"] == vpc and job["timeoutDurationInHours"] == 24
    assert (job["jobExpirationTime"] - job["submitTime"]).total_seconds() == pytest.approx(24 * 3600, abs=2)


def test_metrics_show_the_jobs(fake_server: Server, bedrock: Any, s3: Any, bucket: str) -> None:
    import urllib.request

    put_lines(s3, bucket, "metrics/input.jsonl", [{"recordId": "M1", "modelInput": native("hi")}])
    wait(bedrock, create(bedrock, bucket, "metrics/input.jsonl"))
    with urllib.request.urlopen(fake_server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    completed = [line for line in text.splitlines() if line.startswith('llamarock_batch_jobs{status="Completed"}')]
    assert completed and float(completed[0].split()[-1]) >= 1


# ------------------------------------------------------------------------------------------------ the real model


def test_real_model_job(server: Server) -> None:
    s3, bedrock = server.client("s3"), server.client("bedrock")
    s3.create_bucket(Bucket="real-batch")
    put_lines(s3, "real-batch", "in.jsonl", [
        {"recordId": "r1", "modelInput": {"prompt": "The capital of France is", "max_gen_len": 8}},
        {"recordId": "r2", "modelInput": {"prompt": "One, two, three,", "max_gen_len": 8}},
    ])
    arn = create(bedrock, "real-batch", "in.jsonl", model="meta.llama3-1-8b-instruct-v1:0")
    job = wait(bedrock, arn, timeout=120)
    assert job["status"] == "Completed", job
    lines = output(s3, "real-batch", arn, "in.jsonl.out")
    assert [line["recordId"] for line in lines] == ["r1", "r2"]
    for line in lines:
        body = line["modelOutput"]
        assert body["generation"] and 0 < body["generation_token_count"] <= 8
        assert body["stop_reason"] in ("stop", "length")
    usage = json.loads(urllib_get(server.url + "/llamarock/usage?by=tier"))
    batch = [row for row in usage["rows"] if row["serviceTier"] == "batch"]
    assert batch and batch[0]["invocations"] >= 2 and batch[0]["outputTokens"] > 0


def test_batch_records_cost_half_of_on_demand(tmp_path: Path) -> None:
    from llamarock.observability.records import InvocationRecord
    from llamarock.observability.usage import UsageRecorder, UsageStore
    from llamarock.settings import Settings
    from llamarock.storage.db import Database

    settings = Settings(data_dir=tmp_path)
    recorder = UsageRecorder(settings, UsageStore(Database.at(tmp_path)))
    try:
        def cost(**extra: Any) -> int:
            record = InvocationRecord("r", "InvokeModel", "meta.llama3-1-8b-instruct-v1:0", "arn:aws:iam::1:root",
                                      "us-west-2", model_id="meta.llama3-1-8b-instruct-v1:0", input_tokens=1000,
                                      output_tokens=500, **extra)
            row = recorder.row(record)
            assert row["service_tier"] == ("batch" if extra else "default")
            return int(row["cost_picousd"])

        online = cost()
        assert online > 0
        assert cost(batch_job_arn="arn:aws:bedrock:us-west-2:123456789012:model-invocation-job/abc") * 2 == online
    finally:
        recorder.close()


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


# ------------------------------------------------------------------------------------------------ kill -9


@pytest.fixture
def kill_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_kill_9_mid_job_then_restart_loses_and_repeats_nothing(kill_dir: Path) -> None:
    total, kills = 200, 3
    server = start_server(kill_dir, config=KILL_CONFIG)
    try:
        s3, bedrock = server.client("s3"), server.client("bedrock")
        s3.create_bucket(Bucket="kill")
        put_lines(s3, "kill", "in.jsonl", [{"recordId": f"K{i:04d}", "modelInput": native(f"record {i}")}
                                           for i in range(total)])
        arn = create(bedrock, "kill", "in.jsonl")
        rng = random.Random(16)
        seen = []
        for _ in range(kills):
            time.sleep(rng.uniform(0.8, 2.0))
            seen.append(bedrock.get_model_invocation_job(jobIdentifier=arn)["processedRecordCount"])
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            server = start_server(kill_dir, config=KILL_CONFIG)
            s3, bedrock = server.client("s3"), server.client("bedrock")
            resumed = bedrock.get_model_invocation_job(jobIdentifier=arn)
            assert resumed["processedRecordCount"] >= seen[-1]  # what was counted before the kill stays counted
        job = wait(bedrock, arn, timeout=120)
        assert job["status"] == "Completed", job
        assert seen[-1] < total, "the job finished before the last kill: make the records slower"
        lines = output(s3, "kill", arn, "in.jsonl.out")
        ids = [line["recordId"] for line in lines]
        assert ids == [f"K{i:04d}" for i in range(total)]  # every record once, in input order
        for i, line in enumerate(lines):
            assert f"record {i}" in line["modelOutput"]["generation"]
        assert job["processedRecordCount"] == job["successRecordCount"] == total
    finally:
        stop_server(server)


# ------------------------------------------------------------------------------------------------ the CLI


def jobs_cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMAROCK_", "AWS_"))}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["LLAMAROCK_REGION"] = "us-west-2"
    return subprocess.run([sys.executable, "-m", "llamarock", "jobs", *args, "--endpoint", server.url],
                          capture_output=True, text=True, env=env, timeout=120)


def test_jobs_cli_list_show_watch(fake_server: Server, bedrock: Any, s3: Any, bucket: str) -> None:
    put_lines(s3, bucket, "cli/input.jsonl", [{"recordId": f"C{i}", "modelInput": native(f"c {i}")}
                                              for i in range(3)])
    arn = create(bedrock, bucket, "cli/input.jsonl", jobName="cli-job")
    job_id = arn.rsplit("/", 1)[-1]
    watched = jobs_cli(fake_server, "watch", job_id, "--interval", "0.1")
    assert watched.returncode == 0, watched.stderr
    assert "3/3" in watched.stdout and "Completed" in watched.stdout
    listed = jobs_cli(fake_server, "list", "--name-contains", "cli-job")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "Completed" in listed.stdout and "3/3 (0 failed)" in listed.stdout
    shown = jobs_cli(fake_server, "show", arn, "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["jobArn"] == arn and document["processedRecordCount"] == 3
    missing = jobs_cli(fake_server, "show", "abcdefabcdef")
    assert missing.returncode == 2 and "ResourceNotFoundException" in missing.stderr


# ------------------------------------------------------------------------------------------------ priority and IAM


def test_batch_waits_behind_standard_and_flex_and_never_ages() -> None:
    import asyncio

    from llamarock.errors import ModelTimeoutException, ThrottlingException
    from llamarock.scheduler import BATCH_PRIORITY, TIER_PRIORITY, SlotPool

    async def scenario() -> list[str]:
        pool = SlotPool(capacity=1, extra=0, max_queue=8, aging_s=0.0)  # flex ages at once; batch must not
        order: list[str] = []
        await pool.acquire(0, 5, lambda: ThrottlingException("full"), lambda: ModelTimeoutException("late"))

        async def wait_for_slot(name: str, priority: int) -> None:
            await pool.acquire(priority, 5, lambda: ThrottlingException("full"), lambda: ModelTimeoutException("late"))
            order.append(name)
            pool.release()

        waiters = [asyncio.create_task(wait_for_slot("batch", BATCH_PRIORITY))]
        await asyncio.sleep(0.01)
        waiters.append(asyncio.create_task(wait_for_slot("flex", TIER_PRIORITY["flex"])))
        waiters.append(asyncio.create_task(wait_for_slot("standard", 0)))
        await asyncio.sleep(0.01)
        pool.release()
        await asyncio.gather(*waiters)
        return order

    assert asyncio.run(scenario()) == ["flex", "standard", "batch"]


def test_iam_resources_of_the_job_operations() -> None:
    from llamarock.auth.actions import label_resources

    job = "arn:aws:bedrock:us-west-2:123456789012:model-invocation-job/abcdefabcdef"
    assert label_resources("model-invocation-job", {"jobIdentifier": "abcdefabcdef"}, "us-west-2",
                           "123456789012") == (job,)
    assert label_resources("model-invocation-job", {"jobIdentifier": job}, "us-west-2", "123456789012") == (job,)
    assert label_resources("model-invocation-job", {}, "us-west-2", "123456789012") == (
        "arn:aws:bedrock:us-west-2:123456789012:model-invocation-job/*",)
