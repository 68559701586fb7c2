"""`llamarock quotas` against a running `serve --auth enforce`: per-principal quota use, who may see whose, and the
provisioned reservations in use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import Server, free_port, start_server, stop_server

MODEL = "meta.llama3-1-8b-instruct-v1:0"
SLOW = "meta.llama3-8b-instruct-v1:0"
BODY = json.dumps({"prompt": "hello", "max_gen_len": 5})

# 30 tokens at 150 ms: a request stays in flight for 4.5 s, long enough for the CLI to start and see it.
SLOW_REPLY = " ".join(f"word{n}" for n in range(30))

CONFIG = f"""
provisioning_seconds = 0.2
provisioned_sequences_per_unit = 2
provisioned_tpm_per_unit = 600

[[deployments]]
name = "fake-slow"
engine = "fake"
models = ["{SLOW}"]
max_parallel = 4
fake_reply = "{SLOW_REPLY}"
fake_token_delay_ms = 150

[[deployments]]
name = "fake-rest"
engine = "fake"
models = ["*"]
"""


def run_cli(
    *args: str, key: dict[str, str] | None = None, data_dir: Path | None = None, **settings: str
) -> subprocess.CompletedProcess:
    """Run the CLI with only ``key``'s credentials (none: unsigned) and ``LLAMAROCK_<NAME>`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMAROCK_", "AWS_"))}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update({f"LLAMAROCK_{name.upper()}": value for name, value in settings.items()})
    if key is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = key["accessKeyId"], key["secretAccessKey"]
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return subprocess.run([sys.executable, "-m", "llamarock", *args, *extra], capture_output=True, text=True,
                          timeout=60, env=env)


def create_key(data_dir: Path, principal: str, *args: str) -> dict[str, str]:
    result = run_cli("keys", "create", "--principal", principal, "--json", *args, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def client(server: Server, service: str, key: dict[str, str]) -> Any:
    return boto3.client(
        service, region_name="us-west-2", endpoint_url=server.url, aws_access_key_id=key["accessKeyId"],
        aws_secret_access_key=key["secretAccessKey"], config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def quotas(server: Server, key: dict[str, str] | None) -> dict[str, Any]:
    result = run_cli("quotas", "--endpoint", server.url, "--json", key=key)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("quotas")
    server = start_server(tmp, "--auth", "enforce", config=CONFIG)
    yield server, tmp / "data"
    stop_server(server)


def test_a_principal_sees_its_own_quota_use_and_an_admin_sees_everyones(
    enforced: tuple[Server, Path], tmp_path: Path
) -> None:
    server, data = enforced
    alice = create_key(data, "alice", "--rpm", "4", "--tpm", "5000")
    carol = create_key(data, "carol", "--rpm", "2")  # refills one request per 30 s: still "used" when the CLI reads it
    policy = tmp_path / "admin.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["bedrock:*", "llamarock:GetQuotas"], "Resource": "*"}
    ]}))
    admin = create_key(data, "admin", "--policy", str(policy))
    for _ in range(3):
        client(server, "bedrock-runtime", alice).invoke_model(modelId=MODEL, body=BODY)["body"].read()
    client(server, "bedrock-runtime", carol).invoke_model(modelId=MODEL, body=BODY)["body"].read()

    own = quotas(server, alice)["quotas"]
    assert [(q["principal"], q["model"], q["rpmLimit"], q["rpmUsed"], q["tpmLimit"]) for q in own] == [
        ("alice", MODEL, 4, 3, 5000)
    ]
    assert 0 <= own[0]["tpmUsed"] <= 5000
    everyone = {q["principal"]: q for q in quotas(server, admin)["quotas"]}
    assert set(everyone) == {"alice", "carol"}
    assert (everyone["carol"]["rpmLimit"], everyone["carol"]["rpmUsed"], everyone["carol"]["tpmLimit"]) == (2, 1, None)

    table = run_cli("quotas", "--endpoint", server.url, key=admin)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.split()[:3] == ["alice", MODEL, "3/4"] for line in lines), table.stdout
    assert any(line.split()[:4] == ["carol", MODEL, "1/2", "0/unlimited"] for line in lines), table.stdout


def test_provisioned_reservations_and_their_use_are_shown(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    owner = create_key(data, "owner")
    control = client(server, "bedrock", owner)
    arn = control.create_provisioned_model_throughput(
        modelUnits=1, provisionedModelName="shown", modelId=SLOW
    )["provisionedModelArn"]
    deadline = time.monotonic() + 20
    while control.get_provisioned_model_throughput(provisionedModelId=arn)["status"] != "InService":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runtime = client(server, "bedrock-runtime", owner)
    worker = threading.Thread(
        target=lambda: runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": "hi", "max_gen_len": 50}))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            document = quotas(server, owner)
            shown = {p["provisionedModelName"]: p for p in document["provisioned"]}["shown"]
            if shown["sequencesInUse"] == 1 or time.monotonic() > deadline:
                break
        assert (shown["provisionedModelArn"], shown["modelId"], shown["deployment"], shown["status"]) == (
            arn, SLOW, "fake-slow", "InService"
        )
        assert (shown["modelUnits"], shown["sequences"], shown["sequencesInUse"], shown["tpmLimit"]) == (1, 2, 1, 600)
        # The running request holds its token estimate (prompt + max_gen_len) until it settles.
        assert shown["tpmUsed"] > 0
        deployment = {d["deployment"]: d for d in document["deployments"]}["fake-slow"]
        assert (deployment["maxParallel"], deployment["reservedSequences"], deployment["onDemandSequences"]) == (
            4, 2, 2
        )
        table = run_cli("quotas", "--endpoint", server.url, key=owner).stdout
        assert any(line.split()[:6] == ["shown", SLOW, "InService", "1", "1/2", "0"] for line in table.splitlines())
    finally:
        worker.join(timeout=30)
    assert {p["provisionedModelName"]: p for p in quotas(server, owner)["provisioned"]}["shown"]["sequencesInUse"] == 0


def test_unsigned_and_unreachable_are_clear_errors(enforced: tuple[Server, Path]) -> None:
    server, _ = enforced
    unsigned = run_cli("quotas", "--endpoint", server.url)
    assert unsigned.returncode == 2
    assert "answered 403" in unsigned.stderr and "Missing Authentication Token" in unsigned.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = run_cli("quotas", "--endpoint", nowhere)
    assert unreachable.returncode == 2
    assert f"cannot reach {nowhere}/llamarock/quotas" in unreachable.stderr and "llamarock serve" in unreachable.stderr


def test_the_default_endpoint_comes_from_the_settings(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--engine", "fake")
    try:
        port = server.url.rsplit(":", 1)[1]
        result = run_cli("quotas", "--json", port=port)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["defaults"] == {"rpmLimit": None, "tpmLimit": None}
        assert document["provisioned"] == [] and document["quotas"] == []
    finally:
        stop_server(server)


def _signed_get(url: str, key: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(key["accessKeyId"], key["secretAccessKey"]), "bedrock", "us-west-2").add_auth(request)
    prepared = urllib.request.Request(url, headers=dict(request.headers.items()))
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_usage_report_over_http_needs_llamarock_get_usage(enforced: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = enforced
    plain = create_key(data, "plain-user")
    policy = tmp_path / "accountant.json"
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["llamarock:GetUsage"], "Resource": "*"}
    ]}))
    accountant = create_key(data, "accountant", "--policy", str(policy))
    status, body = _signed_get(server.url + "/llamarock/usage?by=principal", plain)
    assert status == 403 and "llamarock:GetUsage" in body["message"]
    status, body = _signed_get(server.url + "/llamarock/usage?by=principal", accountant)
    assert status == 200 and body["by"] == "principal" and isinstance(body["rows"], list)
