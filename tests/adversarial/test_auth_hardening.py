"""Hostile callers against `serve --auth enforce` (fake engine): forged proxy headers, made-up ARNs, control-plane
resources, conditions on llamarock's own operations, bearer tokens over plain HTTP, log injection, odd methods,
bodies sent before a valid credential, bogus model ids, private data files. Each test is a repro of a defect that
was found by hostile testing (issue 13) and must stay fixed."""

from __future__ import annotations

import json
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from llamarock.services.signing import signed_headers
from tests.conftest import Server, start_server, stop_server
from tests.test_auth_server import client, create, error_of, raw

SMALL = "meta.llama3-1-8b-instruct-v1:0"
ACCOUNT = "000000000000"
BODY = json.dumps({"prompt": "hello", "max_gen_len": 5})


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce", "--default-rpm", "1000")
    yield server, tmp / "data"
    stop_server(server)


def _policy(tmp: Path, *statements: dict[str, Any]) -> str:
    path = tmp / f"policy-{uuid.uuid4().hex}.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}))
    return str(path)


def _control(url: str, key: dict[str, str]) -> Any:
    return boto3.client("bedrock", region_name="us-west-2", endpoint_url=url, aws_access_key_id=key["accessKeyId"],
                        aws_secret_access_key=key["secretAccessKey"], config=Config(retries={"max_attempts": 1}))


def _signed_get(server: Server, key: dict[str, str], path: str, extra: dict[str, str] | None = None
                ) -> tuple[int, Any, bytes]:
    url = server.url + path
    headers = signed_headers("GET", url, extra or {}, b"", Credentials(key["accessKeyId"], key["secretAccessKey"]),
                             "us-west-2")
    return raw(server, "GET", path, headers=headers)


def test_forged_proxy_headers_change_neither_source_ip_nor_transport(hostile: tuple[Server, Path],
                                                                     tmp_path: Path) -> None:
    server, data = hostile
    only_from_office = _policy(tmp_path, {
        "Effect": "Allow", "Action": "bedrock:*", "Resource": "*",
        "Condition": {"IpAddress": {"aws:SourceIp": "10.1.2.3/32"}},
    })
    key = create(data, "office", "--policy", only_from_office)
    runtime = client(server.url, key)

    def forge(request: Any, **_: Any) -> None:
        request.headers["X-Forwarded-For"] = "10.1.2.3"
        request.headers["X-Forwarded-Proto"] = "https"

    runtime.meta.events.register("before-send.bedrock-runtime", forge)
    code, status, _ = error_of(runtime.invoke_model, modelId=SMALL, body=BODY)
    assert (code, status) == ("AccessDeniedException", 403)
    secure_only = _policy(tmp_path, {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}, {
        "Effect": "Deny", "Action": "bedrock:*", "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })
    tls_runtime = client(server.url, create(data, "tls-only", "--policy", secure_only))
    tls_runtime.meta.events.register("before-send.bedrock-runtime", forge)
    code, status, _ = error_of(tls_runtime.invoke_model, modelId=SMALL, body=BODY)
    assert (code, status) == ("AccessDeniedException", 403)
    lines = [json.loads(line) for line in (data / "logs" / "audit.jsonl").read_text().splitlines()]
    assert {line.get("sourceIp") for line in lines if line.get("principal", "").endswith("/office")} == {"127.0.0.1"}


@pytest.mark.parametrize("arn", [
    f"arn:aws:bedrock:us-west-2:999999999999:inference-profile/us.{SMALL}",  # another account
    f"arn:aws:bedrock::{ACCOUNT}:inference-profile/us.{SMALL}",  # no region
    f"arn:aws:bedrock:us-west-2::inference-profile/us.{SMALL}",  # no account
    f"arn:aws-cn:bedrock:us-west-2:{ACCOUNT}:inference-profile/us.{SMALL}",  # another partition
    "arn:aws:bedrock:us-west-2:999999999999:provisioned-model/abcdefghijkl",
])
def test_made_up_profile_and_provisioned_arns_are_invalid(hostile: tuple[Server, Path], arn: str) -> None:
    server, data = hostile
    runtime = client(server.url, create(data, f"arns-{uuid.uuid4().hex[:8]}"))
    code, status, message = error_of(runtime.invoke_model, modelId=arn, body=BODY)
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("The provided model identifier is invalid.")


def test_a_deny_on_this_accounts_profiles_holds(hostile: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = hostile
    no_profiles = _policy(tmp_path, {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}, {
        "Effect": "Deny", "Action": "bedrock:*", "Resource": f"arn:aws:bedrock:*:{ACCOUNT}:inference-profile/*",
    })
    runtime = client(server.url, create(data, "no-profiles", "--policy", no_profiles))
    for identifier in (f"us.{SMALL}", f"arn:aws:bedrock:us-west-2:{ACCOUNT}:inference-profile/us.{SMALL}"):
        code, status, _ = error_of(runtime.invoke_model, modelId=identifier, body=BODY)
        assert (code, status) == ("AccessDeniedException", 403)
    runtime.invoke_model(modelId=SMALL, body=BODY)["body"].read()


def test_control_plane_actions_are_on_the_provisioned_model_arn(hostile: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = hostile
    no_provisioning = _policy(tmp_path, {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}, {
        "Effect": "Deny", "Action": "bedrock:*", "Resource": "arn:aws:bedrock:*:*:provisioned-model/*",
    })
    control = _control(server.url, create(data, "no-provisioning", "--policy", no_provisioning))
    for call, kwargs in [
        (control.create_provisioned_model_throughput, {"provisionedModelName": "p", "modelId": SMALL,
                                                        "modelUnits": 1}),
        (control.get_provisioned_model_throughput, {"provisionedModelId": "anything"}),
        (control.delete_provisioned_model_throughput, {"provisionedModelId": "anything"}),
    ]:
        code, status, message = error_of(call, **kwargs)
        assert (code, status) == ("AccessDeniedException", 403), message
        assert ":provisioned-model/" in message
    control.list_foundation_models()  # account-wide operations are still on "*"


def test_deny_conditions_apply_to_llamarocks_own_operations(hostile: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = hostile
    over_tls_only = _policy(tmp_path, {"Effect": "Allow", "Action": ["bedrock:*", "llamarock:*"], "Resource": "*"}, {
        "Effect": "Deny", "Action": "llamarock:*", "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })
    key = create(data, "usage-over-tls", "--policy", over_tls_only)
    status, _, body = _signed_get(server, key, "/llamarock/usage")
    assert status == 403 and json.loads(body)["message"].endswith("with an explicit deny in an identity-based policy")
    # GetQuotas shows everyone's rows only when llamarock:GetQuotas is allowed in the request's own context.
    status, _, body = _signed_get(server, key, "/llamarock/quotas")
    assert status == 200
    assert {row["principal"] for row in json.loads(body)["quotas"]} <= {"usage-over-tls"}


def test_bearer_tokens_need_https_under_enforce(hostile: tuple[Server, Path]) -> None:
    server, data = hostile
    key = create(data, "bearer-http", "--bearer")
    status, headers, body = raw(server, "POST", f"/model/{SMALL}/invoke", BODY.encode(),
                                {"Authorization": f"Bearer {key['bearerToken']}", "Content-Type": "application/json"})
    assert status == 403 and headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException")
    assert "only over HTTPS" in json.loads(body)["message"]


def test_paths_cannot_write_lines_into_the_access_log(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    raw(server, "GET", "/foo%0aINJECTED%20line%0d%0a")
    deadline = time.monotonic() + 10  # the access line is written just after the answer
    while "INJECTED" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.log_path.read_text().splitlines()
    assert not [line for line in lines if line.startswith("INJECTED")]
    assert any("\\nINJECTED" in line for line in lines)


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PROPFIND"])
def test_any_method_gets_an_aws_shaped_answer(hostile: tuple[Server, Path], method: str) -> None:
    server, _ = hostile
    status, headers, body = raw(server, method, f"/model/{SMALL}/invoke")
    assert status == 403 and headers["Content-Type"] == "application/json"
    assert headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")
    assert json.loads(body)["message"]


def test_an_unsigned_body_is_refused_before_it_is_read(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (f"POST /model/{SMALL}/invoke HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Authorization: AWS4-HMAC-SHA256 Credential=AKIANOSUCHKEY0000000/20250101/us-west-2/bedrock/"
                f"aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: 20250101T000000Z\r\n"
                f"Content-Length: 20000000\r\n\r\n")
        sock.sendall(head.encode() + b"x" * 1024)
        answer = sock.recv(65536).decode("latin-1")  # answered with 20 MB still unsent
    assert answer.startswith("HTTP/1.1 403") and "UnrecognizedClientException" in answer


def test_made_up_model_ids_share_one_quota_bucket(hostile: tuple[Server, Path]) -> None:
    server, data = hostile
    key = create(data, "bogus-ids")
    runtime = client(server.url, key)
    for n in range(30):
        error_of(runtime.invoke_model, modelId=f"meta.made-up-{n}", body=BODY)
    _, _, body = _signed_get(server, key, "/llamarock/quotas")
    models = {row["model"] for row in json.loads(body)["quotas"] if row["principal"] == "bogus-ids"}
    assert models == {"(unknown model)"}


def test_provisioned_model_names_follow_the_service_pattern(hostile: tuple[Server, Path]) -> None:
    server, data = hostile
    control = _control(server.url, create(data, "namer"))
    code, status, message = error_of(control.create_provisioned_model_throughput, provisionedModelName="\x00\x00",
                                     modelId=SMALL, modelUnits=1)
    assert (code, status) == ("ValidationException", 400) and "regular expression pattern" in message


def test_data_files_are_private(hostile: tuple[Server, Path]) -> None:
    _, data = hostile
    for path in (data / "llamarock.db", data / "logs" / "audit.jsonl"):
        assert path.is_file()
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path

