"""Model invocation logging: Put/Get/DeleteModelInvocationLoggingConfiguration through boto3's ``bedrock`` client,
log records (checked against the record schema) in the local folder store, in a real S3-compatible server (moto's
server mode, a separate process on loopback) and in the CloudWatch stand-in folder; delivery through sink outages
and restarts (every record once), text/image delivery flags, large-body offloading, the bounded spool."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from botocore.exceptions import ClientError

from llamarock.observability.invocation_log import InvocationLog, log_prefix
from llamarock.observability.invocation_log_record import SCHEMA, strip_images
from llamarock.observability.records import InvocationRecord
from llamarock.settings import Settings
from llamarock.storage.blobs import BucketMissingError, LocalBlobStore, S3BlobStore
from llamarock.storage.db import Database
from llamarock.storage.logging_config import LoggingConfigStore
from tests.conftest import Server, free_port, start_server, stop_server

REGION = "us-west-2"
ACCOUNT = "000000000000"
MODEL = "meta.llama3-1-8b-instruct-v1:0"
VISION_MODEL = "meta.llama3-2-11b-instruct-v1:0"
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def bedrock(server: Server, **config: Any) -> Any:
    return server.client("bedrock", REGION, **config)


def data_dir(server: Server) -> Path:
    return server.log_path.parent / "data"


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def parse_lines(objects: list[bytes]) -> list[dict[str, Any]]:
    records = []
    for data in objects:
        for line in gzip.decompress(data).decode().splitlines():
            record = json.loads(line)
            VALIDATOR.validate(record)
            records.append(record)
    return records


def log_records(store: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every log record in ``bucket`` (large-body objects under data/ excluded), each checked against the schema."""
    base = log_prefix(prefix, ACCOUNT, REGION)
    keys = [k for k in store.list(bucket, base + "/") if "/data/" not in k]
    for key in keys:
        assert key.endswith(".json.gz"), key
        hour_path = key[len(base) + 1:].split("/")[:4]
        datetime.strptime("/".join(hour_path), "%Y/%m/%d/%H")
    return parse_lines([store.get(bucket, key) for key in keys])


def wait_records(store: Any, bucket: str, prefix: str, count: int) -> list[dict[str, Any]]:
    """The bucket's log records once there are at least ``count``."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = log_records(store, bucket, prefix)
        return len(found) >= count

    wait_for(enough, what=f"{count} log records in {bucket}")
    return found


def spooled(server: Server) -> int:
    with sqlite3.connect(data_dir(server) / "spool" / "invocation-logs.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def invoke(runtime: Any, prompt: str = "Say hello", model: str = MODEL) -> dict[str, Any]:
    response = runtime.invoke_model(modelId=model, body=json.dumps({"prompt": prompt, "max_gen_len": 8}))
    return {"id": response["ResponseMetadata"]["RequestId"], "body": json.loads(response["body"].read()),
            "headers": response["ResponseMetadata"]["HTTPHeaders"]}


# -- a real S3-compatible server --------------------------------------------------------------------------------


class MotoServer:
    """moto's S3 in server mode, as its own process on a fixed loopback port (its state is lost when it stops)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log_file, stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(up, 60, "moto server")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=20)
        self.process = None

    def store(self) -> S3BlobStore:
        return S3BlobStore(self.url, region=REGION, access_key_id="testing", secret_access_key="testing")


@pytest.fixture()
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.stop()


def s3_config(moto: MotoServer) -> str:
    return f"""
engine = "fake"
blob_store_url = "{moto.url}"
blob_store_access_key_id = "testing"
blob_store_secret_access_key = "testing"
invocation_log_retry_max_s = 0.5
"""


FAKE_LOCAL = 'engine = "fake"\ninvocation_log_retry_max_s = 0.5\n'


@pytest.fixture()
def local_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path, config=FAKE_LOCAL)
    yield server
    stop_server(server)


# -- the control-plane API ----------------------------------------------------------------------------------------


def test_put_get_delete_persist_and_validation_errors(tmp_path: Path) -> None:
    server = start_server(tmp_path, config=FAKE_LOCAL)
    try:
        client = bedrock(server)
        assert "loggingConfig" not in client.get_model_invocation_logging_configuration()
        config = {"s3Config": {"bucketName": "invocation-logs", "keyPrefix": "team-a/"},
                  "textDataDeliveryEnabled": True, "imageDataDeliveryEnabled": False,
                  "embeddingDataDeliveryEnabled": False}
        with pytest.raises(ClientError) as missing:
            client.put_model_invocation_logging_configuration(loggingConfig=config)
        error = missing.value.response
        assert error["Error"]["Code"] == "ValidationException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "Failed to validate permissions for log delivery bucket: invocation-logs" in error["Error"]["Message"]
        assert "does not exist" in error["Error"]["Message"]
        assert "loggingConfig" not in client.get_model_invocation_logging_configuration()

        (data_dir(server) / "blobs" / "invocation-logs").mkdir(parents=True)
        client.put_model_invocation_logging_configuration(loggingConfig=config)
        assert client.get_model_invocation_logging_configuration()["loggingConfig"] == config

        unchecked = bedrock(server, parameter_validation=False)
        cases = [
            ({"s3Config": {"bucketName": "ab"}}, "'loggingConfig.s3Config.bucketName'"),
            ({"s3Config": {"keyPrefix": "x"}}, "bucketName"),
            ({"textDataDeliveryEnabled": True}, "needs a destination"),
            ({"cloudWatchConfig": {"logGroupName": "/aws/bedrock", "roleArn": "not-a-role"}},
             "Member must satisfy regular expression pattern: arn:aws"),
            ({"cloudWatchConfig": {"logGroupName": "/a/../b", "roleArn": "arn:aws:iam::000000000000:role/r"}},
             "Invalid log group name"),
            ({"cloudWatchConfig": {"logGroupName": "/aws/bedrock", "roleArn": "arn:aws:iam::000000000000:role/r",
                                   "largeDataDeliveryS3Config": {"bucketName": "no-such-bucket"}}},
             "log delivery bucket: no-such-bucket"),
            ({"s3Config": {"bucketName": "invocation-logs"}, "textDataDeliveryEnabled": "yes"}, "boolean"),
        ]
        for bad, words in cases:
            with pytest.raises(ClientError) as caught:
                unchecked.put_model_invocation_logging_configuration(loggingConfig=bad)
            assert caught.value.response["Error"]["Code"] == "ValidationException", bad
            assert words in caught.value.response["Error"]["Message"], (bad, caught.value.response["Error"])
        # A rejected Put leaves the stored configuration alone.
        assert client.get_model_invocation_logging_configuration()["loggingConfig"] == config
    finally:
        stop_server(server)

    server = start_server(tmp_path, config=FAKE_LOCAL)
    try:
        client = bedrock(server)
        assert client.get_model_invocation_logging_configuration()["loggingConfig"] == config, "survives restart"
        client.delete_model_invocation_logging_configuration()
        assert "loggingConfig" not in client.get_model_invocation_logging_configuration()
        client.delete_model_invocation_logging_configuration()  # deleting nothing is fine, as in Bedrock
    finally:
        stop_server(server)


# -- records in the local folder store ----------------------------------------------------------------------------


def test_every_operation_logs_one_record_local_store(local_server: Server) -> None:
    bucket = "local-logs"
    (data_dir(local_server) / "blobs" / bucket).mkdir(parents=True)
    bedrock(local_server).put_model_invocation_logging_configuration(
        loggingConfig={"s3Config": {"bucketName": bucket, "keyPrefix": "llama"}, "textDataDeliveryEnabled": True})
    runtime = local_server.client()

    plain = invoke(runtime, "Tell me a story")
    stream = runtime.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps({"prompt": "Stream it"}))
    chunks = [json.loads(event["chunk"]["bytes"]) for event in stream["body"] if "chunk" in event]
    messages = [{"role": "user", "content": [{"text": "Hi there"}]}]
    converse = runtime.converse(modelId=MODEL, messages=messages, requestMetadata={"team": "search"})
    converse_stream = runtime.converse_stream(modelId=MODEL, messages=messages)
    events = list(converse_stream["stream"])
    with pytest.raises(ClientError) as invalid:
        runtime.invoke_model(modelId=MODEL, body=json.dumps({"prompt": "x", "max_gen_len": 0}))

    expected = {
        plain["id"]: "InvokeModel",
        stream["ResponseMetadata"]["RequestId"]: "InvokeModelWithResponseStream",
        converse["ResponseMetadata"]["RequestId"]: "Converse",
        converse_stream["ResponseMetadata"]["RequestId"]: "ConverseStream",
        invalid.value.response["ResponseMetadata"]["RequestId"]: "InvokeModel",
    }
    store = LocalBlobStore(data_dir(local_server) / "blobs")
    records = wait_records(store, bucket, "llama", 5)
    by_id = {record["requestId"]: record for record in records}
    assert len(records) == 5 and {k: v["operation"] for k, v in by_id.items()} == expected
    for record in records:
        assert record["accountId"] == ACCOUNT and record["region"] == REGION and record["modelId"] == MODEL
        assert record["identity"]["arn"].startswith(f"arn:aws:iam::{ACCOUNT}:")

    logged = by_id[plain["id"]]
    assert logged["input"]["inputBodyJson"] == {"prompt": "Tell me a story", "max_gen_len": 8}
    assert logged["output"]["outputBodyJson"] == plain["body"]
    assert logged["input"]["inputTokenCount"] == plain["body"]["prompt_token_count"]
    assert logged["output"]["outputTokenCount"] == plain["body"]["generation_token_count"]
    assert "errorCode" not in logged

    streamed = by_id[stream["ResponseMetadata"]["RequestId"]]
    assert streamed["output"]["outputBodyJson"] == chunks  # a stream logs the chunks it sent
    assert streamed["output"]["outputTokenCount"] == chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"]

    conversed = by_id[converse["ResponseMetadata"]["RequestId"]]
    assert conversed["requestMetadata"] == {"team": "search"}
    assert conversed["input"]["inputBodyJson"]["messages"] == messages
    assert conversed["output"]["outputTokenCount"] == converse["usage"]["outputTokens"]
    assert conversed["output"]["outputBodyJson"]["output"] == converse["output"]
    usage = next(e["metadata"]["usage"] for e in events if "metadata" in e)
    assert by_id[converse_stream["ResponseMetadata"]["RequestId"]]["output"]["outputBodyJson"] == events
    assert by_id[converse_stream["ResponseMetadata"]["RequestId"]]["output"]["outputTokenCount"] == \
        usage["outputTokens"]

    failed = by_id[invalid.value.response["ResponseMetadata"]["RequestId"]]
    assert failed["errorCode"] == "ValidationException"
    assert failed["output"]["outputTokenCount"] == 0

    # The delivery counters of CloudWatch's logging metrics, on /metrics.
    with urllib.request.urlopen(local_server.url + "/metrics", timeout=10) as response:
        scraped = response.read().decode()
    delivered = [line for line in scraped.splitlines()
                 if line.startswith("bedrock_model_invocation_logs_s3_delivery_success_total")]
    assert delivered and float(delivered[0].split()[-1]) >= 5


def test_text_delivery_off_images_stripped_and_large_bodies_offloaded(local_server: Server) -> None:
    bucket = "flags"
    (data_dir(local_server) / "blobs" / bucket).mkdir(parents=True)
    client = bedrock(local_server)
    runtime = local_server.client()
    store = LocalBlobStore(data_dir(local_server) / "blobs")

    client.put_model_invocation_logging_configuration(
        loggingConfig={"s3Config": {"bucketName": bucket, "keyPrefix": "off"}, "textDataDeliveryEnabled": False})
    quiet = invoke(runtime, "secret prompt")
    [record] = wait_for(lambda: log_records(store, bucket, "off"), what="text-off record")
    assert record["requestId"] == quiet["id"]
    assert "inputBodyJson" not in record["input"] and "outputBodyJson" not in record["output"]
    assert record["output"]["outputTokenCount"] == quiet["body"]["generation_token_count"] > 0
    assert "secret prompt" not in json.dumps(record)

    client.put_model_invocation_logging_configuration(
        loggingConfig={"s3Config": {"bucketName": bucket, "keyPrefix": "on"}, "textDataDeliveryEnabled": True,
                       "imageDataDeliveryEnabled": False})
    image = base64.b64encode(b"\x89PNG not really an image").decode()
    with pytest.raises(ClientError):  # the fake engine has no vision; the failed call is logged all the same
        runtime.invoke_model(modelId=VISION_MODEL, body=json.dumps({"prompt": "What is this?", "images": [image]}))
    big_prompt = "x" * 150_000  # one fake-engine token, 150 KB of body
    big = invoke(runtime, big_prompt)
    records = wait_records(store, bucket, "on", 2)
    by_id = {r["requestId"]: r for r in records}
    vision = next(r for r in records if r["modelId"] == VISION_MODEL)
    assert vision["errorCode"] == "ValidationException"
    assert vision["input"]["inputBodyJson"] == {"prompt": "What is this?", "images": [""]}
    assert image not in json.dumps(vision)

    offloaded = by_id[big["id"]]["input"]
    assert "inputBodyJson" not in offloaded
    prefix = f"s3://{bucket}/{log_prefix('on', ACCOUNT, REGION)}/data/"
    assert offloaded["inputBodyS3Path"].startswith(prefix) and offloaded["inputBodyS3Path"].endswith("_input.json.gz")
    key = offloaded["inputBodyS3Path"][len(f"s3://{bucket}/"):]
    assert json.loads(gzip.decompress(store.get(bucket, key))) == {"prompt": big_prompt, "max_gen_len": 8}
    # The fake engine's reply quotes the prompt, so the response is large too.
    output_path = by_id[big["id"]]["output"]["outputBodyS3Path"]
    assert output_path.startswith(prefix) and output_path.endswith("_output.json.gz")
    assert json.loads(gzip.decompress(store.get(bucket, output_path[len(f"s3://{bucket}/"):]))) == big["body"]


def test_cloudwatch_config_writes_json_lines_under_the_data_dir(local_server: Server) -> None:
    (data_dir(local_server) / "blobs" / "large-data").mkdir(parents=True)
    group = "/aws/bedrock/invocations"
    bedrock(local_server).put_model_invocation_logging_configuration(loggingConfig={
        "cloudWatchConfig": {"logGroupName": group, "roleArn": f"arn:aws:iam::{ACCOUNT}:role/BedrockLogging",
                             "largeDataDeliveryS3Config": {"bucketName": "large-data", "keyPrefix": "big"}},
        "textDataDeliveryEnabled": True,
    })
    runtime = local_server.client()
    small = invoke(runtime, "small")
    big = invoke(runtime, "x" * 120_000)
    folder = data_dir(local_server) / "cloudwatch-logs" / "aws" / "bedrock" / "invocations" / "aws" / "bedrock" \
        / "modelinvocations"

    def records() -> list[dict[str, Any]]:
        found = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
        return found if len(found) == 2 else []

    by_id = {r["requestId"]: r for r in wait_for(records, what="CloudWatch records")}
    for record in by_id.values():
        VALIDATOR.validate(record)
    assert by_id[small["id"]]["input"]["inputBodyJson"] == {"prompt": "small", "max_gen_len": 8}
    path = by_id[big["id"]]["input"]["inputBodyS3Path"]
    assert path.startswith(f"s3://large-data/{log_prefix('big', ACCOUNT, REGION)}/data/")
    store = LocalBlobStore(data_dir(local_server) / "blobs")
    assert json.loads(gzip.decompress(store.get("large-data", path[len("s3://large-data/"):])))["prompt"] == \
        "x" * 120_000


# -- a real S3-compatible server, and its outages ------------------------------------------------------------------


def test_records_reach_s3_compatible_server_and_survive_its_outages(tmp_path: Path, moto: MotoServer) -> None:
    bucket = "bedrock-logs"
    moto.store().create_bucket(bucket)
    (tmp_path / "llamarock").mkdir()
    server = start_server(tmp_path / "llamarock", config=s3_config(moto))
    try:
        client = bedrock(server)
        with pytest.raises(ClientError) as missing:
            client.put_model_invocation_logging_configuration(loggingConfig={"s3Config": {"bucketName": "nope"}})
        assert "log delivery bucket: nope" in missing.value.response["Error"]["Message"]
        assert moto.url in missing.value.response["Error"]["Message"]
        client.put_model_invocation_logging_configuration(
            loggingConfig={"s3Config": {"bucketName": bucket, "keyPrefix": "logs/"}})
        runtime = server.client()
        first = invoke(runtime, "before the outage")
        [record] = wait_for(lambda: log_records(moto.store(), bucket, "logs"), what="first record on S3")
        assert record["requestId"] == first["id"]
        assert record["input"]["inputBodyJson"]["prompt"] == "before the outage"

        # Phase 1: the S3 server goes away while llamarock keeps serving.
        moto.stop()
        outage_ids = []
        for n in range(4):
            started = time.monotonic()
            outage_ids.append(invoke(runtime, f"during outage {n}")["id"])
            assert time.monotonic() - started < 2.0, "logging must not slow an invocation down"
        wait_for(lambda: spooled(server) == 4, what="4 spooled records")
        time.sleep(1.5)  # several failed delivery attempts
        assert spooled(server) == 4
        moto.start()  # a fresh process: its state is gone, the bucket must be made again
        store = moto.store()
        store.create_bucket(bucket)
        wait_records(store, bucket, "logs", 4)
        wait_for(lambda: spooled(server) == 0, what="empty spool")
        time.sleep(1.0)
        records = log_records(store, bucket, "logs")
        assert sorted(r["requestId"] for r in records) == sorted(outage_ids), "each record exactly once"

        # Phase 2: the S3 server is down while llamarock restarts: the spool outlives the process.
        moto.stop()
        restart_ids = [invoke(runtime, f"before restart {n}")["id"] for n in range(3)]
        wait_for(lambda: spooled(server) == 3, what="3 spooled records")
    finally:
        stop_server(server)
    assert spooled(server) == 3, "records that could not be delivered at shutdown stay spooled"
    moto.start()
    store = moto.store()
    store.create_bucket(bucket)
    server = start_server(tmp_path / "llamarock", config=s3_config(moto))
    try:
        wait_for(lambda: spooled(server) == 0, what="spool drained after restart")
        time.sleep(1.0)
        records = log_records(store, bucket, "logs")
        assert sorted(r["requestId"] for r in records) == sorted(restart_ids)
    finally:
        stop_server(server)


def test_records_made_just_before_a_clean_shutdown_all_arrive(tmp_path: Path, moto: MotoServer) -> None:
    bucket = "flush-logs"
    moto.store().create_bucket(bucket)
    server = start_server(tmp_path, config=s3_config(moto))
    try:
        bedrock(server).put_model_invocation_logging_configuration(loggingConfig={"s3Config": {"bucketName": bucket}})
        runtime = server.client()
        ids = [invoke(runtime, f"call {n}")["id"] for n in range(5)]
    finally:
        stop_server(server)
    assert spooled(server) == 0
    assert sorted(r["requestId"] for r in log_records(moto.store(), bucket)) == sorted(ids)


# -- the real model ------------------------------------------------------------------------------------------------


def test_real_model_converse_is_logged(server: Server) -> None:
    bucket = "real-model-logs"
    (data_dir(server) / "blobs" / bucket).mkdir(parents=True, exist_ok=True)
    client = bedrock(server)
    client.put_model_invocation_logging_configuration(
        loggingConfig={"s3Config": {"bucketName": bucket}, "textDataDeliveryEnabled": True})
    try:
        runtime = server.client()
        messages = [{"role": "user", "content": [{"text": "Name a colour."}]}]
        response = runtime.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 12})
        request_id = response["ResponseMetadata"]["RequestId"]
        store = LocalBlobStore(data_dir(server) / "blobs")
        record = wait_for(lambda: next((r for r in log_records(store, bucket) if r["requestId"] == request_id), None),
                          what="the real model's record")
    finally:
        client.delete_model_invocation_logging_configuration()
    assert record["operation"] == "Converse"
    assert record["input"]["inputTokenCount"] == response["usage"]["inputTokens"]
    assert record["output"]["outputTokenCount"] == response["usage"]["outputTokens"] > 0
    assert record["output"]["outputBodyJson"]["output"]["message"]["content"] == \
        response["output"]["message"]["content"]


# -- units: blob stores, image stripping, the bounded spool ---------------------------------------------------------


def test_local_blob_store(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    assert not store.bucket_exists("b-one")
    with pytest.raises(BucketMissingError):
        store.put("b-one", "a/b.txt", b"x")
    store.create_bucket("b-one")
    store.put("b-one", "a/b.txt", b"first")
    store.put("b-one", "a/b.txt", b"second")
    store.put("b-one", "c.txt", b"c")
    assert store.get("b-one", "a/b.txt") == b"second"
    assert store.list("b-one") == ["a/b.txt", "c.txt"]
    assert store.list("b-one", "a/") == ["a/b.txt"]
    assert not store.bucket_exists("../etc")
    with pytest.raises(Exception, match="cannot be stored"):
        store.put("b-one", "a/../../escape", b"x")


def test_s3_blob_store_against_moto(moto: MotoServer) -> None:
    store = moto.store()
    assert not store.bucket_exists("s3-unit")
    with pytest.raises(BucketMissingError):
        store.put("s3-unit", "k", b"x")
    store.create_bucket("s3-unit")
    store.create_bucket("s3-unit")
    store.put("s3-unit", "p/one", b"1")
    store.put("s3-unit", "p/two", b"2")
    assert store.list("s3-unit", "p/") == ["p/one", "p/two"] and store.get("s3-unit", "p/two") == b"2"
    moto.stop()
    with pytest.raises(Exception) as down:
        store.bucket_exists("s3-unit")
    assert type(down.value).__name__ == "BlobStoreError"


def test_strip_images_blanks_native_and_converse_image_bytes() -> None:
    converse = {"messages": [{"role": "user", "content": [
        {"text": "look"}, {"image": {"format": "png", "source": {"bytes": "QUJD"}}},
        {"toolResult": {"toolUseId": "t", "content": [{"image": {"format": "jpeg", "source": {"bytes": "REVG"}}}]}},
    ]}]}
    stripped = strip_images(converse)
    assert "QUJD" not in json.dumps(stripped) and "REVG" not in json.dumps(stripped)
    assert stripped["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": ""}}}
    assert strip_images({"prompt": "p", "images": ["QUJD", "REVG"]}) == {"prompt": "p", "images": ["", ""]}


def test_full_spool_drops_and_counts_without_raising(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, invocation_log_spool_max_bytes=4096, invocation_log_retry_max_s=0.2)
    blobs = LocalBlobStore(tmp_path / "blobs")
    logger = InvocationLog(settings, blobs, LoggingConfigStore(Database.at(tmp_path)))
    try:
        # The bucket exists for the Put, then disappears: every delivery fails and records pile up.
        blobs.create_bucket("gone")
        logger.put_config(REGION, {"s3Config": {"bucketName": "gone"}})
        (tmp_path / "blobs" / "gone").rmdir()
        for n in range(40):
            logger.record(InvocationRecord(
                request_id=f"req-{n}", operation="InvokeModel", model_identifier=MODEL,
                principal_arn=f"arn:aws:iam::{ACCOUNT}:user/dev", region=REGION, started_at=datetime.now(UTC),
                input_body=json.dumps({"prompt": "p" * 200}).encode(), output_body={"generation": "g"},
            ))
        assert 0 < logger.pending() < 40
        assert logger.counts["ModelInvocationLogsDropped"] == 40 - logger.pending()
        assert "is full" in caplog.text
        wait_for(lambda: logger.counts["ModelInvocationLogsS3DeliveryFailure"] > 0, what="a failed delivery")
        blobs.create_bucket("gone")
        wait_for(lambda: logger.pending() == 0, what="delivery after the bucket returns")
        kept = 40 - logger.counts["ModelInvocationLogsDropped"]
        delivered = parse_lines([blobs.get("gone", k) for k in blobs.list("gone")])
        assert sorted(r["requestId"] for r in delivered) == sorted(f"req-{n}" for n in range(kept))
    finally:
        logger.close()
