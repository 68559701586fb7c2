"""The AWS SDK for JavaScript v3 (@aws-sdk/client-bedrock-runtime and @aws-sdk/client-bedrock from npm, the exact
versions in tests/js/package-lock.json), unmodified, with its default request handlers: NodeHttp2Handler (HTTP/2,
h2c with prior knowledge against http://) for bedrock-runtime, NodeHttpHandler (HTTP/1.1) for bedrock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DUMMY_CREDENTIALS, Server, start_server, stop_server
from tests.test_auth_server import create

JS = Path(__file__).resolve().parent / "js"
MODEL = "meta.llama3-1-8b-instruct-v1:0"
NODE = shutil.which("node")


def run_sdk(server: Server, model_id: str, credentials: dict[str, str] = DUMMY_CREDENTIALS) -> Any:
    if NODE is None:
        pytest.skip("node is not installed: the JavaScript SDK tests need Node.js 18 or later (and npm)")
    if not (JS / "node_modules" / "@aws-sdk" / "client-bedrock-runtime").is_dir():
        pytest.fail(f"{JS / 'node_modules'} is missing: run `scripts/install --test` (it runs `npm ci` in tests/js)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LLAMAROCK_"))} | credentials
    result = subprocess.run([NODE, "sdk.mjs", server.url, model_id], cwd=JS, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{result.stderr}\n--- server log ---\n{server.log_path.read_text()[-3000:]}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A fake-engine server with `--auth enforce`, and the env credentials of a key made for it."""
    tmp = tmp_path_factory.mktemp("js-enforce")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce")
    key = create(tmp / "data", "js")
    yield server, {"AWS_ACCESS_KEY_ID": key["accessKeyId"], "AWS_SECRET_ACCESS_KEY": key["secretAccessKey"]}
    stop_server(server)


@pytest.mark.parametrize("engine", ["fake_server", "server", "enforced"])
def test_javascript_sdk_with_its_default_handlers(engine: str, request: pytest.FixtureRequest) -> None:
    """Every call through the JS SDK: on the fake engine, on the embedded model (real inference), and signed with a
    real key against `--auth enforce` (SigV4 over HTTP/2 signs :authority instead of host)."""
    if engine == "enforced":
        server, credentials = request.getfixturevalue("enforced")
        out = run_sdk(server, MODEL, credentials)
    else:
        out = run_sdk(request.getfixturevalue(engine), MODEL)
    assert (out["runtimeHandler"], out["controlHandler"]) == ("NodeHttp2Handler", "NodeHttpHandler")

    invoked = out["invokeModel"]
    assert invoked["status"] == 200
    assert invoked["body"]["generation"] and invoked["body"]["stop_reason"] in ("stop", "length")
    assert invoked["body"]["prompt_token_count"] > 0 and invoked["body"]["generation_token_count"] > 0

    chunks = [event["chunk"] for event in out["invokeModelWithResponseStream"]]
    assert len(chunks) == len(out["invokeModelWithResponseStream"]) > 1
    assert "".join(chunk["generation"] for chunk in chunks)
    assert all(chunk["stop_reason"] is None for chunk in chunks[:-1]) and chunks[-1]["stop_reason"]
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] > 0 and metrics["outputTokenCount"] == chunks[-1]["generation_token_count"]

    conversed = out["converse"]
    assert conversed["output"]["message"]["role"] == "assistant"
    assert conversed["output"]["message"]["content"][0]["text"]
    assert conversed["stopReason"] in ("end_turn", "max_tokens")
    usage = conversed["usage"]
    cached = usage.get("cacheReadInputTokens", 0) + usage.get("cacheWriteInputTokens", 0)
    assert usage["inputTokens"] > 0 and usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] + cached

    events = out["converseStream"]
    kinds = [next(iter(event)) for event in events]
    assert kinds[:2] == ["messageStart", "contentBlockDelta"]
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert set(kinds[1:-3]) == {"contentBlockDelta"}
    assert "".join(event["contentBlockDelta"]["delta"]["text"] for event in events[1:-3])
    assert events[-2]["messageStop"]["stopReason"] in ("end_turn", "max_tokens")
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0 and events[-1]["metadata"]["metrics"]["latencyMs"] >= 0

    models = out["listFoundationModels"]
    # The catalog's Llama models and its embedding models (Titan, Cohere Embed).
    assert MODEL in models and all(model.startswith(("meta.llama", "amazon.titan-embed", "cohere.embed"))
                                   for model in models)
