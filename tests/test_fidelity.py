"""Issue 14, item 1: every refusal Bedrock makes, made the same way (fake engine, boto3 against a live server)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from llamarock import errors
from llamarock.codec.errors import FRONT_END_CODES, as_declared, declared_codes
from llamarock.context import BEDROCK, RUNTIME
from llamarock.routes.operations import OperationTable
from tests.test_converse import ECHO_MODEL, FAKE_MODEL, WEATHER, WEATHER_SCHEMA, error_of, stream_events, user


def blocks(*content: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(content)}]


def both(client: Any, **kwargs: Any) -> list[tuple[str, int, str]]:
    """The error of Converse and of ConverseStream for the same request."""
    return [error_of(call, **kwargs) for call in (client.converse, client.converse_stream)]


def test_guard_content_is_text_without_a_guardrail(fake_runtime: Any) -> None:
    guarded = {"guardContent": {"text": {"text": "Summarise the guarded passage", "qualifiers": ["guard_content"]}}}
    response = fake_runtime.converse(modelId=ECHO_MODEL, messages=blocks(guarded))
    assert response["output"]["message"]["content"][0]["text"] == "Summarise the guarded passage"
    system = [{"text": "Be brief."}, {"guardContent": {"text": {"text": "Never say the code."}}}]
    counted = fake_runtime.count_tokens(modelId=ECHO_MODEL, input={"converse": {
        "messages": blocks({"text": "hi"}), "system": system}})["inputTokens"]
    without = fake_runtime.count_tokens(modelId=ECHO_MODEL, input={"converse": {
        "messages": blocks({"text": "hi"}), "system": system[:1]}})["inputTokens"]
    assert counted > without  # the guardContent system text reached the prompt


@pytest.mark.parametrize(("block", "kind"), [
    ({"video": {"format": "mp4", "source": {"bytes": b"\x00\x00\x00\x18ftypmp42"}}}, "video"),
    ({"audio": {"format": "wav", "source": {"bytes": b"RIFF\x00\x00\x00\x00WAVE"}}}, "audio"),
])
def test_video_and_audio_are_refused_not_dropped(fake_runtime: Any, block: dict[str, Any], kind: str) -> None:
    for code, status, message in both(fake_runtime, modelId=FAKE_MODEL, messages=blocks(block, {"text": "what?"})):
        assert (code, status) == ("ValidationException", 400)
        assert message.startswith(f"This model doesn't support the {kind} content block that you provided at "
                                  "messages.0.content.0."), message


def test_reasoning_content_in_history_is_refused(fake_runtime: Any) -> None:
    reasoning = {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}}
    messages = [user("hi"), {"role": "assistant", "content": [reasoning, {"text": "hello"}]}, user("and?")]
    code, status, message = error_of(fake_runtime.converse, modelId=FAKE_MODEL, messages=messages)
    assert (code, status) == ("ValidationException", 400)
    assert "doesn't support the reasoningContent content block" in message and "messages.1.content.0" in message


def test_cache_points_are_accepted_everywhere(fake_runtime: Any) -> None:
    cache = {"cachePoint": {"type": "default"}}
    response = fake_runtime.converse(
        modelId=ECHO_MODEL, system=[{"text": "Be brief."}, cache],
        messages=blocks({"text": "Hello cache"}, cache),
        toolConfig={"tools": [WEATHER, cache]},
    )
    assert response["output"]["message"]["content"][0]["text"] == "Hello cache"


def test_system_tools_are_refused(fake_runtime: Any) -> None:
    code, status, message = error_of(fake_runtime.converse, modelId=FAKE_MODEL, messages=[user("hi")],
                                     toolConfig={"tools": [WEATHER, {"systemTool": {"name": "nova_grounding"}}]})
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("This model doesn't support the system tool at toolConfig.tools.1.")


def test_unknown_guardrail_is_resource_not_found(fake_runtime: Any) -> None:
    guardrail = {"guardrailIdentifier": "abc123", "guardrailVersion": "1"}
    for code, status, message in both(fake_runtime, modelId=FAKE_MODEL, messages=[user("hi")],
                                      guardrailConfig=guardrail):
        assert (code, status) == ("ResourceNotFoundException", 404)
        assert "does not exist" in message and "abc123" in message
    body = json.dumps({"prompt": "hi"})
    for call in (fake_runtime.invoke_model, fake_runtime.invoke_model_with_response_stream):
        code, status, message = error_of(call, modelId=FAKE_MODEL, body=body, guardrailIdentifier="abc123",
                                         guardrailVersion="DRAFT")
        assert (code, status) == ("ResourceNotFoundException", 404) and "abc123" in message


@pytest.mark.parametrize("path", ["stop_sequence", "/a~2b", "/ok/~"])
def test_malformed_response_field_paths_are_refused(fake_runtime: Any, path: str) -> None:
    for code, status, message in both(fake_runtime, modelId=FAKE_MODEL, messages=[user("hi")],
                                      additionalModelResponseFieldPaths=["/stop_sequence", path]):
        assert (code, status) == ("ValidationException", 400)
        assert f"The JSON Pointer {path!r} at additionalModelResponseFieldPaths.1 is not valid" in message


def test_valid_pointer_to_an_absent_field_is_ignored(fake_runtime: Any) -> None:
    response = fake_runtime.converse(modelId=FAKE_MODEL, messages=[user("hi")],
                                     additionalModelResponseFieldPaths=["/stop_sequence", "/no~1such~0field"])
    assert response["additionalModelResponseFields"] == {"stop_sequence": None}


@pytest.mark.parametrize("kwargs", [
    {"toolConfig": {"tools": [{"toolSpec": {**WEATHER["toolSpec"], "name": "my tool!"}}]}},  # type: ignore[dict-item]
    {"requestMetadata": {"team<script>": "x"}},
])
def test_service_model_patterns_are_enforced(fake_runtime: Any, kwargs: dict[str, Any]) -> None:
    for code, status, message in both(fake_runtime, modelId=FAKE_MODEL, messages=[user("hi")], **kwargs):
        assert (code, status) == ("ValidationException", 400)
        assert "Member must satisfy regular expression pattern" in message, message


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_truncated_forced_tool_call_ends_the_same_in_both_operations(fake_runtime: Any, max_tokens: int) -> None:
    kwargs = {"modelId": FAKE_MODEL, "messages": [user("Weather in Paris?")],
              "inferenceConfig": {"maxTokens": max_tokens},
              "toolConfig": {"tools": [WEATHER], "toolChoice": {"tool": {"name": "get_weather"}}}}
    response = fake_runtime.converse(**kwargs)
    assert response["stopReason"] == "max_tokens"
    [block] = response["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "get_weather"
    events = stream_events(fake_runtime, **kwargs)
    assert events[-2][1]["stopReason"] == "max_tokens"
    starts = [p["start"]["toolUse"] for k, p in events if k == "contentBlockStart"]
    assert [s["name"] for s in starts] == ["get_weather"]
    streamed = json.loads("".join(p["delta"]["toolUse"]["input"] for k, p in events if k == "contentBlockDelta"))
    assert streamed == block["toolUse"]["input"]
    complete = fake_runtime.converse(**{**kwargs, "inferenceConfig": {"maxTokens": 64}})
    assert complete["stopReason"] == "tool_use"
    jsonschema.validate(complete["output"]["message"]["content"][0]["toolUse"]["input"], WEATHER_SCHEMA)


def _error_classes() -> list[type[errors.BedrockError]]:
    found, pending = [], [errors.BedrockError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_an_operation_returns_is_one_it_declares() -> None:
    """Clients build exception classes from the service model: each code an operation can send (before the first
    byte, or inside its event stream) is one its model declares, or one AWS's front end sends for any operation."""
    table = OperationTable()
    checked = 0
    for service in (RUNTIME, BEDROCK):
        for name, row in table.implemented(service).items():
            for cls in _error_classes():
                error = cls("boom")
                sent = as_declared(error, service, name)
                assert sent.code in declared_codes(service, name) or sent.code in FRONT_END_CODES, (name, cls)
                assert sent.message == "boom"
                if row.streaming:
                    framed = as_declared(error, service, name, stream=True)
                    assert framed.code in declared_codes(service, name, stream=True), (name, cls)
                checked += 1
    assert checked > 100


def test_count_tokens_not_ready_is_service_unavailable() -> None:
    sent = as_declared(errors.ModelNotReadyException("loading"), RUNTIME, "CountTokens")
    assert (sent.code, sent.message) == ("ServiceUnavailableException", "loading")
    stalled = as_declared(errors.ModelTimeoutException("slow"), RUNTIME, "ConverseStream", stream=True)
    assert stalled.code == "ModelStreamErrorException" and stalled.body()["originalStatusCode"] == 408
    kept = as_declared(errors.ModelTimeoutException("slow"), RUNTIME, "InvokeModelWithResponseStream", stream=True)
    assert kept.code == "ModelTimeoutException"
