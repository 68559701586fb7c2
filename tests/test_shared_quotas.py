"""Two gateways on one real PostgreSQL share their API keys' quotas exactly (``shared_quotas``, on by default when
database_url names a server database): a requests-per-minute limit admits exactly its capacity across both."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Server, start_server, stop_server
from tests.test_quotas_cli import client, create_key, run_cli

MODEL = "meta.llama3-8b-instruct-v1:0"
BODY = json.dumps({"prompt": "hi", "max_gen_len": 4})


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


@pytest.fixture(scope="module")
def gateways(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, dict[str, str]]]:
    first, second = tmp_path_factory.mktemp("gateway-a"), tmp_path_factory.mktemp("gateway-b")
    # One database, and the key file that encrypts its stored secrets shared as every gateway must share it.
    key = create_key(first / "data", "alice", "--rpm", "3", "--database-url", pg_url)
    (second / "data").mkdir()
    shutil.copy(first / "data" / "secret.key", second / "data" / "secret.key")
    config = f"""database_url = "{pg_url}"

[[deployments]]
name = "fake"
engine = "fake"
models = ["*"]
fake_reply = "ok"
"""
    a = start_server(first, config=config)
    try:
        b = start_server(second, config=config)
        try:
            yield a, b, key
        finally:
            stop_server(b)
    finally:
        stop_server(a)


def test_an_rpm_limit_admits_exactly_its_capacity_across_two_gateways(
    gateways: tuple[Server, Server, dict[str, str]],
) -> None:
    a, b, key = gateways
    runtimes = [client(a, "bedrock-runtime", key), client(b, "bedrock-runtime", key)]

    def call(i: int) -> str:
        try:
            runtimes[i % 2].invoke_model(modelId=MODEL, body=BODY)["body"].read()
            return "ok"
        except ClientError as error:
            return str(error.response["Error"]["Code"])

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    # 3 a minute refills one request every 20 s: all eight are decided well within that.
    assert sorted(outcomes) == ["ThrottlingException"] * 5 + ["ok"] * 3, outcomes
    # Either gateway reports the shared count.
    for server in (a, b):
        listed = run_cli("quotas", "--endpoint", server.url, "--json", key=key)
        assert listed.returncode == 0, listed.stderr
        use: Any = json.loads(listed.stdout)["quotas"]
        assert [(q["principal"], q["rpmLimit"], q["rpmUsed"]) for q in use] == [("alice", 3, 3)]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_shared_bucket_refills_continuously_and_goes_into_debt(kind: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    from llamarock.storage.db import Database
    from llamarock.storage.quotas import BucketKey, QuotaBucketStore

    url = request.getfixturevalue("pg_url") if kind == "postgresql" else f"sqlite:///{tmp_path / 'q.db'}"
    database = Database(url)
    request.addfinalizer(database.close)
    store = QuotaBucketStore(database)
    key = BucketKey(f"p-{kind}", "m", "rpm", 3)  # one token every 20 s
    assert [store.take(key, 1, 1000.0) for _ in range(4)] == [True, True, True, False]
    assert store.take(key, 1, 1019.0) is False and store.take(key, 1, 1021.0) is True
    store.give_back(key, -2, 1021.0)  # the request used more than it reserved: the bucket owes 2
    assert store.take(key, 1, 1060.0) is False  # 40 s refilled the debt only
    assert store.take(key, 1, 1081.0) is True
    big = BucketKey(f"p-{kind}", "m", "tpm", 100)
    assert store.take(big, 500, 2000.0) is True  # more than a minute's allowance: admitted from a full bucket
    assert store.take(big, 1, 2030.0) is False  # ... and paid back before anything else
    [state] = [s for s in store.states(2030.0) if s.key == big]
    assert state.used == 450  # 500 taken from 100, 50 refilled: in debt, as the in-memory bucket reports it
