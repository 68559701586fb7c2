"""Identity and access end to end: `serve --auth enforce` with keys made by the CLI while it runs, driven by boto3."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, start_server, stop_server

SMALL = "meta.llama3-1-8b-instruct-v1:0"
LARGE = "meta.llama3-1-70b-instruct-v1:0"
BODY = json.dumps({"prompt": "hello", "max_gen_len": 20})
MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]
SEEN_SECRETS: list[str] = []


def keys(data_dir: Path, *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "llamarock", "keys", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout) if "--json" in args else result.stdout


def create(data_dir: Path, principal: str, *args: str) -> dict[str, str]:
    key = keys(data_dir, "create", "--principal", principal, "--json", *args)
    SEEN_SECRETS.extend(v for k, v in key.items() if k in ("secretAccessKey", "bearerToken"))
    return key  # type: ignore[no-any-return]


def client(url: str, key: dict[str, str], *, secret: str | None = None, attempts: int = 1, **extra: Any) -> Any:
    runtime = boto3.client(
        "bedrock-runtime", region_name="us-west-2", endpoint_url=url,
        aws_access_key_id=key["accessKeyId"], aws_secret_access_key=secret or key["secretAccessKey"],
        config=Config(retries={"mode": "standard", "max_attempts": attempts}), **extra,
    )

    def remember(request: Any, **_: Any) -> None:
        authorization = request.headers.get("Authorization")
        if authorization:
            value = authorization.decode() if isinstance(authorization, bytes) else authorization
            SEEN_SECRETS.append(value.rsplit("Signature=", 1)[-1])

    runtime.meta.events.register("before-send.bedrock-runtime", remember)
    return runtime


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("enforce")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce")
    yield server, tmp / "data"
    stop_server(server)


def test_a_key_made_while_serving_works_for_every_operation(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    runtime = client(server.url, create(data, "alice"))
    body = json.loads(runtime.invoke_model(modelId=SMALL, body=BODY)["body"].read())
    assert body["stop_reason"] in ("stop", "length")
    events = list(runtime.invoke_model_with_response_stream(modelId=SMALL, body=BODY)["body"])
    assert events and "chunk" in events[0]
    assert runtime.converse(modelId=SMALL, messages=MESSAGES)["output"]["message"]["role"] == "assistant"
    stream = list(runtime.converse_stream(modelId=f"us.{SMALL}", messages=MESSAGES)["stream"])
    assert "metadata" in stream[-1]
    tokens = runtime.count_tokens(modelId=SMALL, input={"converse": {"messages": MESSAGES}})
    assert tokens["inputTokens"] > 0


def test_authentication_failures(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    key = create(data, "bob")
    assert error_of(client(server.url, key, secret="wrong").invoke_model, modelId=SMALL, body=BODY) == (
        "InvalidSignatureException", 403,
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
        "Access Key and signing method. Consult the service documentation for details.",
    )
    unknown = {"accessKeyId": "AKIAUNKNOWNKEY000000", "secretAccessKey": "x"}
    assert error_of(client(server.url, unknown).converse, modelId=SMALL, messages=MESSAGES) == (
        "UnrecognizedClientException", 403, "The security token included in the request is invalid."
    )
    status, headers, payload = raw(server, "POST", f"/model/{SMALL}/invoke", BODY.encode())
    assert (status, headers["x-amzn-ErrorType"].split(":")[0]) == (403, "MissingAuthenticationTokenException")
    assert json.loads(payload) == {"message": "Missing Authentication Token"}
    assert server.health()[0] == 200  # /healthz needs no signature
    keys(data, "revoke", key["accessKeyId"])
    assert error_of(client(server.url, key).invoke_model, modelId=SMALL, body=BODY)[0] == "UnrecognizedClientException"


def test_policies(enforced: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = enforced
    only_8b = tmp_path / "only-8b.json"
    only_8b.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
        "Resource": "arn:aws:bedrock:*::foundation-model/meta.llama3-1-8b*",
    }]}))
    runtime = client(server.url, create(data, "carol", "--policy", str(only_8b)))
    runtime.invoke_model(modelId=SMALL, body=BODY)
    runtime.converse(modelId=SMALL, messages=MESSAGES)
    code, status, message = error_of(runtime.invoke_model, modelId=LARGE, body=BODY)
    assert (code, status) == ("AccessDeniedException", 403)
    assert message == (
        "User: arn:aws:iam::000000000000:user/carol is not authorized to perform: bedrock:InvokeModel on resource: "
        f"arn:aws:bedrock:us-west-2::foundation-model/{LARGE} because no identity-based policy allows the "
        "bedrock:InvokeModel action"
    )
    code, _, message = error_of(runtime.converse_stream, modelId=LARGE, messages=MESSAGES)
    assert code == "AccessDeniedException" and "bedrock:InvokeModelWithResponseStream" in message
    assert error_of(runtime.count_tokens, modelId=SMALL, input={"converse": {"messages": MESSAGES}})[0] == (
        "AccessDeniedException"
    )

    deny = tmp_path / "deny.json"
    deny.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "bedrock:InvokeModel", "Resource": f"arn:aws:bedrock:*::foundation-model/{SMALL}"},
    ]}))
    denied = client(server.url, create(data, "dave", "--policy", str(deny)))
    code, _, message = error_of(denied.invoke_model, modelId=SMALL, body=BODY)
    assert code == "AccessDeniedException" and message.endswith("with an explicit deny in an identity-based policy")
    denied.invoke_model(modelId=LARGE, body=BODY)


def test_malformed_policy_is_rejected_by_the_cli(enforced: tuple[Server, Path], tmp_path: Path) -> None:
    _, data = enforced
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Statement": [{"Effect": "Allow", "Action": "InvokeModel", "Resource": "*"}]}))
    with pytest.raises(RuntimeError, match=r"not a valid policy: Statement\[0\].Action: 'InvokeModel' is not an"):
        keys(data, "create", "--principal", "eve", "--policy", str(bad))
    bad.write_text("{not json")
    with pytest.raises(RuntimeError, match="is not JSON"):
        keys(data, "create", "--principal", "eve", "--policy", str(bad))
    listing = keys(data, "list", "--json")
    assert all(row["principal"] != "eve" for row in listing)
    assert all("secret" not in json.dumps(row).lower() for row in listing)


def test_requests_per_minute_then_boto3_retries_recover(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    key = create(data, "frank", "--rpm", "5")
    runtime = client(server.url, key)
    for _ in range(5):
        runtime.invoke_model(modelId=SMALL, body=BODY)
    assert error_of(runtime.invoke_model, modelId=SMALL, body=BODY) == (
        "ThrottlingException", 429, "Too many requests, please wait before trying again."
    )
    runtime.invoke_model(modelId=LARGE, body=BODY)  # quotas are per model
    patient = client(server.url, key, attempts=12)
    started = time.monotonic()
    response = patient.invoke_model(modelId=SMALL, body=BODY)
    assert response["ResponseMetadata"]["RetryAttempts"] >= 1
    assert time.monotonic() - started < 120


def test_tokens_per_minute_reserve_and_reconcile(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    runtime = client(server.url, create(data, "grace", "--tpm", "600"))
    small = json.dumps({"prompt": "hi", "max_gen_len": 500})
    runtime.invoke_model(modelId=SMALL, body=small)  # reserves ~501, settles to what it used
    runtime.invoke_model(modelId=SMALL, body=small)  # fits only because the first one was reconciled
    list(runtime.invoke_model_with_response_stream(modelId=SMALL, body=small)["body"])
    runtime.converse(modelId=SMALL, messages=MESSAGES, inferenceConfig={"maxTokens": 400})
    huge = json.dumps({"prompt": "hi", "max_gen_len": 2048})
    assert error_of(runtime.invoke_model, modelId=SMALL, body=huge) == (
        "ThrottlingException", 429, "Too many tokens, please wait before trying again."
    )


def raw(server: Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> tuple[int, Any, bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
credential = st.builds(
    lambda key, date, region, service, term: f"{key}/{date}/{region}/{service}/{term}",
    st.sampled_from(["AKIAUNKNOWNKEY000000", "", "A/B", "x" * 30]),
    st.sampled_from(["20250101", "", "2025", "99999999"]),
    st.sampled_from(["us-west-2", "", "US WEST", "a" * 70]),
    st.sampled_from(["bedrock", "s3", ""]),
    st.sampled_from(["aws4_request", "x"]),
)
sigv4_header = st.builds(
    lambda cred, signed, sig, sep: f"AWS4-HMAC-SHA256 Credential={cred}{sep}SignedHeaders={signed}{sep}Signature={sig}",
    credential, st.sampled_from(["host;x-amz-date", "host", "", "HOST", ";;", "x-amz-date"]),
    st.text("0123456789abcdef", max_size=70), st.sampled_from([", ", ",", " ", ""]),
)
authorization = st.one_of(header_text, sigv4_header, st.builds(lambda t: f"Bearer {t}", header_text))
query = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#"), max_size=100),
    st.builds(
        lambda cred, date, expires, signed, sig: (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={cred}&X-Amz-Date={date}&X-Amz-Expires={expires}"
            f"&X-Amz-SignedHeaders={signed}&X-Amz-Signature={sig}"
        ),
        credential, st.sampled_from(["20250101T000000Z", "x", ""]), st.sampled_from(["60", "0", "-1", "9" * 30]),
        st.sampled_from(["host", "", "%3B"]), st.text("0123456789abcdef%", max_size=64),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.none() | authorization,
    amz_date=st.none() | st.sampled_from(["20250101T000000Z", "garbage", ""]) | header_text,
    date=st.none() | header_text,
    query_string=st.none() | query,
    token=st.none() | header_text,
    sha=st.none() | st.sampled_from(["UNSIGNED-PAYLOAD", "0" * 64, "zz"]),
    path=st.sampled_from([f"/model/{SMALL}/invoke", "/model/x%3A/converse", "/model/%ZZ/invoke", "/nope", "/model/"]),
)
def test_fuzzed_authentication_never_yields_a_5xx(
    enforced: tuple[Server, Path], authorization: str | None, amz_date: str | None, date: str | None,
    query_string: str | None, token: str | None, sha: str | None, path: str,
) -> None:
    server, _ = enforced
    headers = {"Content-Type": "application/json"}
    for name, value in (("Authorization", authorization), ("X-Amz-Date", amz_date), ("Date", date),
                        ("X-Amz-Security-Token", token), ("X-Amz-Content-SHA256", sha)):
        if value is not None:
            headers[name] = value.strip()
    target = path + ("?" + query_string.replace(" ", "%20") if query_string is not None else "")
    status, _, _ = raw(server, "POST", target, BODY.encode(), headers)
    assert status < 500


def test_no_secret_or_signature_in_any_log(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    assert SEEN_SECRETS, "the earlier tests handed out keys and signed requests"
    logs = [p for p in (data / "logs").rglob("*") if p.is_file()] + [server.log_path]
    assert any(p.name.startswith("audit.jsonl") for p in logs)
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    leaked = [s for s in SEEN_SECRETS if len(s) >= 16 and s in text]
    assert leaked == []
    records = [json.loads(line) for line in (data / "logs" / "audit.jsonl").read_text().splitlines()]
    assert {"allow", "deny", "throttled", "unauthenticated"} <= {r["decision"] for r in records}
    allowed = next(r for r in records if r["decision"] == "allow" and r.get("action"))
    assert {"principal", "action", "resource", "status", "requestId"} <= set(allowed)
    assert "hello" not in text  # no prompt text


def test_dev_mode_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llamarock", "serve", "--host", "0.0.0.0", "--engine", "fake",
         "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")},
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 with --auth dev" in result.stderr
    assert "--auth enforce" in result.stderr


# ------------------------------------------------------------------------------------------------------------ TLS


def test_bearer_token_over_tls_with_unmodified_boto3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_server(tmp_path, "--engine", "fake", "--auth", "enforce", tls=True)
    data, cert = tmp_path / "data", server.cert
    try:
        created = create(data, "heidi", "--bearer")
        assert created["bearerToken"].startswith("ABSK")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", created["bearerToken"])
        runtime = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=server.url,
                               verify=str(cert))
        sent: list[str] = []
        runtime.meta.events.register(
            "before-send.bedrock-runtime", lambda request, **_: sent.append(str(request.headers["Authorization"]))
        )
        assert runtime.converse(modelId=SMALL, messages=MESSAGES)["output"]["message"]["role"] == "assistant"
        assert sent and "Bearer" in sent[0]
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSKnotarealtoken")
        stranger = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=server.url,
                                verify=str(cert), config=Config(retries={"max_attempts": 1}))
        assert error_of(stranger.invoke_model, modelId=SMALL, body=BODY)[:2] == ("UnrecognizedClientException", 403)
        runtime.close()
        stranger.close()
        audit = (data / "logs" / "audit.jsonl").read_text()
        assert '"authType": "bearer"' in audit and created["bearerToken"] not in audit
    finally:
        stop_server(server)
