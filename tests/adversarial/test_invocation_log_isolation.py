"""Issue 13, item 3: one bad keyPrefix must never stop invocation logging.

Against live ``llamarock serve --engine fake`` processes through boto3's ``bedrock`` client: every bad ``keyPrefix``
(and bucket name) is refused at Put with a ValidationException that says what is wrong; a destination that keeps
failing holds back only its own records (other regions, newer configurations flow); a destination no longer
configured is still delivered to when it works and given up (counted, logged) when it does not; a configuration
stored before the rules, and records spooled for it, block nothing and are never written outside their bucket. And
the local blob store refuses keys outside the bucket folder without naming the server's folders.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.observability.invocation_log import MAX_KEY_PREFIX_BYTES, log_prefix
from llamarock.observability.invocation_spool import Spool
from llamarock.storage.blobs import BlobStoreError, LocalBlobStore
from llamarock.storage.db import Database
from llamarock.storage.logging_config import LoggingConfigStore
from tests.conftest import Server, start_server, stop_server

ACCOUNT = "000000000000"
WEST, EAST = "us-west-2", "us-east-1"
MODEL = "meta.llama3-70b-instruct-v1:0"  # on demand in both regions
CONFIG = 'engine = "fake"\ninvocation_log_retry_max_s = 0.2\n'


def data_dir(server: Server) -> Path:
    return server.log_path.parent / "data"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def request_ids(blobs: Path, bucket: str, prefix: str, region: str) -> list[str]:
    """The request ids of every log record under ``<prefix>/AWSLogs/.../<region>/`` in a local-store bucket."""
    store = LocalBlobStore(blobs)
    if not store.bucket_exists(bucket):
        return []
    base = log_prefix(prefix, ACCOUNT, region) + "/"
    ids = []
    for key in store.list(bucket, base):
        assert len(key.encode()) <= 1024, key
        for line in gzip.decompress(store.get(bucket, key)).decode().splitlines():
            ids.append(json.loads(line)["requestId"])
    return sorted(ids)


def wait_ids(blobs: Path, bucket: str, prefix: str, region: str, expected: list[str]) -> None:
    wait_for(lambda: request_ids(blobs, bucket, prefix, region) == sorted(expected),
             what=f"records {expected} in {bucket}/{prefix} ({region})")


def invoke(server: Server, region: str, prompt: str = "hello") -> str:
    response = server.client("bedrock-runtime", region).invoke_model(
        modelId=MODEL, body=json.dumps({"prompt": prompt, "max_gen_len": 4}))
    response["body"].read()
    return str(response["ResponseMetadata"]["RequestId"])


def spooled(server: Server) -> int:
    with sqlite3.connect(data_dir(server) / "spool" / "invocation-logs.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


def put(server: Server, region: str, config: dict[str, Any]) -> None:
    server.client("bedrock", region, parameter_validation=False).put_model_invocation_logging_configuration(
        loggingConfig=config)


def mkbucket(server: Server, bucket: str) -> Path:
    folder = data_dir(server) / "blobs" / bucket
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("isolation"), config=CONFIG)
    mkbucket(server, "logs")
    yield server
    stop_server(server)


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path, config=CONFIG)
    yield server
    stop_server(server)


# -- Put refuses what cannot be delivered ---------------------------------------------------------------------------

LONG = "/".join(["p" * 200] * 5)  # 1,004 bytes: within the model's 1,024 characters, beyond what leaves room for keys


@pytest.mark.parametrize(("prefix", "words"), [
    ("a/../b", "segment 2 is '..'"),
    ("a//b", "empty segment ('//')"),
    ("/a", "starts with '/'"),
    ("./a", "segment 1 is '.'"),
    ("ok/" + "x" * 300, "segment 2 is 300 bytes long, more than 255"),
    ("logs\x07bell", "control character (U+0007)"),
    ("logs\nnext", "control character (U+000A)"),
    ("a\\b", "backslash"),
    ("..", "segment 1 is '..'"),
    ("a/b//", "empty segment"),
    ("é/" + "é" * 128, "segment 2 is 256 bytes long"),  # bytes, not characters
    (LONG, f"1,004 bytes long in UTF-8, more than {MAX_KEY_PREFIX_BYTES:,}"),
    ("x/" * 600, "Member must have length less than or equal to 1024"),  # the model's own limit, from the codec
], ids=["dotdot", "double-slash", "leading-slash", "dot", "300-byte-segment", "bell", "newline", "backslash",
        "only-dotdot", "trailing-double-slash", "multibyte-segment", "too-long", "over-model-max"])
def test_bad_key_prefix_is_refused(shared: Server, prefix: str, words: str) -> None:
    for region, config in [
        (WEST, {"s3Config": {"bucketName": "logs", "keyPrefix": prefix}}),
        (EAST, {"cloudWatchConfig": {"logGroupName": "/aws/bedrock", "roleArn": f"arn:aws:iam::{ACCOUNT}:role/r",
                                     "largeDataDeliveryS3Config": {"bucketName": "logs", "keyPrefix": prefix}}}),
    ]:
        with pytest.raises(ClientError) as refused:
            put(shared, region, config)
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert words in error["Message"], error["Message"]
        field = "s3Config" if region == WEST else "cloudWatchConfig.largeDataDeliveryS3Config"
        assert f"'loggingConfig.{field}.keyPrefix'" in error["Message"]
        if "1024" not in words:  # ours: what is wrong and how to do it right
            assert f"at most {MAX_KEY_PREFIX_BYTES:,} bytes" in error["Message"] and "e.g. 'bedrock/team-a/'" in \
                error["Message"]
        assert "loggingConfig" not in shared.client("bedrock", region).get_model_invocation_logging_configuration()


@pytest.mark.parametrize(("bucket", "words"), [
    ("Logs", "contains 'L'"),
    ("my_logs", "contains '_'"),
    ("a..b", "'..'"),
    ("-logs", "start and end with a letter or digit"),
    ("logs.", "start and end with a letter or digit"),
    ("192.168.10.2", "IP address"),
])
def test_bad_bucket_name_is_refused(shared: Server, bucket: str, words: str) -> None:
    with pytest.raises(ClientError) as refused:
        put(shared, WEST, {"s3Config": {"bucketName": bucket}})
    message = refused.value.response["Error"]["Message"]
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "'loggingConfig.s3Config.bucketName'" in message and words in message, message
    assert "lowercase letters, digits" in message


def test_bucket_errors_do_not_reveal_the_data_dir(shared: Server) -> None:
    with pytest.raises(ClientError) as refused:
        put(shared, WEST, {"s3Config": {"bucketName": "no-such-bucket"}})
    message = refused.value.response["Error"]["Message"]
    assert "Failed to validate permissions for log delivery bucket: no-such-bucket" in message
    assert "does not exist" in message and "mkdir <data_dir>/blobs/no-such-bucket" in message
    assert str(data_dir(shared)) not in message and str(Path.home()) not in message and "/tmp" not in message


def test_valid_prefixes_deliver(shared: Server) -> None:
    blobs = data_dir(shared) / "blobs"
    longest = "/".join(["x" * 255, "y" * 255, "z" * 255, "w" * (MAX_KEY_PREFIX_BYTES - 3 * 256)])
    assert len(longest.encode()) == MAX_KEY_PREFIX_BYTES
    for prefix in ["team-a/", "a/b.c/d-e_f (1)", "journal/é", "", longest, longest[:-1] + "/"]:
        put(shared, WEST, {"s3Config": {"bucketName": "logs", "keyPrefix": prefix}})
        request = invoke(shared, WEST, f"prefix {prefix[:10]!r}")
        wait_for(lambda p=prefix, r=request: r in request_ids(blobs, "logs", p, WEST), what=f"record under {prefix!r}")


# -- delivery isolates a failing destination ------------------------------------------------------------------------


def test_broken_region_does_not_hold_up_other_regions(fresh: Server) -> None:
    blobs = data_dir(fresh) / "blobs"
    mkbucket(fresh, "west-logs")
    east_bucket = mkbucket(fresh, "east-logs")
    put(fresh, WEST, {"s3Config": {"bucketName": "west-logs", "keyPrefix": "w/"}})
    put(fresh, EAST, {"s3Config": {"bucketName": "east-logs", "keyPrefix": "e/"}})
    east_bucket.rmdir()  # the east destination breaks after the Put

    east = [invoke(fresh, EAST, "east first")]  # spooled first: it used to block everything behind it
    wait_for(lambda: metric(fresh, "bedrock_model_invocation_logs_s3_delivery_failure_total") >= 1,
             what="a failed east delivery")
    west = []
    for n in range(3):
        west.append(invoke(fresh, WEST, f"west {n}"))
        east.append(invoke(fresh, EAST, f"east {n}"))
        wait_ids(blobs, "west-logs", "w", WEST, west)  # each arrives while east keeps failing
    assert spooled(fresh) == len(east)

    east_bucket.mkdir()  # back: the east records arrive, each once, and west's are untouched
    wait_ids(blobs, "east-logs", "e", EAST, east)
    wait_for(lambda: spooled(fresh) == 0, what="an empty spool")
    time.sleep(0.5)
    assert request_ids(blobs, "east-logs", "e", EAST) == sorted(east)
    assert request_ids(blobs, "west-logs", "w", WEST) == sorted(west)
    log = fresh.log_path.read_text()
    assert "cannot deliver invocation logs to region us-east-1" in log and "works again" in log


def test_replaced_or_deleted_destination_is_given_up_without_holding_up_the_new_one(fresh: Server) -> None:
    blobs = data_dir(fresh) / "blobs"
    old = mkbucket(fresh, "old-logs")
    mkbucket(fresh, "new-logs")
    put(fresh, WEST, {"s3Config": {"bucketName": "old-logs"}})
    old.rmdir()
    lost = invoke(fresh, WEST, "to the old destination")
    put(fresh, WEST, {"s3Config": {"bucketName": "new-logs"}})  # replaced: the newer configuration flows at once
    kept = invoke(fresh, WEST, "to the new destination")
    wait_ids(blobs, "new-logs", "", WEST, [kept])
    # The old destination is no longer configured and keeps failing: after a bounded number of attempts its
    # records are dropped, counted and logged, not retried for ever.
    wait_for(lambda: spooled(fresh) == 0, what="the old destination given up")
    assert metric(fresh, "bedrock_model_invocation_logs_dropped_total") == 1
    assert "given up: 1 spooled records dropped" in fresh.log_path.read_text()
    old.mkdir()
    time.sleep(0.5)
    assert lost not in request_ids(blobs, "old-logs", "", WEST)

    # A deleted configuration's records still go where they were spooled for, when that works within the bound.
    late = mkbucket(fresh, "late-logs")
    put(fresh, WEST, {"s3Config": {"bucketName": "late-logs"}})
    late.rmdir()
    record = invoke(fresh, WEST, "before the delete")
    fresh.client("bedrock", WEST).delete_model_invocation_logging_configuration()
    late.mkdir()
    wait_ids(blobs, "late-logs", "", WEST, [record])
    wait_for(lambda: spooled(fresh) == 0, what="an empty spool")
    assert metric(fresh, "bedrock_model_invocation_logs_dropped_total") == 1


def test_legacy_bad_configuration_and_its_spooled_records_block_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for bucket in ("legacy", "fresh-logs", "east-logs"):
        (data / "blobs" / bucket).mkdir(parents=True)
    # Stored and spooled by a version that did not check prefixes: a doubled slash and a path out of the bucket.
    store = LoggingConfigStore(Database.at(data))
    legacy = {"s3Config": {"bucketName": "legacy", "keyPrefix": "a//b"}}
    store.put(EAST, legacy)
    store.put("us-east-2", {"s3Config": {"bucketName": "legacy", "keyPrefix": "../../../escaped"}})
    spool = Spool(data / "spool" / "invocation-logs.db", 1 << 20)
    for region, prefix in [(EAST, "a//b"), ("us-east-2", "../../../escaped")]:
        destination = json.dumps({"account": ACCOUNT, "region": region, "images": True, "cloudWatch": None,
                                  "s3": {"bucket": "legacy", "prefix": prefix}}, sort_keys=True)
        meta = {"timestamp": "2024-01-02T03:04:05Z", "requestId": f"legacy-{region}"}
        assert spool.append(destination, "2024-01-02T03", json.dumps(meta).encode(), None, None)
    spool.close()

    server = start_server(tmp_path, config=CONFIG)
    try:
        blobs = data / "blobs"
        put(server, WEST, {"s3Config": {"bucketName": "fresh-logs", "keyPrefix": "ok/"}})
        west = [invoke(server, WEST, f"west {n}") for n in range(2)]
        invoke(server, EAST, "east, under the ignored configuration")  # not logged: its configuration is invalid
        wait_ids(blobs, "fresh-logs", "ok", WEST, west)
        wait_for(lambda: spooled(server) == 0, what="the legacy records dropped")
        assert metric(server, "bedrock_model_invocation_logs_dropped_total") == 2
        assert not list((tmp_path).rglob("escaped")) and not list(blobs.joinpath("legacy").rglob("*"))
        log = server.log_path.read_text()
        assert log.count("of region us-east-1 is invalid and is ignored") == 1
        assert log.count("of region us-east-2 is invalid and is ignored") == 1

        # The legacy configuration is still what Get shows, until a valid one replaces it.
        east_client = server.client("bedrock", EAST)
        assert east_client.get_model_invocation_logging_configuration()["loggingConfig"] == legacy
        put(server, EAST, {"s3Config": {"bucketName": "east-logs"}})
        east = invoke(server, EAST, "east, now logged")
        wait_ids(blobs, "east-logs", "", EAST, [east])
    finally:
        stop_server(server)


# -- the local blob store --------------------------------------------------------------------------------------------


def test_local_store_refuses_keys_outside_the_bucket_and_hides_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "server-secret-root" / "blobs"
    store = LocalBlobStore(root)
    store.create_bucket("bucket")
    (tmp_path / "outside").mkdir()
    (root / "bucket" / "link").symlink_to(tmp_path / "outside")
    for key in ["a/../../escape", "../escape", "..", "/etc/passwd", "a//b", "./a", "a/./b", "a/", "", "a\0b",
                "link/escape"]:
        with pytest.raises(BlobStoreError) as refused:
            store.put("bucket", key, b"x")
        assert "server-secret-root" not in str(refused.value), str(refused.value)
        assert "'bucket'" in str(refused.value)
    assert not list((tmp_path / "outside").iterdir()) and not (tmp_path / "escape").exists()
    with pytest.raises(BlobStoreError) as outside:
        store.get("bucket", "link/anything")
    assert "resolves outside bucket 'bucket'" in str(outside.value)

    store.put("bucket", "file", b"x")
    for failing in (lambda: store.put("bucket", "file/below", b"x"), lambda: store.get("bucket", "missing/key"),
                    lambda: store.put("no-bucket", "k", b"x"), lambda: store.create_bucket("Bad_Name")):
        with pytest.raises(BlobStoreError) as caught:
            failing()
        assert "server-secret-root" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert store.location == "llamarock's local blob store" and str(root) in store.where
