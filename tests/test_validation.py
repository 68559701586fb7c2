"""Bad input to InvokeModel / InvokeModelWithResponseStream, seen through boto3: code, status, class and message."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

OPERATIONS = ["invoke_model", "invoke_model_with_response_stream"]
MODEL = "meta.llama3-1-8b-instruct-v1:0"
VISION = "meta.llama3-2-11b-instruct-v1:0"
SUFFIX = ", please reformat your input and try again."
MALFORMED = "Malformed input request" + SUFFIX
INVALID_ID = "The provided model identifier is invalid."
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


def one(violation: str) -> str:
    return f"Malformed input request: {violation}{SUFFIX}"


def many(count: int) -> str:
    return f"Malformed input request: {count} schema violations found{SUFFIX}"


def doc(**fields: Any) -> bytes:
    return json.dumps({"prompt": "hi", **fields}).encode()


def call(client: Any, operation: str, body: bytes, model_id: str = MODEL, **extra: Any) -> list[bytes]:
    """Run one operation to completion; for the stream, the decoded chunk payloads."""
    response = getattr(client, operation)(modelId=model_id, body=body, **extra)
    if operation == "invoke_model":
        return [response["body"].read()]
    return [event["chunk"]["bytes"] for event in response["body"]]


def expect_error(client: Any, operation: str, body: bytes, model_id: str = MODEL, **extra: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(client, operation, body, model_id, **extra)
    assert not isinstance(info.value, EventStreamError), "error must come before the stream starts"
    return info.value


def check(error: ClientError, client: Any, code: str, status: int, message: str) -> None:
    assert error.response["Error"]["Code"] == code
    assert error.response["Error"]["Message"] == message
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert isinstance(error, getattr(client.exceptions, code))
    assert uuid.UUID(error.response["ResponseMetadata"]["RequestId"])


# ---------------------------------------------------------------------------------------------------- body schema

BAD_BODIES = {
    "one-unknown-key": (doc(stop_sequences=["x"]), one("#: extraneous key [stop_sequences] is not permitted")),
    "unknown-max_tokens": (doc(max_tokens=5), one("#: extraneous key [max_tokens] is not permitted")),
    "two-unknown-keys": (doc(top_k=5, seed=1), many(2)),
    "three-unknown-keys": (doc(top_k=5, seed=1, n=2), many(3)),
    "unknown-and-range": (doc(top_k=5, temperature=2), many(2)),
    "prompt-number": (json.dumps({"prompt": 5}).encode(), one("#/prompt: expected type: String, found: Number")),
    "prompt-null": (json.dumps({"prompt": None}).encode(), one("#/prompt: expected type: String, found: Null")),
    "prompt-list": (json.dumps({"prompt": ["a"]}).encode(), one("#/prompt: expected type: String, found: JSONArray")),
    "temperature-string": (doc(temperature="hot"), one("#/temperature: expected type: Number, found: String")),
    "temperature-bool": (doc(temperature=True), one("#/temperature: expected type: Number, found: Boolean")),
    "top_p-object": (doc(top_p={}), one("#/top_p: expected type: Number, found: JSONObject")),
    "max_gen_len-float": (doc(max_gen_len=1.5), one("#/max_gen_len: expected type: Integer, found: Number")),
    "max_gen_len-string": (doc(max_gen_len="5"), one("#/max_gen_len: expected type: Integer, found: String")),
    "images-string": (doc(images="abc"), one("#/images: expected type: JSONArray, found: String")),
    "images-item-number": (doc(images=[1]), one("#/images/0: expected type: String, found: Number")),
    "temperature-below": (doc(temperature=-0.1), one("#/temperature: -0.1 is not greater or equal to 0")),
    "temperature-above": (doc(temperature=1.01), one("#/temperature: 1.01 is not less or equal to 1")),
    "temperature-way-above": (doc(temperature=1.5), one("#/temperature: 1.5 is not less or equal to 1")),
    "top_p-below": (doc(top_p=-1), one("#/top_p: -1 is not greater or equal to 0")),
    "top_p-above": (doc(top_p=1.0001), one("#/top_p: 1.0001 is not less or equal to 1")),
    "max_gen_len-zero": (doc(max_gen_len=0), one("#/max_gen_len: 0 is not greater or equal to 1")),
    "max_gen_len-negative": (doc(max_gen_len=-5), one("#/max_gen_len: -5 is not greater or equal to 1")),
    "max_gen_len-above": (doc(max_gen_len=2049), one("#/max_gen_len: 2049 is not less or equal to 2048")),
    "missing-prompt": (json.dumps({"temperature": 0.5}).encode(), one("#: required key [prompt] not found")),
    "empty-object": (b"{}", one("#: required key [prompt] not found")),
    "missing-prompt-and-unknown": (json.dumps({"foo": 1}).encode(), many(2)),
    "empty-body": (b"", MALFORMED),
    "not-json": (b"{prompt: hi}", MALFORMED),
    "truncated-json": (b'{"prompt": "hi"', MALFORMED),
    "not-utf8": (b'{"prompt": "\xff"}', MALFORMED),
    "nan": (b'{"prompt": "hi", "temperature": NaN}', MALFORMED),
    "json-array": (b'["hi"]', one("#: expected type: JSONObject, found: JSONArray")),
    "json-string": (b'"hi"', one("#: expected type: JSONObject, found: String")),
    "json-number": (b"42", one("#: expected type: JSONObject, found: Number")),
    "json-null": (b"null", one("#: expected type: JSONObject, found: Null")),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("body", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_body(fake_runtime: Any, operation: str, body: bytes, message: str) -> None:
    check(expect_error(fake_runtime, operation, body), fake_runtime, "ValidationException", 400, message)


EDGES = {
    "temperature-0": doc(temperature=0),
    "temperature-1": doc(temperature=1),
    "temperature-1.0": doc(temperature=1.0),
    "top_p-0": doc(top_p=0),
    "top_p-1": doc(top_p=1),
    "max_gen_len-1": doc(max_gen_len=1),
    "max_gen_len-2048": doc(max_gen_len=2048),
    "all-params": doc(temperature=0.0, top_p=1.0, max_gen_len=2048),
    "empty-prompt": json.dumps({"prompt": ""}).encode(),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("body", EDGES.values(), ids=EDGES.keys())
def test_edge_values_pass(fake_runtime: Any, operation: str, body: bytes) -> None:
    payloads = [json.loads(p) for p in call(fake_runtime, operation, body)]
    assert payloads[-1]["stop_reason"] in ("stop", "length")


def test_max_gen_len_1_generates_one_token(fake_runtime: Any) -> None:
    payload = json.loads(call(fake_runtime, "invoke_model", doc(max_gen_len=1))[0])
    assert payload["generation_token_count"] == 1
    assert payload["stop_reason"] == "length"


# ---------------------------------------------------------------------------------------------------- model, headers

IMAGE_ON_TEXT = (
    f"{one('#: extraneous key [images] is not permitted')} {MODEL} does not accept images; only the Llama 3.2 11B "
    "and 90B Vision and the Llama 4 models do."
)
IMAGE_ON_FAKE = (
    f"The model {VISION} is served by deployment fake-default, which doesn't support image input. Map this model to "
    "a deployment with an image-capable engine, or send the request without images."
)
LONG_PROMPT = "word " * 64
CONTEXT = (
    "Input is too long for requested model. The prompt is 64 tokens; deployment fake-small-context has a context "
    "window of 64 tokens. Shorten the prompt."
)
ENUM = (
    "1 validation error detected: Value 'fast' at 'performanceConfigLatency' failed to satisfy constraint: Member "
    "must satisfy enum value set: [standard, optimized]"
)
UNSUPPORTED = "The provided {} 'text/plain' is not supported by this model. Use application/json or omit the header."
BAD_REQUESTS = {
    "unknown-model": ("meta.llama9-8b-v1:0", doc(), {}, INVALID_ID),
    "not-a-model": ("hello", doc(), {}, INVALID_ID),
    "unknown-geo-profile": ("xx.meta.llama3-1-8b-instruct-v1:0", doc(), {}, INVALID_ID),
    "garbled-arn": ("arn:aws:bedrock:us-west-2:foundation-model/" + MODEL, doc(), {}, INVALID_ID),
    "arn-wrong-service": ("arn:aws:s3:us-west-2::foundation-model/" + MODEL, doc(), {}, INVALID_ID),
    "fm-arn-with-account": ("arn:aws:bedrock:us-west-2:123456789012:foundation-model/" + MODEL, doc(), {}, INVALID_ID),
    "profile-arn-no-geo": ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/" + MODEL, doc(), {}, INVALID_ID),
    "arn-unknown-model": ("arn:aws:bedrock:us-west-2::foundation-model/meta.nope", doc(), {}, INVALID_ID),
    "images-on-text-model": (MODEL, doc(images=["aGk="]), {}, IMAGE_ON_TEXT),
    "images-on-vision-fake": (VISION, doc(prompt="<|image|>hi", images=["aGk="]), {}, IMAGE_ON_FAKE),
    "prompt-too-long": ("meta.llama2-13b-chat-v1", doc(prompt=LONG_PROMPT), {}, CONTEXT),
    "bad-latency": (MODEL, doc(), {"performanceConfigLatency": "fast"}, ENUM),
    "content-type-text": (MODEL, doc(), {"contentType": "text/plain"}, UNSUPPORTED.format("contentType")),
    "accept-text": (MODEL, doc(), {"accept": "text/plain"}, UNSUPPORTED.format("accept")),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(("model_id", "body", "extra", "message"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request(fake_runtime: Any, operation: str, model_id: str, body: bytes, extra: dict, message: str) -> None:
    error = expect_error(fake_runtime, operation, body, model_id, **extra)
    check(error, fake_runtime, "ValidationException", 400, message)


def test_prompt_just_fits_small_context(fake_runtime: Any) -> None:
    payload = json.loads(call(fake_runtime, "invoke_model", doc(prompt="word " * 63), "meta.llama2-13b-chat-v1")[0])
    assert payload["prompt_token_count"] == 63


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "extra",
    [{"performanceConfigLatency": "standard"}, {"contentType": "application/json; charset=utf-8"}, {"accept": "*/*"}],
)
def test_valid_headers_pass(fake_runtime: Any, operation: str, extra: dict) -> None:
    assert call(fake_runtime, operation, doc(max_gen_len=1), **extra)


# ---------------------------------------------------------------------------------------------------- model failures


def test_failing_deployment_invoke_model(fake_runtime: Any) -> None:
    error = expect_error(fake_runtime, "invoke_model", doc(), "meta.llama2-70b-v1")
    message = "The model meta.llama2-70b-v1 failed while processing the request: scripted failure after 3 tokens"
    check(error, fake_runtime, "ModelErrorException", 424, message)


def test_failing_deployment_stream(fake_runtime: Any) -> None:
    response = fake_runtime.invoke_model_with_response_stream(modelId="meta.llama2-70b-v1", body=doc())
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    chunks = []
    with pytest.raises(EventStreamError) as info:
        for event in response["body"]:
            chunks.append(json.loads(event["chunk"]["bytes"]))
    response["body"].close()  # a stream that raised midway still holds its connection
    assert [c["generation_token_count"] for c in chunks] == [1, 2, 3]
    assert all(c["stop_reason"] is None for c in chunks)
    assert info.value.response["Error"] == {
        "Code": "modelStreamErrorException",
        "Message": "The model meta.llama2-70b-v1 failed while processing the request: scripted failure after 3 tokens",
    }


def test_validation_exception_is_not_retried(fake_server: Any) -> None:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=fake_server.url,
        aws_access_key_id="AKIDLLAMAROCKTEST",
        aws_secret_access_key="not-a-secret",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )
    sent: list[str] = []
    client.meta.events.register("before-send.bedrock-runtime", lambda request, **_: sent.append(request.url))
    for operation in OPERATIONS:
        error = expect_error(client, operation, doc(temperature=2))
        assert error.response["ResponseMetadata"]["RetryAttempts"] == 0
        check(error, client, "ValidationException", 400, one("#/temperature: 2 is not less or equal to 1"))
    assert len(sent) == 2
    assert sent[0].endswith("/model/meta.llama3-1-8b-instruct-v1%3A0/invoke")


# ---------------------------------------------------------------------------------------------------- raw HTTP


def raw(server: Any, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, Any, Any]:
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        conn.close()


def check_raw(status: int, headers: Any, body: Any, want_status: int, code: str, message: str | None = None) -> None:
    assert status == want_status
    assert headers["Content-Type"] == "application/json"
    assert headers["x-amzn-ErrorType"] == code + ERROR_TYPE_SUFFIX
    assert uuid.UUID(headers["x-amzn-RequestId"])
    assert isinstance(body, dict)
    assert isinstance(body["message"], str)
    if message is not None:
        assert body["message"] == message


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream"])
def test_body_over_25_mb(fake_server: Any, action: str) -> None:
    path = f"/model/{MODEL.replace(':', '%3A')}/{action}"
    status, headers, body = raw(fake_server, "POST", path, b"x" * 25_000_001, {"Content-Type": "application/json"})
    message = (
        "1 validation error detected: Value at 'body' failed to satisfy constraint: Member must have length less "
        "than or equal to 25000000"
    )
    check_raw(status, headers, body, 400, "ValidationException", message)


NO_OP = (
    f"No operation matches POST /model/{MODEL}/frobnicate. The runtime operations are "
    "POST /model/{modelId}/invoke|invoke-with-response-stream|converse|converse-stream|count-tokens."
)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        # (an unsigned GET /foo is S3's ListObjects of bucket foo: tests/test_s3.py)
        ("DELETE", "/", b"", 404, "UnknownOperationException", "No operation matches DELETE /."),
        ("POST", "/foo/bar", b"{}", 404, "UnknownOperationException", "No operation matches POST /foo/bar."),
        ("GET", "/model/x/invoke", b"", 404, "UnknownOperationException", "No operation matches GET /model/x/invoke."),
        ("POST", f"/model/{MODEL}/frobnicate", b"{}", 404, "UnknownOperationException", NO_OP),
        ("POST", "/model/invoke", b"{}", 404, "UnknownOperationException", None),
        ("POST", f"/model/{MODEL}/invoke", b"{", 400, "ValidationException", MALFORMED),
        ("POST", "/model/nope/invoke", doc(), 400, "ValidationException", INVALID_ID),
        ("POST", f"/model/{MODEL}/invoke-with-response-stream", b"[]", 400, "ValidationException", None),
        ("POST", f"/model/{MODEL}/converse", b"{}", 400, "ValidationException", None),
    ],
)
def test_raw_error_responses(
    fake_server: Any, method: str, path: str, body: bytes, status: int, code: str, message: str | None
) -> None:
    check_raw(*raw(fake_server, method, path, body), status, code, message)
