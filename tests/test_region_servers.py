"""Several llamarock servers named per region (`region_servers`): a call whose inference region a peer serves is
forwarded there and its answer relayed unchanged, signed with the peer key or unsigned; never twice.

Topology, all real `llamarock serve` processes on loopback with fake-engine deployments:
* ``gone``: started and stopped, so its address answers nothing;
* ``peer`` (B): serves every model as ``b-peer`` (Llama 3.1 70B as ``b-failing``, which fails midway); it names
  ``gone`` for us-west-2, so any call it forwarded would fail — calls forwarded to it must stay there;
* ``front`` (A): serves every model as ``a-local`` and names B for us-west-2, signing with a key B knows;
* ``unsigned`` (A2): like A without a peer key, and naming ``gone`` for us-east-2.

``us.meta.llama3-1-8b-instruct-v1:0`` signed for us-east-1 runs in us-west-2 (the model runs only there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from llamarock.settings import Settings
from tests.conftest import DUMMY_CREDENTIALS, Server, start_server, stop_server

PROFILE = "us.meta.llama3-1-8b-instruct-v1:0"
BASE = "meta.llama3-1-8b-instruct-v1:0"
FAILING_PROFILE = "us.meta.llama3-1-70b-instruct-v1:0"
SLOW_PROFILE = "us.meta.llama3-1-405b-instruct-v1:0"
LLAMA3 = "meta.llama3-8b-instruct-v1:0"  # on demand in us-east-1, us-east-2 and us-west-2
BODY = json.dumps({"prompt": "Name three rivers.", "max_gen_len": 12})
MESSAGES = [{"role": "user", "content": [{"text": "Name three rivers."}]}]
FORWARDED = "x-llamarock-forwarded"

PEER_CONFIG = """
region_servers = {{"us-west-2" = "{gone}"}}

[[deployments]]
name = "b-failing"
engine = "fake"
models = ["meta.llama3-1-70b-instruct-v1:0"]
fake_fail_after = 2

[[deployments]]
name = "b-slow"
engine = "fake"
models = ["meta.llama3-1-405b-instruct-v1:0"]
fake_reply = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
fake_token_delay_ms = 200

[[deployments]]
name = "b-peer"
engine = "fake"
models = ["*"]
"""

FRONT_CONFIG = """
region_servers = {servers}
{key}
[[deployments]]
name = "{name}"
engine = "fake"
models = ["*"]
"""


@dataclass
class Topology:
    gone: str
    peer: Server
    peer_data: Path
    peer_key: dict[str, str]
    front: Server
    unsigned: Server


def _toml_table(servers: dict[str, str]) -> str:
    return "{" + ", ".join(f'"{region}" = "{url}"' for region, url in servers.items()) + "}"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    gone_server = start_server(tmp_path_factory.mktemp("gone"), "--engine", "fake")
    stop_server(gone_server)
    gone = gone_server.url
    peer_tmp = tmp_path_factory.mktemp("peer")
    created = subprocess.run(
        [sys.executable, "-m", "llamarock", "keys", "create", "--principal", "region-a", "--json",
         "--data-dir", str(peer_tmp / "data")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    key = json.loads(created.stdout)
    peer = start_server(peer_tmp, config=PEER_CONFIG.format(gone=gone))
    servers: list[Server] = [peer]
    try:
        signing = (f'peer_access_key_id = "{key["accessKeyId"]}"\n'
                   f'peer_secret_access_key = "{key["secretAccessKey"]}"\n')
        front = start_server(tmp_path_factory.mktemp("front"), config=FRONT_CONFIG.format(
            servers=_toml_table({"us-west-2": peer.url}), key=signing, name="a-local"))
        servers.append(front)
        unsigned = start_server(tmp_path_factory.mktemp("unsigned"), config=FRONT_CONFIG.format(
            servers=_toml_table({"us-west-2": peer.url, "us-east-2": gone}), key="", name="a2-local"))
        servers.append(unsigned)
        yield Topology(gone, peer, peer_tmp / "data", key, front, unsigned)
    finally:
        for server in servers:
            stop_server(server)


def runtime(server: Server, region: str, *, forwarded: bool = False) -> Any:
    """A boto3 client signed for ``region``; ``forwarded`` adds the header a forwarding server sets."""
    client = boto3.client(
        "bedrock-runtime", region_name=region, endpoint_url=server.url,
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60),
    )
    if forwarded:
        def mark(request: Any, **_: Any) -> None:
            request.headers[FORWARDED] = "1"

        client.meta.events.register("before-sign.bedrock-runtime", mark)
    return client


def direct(topology: Topology) -> Any:
    """B called directly as A calls it: signed for us-west-2, marked as forwarded (else B forwards to gone)."""
    return runtime(topology.peer, "us-west-2", forwarded=True)


def served_by(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"].get("x-llamarock-served-by"))


def served_by_closed(response: dict[str, Any]) -> str:
    """served_by for an InvokeModel answer whose body the test does not read: closed, so its connection is too."""
    response["body"].close()
    return served_by(response)


def request_id(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["RequestId"])


def error_of(call: Callable[..., Any], **kwargs: Any) -> tuple[str, int, str, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"],
            response["ResponseMetadata"]["RequestId"])


def audit_entry(data_dir: Path, wanted_id: str) -> dict[str, Any]:
    """The peer's audit log line for one request id (written when the response ends)."""
    path = data_dir / "logs" / "audit.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("requestId") == wanted_id:
                    return entry  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no audit entry for {wanted_id} in {path}")


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def metric(server: Server, name: str, model: str) -> float:
    return scrape(server).get((name, (("ModelId", model),)), 0.0)


def wait_for_metric(server: Server, name: str, model: str, at_least: float) -> float:
    deadline = time.monotonic() + 10
    while (found := metric(server, name, model)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def stream_chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(event["chunk"]["bytes"]) for event in response["body"]]


def test_invoke_model_through_a_is_answered_by_b_with_a_signature_b_verified(topology: Topology) -> None:
    invocations = metric(topology.front, "bedrock_invocations_total", PROFILE)
    response = runtime(topology.front, "us-east-1").invoke_model(modelId=PROFILE, body=BODY)
    body = json.loads(response["body"].read())
    assert served_by(response) == "b-peer"
    expected = json.loads(direct(topology).invoke_model(modelId=PROFILE, body=BODY)["body"].read())
    assert body == expected
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == str(body["generation_token_count"])
    assert int(headers["x-amzn-bedrock-input-token-count"]) > 0
    # B answered (its audit log has the request id the client saw), verifying A's peer key signed for us-west-2.
    entry = audit_entry(topology.peer_data, request_id(response))
    assert entry["authType"] == "sigv4"
    assert entry["accessKeyId"] == topology.peer_key["accessKeyId"]
    assert entry["principal"].endswith(":user/region-a")
    assert entry["region"] == "us-west-2"
    assert entry["status"] == 200
    # A still records the call it relayed: one more invocation of the profile, with B's token counts.
    assert wait_for_metric(topology.front, "bedrock_invocations_total", PROFILE, invocations + 1) == invocations + 1
    assert metric(topology.front, "bedrock_output_tokens_total", PROFILE) >= body["generation_token_count"] > 0


def test_the_stream_through_a_is_relayed_event_by_event(topology: Topology) -> None:
    tokens_before = metric(topology.front, "bedrock_output_tokens_total", PROFILE)
    response = runtime(topology.front, "us-east-1").invoke_model_with_response_stream(modelId=PROFILE, body=BODY)
    assert served_by(response) == "b-peer"
    assert response["contentType"] == "application/json"
    chunks = stream_chunks(response)
    expected = stream_chunks(direct(topology).invoke_model_with_response_stream(modelId=PROFILE, body=BODY))
    assert len(chunks) == len(expected) > 1
    assert "".join(c["generation"] for c in chunks) == "".join(c["generation"] for c in expected)
    assert chunks[-1]["stop_reason"] == expected[-1]["stop_reason"]
    usage = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert wait_for_metric(topology.front, "bedrock_output_tokens_total", PROFILE,
                           tokens_before + usage["outputTokenCount"]) == tokens_before + usage["outputTokenCount"]


def test_converse_and_converse_stream_through_a_are_answered_by_b(topology: Topology) -> None:
    front = runtime(topology.front, "us-east-1")
    answer = front.converse(modelId=PROFILE, messages=MESSAGES, inferenceConfig={"maxTokens": 12})
    assert served_by(answer) == "b-peer"
    expected = direct(topology).converse(modelId=PROFILE, messages=MESSAGES, inferenceConfig={"maxTokens": 12})
    assert answer["output"] == expected["output"]
    assert answer["usage"] == expected["usage"]
    assert answer["stopReason"] == expected["stopReason"]

    streamed = front.converse_stream(modelId=PROFILE, messages=MESSAGES, inferenceConfig={"maxTokens": 12})
    assert served_by(streamed) == "b-peer"
    events = list(streamed["stream"])
    assert list(events[0]) == ["messageStart"]
    assert list(events[-1]) == ["metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == expected["output"]["message"]["content"][0]["text"]
    assert events[-1]["metadata"]["usage"] == expected["usage"]


def test_count_tokens_through_a_is_answered_by_b(topology: Topology) -> None:
    source = {"converse": {"messages": MESSAGES}}
    counted = runtime(topology.front, "us-east-1").count_tokens(modelId=PROFILE, input=source)
    assert served_by(counted) == "b-peer"
    assert counted["inputTokens"] == direct(topology).count_tokens(modelId=PROFILE, input=source)["inputTokens"] > 0


def test_errors_from_b_come_back_unchanged(topology: Topology) -> None:
    front = runtime(topology.front, "us-east-1")
    bad = json.dumps({"prompt": "hi", "max_gen_len": "many"})
    code, status, message, relayed_id = error_of(front.invoke_model, modelId=PROFILE, body=bad)
    assert (code, status, message) == error_of(direct(topology).invoke_model, modelId=PROFILE, body=bad)[:3]
    assert code == "ValidationException" and status == 400
    assert audit_entry(topology.peer_data, relayed_id)["status"] == 400  # B refused it, A relayed the refusal

    refused = error_of(front.converse, modelId=PROFILE, messages=[{"role": "user", "content": []}])
    assert refused[:3] == error_of(direct(topology).converse, modelId=PROFILE,
                                   messages=[{"role": "user", "content": []}])[:3]
    assert refused[0] == "ValidationException"

    # A failure after the first byte: B's exception frame ends the relayed stream.
    streamed = front.invoke_model_with_response_stream(modelId=FAILING_PROFILE, body=BODY)
    assert served_by(streamed) == "b-failing"
    with pytest.raises(EventStreamError) as failed:
        stream_chunks(streamed)
    streamed["body"].close()
    assert failed.value.response["Error"]["Code"] == "modelStreamErrorException"  # botocore's member name


def test_a_client_leaving_a_relayed_stream_ends_the_peers_stream(topology: Topology) -> None:
    started = time.monotonic()
    body = json.dumps({"prompt": "count", "max_gen_len": 64})
    streamed = runtime(topology.front, "us-east-1").invoke_model_with_response_stream(modelId=SLOW_PROFILE, body=body)
    assert served_by(streamed) == "b-slow"
    first = next(iter(streamed["body"]))
    assert json.loads(first["chunk"]["bytes"])["generation"]
    streamed["body"].close()
    # B's stream ends when A lets go of it, long before the 16 tokens at 200 ms each would be produced.
    entry = audit_entry(topology.peer_data, request_id(streamed))
    assert entry["latencyMs"] < 2500
    assert time.monotonic() - started < 3


def test_unsigned_forwarding_reaches_a_peer_in_dev_mode(topology: Topology) -> None:
    answer = runtime(topology.unsigned, "us-east-1").converse(modelId=PROFILE, messages=MESSAGES)
    assert served_by(answer) == "b-peer"
    entry = audit_entry(topology.peer_data, request_id(answer))
    assert entry["authType"] == "none"
    assert entry["region"] == "us-west-2"  # B's own default region, where the profile's model runs


def test_an_unreachable_peer_is_service_unavailable(topology: Topology) -> None:
    client = runtime(topology.unsigned, "us-east-2")  # LLAMA3 runs on demand in us-east-2: gone's region
    errors_before = metric(topology.unsigned, "bedrock_invocation_server_errors_total", LLAMA3)
    for call, kwargs in [
        (client.invoke_model, {"body": BODY}),
        (client.invoke_model_with_response_stream, {"body": BODY}),
        (client.converse, {"messages": MESSAGES}),
        (client.converse_stream, {"messages": MESSAGES}),
    ]:
        code, status, message, _ = error_of(call, modelId=LLAMA3, **kwargs)
        assert (code, status) == ("ServiceUnavailableException", 503)
        assert "us-east-2" in message and topology.gone in message
    assert wait_for_metric(topology.unsigned, "bedrock_invocation_server_errors_total", LLAMA3,
                           errors_before + 4) == errors_before + 4


def test_a_forwarded_request_is_never_forwarded_again(topology: Topology) -> None:
    # B names gone for us-west-2: a call that is not marked as forwarded goes there, and fails...
    code, status, message, _ = error_of(runtime(topology.peer, "us-west-2").invoke_model, modelId=PROFILE, body=BODY)
    assert (code, status) == ("ServiceUnavailableException", 503) and topology.gone in message
    # ...while a forwarded one is served by B itself (which is how every call A forwards is answered).
    response = direct(topology).invoke_model(modelId=PROFILE, body=BODY)
    assert served_by_closed(response) == "b-peer"
    # The same holds on A: marked as forwarded, the call stays on A although A names B for us-west-2.
    marked = runtime(topology.front, "us-east-1", forwarded=True).invoke_model(modelId=PROFILE, body=BODY)
    assert served_by_closed(marked) == "a-local"


def test_calls_whose_inference_region_is_not_named_are_served_locally(topology: Topology) -> None:
    east = runtime(topology.front, "us-east-1")
    assert served_by_closed(east.invoke_model(modelId=LLAMA3, body=BODY)) == "a-local"  # runs in us-east-1
    assert served_by(east.converse(modelId=LLAMA3, messages=MESSAGES)) == "a-local"
    # A region named in region_servers is always forwarded, base model ids included.
    west = runtime(topology.front, "us-west-2")
    assert served_by_closed(west.invoke_model(modelId=BASE, body=BODY)) == "b-peer"
    # What A refuses itself is refused by A, not forwarded: the base id is not on demand in us-east-1.
    code, status, message, _ = error_of(east.invoke_model, modelId=BASE, body=BODY)
    assert (code, status) == ("ValidationException", 400) and "us.meta.llama3-1-8b-instruct-v1:0" in message


def test_region_servers_settings_are_checked() -> None:
    assert Settings(region_servers={"us-east-2": "http://10.0.0.5:8080/"}).region_servers == {
        "us-east-2": "http://10.0.0.5:8080/"
    }
    with pytest.raises(ValidationError):
        Settings(region_servers={"us-east-2": "10.0.0.5:8080"})
    with pytest.raises(ValidationError):
        Settings(region_servers={"nowhere": "http://10.0.0.5:8080"})
    with pytest.raises(ValidationError, match="set together"):
        Settings(peer_access_key_id="AKID")
