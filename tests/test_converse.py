"""Converse, ConverseStream and CountTokens through boto3: protocol on the fake engine, behaviour on SmolLM2."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest

FAKE_MODEL = "meta.llama3-1-8b-instruct-v1:0"  # fake-default: "This is the fake engine. You said: ..."
ECHO_MODEL = "meta.llama3-3-70b-instruct-v1:0"  # fake-echo: replies with the last user message
WEATHER = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "inputSchema": {"json": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        }},
    }
}
WEATHER_SCHEMA = WEATHER["toolSpec"]["inputSchema"]["json"]  # type: ignore[index]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": text}]}


def stream_events(client: Any, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    response = client.converse_stream(**kwargs)
    return [next(iter(event.items())) for event in response["stream"]]


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(Exception) as info:
        call(**kwargs)
    response = info.value.response  # type: ignore[attr-defined]
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


# ------------------------------------------------------------------------------------------- protocol (fake engine)


def test_converse_response_shape(fake_runtime: Any) -> None:
    response = fake_runtime.converse(
        modelId=FAKE_MODEL, messages=[user("Hello there")], system=[{"text": "Be brief."}],
        inferenceConfig={"maxTokens": 64, "temperature": 0.2}, performanceConfig={"latency": "standard"},
        requestMetadata={"team": "search"},
    )
    assert response["output"]["message"]["role"] == "assistant"
    assert response["output"]["message"]["content"] == [{"text": "This is the fake engine. You said: Hello there"}]
    assert response["stopReason"] == "end_turn"
    usage = response["usage"]
    assert usage["outputTokens"] == 9 and usage["totalTokens"] == usage["inputTokens"] + 9
    assert response["metrics"]["latencyMs"] >= 0
    assert response["performanceConfig"] == {"latency": "standard"}


def test_converse_stream_event_order(fake_runtime: Any) -> None:
    events = stream_events(fake_runtime, modelId=FAKE_MODEL, messages=[user("Hello there")])
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert set(kinds[1:-3]) == {"contentBlockDelta"} and "contentBlockStart" not in kinds
    text = "".join(payload["delta"]["text"] for kind, payload in events if kind == "contentBlockDelta")
    assert text == "This is the fake engine. You said: Hello there"
    assert events[-2][1]["stopReason"] == "end_turn"
    whole = fake_runtime.converse(modelId=FAKE_MODEL, messages=[user("Hello there")])
    assert events[-1][1]["usage"] == whole["usage"]
    assert events[-1][1]["metrics"]["latencyMs"] >= 0


def test_max_tokens_stop(fake_runtime: Any) -> None:
    response = fake_runtime.converse(modelId=FAKE_MODEL, messages=[user("Hi")], inferenceConfig={"maxTokens": 3})
    assert response["stopReason"] == "max_tokens" and response["usage"]["outputTokens"] == 3


@pytest.mark.parametrize("streaming", [False, True])
def test_stop_sequences_end_the_answer_and_are_not_emitted(fake_runtime: Any, streaming: bool) -> None:
    kwargs = {
        "modelId": FAKE_MODEL, "messages": [user("Hi")], "inferenceConfig": {"stopSequences": ["fake eng"]},
        "additionalModelResponseFieldPaths": ["/stop_sequence"],
    }
    if streaming:
        events = stream_events(fake_runtime, **kwargs)
        text = "".join(p["delta"]["text"] for k, p in events if k == "contentBlockDelta")
        stop = events[-2][1]
    else:
        response = fake_runtime.converse(**kwargs)
        text = response["output"]["message"]["content"][0]["text"]
        stop = response
    assert text == "This is the "
    assert stop["stopReason"] == "stop_sequence"
    assert stop["additionalModelResponseFields"] == {"stop_sequence": "fake eng"}


def test_system_documents_and_history_reach_the_prompt(fake_runtime: Any) -> None:
    document = {"document": {"format": "txt", "name": "notes", "source": {"bytes": b"The launch code is 1234."}}}
    response = fake_runtime.converse(
        modelId=ECHO_MODEL,
        messages=[user("First"), assistant("Ok"), {"role": "user", "content": [document, {"text": "What code?"}]}],
    )
    echoed = response["output"]["message"]["content"][0]["text"]
    assert "The launch code is 1234." in echoed and "notes" in echoed and echoed.endswith("What code?")


@pytest.mark.parametrize("streaming", [False, True])
def test_forced_tool_call_is_valid_json_for_its_schema(fake_runtime: Any, streaming: bool) -> None:
    kwargs = {
        "modelId": FAKE_MODEL, "messages": [user("Weather in Paris?")],
        "toolConfig": {"tools": [WEATHER], "toolChoice": {"tool": {"name": "get_weather"}}},
    }
    if streaming:
        events = stream_events(fake_runtime, **kwargs)
        kinds = [k for k, _ in events]
        assert kinds[:2] == ["messageStart", "contentBlockStart"]
        start = events[1][1]["start"]["toolUse"]
        fragments = "".join(p["delta"]["toolUse"]["input"] for k, p in events if k == "contentBlockDelta")
        tool_input = json.loads(fragments)
        assert start["name"] == "get_weather" and start["toolUseId"].startswith("tooluse_")
        assert events[-2][1]["stopReason"] == "tool_use"
    else:
        response = fake_runtime.converse(**kwargs)
        block = response["output"]["message"]["content"][0]["toolUse"]
        assert block["name"] == "get_weather" and response["stopReason"] == "tool_use"
        tool_input = block["input"]
    jsonschema.validate(tool_input, WEATHER_SCHEMA)


def test_structured_output_follows_the_schema(fake_runtime: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    text_format = {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema)}}}
    response = fake_runtime.converse(
        modelId=FAKE_MODEL, messages=[user("Invent a person.")], outputConfig={"textFormat": text_format}
    )
    jsonschema.validate(json.loads(response["output"]["message"]["content"][0]["text"]), schema)


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"messages": [assistant("hi")]}, "ValidationException", "A conversation must start with a user message."),
        ({"messages": [user("a"), user("b")]}, "ValidationException", "A conversation must alternate between user"),
        ({"messages": [{"role": "user", "content": []}]}, "ValidationException",
         "The content field in the Message object at messages.0 is empty."),
        ({"messages": [user("   ")]}, "ValidationException",
         "The text field in the ContentBlock object at messages.0.content.0 is blank."),
        ({"messages": [user("hi")], "inferenceConfig": {"maxTokens": 5000}}, "ValidationException",
         "The maximum tokens you requested exceeds the model limit of 4096."),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"top_k": 5}}, "ValidationException",
         "Malformed input request: #: extraneous key [top_k] is not permitted"),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"temperature": "hot"}}, "ValidationException",
         "Malformed input request: #/temperature: expected type: Number, found: String"),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"max_gen_len": [1]}}, "ValidationException",
         "Malformed input request: #/max_gen_len: expected type: Integer, found: JSONArray"),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"temperature": 5}}, "ValidationException",
         "Malformed input request: #/temperature: 5 is not less or equal to 1"),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"top_p": -1}}, "ValidationException",
         "Malformed input request: #/top_p: -1 is not greater or equal to 0"),
        ({"messages": [user("hi")], "additionalModelRequestFields": {"max_gen_len": 0}}, "ValidationException",
         "Malformed input request: #/max_gen_len: 0 is not greater or equal to 1"),
        ({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": PNG}}},
                                                     {"text": "what?"}]}]},
         "ValidationException", "This model doesn't support the image content block"),
        ({"messages": [{"role": "user", "content": [
            {"document": {"format": "txt", "name": "a", "source": {"bytes": b"x"}}}]}]},
         "ValidationException", "The message at messages.0 contains a document but no text block"),
        ({"messages": [user("hi"), {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]}, user("ok")]},
         "ValidationException", "The toolConfig field must be defined when using toolUse and toolResult"),
        ({"messages": [user("hi")], "toolConfig": {"tools": [WEATHER], "toolChoice": {"tool": {"name": "nope"}}}},
         "ValidationException", "The tool nope named in toolChoice is not defined"),
        ({"messages": [user("hi")], "inferenceConfig": {"temperature": 3}}, "ValidationException",
         "1 validation error detected"),
    ],
)
def test_bedrock_validation_rules(fake_runtime: Any, kwargs: dict[str, Any], code: str, message: str) -> None:
    for call in (fake_runtime.converse, fake_runtime.converse_stream):
        got_code, status, got_message = error_of(call, modelId=FAKE_MODEL, **kwargs)
        assert (got_code, status) == (code, 400)
        assert got_message.startswith(message), got_message


def test_tool_use_needs_a_model_that_has_it(fake_runtime: Any) -> None:
    code, status, message = error_of(
        fake_runtime.converse, modelId="meta.llama3-2-1b-instruct-v1:0", messages=[user("hi")],
        toolConfig={"tools": [WEATHER]},
    )
    assert (code, status) == ("ValidationException", 400) and message.startswith("This model doesn't support tool use.")


def test_images_on_a_vision_model_need_an_image_capable_deployment(fake_runtime: Any) -> None:
    code, status, message = error_of(
        fake_runtime.converse, modelId="meta.llama3-2-11b-instruct-v1:0",
        messages=[{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": PNG}}},
                                               {"text": "what?"}]}],
    )
    assert (code, status) == ("ValidationException", 400) and "doesn't support image input" in message


def test_mid_stream_failure_is_an_exception_event(fake_runtime: Any) -> None:
    response = fake_runtime.converse_stream(modelId="meta.llama2-70b-v1", messages=[user("hi")])
    with pytest.raises(Exception) as info:
        try:
            list(response["stream"])
        finally:
            response["stream"].close()
    assert info.value.response["Error"]["Code"] == "modelStreamErrorException"  # type: ignore[attr-defined]


def test_count_tokens_matches_converse_usage_on_the_fake(fake_runtime: Any) -> None:
    request = {"messages": [user("Hello there")], "system": [{"text": "Be brief."}]}
    counted = fake_runtime.count_tokens(modelId=FAKE_MODEL, input={"converse": request})["inputTokens"]
    assert counted == fake_runtime.converse(modelId=FAKE_MODEL, **request)["usage"]["inputTokens"]
    body = json.dumps({"prompt": "Hello there world"}).encode()
    counted = fake_runtime.count_tokens(modelId=FAKE_MODEL, input={"invokeModel": {"body": body}})["inputTokens"]
    invoked = json.loads(fake_runtime.invoke_model(modelId=FAKE_MODEL, body=body)["body"].read())
    assert counted == invoked["prompt_token_count"]
