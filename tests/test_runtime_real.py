"""InvokeModel and InvokeModelWithResponseStream through boto3 against `llamarock serve` on the real SmolLM2."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from conftest import Server
from llama_cpp import Llama

from llamarock.bedrock import catalog
from llamarock.services.deployments import embedded_model_path

LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
ALL_IDS = [m.model_id for m in catalog.LLAMA_MODELS]


@pytest.fixture(scope="module")
def vocab() -> Llama:
    return Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)


def _invoke(runtime: Any, model_id: str, **body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    response = runtime.invoke_model(modelId=model_id, body=json.dumps(body))
    return json.loads(response["body"].read()), response["ResponseMetadata"]["HTTPHeaders"]


def _profile_forms(model_id: str) -> list[str]:
    # A profile ARN names the account the server answers as (account_id, 000000000000 by default).
    return [f"us.{model_id}", f"arn:aws:bedrock:us-west-2:000000000000:inference-profile/us.{model_id}"]


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_every_catalog_id_in_every_form(runtime: Any, model_id: str) -> None:
    # The client signs for us-west-2, which offers every catalog model but Llama 4 on demand; only Llama 3.1, 3.2,
    # 3.3 and 4 have a us. cross-region inference profile (docs/regions.md).
    has_profile = "us" in catalog.BY_ID[model_id].geo_profiles
    on_demand = "us-west-2" in catalog.BY_ID[model_id].on_demand_regions
    forms = [model_id, f"arn:aws:bedrock:us-west-2::foundation-model/{model_id}"]
    if not on_demand:
        for form in forms:
            with pytest.raises(runtime.exceptions.ValidationException):
                _invoke(runtime, form, prompt=LLAMA3_PROMPT, max_gen_len=2)
        forms = []
    for form in forms + (_profile_forms(model_id) if has_profile else []):
        body, headers = _invoke(runtime, form, prompt=LLAMA3_PROMPT, max_gen_len=2)
        assert set(body) == {"generation", "prompt_token_count", "generation_token_count", "stop_reason"}
        assert 1 <= body["generation_token_count"] <= 2
        assert headers["x-llamarock-served-by"] == "smollm2-135m-embedded"
    if not has_profile:
        for form in _profile_forms(model_id):
            with pytest.raises(runtime.exceptions.ValidationException):
                _invoke(runtime, form, prompt=LLAMA3_PROMPT, max_gen_len=2)


def test_an_application_inference_profile_serves_the_real_model(server: Server, runtime: Any) -> None:
    control = server.client("bedrock")
    arn = control.create_inference_profile(
        inferenceProfileName="real-scout", tags=[{"key": "team", "value": "real"}],
        modelSource={"copyFrom": "arn:aws:bedrock:us-west-2:000000000000:inference-profile/"
                                 "us.meta.llama4-scout-17b-instruct-v1:0"},
    )["inferenceProfileArn"]
    answer = runtime.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "Say hello."}]}],
                              inferenceConfig={"maxTokens": 4})
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-llamarock-served-by"] == "smollm2-135m-embedded"
    assert 1 <= answer["usage"]["outputTokens"] <= 4 and answer["output"]["message"]["content"][0]["text"]
    control.delete_inference_profile(inferenceProfileIdentifier=arn)
    with pytest.raises(runtime.exceptions.ResourceNotFoundException):
        runtime.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "Say hello."}]}])


def test_other_geographies_resolve_from_their_own_regions(server: Server, runtime: Any) -> None:
    ireland = boto3.client("bedrock-runtime", region_name="eu-west-1", endpoint_url=server.url,
                           aws_access_key_id="AKIDLLAMAROCKTEST", aws_secret_access_key="not-a-secret")
    body, _ = _invoke(ireland, "eu.meta.llama3-2-1b-instruct-v1:0", prompt="Hello", max_gen_len=1)
    assert body["generation_token_count"] == 1
    refused = ((runtime, "eu.meta.llama3-2-1b-instruct-v1:0"), (ireland, "apac.meta.llama3-1-8b-instruct-v1:0"))
    for client, form in refused:
        with pytest.raises(client.exceptions.ValidationException):
            _invoke(client, form, prompt="Hello", max_gen_len=1)


def test_response_headers_match_the_body(runtime: Any) -> None:
    response = runtime.invoke_model(
        modelId="meta.llama3-1-8b-instruct-v1:0", body=json.dumps({"prompt": LLAMA3_PROMPT, "max_gen_len": 8})
    )
    body = json.loads(response["body"].read())
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert response["contentType"] == "application/json"
    assert headers["x-amzn-requestid"] == response["ResponseMetadata"]["RequestId"]
    assert 0 <= int(headers["x-amzn-bedrock-cache-read-input-token-count"]) < body["prompt_token_count"]
    assert int(headers["x-amzn-bedrock-input-token-count"]) == body["prompt_token_count"]
    assert int(headers["x-amzn-bedrock-output-token-count"]) == body["generation_token_count"]
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0


def test_defaults_and_length_stop(runtime: Any) -> None:
    body, _ = _invoke(runtime, "meta.llama2-70b-v1", prompt=COUNTING, max_gen_len=4, temperature=0)
    assert body["stop_reason"] == "length" and body["generation_token_count"] == 4
    body, _ = _invoke(runtime, "meta.llama3-8b-instruct-v1:0", prompt=LLAMA3_PROMPT)
    assert body["generation"].strip() and body["generation_token_count"] <= 512


def test_end_of_turn_is_stop_and_special_tokens_never_leak(runtime: Any) -> None:
    # Sampled answers of the 135M model vary; within a few tries one ends its turn before the limit.
    reasons = []
    for _ in range(6):
        body, _ = _invoke(runtime, "meta.llama3-1-8b-instruct-v1:0", prompt=LLAMA3_PROMPT, max_gen_len=200)
        reasons.append(body["stop_reason"])
        for marker in ("<|", "|>", "im_end", "im_start", "eot_id"):
            assert marker not in body["generation"]
        if body["stop_reason"] == "stop":
            assert body["generation_token_count"] < 200
            break
    assert "stop" in reasons


def test_plain_prompt_is_completed_as_text_and_counted_by_the_tokenizer(runtime: Any, vocab: Llama) -> None:
    body, _ = _invoke(runtime, "meta.llama2-70b-v1", prompt=COUNTING, max_gen_len=6, temperature=0)
    assert body["prompt_token_count"] == len(vocab.tokenize(COUNTING.encode(), add_bos=True, special=True))
    assert body["generation"].lstrip().startswith("11")


def test_llama3_prompt_is_rendered_with_the_served_models_template(runtime: Any, vocab: Llama) -> None:
    body, _ = _invoke(runtime, "meta.llama3-1-8b-instruct-v1:0", prompt=LLAMA3_PROMPT, max_gen_len=1)
    chatml = (
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert body["prompt_token_count"] == len(vocab.tokenize(chatml.encode(), add_bos=True, special=True))


def test_llama2_prompt_with_system_is_rendered_too(runtime: Any, vocab: Llama) -> None:
    prompt = "<s>[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"
    body, _ = _invoke(runtime, "meta.llama2-13b-chat-v1", prompt=prompt, max_gen_len=1)
    chatml = (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert body["prompt_token_count"] == len(vocab.tokenize(chatml.encode(), add_bos=True, special=True))


def test_prompt_longer_than_the_context_is_a_validation_error(runtime: Any) -> None:
    with pytest.raises(runtime.exceptions.ValidationException) as info:
        _invoke(runtime, "meta.llama3-1-8b-instruct-v1:0", prompt="word " * 9000)
    assert info.value.response["Error"]["Message"].startswith("Input is too long for requested model.")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def _stream(runtime: Any, model_id: str, **body: Any) -> tuple[Any, list[dict[str, Any]]]:
    response = runtime.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))
    return response, [json.loads(event["chunk"]["bytes"]) for event in response["body"]]


def test_stream_chunks_follow_bedrock(runtime: Any) -> None:
    response, chunks = _stream(runtime, "us.meta.llama3-2-11b-instruct-v1:0", prompt=COUNTING, max_gen_len=24,
                               temperature=0)
    assert response["contentType"] == "application/json"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    assert len(chunks) > 5
    assert chunks[0]["prompt_token_count"] > 0
    assert all(c["prompt_token_count"] is None for c in chunks[1:])
    counts = [c["generation_token_count"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 24
    assert all(c["stop_reason"] is None for c in chunks[:-1]) and chunks[-1]["stop_reason"] == "length"
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == chunks[0]["prompt_token_count"]
    assert 0 <= metrics["cacheReadInputTokenCount"] < metrics["inputTokenCount"]
    assert metrics["outputTokenCount"] == 24
    assert 0 <= metrics["firstByteLatency"] <= metrics["invocationLatency"]
    assert all("amazon-bedrock-invocationMetrics" not in c for c in chunks[:-1])
    invoked, _ = _invoke(runtime, "meta.llama3-2-11b-instruct-v1:0", prompt=COUNTING, max_gen_len=24, temperature=0)
    assert "".join(c["generation"] for c in chunks) == invoked["generation"]


def test_first_chunk_arrives_early_in_a_long_stream(runtime: Any) -> None:
    started = time.monotonic()
    response = runtime.invoke_model_with_response_stream(
        modelId="meta.llama2-70b-v1", body=json.dumps({"prompt": COUNTING, "max_gen_len": 256, "temperature": 0})
    )
    first_at = None
    last: dict[str, Any] = {}
    for event in response["body"]:
        if first_at is None:
            first_at = time.monotonic() - started
        last = json.loads(event["chunk"]["bytes"])
    total = time.monotonic() - started
    assert last["generation_token_count"] == 256
    assert first_at is not None and first_at < total / 10, (first_at, total)


def test_disconnect_stops_generation_and_health_answers_during_it(server: Server, runtime: Any) -> None:
    def engine_stats() -> dict[str, Any]:
        return server.health()[1]["deployments"]["smollm2-135m-embedded"]

    before = engine_stats()["generated_tokens"]
    response = runtime.invoke_model_with_response_stream(
        modelId="meta.llama2-70b-v1", body=json.dumps({"prompt": COUNTING, "max_gen_len": 2048, "temperature": 0})
    )
    events = iter(response["body"])
    next(events)
    during = engine_stats()
    assert during["active"] == 1  # /healthz answered while the generation runs
    response["body"].close()
    deadline = time.monotonic() + 15
    while engine_stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = engine_stats()
    assert after["active"] == 0
    assert after["generated_tokens"] - before < 1000


def test_requests_run_while_another_streams(runtime: Any) -> None:
    results: list[dict[str, Any]] = []

    def stream() -> None:
        results.extend(_stream(runtime, "meta.llama2-70b-v1", prompt=COUNTING, max_gen_len=64)[1])

    thread = threading.Thread(target=stream)
    thread.start()
    body, _ = _invoke(runtime, "meta.llama3-1-8b-instruct-v1:0", prompt=LLAMA3_PROMPT, max_gen_len=4)
    thread.join()
    assert body["generation_token_count"] == 4
    assert results[-1]["generation_token_count"] == 64


def test_prefix_cache_shows_in_usage(runtime: Any) -> None:
    prompt = "You are a meticulous assistant who answers in one sentence. " * 30 + "Say hi."
    first = runtime.invoke_model(modelId="meta.llama2-70b-v1", body=json.dumps({"prompt": prompt, "max_gen_len": 2}))
    again = runtime.invoke_model(modelId="meta.llama2-70b-v1", body=json.dumps({"prompt": prompt, "max_gen_len": 2}))
    body = json.loads(again["body"].read())
    headers = again["ResponseMetadata"]["HTTPHeaders"]
    first["body"].read()
    cached = int(headers["x-amzn-bedrock-cache-read-input-token-count"])
    assert cached >= body["prompt_token_count"] - 2
    # InvokeModel counts the whole prompt, cached or not; the cache-read header says how much the cache supplied.
    assert int(headers["x-amzn-bedrock-input-token-count"]) == body["prompt_token_count"]
    chat = [{"role": "user", "content": [{"text": prompt}]}]
    runtime.converse(modelId="meta.llama3-1-8b-instruct-v1:0", messages=chat, inferenceConfig={"maxTokens": 2})
    usage = runtime.converse(
        modelId="meta.llama3-1-8b-instruct-v1:0", messages=chat, inferenceConfig={"maxTokens": 2}
    )["usage"]
    assert usage["cacheReadInputTokens"] > 300
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] + usage["cacheReadInputTokens"]
