"""Embedding models served as models, driven by boto3 against `llamarock serve`: InvokeModel with the Titan V2, Titan
G1 and Cohere Embed v3 bodies on the three engines (the embedded all-MiniLM-L6-v2 on onnxruntime, a GGUF on
llama.cpp, a remote OpenAI-compatible endpoint), the dimensions refusal, bad bodies, the operations that refuse
embedding models, the catalog listing, and the usage and metrics they count.

The remote endpoint is a small real HTTP server started here that speaks the OpenAI embeddings protocol (a peer,
not part of llamarock): its vectors are a deterministic function of the text, so the test knows what to expect.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from botocore.exceptions import ClientError

from llamarock.services.deployments import embedded_model_path
from tests.conftest import Server, start_server, stop_server

TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
COHERE_EN = "cohere.embed-english-v3"
COHERE_ML = "cohere.embed-multilingual-v3"
REMOTE_DIMENSIONS = (8, 4)


def remote_vector(text: str, size: int) -> list[float]:
    """The remote peer's (unnormalised) vector of a text: bytes of its SHA-256, centred."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 127.5) / 10 for i in range(size)]


class RemoteEmbeddings(BaseHTTPRequestHandler):
    """POST /v1/embeddings, OpenAI's protocol; records what it was sent. ``fail`` texts answer 500."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        RemoteEmbeddings.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **payload})
        if self.path != "/v1/embeddings" or "fail" in payload["input"]:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        size = payload.get("dimensions", REMOTE_DIMENSIONS[0])
        data = [{"object": "embedding", "index": i, "embedding": remote_vector(t, size)}
                for i, t in reversed(list(enumerate(payload["input"])))]  # out of order on purpose
        tokens = sum(len(t.split()) + 1 for t in payload["input"])
        body = json.dumps({"object": "list", "data": data, "model": payload["model"],
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RemoteEmbeddings)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, remote: str) -> Iterator[Server]:
    config = f"""
engine = "fake"

[[embedding_deployments]]
name = "remote-peer"
engine = "remote"
models = ["{COHERE_ML}"]
url = "{remote}"
remote_model = "peer-embed"
api_key = "peer-secret"
dimensions = {list(REMOTE_DIMENSIONS)}

[[embedding_deployments]]
name = "smollm2-gguf"
engine = "llamacpp"
models = ["{TITAN_V1}"]
model_path = "{embedded_model_path()}"
pooling = "mean"
max_tokens = 128
threads = 1

[[embedding_deployments]]
name = "minilm"
threads = 2
"""
    tmp = tmp_path_factory.mktemp("embeddings")
    started = start_server(tmp, config=config)
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def runtime(server: Server) -> Any:
    return server.client()


def invoke(runtime: Any, model: str, body: dict[str, Any] | bytes) -> tuple[dict[str, Any], dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = runtime.invoke_model(modelId=model, body=raw, contentType="application/json")
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


def refused(runtime: Any, model: str, body: dict[str, Any] | bytes) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        invoke(runtime, model, body)
    error = info.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


# -------------------------------------------------------------------------------------------------------- Titan V2


def test_titan_v2_on_the_embedded_model(runtime: Any) -> None:
    body, headers = invoke(runtime, TITAN_V2, {"inputText": "A man is eating food."})
    assert set(body) == {"embedding", "inputTextTokenCount", "embeddingsByType"}
    assert len(body["embedding"]) == 384  # the served model's own size: no dimensions asked for
    assert abs(np.linalg.norm(body["embedding"]) - 1) < 1e-5  # normalize defaults to true
    assert body["inputTextTokenCount"] == 8  # [CLS] a man is eating food . [SEP]
    assert body["embeddingsByType"] == {"float": body["embedding"]}
    assert headers["x-amzn-bedrock-input-token-count"] == "8"
    assert headers["x-amzn-bedrock-output-token-count"] == "0"
    assert headers["x-llamarock-served-by"] == "minilm"

    near, _ = invoke(runtime, TITAN_V2, {"inputText": "A man is eating a piece of bread."})
    far, _ = invoke(runtime, TITAN_V2, {"inputText": "The girl is carrying a baby."})
    assert cosine(body["embedding"], near["embedding"]) > cosine(body["embedding"], far["embedding"]) + 0.4
    # The same text through the foundation-model ARN gives the same vector.
    arn = f"arn:aws:bedrock:us-west-2::foundation-model/{TITAN_V2}"
    again, _ = invoke(runtime, arn, {"inputText": "A man is eating food.", "dimensions": 384})
    assert np.abs(np.array(again["embedding"]) - body["embedding"]).max() < 1e-5


def test_titan_v2_normalize_and_binary(runtime: Any) -> None:
    text = "Binary embeddings keep the sign of each dimension."
    raw, _ = invoke(runtime, TITAN_V2, {"inputText": text, "normalize": False, "embeddingTypes": ["binary", "float"]})
    unit, _ = invoke(runtime, TITAN_V2, {"inputText": text})
    assert abs(np.linalg.norm(raw["embedding"]) - 1) > 0.01
    assert np.abs(np.array(raw["embedding"]) / np.linalg.norm(raw["embedding"]) - unit["embedding"]).max() < 1e-5
    assert set(raw["embeddingsByType"]) == {"binary", "float"}
    assert raw["embeddingsByType"]["binary"] == [1 if x > 0 else 0 for x in raw["embedding"]]
    only_binary, _ = invoke(runtime, TITAN_V2, {"inputText": text, "embeddingTypes": ["binary"]})
    assert set(only_binary["embeddingsByType"]) == {"binary"} and len(only_binary["embedding"]) == 384


def test_titan_v2_dimensions_the_served_model_cannot_give(runtime: Any) -> None:
    for dimensions in (1024, 256):
        code, status, message = refused(runtime, TITAN_V2, {"inputText": "hello", "dimensions": dimensions})
        assert (code, status) == ("ValidationException", 400)
        assert f"#/dimensions: {dimensions}" in message and "gives 384 dimensions" in message, message


def test_titan_v2_bad_bodies(runtime: Any) -> None:
    cases = {
        b"not json": "Malformed input request, please reformat your input and try again.",
        b"": "Malformed input request, please reformat your input and try again.",
        json.dumps({"text": "hi"}).encode(): "2 schema violations found",
        json.dumps({}).encode(): "#: required key [inputText] not found",
        json.dumps({"inputText": ""}).encode(): "#/inputText: expected minLength: 1, actual: 0",
        json.dumps({"inputText": 5}).encode(): "#/inputText: expected type: String, found: Number",
        json.dumps({"inputText": "x", "dimensions": "384"}).encode(): "#/dimensions: expected type: Integer",
        json.dumps({"inputText": "x", "normalize": "yes"}).encode(): "#/normalize: expected type: Boolean",
        json.dumps({"inputText": "x", "embeddingTypes": ["int8"]}).encode(): "#/embeddingTypes/0: int8 is not a "
                                                                             "valid enum value",
        json.dumps({"inputText": "x", "embeddingTypes": []}).encode(): "expected minimum item count: 1",
        json.dumps({"inputText": "x" * 50_001}).encode(): "#/inputText: expected maxLength: 50000, actual: 50001",
        json.dumps({"inputText": "x", "prompt": "y"}).encode(): "#: extraneous key [prompt] is not permitted",
    }
    for body, expected in cases.items():
        code, status, message = refused(runtime, TITAN_V2, body)
        assert (code, status) == ("ValidationException", 400), body[:40]
        assert expected in message, (body[:40], message)


def test_titan_v2_long_input_is_read_up_to_the_served_window(runtime: Any) -> None:
    long, headers = invoke(runtime, TITAN_V2, {"inputText": "word " * 1000})
    assert long["inputTextTokenCount"] == 256  # all-MiniLM-L6-v2 reads 256 word pieces
    assert headers["x-amzn-bedrock-input-token-count"] == "256"
    code, _, message = refused(runtime, TITAN_V2, {"inputText": "word " * 9000})
    assert code == "ValidationException" and "Too many input tokens. Max input tokens: 8192" in message


# -------------------------------------------------------------------------------------------------------- Titan G1


def test_titan_v1_on_a_gguf_deployment(runtime: Any) -> None:
    body, headers = invoke(runtime, TITAN_V1, {"inputText": "A man is eating food."})
    assert set(body) == {"embedding", "inputTextTokenCount"}
    assert len(body["embedding"]) == 576  # SmolLM2-135M's hidden size, mean-pooled by llama.cpp
    assert abs(np.linalg.norm(body["embedding"]) - 1) < 1e-4
    assert body["inputTextTokenCount"] > 0
    assert headers["x-llamarock-served-by"] == "smollm2-gguf"
    same, _ = invoke(runtime, TITAN_V1, {"inputText": "A man is eating food."})
    assert np.abs(np.array(same["embedding"]) - body["embedding"]).max() < 1e-4
    code, _, message = refused(runtime, TITAN_V1, {"inputText": "x", "dimensions": 256})
    assert code == "ValidationException" and "#: extraneous key [dimensions] is not permitted" in message


# ------------------------------------------------------------------------------------------------------- Cohere v3


def test_cohere_floats_and_by_type(runtime: Any, server: Server) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    body, headers = invoke(runtime, COHERE_EN, {"texts": texts, "input_type": "search_document"})
    assert set(body) == {"id", "embeddings", "response_type", "texts"}
    assert body["response_type"] == "embeddings_floats" and body["texts"] == texts
    assert body["id"] == headers["x-amzn-requestid"]
    vectors = body["embeddings"]
    assert [len(v) for v in vectors] == [384] * 3
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.4
    assert headers["x-amzn-bedrock-input-token-count"] == str(8 + 11 + 9)

    kinds = ["float", "int8", "uint8", "binary", "ubinary"]
    typed, _ = invoke(runtime, COHERE_EN, {"texts": texts, "input_type": "search_query", "embedding_types": kinds})
    assert typed["response_type"] == "embeddings_by_type"
    by = typed["embeddings"]
    assert set(by) == set(kinds)
    floats = np.array(by["float"])
    assert np.abs(floats - np.array(vectors)).max() < 1e-5  # input_type does not change all-MiniLM-L6-v2's vectors
    int8 = np.array(by["int8"])
    assert int8.shape == (3, 384) and int8.min() >= -128 and int8.max() <= 127
    assert np.array_equal(np.array(by["uint8"]), int8 + 128)
    assert np.array_equal(np.sign(int8), np.sign(np.rint(floats / np.abs(floats).max(1, keepdims=True) * 127)))
    ubinary = np.array(by["ubinary"], dtype=np.uint8)
    assert ubinary.shape == (3, 48)  # 384 bits packed eight to a byte
    assert np.array_equal(np.unpackbits(ubinary, axis=1), (floats > 0).astype(np.uint8))
    assert np.array_equal(np.array(by["binary"]), ubinary.astype(int) - 128)


def test_cohere_truncate(runtime: Any) -> None:
    long = "start " + "word " * 300 + "end"
    code, _, message = refused(runtime, COHERE_EN, {"texts": ["short", long], "input_type": "clustering"})
    assert code == "ValidationException" and "#/texts/1" in message and "truncate" in message, message
    cut_end, h_end = invoke(runtime, COHERE_EN, {"texts": [long], "input_type": "clustering", "truncate": "END"})
    cut_start, _ = invoke(runtime, COHERE_EN, {"texts": [long], "input_type": "clustering", "truncate": "START"})
    head, _ = invoke(runtime, COHERE_EN, {"texts": ["start " + "word " * 253], "input_type": "clustering"})
    tail, _ = invoke(runtime, COHERE_EN, {"texts": ["word " * 253 + "end"], "input_type": "clustering"})
    assert h_end["x-amzn-bedrock-input-token-count"] == "256"
    assert np.abs(np.array(cut_end["embeddings"][0]) - head["embeddings"][0]).max() < 1e-5
    assert np.abs(np.array(cut_start["embeddings"][0]) - tail["embeddings"][0]).max() < 1e-5
    assert cut_start["texts"] == [long]


def test_cohere_bad_bodies(runtime: Any) -> None:
    cases = {
        json.dumps({"texts": ["x"]}).encode(): "#: required key [input_type] not found",
        json.dumps({"input_type": "search_query"}).encode(): "#: required key [texts] not found",
        json.dumps({"texts": ["x"], "input_type": "search"}).encode(): "#/input_type: search is not a valid enum",
        json.dumps({"texts": "x", "input_type": "clustering"}).encode(): "#/texts: expected type: JSONArray",
        json.dumps({"texts": ["x"] * 97, "input_type": "clustering"}).encode(): "expected maximum item count: 96, "
                                                                               "found: 97",
        json.dumps({"texts": ["x" * 2049], "input_type": "clustering"}).encode(): "#/texts/0: expected maxLength: "
                                                                                  "2048",
        json.dumps({"texts": ["x"], "input_type": "clustering", "truncate": "MIDDLE"}).encode(): "#/truncate",
        json.dumps({"texts": ["x"], "input_type": "clustering", "embedding_types": ["int4"]}).encode():
            "#/embedding_types/0: int4 is not a valid enum value",
        json.dumps({"texts": ["x"], "input_type": "image", "images": ["data:image/png;base64,AAAA"]}).encode():
            "image",
        json.dumps({"texts": ["x"], "input_type": "clustering", "inputText": "y"}).encode():
            "#: extraneous key [inputText] is not permitted",
    }
    for body, expected in cases.items():
        code, status, message = refused(runtime, COHERE_EN, body)
        assert (code, status) == ("ValidationException", 400), body[:60]
        assert expected in message, (body[:60], message)


def test_cohere_on_a_remote_endpoint(runtime: Any) -> None:
    RemoteEmbeddings.requests.clear()
    texts = ["one two three", "four five", "six"]
    body, headers = invoke(runtime, COHERE_ML, {"texts": texts, "input_type": "search_document"})
    assert headers["x-llamarock-served-by"] == "remote-peer"
    for text, vector in zip(texts, body["embeddings"], strict=True):
        expected = np.array(remote_vector(text, REMOTE_DIMENSIONS[0]))
        assert np.abs(np.array(vector) - expected / np.linalg.norm(expected)).max() < 1e-6
    assert headers["x-amzn-bedrock-input-token-count"] == str(4 + 3 + 2)  # the peer's usage.prompt_tokens
    (sent,) = RemoteEmbeddings.requests
    assert sent["path"] == "/v1/embeddings" and sent["model"] == "peer-embed" and sent["input"] == texts
    assert sent["auth"] == "Bearer peer-secret" and "dimensions" not in sent

    code, status, message = refused(runtime, COHERE_ML, {"texts": ["fail"], "input_type": "search_query"})
    assert (code, status) == ("ModelErrorException", 424) and "answered 500" in message


# ------------------------------------------------------------------------------------ operations that refuse them


def test_generating_operations_refuse_embedding_models(runtime: Any) -> None:
    with pytest.raises(ClientError) as info:
        runtime.converse(modelId=TITAN_V2, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert info.value.response["Error"]["Message"] == (
        "This action doesn't support the model that you provided. Try again with a supported text or chat model."
    )
    with pytest.raises(ClientError) as info:
        runtime.converse_stream(modelId=COHERE_EN, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "doesn't support the model" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        runtime.invoke_model_with_response_stream(modelId=TITAN_V2, body=json.dumps({"inputText": "hi"}))
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert info.value.response["Error"]["Message"] == "The model is unsupported for streaming."
    # And a Llama model still answers the Llama body (the fake engine here).
    body, _ = invoke(runtime, "meta.llama3-8b-instruct-v1:0", {"prompt": "hi", "max_gen_len": 4})
    assert "generation" in body


def test_region_that_does_not_offer_the_model(server: Server) -> None:
    frankfurt = server.client(region="eu-central-1")
    body, _ = invoke(frankfurt, TITAN_V2, {"inputText": "x"})  # Titan V2 is offered in Frankfurt
    assert len(body["embedding"]) == 384
    seoul = server.client(region="ap-northeast-2")
    code, status, message = refused(seoul, TITAN_V1, {"inputText": "x"})
    assert (code, status) == ("ValidationException", 400), message


# ------------------------------------------------------------------------------------------------- catalog, usage


def test_list_foundation_models_by_embedding(server: Server) -> None:
    control = server.client("bedrock")
    listed = control.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    by_id = {m["modelId"]: m for m in listed}
    assert set(by_id) == {TITAN_V2, TITAN_V1, COHERE_EN, COHERE_ML}
    assert {m["providerName"] for m in listed} == {"Amazon", "Cohere"}
    for model in listed:
        assert model["outputModalities"] == ["EMBEDDING"] and model["inputModalities"] == ["TEXT"]
        assert model["inferenceTypesSupported"] == ["ON_DEMAND"]
        assert model["responseStreamingSupported"] is False
    amazon = control.list_foundation_models(byProvider="Amazon")["modelSummaries"]
    assert {m["modelId"] for m in amazon} == {TITAN_V2, TITAN_V1}
    text_models = control.list_foundation_models(byOutputModality="TEXT")["modelSummaries"]
    assert not {m["modelId"] for m in text_models} & set(by_id)
    details = control.get_foundation_model(modelIdentifier=TITAN_V2)["modelDetails"]
    assert details["modelName"] == "Titan Text Embeddings V2" and details["providerName"] == "Amazon"


def test_usage_and_metrics_count_input_tokens(server: Server, runtime: Any) -> None:
    def counted() -> float:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith("bedrock_input_tokens_total{") and f'ModelId="{COHERE_EN}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = counted()
    _, headers = invoke(runtime, COHERE_EN, {"texts": ["hello world", "a b c"], "input_type": "clustering"})
    assert headers["x-amzn-bedrock-input-token-count"] == "9"  # [CLS] hello world [SEP] + [CLS] a b c [SEP]
    assert counted() == before + 9
    with urllib.request.urlopen(server.url + "/llamarock/usage?by=model", timeout=10) as response:
        rows = json.loads(response.read())["rows"]
    (row,) = [r for r in rows if r.get("modelId") == COHERE_EN or r.get("key") == COHERE_EN]
    assert row["inputTokens"] >= 9 and row["outputTokens"] == 0


def test_health_names_the_embedding_deployments(server: Server) -> None:
    status, body = server.health()
    assert status == 200
    assert set(body["embedding_deployments"]) == {"remote-peer", "smollm2-gguf", "minilm"}


def test_misconfigured_deployments_are_refused_at_start(tmp_path: Path) -> None:
    from llamarock.errors import DeploymentConfigError
    from llamarock.services.embeddings import EmbeddingService
    from llamarock.settings import Settings

    with pytest.raises(DeploymentConfigError, match="not embedding models"):
        EmbeddingService(Settings(data_dir=tmp_path, embedding_deployments=[
            {"name": "x", "models": ["meta.llama3-8b-instruct-v1:0"]}]))
    with pytest.raises(DeploymentConfigError, match="GGUF file not found"):
        EmbeddingService(Settings(data_dir=tmp_path, embedding_deployments=[
            {"name": "x", "engine": "llamacpp", "model_path": str(tmp_path / "none.gguf")}]))
    from llamarock.services.deployments import DeploymentRegistry

    with pytest.raises(DeploymentConfigError, match="embedding_deployments"):
        DeploymentRegistry(Settings(data_dir=tmp_path, engine="fake", deployments=[
            {"name": "x", "models": [TITAN_V2]}]))


def test_embedding_service_by_id_and_arn(tmp_path: Path) -> None:
    """The use case knowledge bases call: vectors by catalog id or foundation-model ARN, in process."""
    import asyncio

    from llamarock.errors import ValidationException
    from llamarock.services.embeddings import EmbeddingService
    from llamarock.settings import Settings

    async def scenario() -> None:
        service = EmbeddingService(Settings(data_dir=tmp_path, engine="fake"))
        try:
            arn = f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN_V2}"
            assert await service.dimensions_for(arn) == (384,)
            by_arn = await service.embed(arn, ["hello world", "a b c"])
            by_id = await service.embed(COHERE_ML, ["hello world", "a b c"], dimensions=384)
            assert by_arn.token_counts == by_id.token_counts == [4, 5]
            assert np.abs(np.array(by_arn.vectors) - np.array(by_id.vectors)).max() < 1e-6
            raw = await service.embed(TITAN_V1, ["hello world"], normalize=False)
            assert abs(np.linalg.norm(raw.vectors[0]) - 1) > 0.01
            with pytest.raises(ValidationException, match="gives 384 dimensions"):
                await service.embed(TITAN_V2, ["x"], dimensions=1024)
            with pytest.raises(ValidationException, match="is not an embedding model"):
                await service.embed("meta.llama3-8b-instruct-v1:0", ["x"])
            with pytest.raises(ValidationException, match="not a valid embedding model identifier"):
                await service.embed("arn:aws:bedrock:nowhere", ["x"])
        finally:
            await service.close_all()

    asyncio.run(scenario())


def test_application_inference_profile_of_an_embedding_model(server: Server, runtime: Any) -> None:
    control = server.client("bedrock")
    arn = control.create_inference_profile(
        inferenceProfileName="titan-embeddings-team-a",
        modelSource={"copyFrom": f"arn:aws:bedrock:us-west-2::foundation-model/{TITAN_V2}"},
        tags=[{"key": "team", "value": "a"}],
    )["inferenceProfileArn"]
    by_profile, headers = invoke(runtime, arn, {"inputText": "A man is eating food."})
    direct, _ = invoke(runtime, TITAN_V2, {"inputText": "A man is eating food."})
    assert np.abs(np.array(by_profile["embedding"]) - direct["embedding"]).max() < 1e-6
    assert headers["x-llamarock-served-by"] == "minilm"
    with pytest.raises(ClientError) as info:
        runtime.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert "doesn't support the model" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({"inputText": "hi"}))
    assert info.value.response["Error"]["Message"] == "The model is unsupported for streaming."
    with urllib.request.urlopen(server.url + "/llamarock/usage?by=tag", timeout=10) as response:
        rows = json.loads(response.read())["rows"]
    assert any("team" in json.dumps(row) and row["inputTokens"] >= 8 for row in rows), rows


def test_provisioned_throughput_is_not_offered_for_embedding_models(server: Server) -> None:
    control = server.client("bedrock")
    with pytest.raises(ClientError) as info:
        control.create_provisioned_model_throughput(modelUnits=1, provisionedModelName="embed-pt", modelId=TITAN_V2)
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationException" and "on demand only" in error["Message"], error


def test_langchain_bedrock_embeddings(runtime: Any) -> None:
    """LangChain's BedrockEmbeddings, unmodified, with Titan V2 and Cohere bodies."""
    from langchain_aws import BedrockEmbeddings

    docs = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    for model_id in (TITAN_V2, COHERE_EN):
        embeddings = BedrockEmbeddings(client=runtime, model_id=model_id)
        vectors = embeddings.embed_documents(docs)
        query = embeddings.embed_query("Someone eats bread")
        assert [len(v) for v in vectors] == [384, 384, 384] and len(query) == 384
        scores = [cosine(query, v) for v in vectors]
        assert scores.index(max(scores)) == 1, (model_id, scores)
