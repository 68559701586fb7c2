"""OpenAI Chat Completions on the runtime endpoint (``/openai/v1``), driven by the official ``openai`` Python SDK.

The protocol (list shape, chunks, usage, errors mapped to the SDK's exception classes, auth, metering) is pinned on
the fake engine; that a chat completion *is* the Converse call it translates to (same text, same token counts) and
that tools, structured output, stop and seed really steer generation is proven on the real model.
"""

from __future__ import annotations

import base64
import json
import ssl
import struct
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarock.storage.blobs import LocalBlobStore
from tests.conftest import Server, start_server, stop_server
from tests.test_auth_server import create
from tests.test_invocation_logging import FAKE_LOCAL, data_dir, wait_records

MODEL = "meta.llama3-1-8b-instruct-v1:0"
OTHER = "meta.llama3-1-70b-instruct-v1:0"
METERED = "meta.llama3-2-1b-instruct-v1:0"  # on demand in us-west-2, used here only to read usage deltas
TEXT_ONLY = "meta.llama3-1-8b-instruct-v1:0"
VISION = "meta.llama3-2-11b-instruct-v1:0"
HELLO = [{"role": "user", "content": "Name three colors."}]

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone.",
                                      "parameters": TIME}},
]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                   "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
    "required": ["name", "age", "languages"],
}


def sdk(server: Server, api_key: str = "anything", **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/openai/v1", api_key=api_key, max_retries=0, timeout=300, **options)


@pytest.fixture(scope="module")
def fake(fake_server: Server) -> openai.OpenAI:
    return sdk(fake_server)


@pytest.fixture(scope="module")
def real(server: Server) -> openai.OpenAI:
    return sdk(server)


def converse_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": [{"text": m["content"]}]} for m in messages]


def prompt_tokens(usage: dict[str, int]) -> int:
    """The whole prompt of a Converse usage (OpenAI's prompt_tokens count cached tokens too)."""
    return usage["inputTokens"] + usage.get("cacheReadInputTokens", 0)


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ------------------------------------------------------------------------------------------ protocol (fake engine)


def test_model_list_is_what_bedrock_lists_for_the_region(fake: openai.OpenAI, fake_server: Server) -> None:
    models = fake.models.list()
    listed = {m.id for m in models.data}
    bedrock = fake_server.client("bedrock")
    # Chat models only: the embedding models (Titan, Cohere) answer InvokeModel, not chat completions.
    on_demand = {s["modelId"] for s in bedrock.list_foundation_models(byOutputModality="TEXT")["modelSummaries"]
                 if "ON_DEMAND" in s["inferenceTypesSupported"]}
    profiles = {p["inferenceProfileId"] for p in bedrock.list_inference_profiles()["inferenceProfileSummaries"]}
    assert listed == on_demand | profiles
    assert MODEL in listed and f"us.{MODEL}" in listed
    assert all(m.object == "model" and m.owned_by == "meta" and m.created > 1_600_000_000 for m in models.data)
    with urllib.request.urlopen(fake_server.url + "/openai/v1/models") as response:
        assert json.loads(response.read())["object"] == "list"


def test_completion_is_the_converse_answer(fake: openai.OpenAI, fake_runtime: Any) -> None:
    raw = fake.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, *HELLO], max_tokens=40,
    )
    completion = raw.parse()
    converse = fake_runtime.converse(modelId=MODEL, system=[{"text": "Be brief."}], messages=converse_messages(HELLO),
                                     inferenceConfig={"maxTokens": 40})
    assert completion.object == "chat.completion"
    assert completion.id == "chatcmpl-" + raw.headers["x-amzn-requestid"].replace("-", "")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == converse["output"]["message"]["content"][0]["text"]
    assert choice.finish_reason == "stop" and converse["stopReason"] == "end_turn"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_tokens(converse["usage"])
    assert completion.usage.completion_tokens == converse["usage"]["outputTokens"]
    assert completion.usage.total_tokens == converse["usage"]["totalTokens"]
    assert int(raw.headers["x-amzn-bedrock-input-token-count"]) == converse["usage"]["inputTokens"]
    assert int(raw.headers["x-amzn-bedrock-output-token-count"]) == converse["usage"]["outputTokens"]
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == converse["usage"].get("cacheReadInputTokens", 0)


def test_stream_with_usage(fake: openai.OpenAI) -> None:
    whole = fake.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40)
    stream = fake.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40, stream=True,
                                          stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert stream_text(chunks) == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # it streams
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finished] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and whole.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (whole.usage.prompt_tokens,
                                                                       whole.usage.completion_tokens)
    assert all(c.usage is None for c in chunks[:-1])
    without = list(fake.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40, stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_raw_stream_is_server_sent_events_ending_in_done(fake_server: Server) -> None:
    body = json.dumps({"model": MODEL, "messages": HELLO, "stream": True, "max_tokens": 10}).encode()
    request = urllib.request.Request(fake_server.url + "/openai/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(event.startswith("data: {") for event in events[:-2])


def test_length_finish_reason_and_max_completion_tokens(fake: openai.OpenAI) -> None:
    completion = fake.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_forced_tool_calls_parse_and_validate(fake: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    required = fake.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required")
    named = fake.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                         tool_choice={"type": "function", "function": {"name": "get_time"}})
    for completion, schemas in ((required, {"get_weather": WEATHER, "get_time": TIME}), (named, {"get_time": TIME})):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls and choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_tool_choice_none_leaves_the_tools_out(fake: openai.OpenAI) -> None:
    completion = fake.chat.completions.create(model=MODEL, messages=HELLO, tools=TOOLS, tool_choice="none")
    assert completion.choices[0].message.tool_calls is None and completion.choices[0].finish_reason == "stop"


def test_streamed_tool_call_arguments_reassemble(fake: openai.OpenAI) -> None:
    chunks = list(fake.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ))
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert {call.index for call in calls} == {0}
    arguments = "".join(call.function.arguments or "" for call in calls if call.function is not None)
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_json_object_response_format(fake: openai.OpenAI) -> None:
    completion = fake.chat.completions.create(model=MODEL, messages=HELLO, response_format={"type": "json_object"})
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


def error_of(call: Any, **kwargs: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call(**kwargs)
    return info.value


def test_errors_map_to_the_sdk_exception_classes(fake: openai.OpenAI) -> None:
    create = fake.chat.completions.create
    missing = error_of(create, model="gpt-4o", messages=HELLO)
    assert isinstance(missing, openai.NotFoundError) and missing.status_code == 404
    assert missing.code == "model_not_found" and missing.param == "model" and "gpt-4o" in missing.message
    several = error_of(create, model=MODEL, messages=HELLO, n=2)
    assert isinstance(several, openai.BadRequestError) and several.param == "n"
    assert several.type == "invalid_request_error"
    empty = error_of(create, model=MODEL, messages=[])
    assert isinstance(empty, openai.BadRequestError) and empty.param == "messages"
    hot = error_of(create, model=MODEL, messages=HELLO, temperature=3)
    assert isinstance(hot, openai.BadRequestError) and hot.param == "temperature"
    unknown = error_of(create, model=MODEL, messages=HELLO, extra_body={"best_of": 2})
    assert isinstance(unknown, openai.BadRequestError) and "best_of" in unknown.message
    penalty = error_of(create, model=MODEL, messages=HELLO, presence_penalty=0.5)
    assert isinstance(penalty, openai.BadRequestError) and penalty.param == "presence_penalty"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    text_only = error_of(create, model=TEXT_ONLY,
                         messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}])
    assert isinstance(text_only, openai.BadRequestError) and "image" in text_only.message
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    fetch = error_of(create, model=VISION, messages=[{"role": "user", "content": [remote]}])
    assert isinstance(fetch, openai.BadRequestError) and fetch.code == "invalid_image_url"
    tool_without_tools = error_of(create, model=MODEL, messages=HELLO, tool_choice="required")
    assert isinstance(tool_without_tools, openai.BadRequestError) and tool_without_tools.param == "tool_choice"
    # meta.llama2-13b-chat-v1 is served with a context of 64 tokens (tests/conftest.py).
    long = [{"role": "user", "content": "word " * 200}]
    for stream in (False, True):
        overflow = error_of(create, model="meta.llama2-13b-chat-v1", messages=long, stream=stream)
        assert isinstance(overflow, openai.BadRequestError) and overflow.code == "context_length_exceeded"
    # A Converse rule (the conversation starts with a user message) in OpenAI's shape.
    assistant_first = error_of(create, model=MODEL, messages=[{"role": "assistant", "content": "Hi"}])
    assert isinstance(assistant_first, openai.BadRequestError) and "user message" in assistant_first.message


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) \
        + chunk(b"IEND", b"")


def test_images_are_converse_image_blocks(fake: openai.OpenAI, fake_runtime: Any) -> None:
    # The fake engine takes no images: Converse refuses the vision model's image for its deployment, and a data URL
    # image part gets the very same refusal, so it reached the use case as an image block.
    png = tiny_png()
    with pytest.raises(ClientError) as converse:
        fake_runtime.converse(modelId=VISION, messages=[{"role": "user", "content": [
            {"text": "What is it?"}, {"image": {"format": "png", "source": {"bytes": png}}}]}])
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    refused = error_of(fake.chat.completions.create, model=VISION, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert isinstance(refused, openai.BadRequestError)
    assert isinstance(refused.body, dict)
    assert refused.body["message"] == converse.value.response["Error"]["Message"]
    assert "image" in refused.message


def raw_post(server: Server, body: bytes, stream: bool = False) -> tuple[int, Any]:
    """Status and JSON answer of a raw POST; a stream's answer is its events' data (each parsed, but [DONE])."""
    request = urllib.request.Request(server.url + "/openai/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            if not stream:
                return response.status, json.loads(text)
            events = [event.removeprefix("data: ") for event in text.split("\n\n") if event]
            assert events[-1] == "[DONE]", events
            return response.status, [json.loads(event) for event in events[:-1]]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_bodies_are_openai_shaped_400s(fake_server: Server) -> None:
    for body in (b"{not json", b"[1, 2]", json.dumps({"messages": HELLO}).encode(),
                 json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).encode()):
        status, answer = raw_post(fake_server, body)
        assert status == 400, body
        assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A member's value: valid four times out of five, else any JSON."""
    return st.one_of(valid, valid, valid, valid, _JSON)


_TEXT = st.text(min_size=1, max_size=20)
_PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "refusal", "file", "x"])},
                              optional={"text": _mostly(_TEXT), "image_url": _JSON, "refusal": _JSON})
_CALL = st.fixed_dictionaries({"id": _mostly(st.just("call-1")), "type": _mostly(st.just("function")),
                               "function": _mostly(st.fixed_dictionaries({"name": _mostly(st.sampled_from(["f", "g"])),
                                                                          "arguments": _mostly(st.just('{"a": 1}'))}))})
_MESSAGE = st.fixed_dictionaries(
    {"role": _mostly(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
    optional={"content": st.one_of(_TEXT, _TEXT, st.lists(_PART, max_size=3), _JSON),
              "tool_calls": _mostly(st.lists(_CALL, max_size=2)), "tool_call_id": _mostly(st.just("call-1"))},
)
_CONVERSATION = st.builds(lambda first, rest: [first, *rest],
                          st.fixed_dictionaries({"role": st.just("user"), "content": _TEXT}),
                          st.lists(_MESSAGE, max_size=3))
_TOOL = st.fixed_dictionaries({"type": _mostly(st.just("function")), "function": st.fixed_dictionaries(
    {"name": _mostly(st.sampled_from(["f", "g"]))},
    optional={"parameters": _mostly(st.just(WEATHER)), "description": _mostly(_TEXT)})})
_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, f"us.{MODEL}", "meta.llama3-8b-instruct-v1:0", "nope", ""]),
     "messages": st.one_of(_CONVERSATION, _CONVERSATION, _CONVERSATION, st.lists(_MESSAGE, max_size=3), _JSON)},
    optional={
        "max_tokens": _mostly(st.integers(1, 6)), "max_completion_tokens": _mostly(st.integers(1, 6)),
        "temperature": _mostly(st.floats(0, 2)), "top_p": _mostly(st.floats(0, 1)),
        "stop": _mostly(st.one_of(_TEXT, st.lists(_TEXT, max_size=4))), "seed": _mostly(st.integers(-2**40, 2**40)),
        "n": _mostly(st.just(1)), "stream": st.booleans(),
        "stream_options": _mostly(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "metadata": _mostly(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=3)),
        "tools": _mostly(st.lists(_TOOL, min_size=1, max_size=2)),
        "tool_choice": _mostly(st.sampled_from(["auto", "none", "required",
                                                {"type": "function", "function": {"name": "f"}}])),
        "response_format": _mostly(st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema"])},
            optional={"json_schema": _mostly(st.fixed_dictionaries({"name": st.just("out")},
                                                                   optional={"schema": st.just(WEATHER)}))})),
        "user": _TEXT,
        "unknown": st.sampled_from(["store", "parallel_tool_calls", "service_tier", "whatever", "logprobs"]),
    },
).map(lambda body: {**{k: v for k, v in body.items() if k != "unknown"},
                    **({body["unknown"]: 1} if "unknown" in body else {})})


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODY)
def test_fuzzed_bodies_never_yield_a_5xx(fake_server: Server, body: dict[str, Any]) -> None:
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 4  # keep generations short
    status, answer = raw_post(fake_server, json.dumps(body).encode(), stream=body.get("stream") is True)
    assert status < 500, answer
    if status != 200:
        assert set(answer) == {"error"} and answer["error"]["message"], answer


def test_a_failure_after_the_first_chunk_is_an_error_event(fake: openai.OpenAI) -> None:
    # meta.llama2-70b-v1 is served by a fake deployment that fails after three tokens (tests/conftest.py).
    stream = fake.chat.completions.create(model="meta.llama2-70b-v1", messages=HELLO, max_tokens=50, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert received and info.value.message


def test_usage_and_metrics_count_chat_completions(fake: openai.OpenAI, fake_server: Server) -> None:
    def usage() -> dict[str, int]:
        with urllib.request.urlopen(fake_server.url + "/llamarock/usage?by=model") as response:
            rows = json.loads(response.read())["rows"]
        return next((r for r in rows if r["modelId"] == METERED), {"invocations": 0, "inputTokens": 0,
                                                                    "outputTokens": 0})

    before = usage()
    answers = [fake.chat.completions.create(model=METERED, messages=HELLO, max_tokens=20),
               fake.chat.completions.create(model=f"us.{METERED}", messages=HELLO, max_tokens=20)]
    list(fake.chat.completions.create(model=METERED, messages=HELLO, max_tokens=20, stream=True))
    after = usage()
    assert after["invocations"] - before["invocations"] == 3
    counted = [a.usage for a in answers if a.usage is not None]
    assert len(counted) == 2
    assert after["outputTokens"] - before["outputTokens"] == 3 * counted[0].completion_tokens
    assert after["inputTokens"] - before["inputTokens"] == 3 * counted[0].prompt_tokens
    with urllib.request.urlopen(fake_server.url + "/metrics") as response:
        metrics = response.read().decode()
    assert f'bedrock_invocations_total{{ModelId="{METERED}"}}' in metrics


def test_invocation_log_records_chat_completions(tmp_path: Path) -> None:
    server = start_server(tmp_path, config=FAKE_LOCAL)
    try:
        bucket = "openai-logs"
        (data_dir(server) / "blobs" / bucket).mkdir(parents=True)
        server.client("bedrock").put_model_invocation_logging_configuration(
            loggingConfig={"s3Config": {"bucketName": bucket, "keyPrefix": "chat"}, "textDataDeliveryEnabled": True})
        client = sdk(server)
        request: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_tokens": 12, "metadata": {"team": "search"}}
        whole = client.chat.completions.with_raw_response.create(**request)
        streamed = client.chat.completions.with_raw_response.create(**request, stream=True)
        chunks = [chunk.model_dump(exclude_unset=True) for chunk in streamed.parse()]
        records = wait_records(LocalBlobStore(data_dir(server) / "blobs"), bucket, "chat", 2)
    finally:
        stop_server(server)
    by_id = {record["requestId"]: record for record in records}
    logged = by_id[whole.headers["x-amzn-requestid"]]
    answer = whole.parse()
    assert logged["operation"] == "CreateChatCompletion" and logged["modelId"] == MODEL
    assert logged["requestMetadata"] == {"team": "search"}
    assert logged["input"]["inputBodyJson"] == request
    assert logged["output"]["outputBodyJson"]["choices"][0]["message"]["content"] == answer.choices[0].message.content
    assert answer.usage is not None
    assert logged["input"]["inputTokenCount"] == answer.usage.prompt_tokens
    assert logged["output"]["outputTokenCount"] == answer.usage.completion_tokens
    logged_stream = by_id[streamed.headers["x-amzn-requestid"]]
    assert [c["id"] for c in logged_stream["output"]["outputBodyJson"]] == [c["id"] for c in chunks]
    assert logged_stream["output"]["outputTokenCount"] == answer.usage.completion_tokens


RELAY_FRONT = """
region = "us-east-1"
region_servers = {{"us-west-2" = "{peer}"}}

[[deployments]]
name = "front-local"
engine = "fake"
models = ["*"]
"""


def test_a_region_server_relays_chat_completions(tmp_path: Path) -> None:
    # Llama 3.1 8B runs only in us-west-2: from a us-east-1 server, its us. profile is served by the us-west-2 peer.
    (tmp_path / "peer").mkdir()
    (tmp_path / "front").mkdir()
    peer = start_server(tmp_path / "peer", "--engine", "fake")
    try:
        front = start_server(tmp_path / "front", config=RELAY_FRONT.format(peer=peer.url))
        try:
            client = sdk(front)
            raw = client.chat.completions.with_raw_response.create(model=f"us.{MODEL}", messages=HELLO, max_tokens=8)
            direct = sdk(peer).chat.completions.create(model=f"us.{MODEL}", messages=HELLO, max_tokens=8)
            chunks = list(client.chat.completions.create(model=f"us.{MODEL}", messages=HELLO, max_tokens=8,
                                                         stream=True, stream_options={"include_usage": True}))
            local = client.chat.completions.with_raw_response.create(model="meta.llama3-8b-instruct-v1:0",
                                                                     messages=HELLO, max_tokens=8)
            with urllib.request.urlopen(front.url + "/llamarock/usage?by=model") as response:
                rows = {row["modelId"]: row for row in json.loads(response.read())["rows"]}
        finally:
            stop_server(front)
    finally:
        stop_server(peer)
    relayed = raw.parse()
    assert raw.headers["x-llamarock-served-by"] != local.headers["x-llamarock-served-by"] == "front-local"
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert stream_text(chunks) == direct.choices[0].message.content and chunks[-1].usage is not None
    assert relayed.usage is not None and rows[MODEL]["outputTokens"] >= relayed.usage.completion_tokens > 0


# ------------------------------------------------------------------------------------------ auth (enforce mode)


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def enforced_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    tmp = tmp_path_factory.mktemp("openai-enforce")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce", tls=True)
    assert server.cert is not None
    yield server, tmp / "data", server.cert
    stop_server(server)


def test_bearer_key_and_policies_under_enforce(enforced_tls: tuple[Server, Path, Path], tmp_path: Path) -> None:
    server, data, cert = enforced_tls
    with httpx.Client(verify=trusting(cert)) as http:  # closed at the end: no TLS socket left to the GC
        key = create(data, "olivia", "--bearer")
        client = sdk(server, key["bearerToken"], http_client=http)
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5).choices[0].message.content
        assert MODEL in {m.id for m in client.models.list().data}
        stranger = error_of(sdk(server, "ABSKnotarealtoken", http_client=http).chat.completions.create,
                            model=MODEL, messages=HELLO)
        assert isinstance(stranger, openai.AuthenticationError) and stranger.status_code == 401
        # A policy on one model, without the stream action: the body's model and stream flag are what is authorised.
        policy = tmp_path / "only-8b.json"
        policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "bedrock:InvokeModel",
            "Resource": f"arn:aws:bedrock:*::foundation-model/{MODEL}",
        }]}))
        token = create(data, "peter", "--bearer", "--policy", str(policy))["bearerToken"]
        limited = sdk(server, token, http_client=http)
        assert limited.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5).choices
        other = error_of(limited.chat.completions.create, model=OTHER, messages=HELLO)
        assert isinstance(other, openai.PermissionDeniedError) and OTHER in other.message
        assert "bedrock:InvokeModel" in other.message
        streamed = error_of(limited.chat.completions.create, model=MODEL, messages=HELLO, stream=True)
        assert isinstance(streamed, openai.PermissionDeniedError)
        assert "bedrock:InvokeModelWithResponseStream" in streamed.message
        deadline = time.monotonic() + 10  # a request's audit line is written just after its response
        while True:
            audit = (data / "logs" / "audit.jsonl").read_text().splitlines()
            lines = [json.loads(line) for line in audit if '"CreateChatCompletion"' in line]
            authenticated = [line for line in lines if line.get("principal")]
            if len(authenticated) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(authenticated) == 4 and {line["authType"] for line in authenticated} == {"bearer"}
        assert any(line["action"] == "bedrock:InvokeModelWithResponseStream" for line in authenticated)
        assert any(line.get("errorCode") == "UnrecognizedClientException" for line in lines)
        assert key["bearerToken"] not in "\n".join(audit)


def test_sigv4_signed_request(enforced_tls: tuple[Server, Path, Path]) -> None:
    server, data, cert = enforced_tls
    key = create(data, "sam")
    url = server.url + "/openai/v1/chat/completions"
    body = json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 5})

    def signed(secret: str) -> httpx.Response:
        request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(key["accessKeyId"], secret), "bedrock", "us-west-2").add_auth(request)
        return httpx.post(url, content=body, headers=dict(request.headers.items()), verify=trusting(cert))

    answer = signed(key["secretAccessKey"])
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    wrong = signed("not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    unsigned = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, verify=trusting(cert))
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "missing_api_key"


# ------------------------------------------------------------------------------------------ the real model


def test_real_completion_equals_converse(real: openai.OpenAI, runtime: Any) -> None:
    system, messages = "You are a helpful assistant.", [{"role": "user", "content": "What is the capital of France?"}]
    converse = runtime.converse(modelId=MODEL, system=[{"text": system}], messages=converse_messages(messages),
                                inferenceConfig={"maxTokens": 48, "temperature": 0})
    completion = real.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": system}, *messages], max_tokens=48, temperature=0,
    )
    text = converse["output"]["message"]["content"][0]["text"]
    assert text and completion.choices[0].message.content == text
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_tokens(converse["usage"])
    assert completion.usage.completion_tokens == converse["usage"]["outputTokens"]
    chunks = list(real.chat.completions.create(
        model=MODEL, messages=[{"role": "developer", "content": system}, *messages], max_tokens=48, temperature=0,
        stream=True, stream_options={"include_usage": True},
    ))
    assert stream_text(chunks) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == converse["usage"]["outputTokens"]


def test_real_prefix_cache_shows_as_cached_tokens(real: openai.OpenAI) -> None:
    prompt = "You are a careful assistant who answers in one short sentence. " * 25 + "Say hi."
    messages: list[Any] = [{"role": "user", "content": prompt}]
    first = real.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    again = real.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert first.usage is not None and again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 300
    assert again.usage.prompt_tokens_details.cached_tokens > 300
    assert again.usage.total_tokens == again.usage.prompt_tokens + again.usage.completion_tokens


def test_real_forced_tool_calls_and_round_trip(real: openai.OpenAI) -> None:
    question: list[Any] = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        completion = real.chat.completions.create(model=MODEL, messages=question, tools=TOOLS, tool_choice=choice,
                                                  max_tokens=120, temperature=0)
        assert completion.choices[0].finish_reason == "tool_calls"
        calls = completion.choices[0].message.tool_calls
        assert calls is not None
        schema = {"get_weather": WEATHER, "get_time": TIME}[calls[0].function.name]
        jsonschema.validate(json.loads(calls[0].function.arguments), schema)
        if choice != "required":
            assert calls[0].function.name == "get_weather"
    call = calls[0]
    history: list[Any] = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    answer = real.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=60, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_real_json_schema_response_format(real: openai.OpenAI) -> None:
    completion = real.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a programmer."}], max_tokens=150,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON)


def test_real_stop_cuts_the_greedy_answer(real: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Count from one to twenty in words."}]
    full = real.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0)
    text = full.choices[0].message.content or ""
    words = text.split()
    assert len(words) > 4, text
    stop = words[len(words) // 2]
    cut = real.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_real_seed_reproduces_a_sampled_answer(real: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        completion = real.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a short poem about the sea."}], max_tokens=24,
            temperature=1.0, top_p=1.0, seed=seed,
        )
        return completion.choices[0].message.content or ""

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))
