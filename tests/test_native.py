"""Tests for llamarock.bedrock.native: the native Meta Llama body, its everit-style errors, and the builders."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from llamarock.bedrock.native import (
    InvocationMetrics,
    NativeRequest,
    native_response,
    parse_native_request,
    stream_chunk,
)
from llamarock.errors import BedrockError, ValidationException

MALFORMED = "Malformed input request, please reformat your input and try again."


def one(violation: str) -> str:
    return f"Malformed input request: {violation}, please reformat your input and try again."


def many(count: int) -> str:
    return f"Malformed input request: {count} schema violations found, please reformat your input and try again."


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def error_of(raw: bytes) -> str:
    with pytest.raises(ValidationException) as info:
        parse_native_request(raw)
    assert isinstance(info.value, BedrockError)
    assert info.value.code == "ValidationException"
    return info.value.message


# --- accepted bodies -------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    request = parse_native_request(b'{"prompt": "hi"}')
    assert request == NativeRequest(prompt="hi", temperature=0.5, top_p=0.9, max_gen_len=512, images=())
    assert isinstance(request.max_gen_len, int)
    assert isinstance(request.temperature, float)


def test_spec_example_full() -> None:
    prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    raw = body({"prompt": prompt, "max_gen_len": 512, "temperature": 0.5, "top_p": 0.9})
    assert parse_native_request(raw) == NativeRequest(prompt, 0.5, 0.9, 512, ())


def test_spec_example_partial() -> None:
    request = parse_native_request(body({"prompt": "Tell me a story", "max_gen_len": 1000, "temperature": 0.7}))
    assert request == NativeRequest("Tell me a story", 0.7, 0.9, 1000, ())


def test_images() -> None:
    raw = body({"prompt": "<|image|>What is this?", "images": ["aGVsbG8=", "d29ybGQ="], "max_gen_len": 64})
    request = parse_native_request(raw)
    assert request.images == ("aGVsbG8=", "d29ybGQ=")
    assert isinstance(request.images, tuple)
    assert request.max_gen_len == 64


def test_empty_images_and_empty_prompt() -> None:
    assert parse_native_request(body({"prompt": "", "images": []})) == NativeRequest("", 0.5, 0.9, 512, ())


@pytest.mark.parametrize("field", ["temperature", "top_p"])
@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, 0.25])
def test_probability_edges(field: str, value: float) -> None:
    request = parse_native_request(body({"prompt": "p", field: value}))
    assert getattr(request, field) == value
    assert isinstance(getattr(request, field), float)


@pytest.mark.parametrize("value", [1, 2048, 1.0, 2048.0, 512.0])
def test_max_gen_len_edges_and_integral_floats(value: float) -> None:
    request = parse_native_request(body({"prompt": "p", "max_gen_len": value}))
    assert request.max_gen_len == int(value)
    assert type(request.max_gen_len) is int


def test_request_is_frozen() -> None:
    request = parse_native_request(b'{"prompt": "x"}')
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.prompt = "y"  # type: ignore[misc]


def test_unicode_prompt() -> None:
    assert parse_native_request('{"prompt": "héllo ✓"}'.encode()).prompt == "héllo ✓"


# --- malformed bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"not json",
        b'{"prompt": "x"} trailing',
        b'{"prompt": "\xff\xfe"}',
        b"\xff",
        b'{"prompt": "x", "temperature": NaN}',
        b'{"prompt": "x", "temperature": Infinity}',
        b'{"prompt": "x", "top_p": -Infinity}',
        b'{"prompt": "x", "temperature": 1e400}',
    ],
)
def test_malformed(raw: bytes) -> None:
    assert error_of(raw) == MALFORMED


# --- single schema violations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "violation"),
    [
        ({"prompt": "x", "stop_sequences": ["a"]}, "#: extraneous key [stop_sequences] is not permitted"),
        ({"prompt": "x", "max_tokens": 5}, "#: extraneous key [max_tokens] is not permitted"),
        ({"temperature": 0.5}, "#: required key [prompt] not found"),
        ({}, "#: required key [prompt] not found"),
        ({"prompt": "x", "temperature": 1.5}, "#/temperature: 1.5 is not less or equal to 1"),
        ({"prompt": "x", "temperature": -0.1}, "#/temperature: -0.1 is not greater or equal to 0"),
        ({"prompt": "x", "top_p": 2}, "#/top_p: 2 is not less or equal to 1"),
        ({"prompt": "x", "top_p": -1}, "#/top_p: -1 is not greater or equal to 0"),
        ({"prompt": "x", "max_gen_len": 0}, "#/max_gen_len: 0 is not greater or equal to 1"),
        ({"prompt": "x", "max_gen_len": -5}, "#/max_gen_len: -5 is not greater or equal to 1"),
        ({"prompt": "x", "max_gen_len": 4096}, "#/max_gen_len: 4096 is not less or equal to 2048"),
        ({"prompt": "x", "max_gen_len": 2049}, "#/max_gen_len: 2049 is not less or equal to 2048"),
        ({"prompt": "x", "max_gen_len": 4096.0}, "#/max_gen_len: 4096.0 is not less or equal to 2048"),
        ({"prompt": "x", "temperature": "0.5"}, "#/temperature: expected type: Number, found: String"),
        ({"prompt": "x", "temperature": True}, "#/temperature: expected type: Number, found: Boolean"),
        ({"prompt": "x", "top_p": None}, "#/top_p: expected type: Number, found: Null"),
        ({"prompt": "x", "top_p": [0.5]}, "#/top_p: expected type: Number, found: JSONArray"),
        ({"prompt": "x", "max_gen_len": 12.5}, "#/max_gen_len: expected type: Integer, found: Number"),
        ({"prompt": "x", "max_gen_len": "12"}, "#/max_gen_len: expected type: Integer, found: String"),
        ({"prompt": "x", "max_gen_len": False}, "#/max_gen_len: expected type: Integer, found: Boolean"),
        ({"prompt": 3}, "#/prompt: expected type: String, found: Number"),
        ({"prompt": None}, "#/prompt: expected type: String, found: Null"),
        ({"prompt": {"text": "x"}}, "#/prompt: expected type: String, found: JSONObject"),
        ({"prompt": ["x"]}, "#/prompt: expected type: String, found: JSONArray"),
        ({"prompt": "x", "images": "aGVsbG8="}, "#/images: expected type: JSONArray, found: String"),
        ({"prompt": "x", "images": [1]}, "#/images/0: expected type: String, found: Number"),
        ({"prompt": "x", "images": ["ok", None]}, "#/images/1: expected type: String, found: Null"),
        ({"prompt": "x", "images": ["ok", "ok", {}]}, "#/images/2: expected type: String, found: JSONObject"),
    ],
)
def test_single_violation(document: Any, violation: str) -> None:
    assert error_of(body(document)) == one(violation)


@pytest.mark.parametrize(
    ("raw", "found"),
    [(b"[]", "JSONArray"), (b'"x"', "String"), (b"3", "Number"), (b"2.5", "Number"), (b"null", "Null"),
     (b"true", "Boolean"), (b'[{"prompt": "x"}]', "JSONArray")],
)
def test_top_level_not_object(raw: bytes, found: str) -> None:
    assert error_of(raw) == one(f"#: expected type: JSONObject, found: {found}")


def test_exact_spec_message() -> None:
    assert error_of(b'{"prompt": "hi", "stop_sequences": ["\\n"]}') == (
        "Malformed input request: #: extraneous key [stop_sequences] is not permitted, "
        "please reformat your input and try again."
    )


# --- several violations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "count"),
    [
        ({"prompt": "x", "stop_sequences": [], "max_tokens": 5}, 2),
        ({"stop_sequences": []}, 2),
        ({"prompt": "x", "temperature": 2, "top_p": -1}, 2),
        ({"prompt": 1, "temperature": "hot", "top_p": True, "max_gen_len": 0}, 4),
        ({"prompt": "x", "images": [1, 2, 3]}, 3),
        ({"top_k": 5, "seed": 1, "n": 2, "temperature": 9}, 5),
        ({"prompt": "x", "max_gen_len": 4096.5}, 2),
    ],
)
def test_several_violations(document: Any, count: int) -> None:
    assert error_of(body(document)) == many(count)


# --- builders --------------------------------------------------------------------------------------------------------


def test_native_response() -> None:
    response = native_response("Hello there", 12, 57, "stop")
    assert response == {
        "generation": "Hello there",
        "prompt_token_count": 12,
        "generation_token_count": 57,
        "stop_reason": "stop",
    }
    assert list(response) == ["generation", "prompt_token_count", "generation_token_count", "stop_reason"]
    assert json.loads(json.dumps(response)) == response


def test_stream_chunks_as_spec() -> None:
    first = stream_chunk("Hel", prompt_tokens=5, generation_tokens=1, stop_reason=None)
    middle = stream_chunk("lo", prompt_tokens=None, generation_tokens=2, stop_reason=None)
    metrics = InvocationMetrics(input_tokens=5, output_tokens=9, invocation_latency_ms=812, first_byte_latency_ms=143)
    last = stream_chunk("", prompt_tokens=None, generation_tokens=9, stop_reason="stop", metrics=metrics)
    assert json.dumps(first, separators=(",", ":")) == (
        '{"generation":"Hel","prompt_token_count":5,"generation_token_count":1,"stop_reason":null}'
    )
    assert json.dumps(middle, separators=(",", ":")) == (
        '{"generation":"lo","prompt_token_count":null,"generation_token_count":2,"stop_reason":null}'
    )
    assert last == {
        "generation": "",
        "prompt_token_count": None,
        "generation_token_count": 9,
        "stop_reason": "stop",
        "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 5,
            "outputTokenCount": 9,
            "invocationLatency": 812,
            "firstByteLatency": 143,
        },
    }
    assert "cacheReadInputTokenCount" not in last["amazon-bedrock-invocationMetrics"]


def test_stream_chunk_without_metrics_has_no_metrics_key() -> None:
    chunk = stream_chunk("x", prompt_tokens=3, generation_tokens=1, stop_reason="length")
    assert "amazon-bedrock-invocationMetrics" not in chunk
    assert chunk["stop_reason"] == "length"


def test_stream_chunk_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        stream_chunk("x", 3, 1, None)  # type: ignore[misc]


def test_metrics_with_cache_read() -> None:
    metrics = InvocationMetrics(7, 3, 100, 20, cache_read_input_tokens=4)
    chunk = stream_chunk("", prompt_tokens=None, generation_tokens=3, stop_reason="length", metrics=metrics)
    assert chunk["amazon-bedrock-invocationMetrics"] == {
        "inputTokenCount": 7,
        "outputTokenCount": 3,
        "invocationLatency": 100,
        "firstByteLatency": 20,
        "cacheReadInputTokenCount": 4,
    }


def test_metrics_cache_read_zero_is_included() -> None:
    metrics = InvocationMetrics(1, 1, 1, 1, cache_read_input_tokens=0)
    assert metrics.to_json()["cacheReadInputTokenCount"] == 0
