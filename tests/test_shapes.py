"""Unit tests of llamarock.codec.shapes: request bodies checked against botocore's input shapes, in AWS's words."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from llamarock.codec.shapes import SerializationException, _compiled, parse_json_body
from llamarock.errors import ValidationException

MODEL_ID = "meta.llama3-2-11b-instruct-v1:0"
PNG = b"\x89PNG\r\n\x1a\nnot-really"
PDF = b"%PDF-1.4 tiny"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse(body: Any, operation: str = "Converse", **location: Any) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_json_body(operation, raw, location_values={"modelId": MODEL_ID, **location})


def error(body: Any, operation: str = "Converse", **location: Any) -> str:
    with pytest.raises(ValidationException) as info:
        parse(body, operation, **location)
    assert info.value.code == "ValidationException"
    return info.value.message


def one(value: str, path: str, constraint: str) -> str:
    shown = "Value" if value == "" else f"Value {value}"
    return f"1 validation error detected: {shown} at '{path}' failed to satisfy constraint: {constraint}"


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


FULL = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"text": "What is in these?"},
                {"image": {"format": "png", "source": {"bytes": b64(PNG)}}},
                {"document": {"format": "pdf", "name": "Report", "source": {"bytes": b64(PDF)}}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Oslo"}}}],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"temp": -3}}], "status": "success"}}],
        },
    ],
    "system": [{"text": "Be brief."}],
    "inferenceConfig": {"maxTokens": 512, "temperature": 0.5, "topP": 1, "stopSequences": ["\n\nUser:"]},
    "toolConfig": {
        "tools": [{"toolSpec": {"name": "weather", "description": "Weather", "inputSchema": {"json": SCHEMA}}}],
        "toolChoice": {"auto": {}},
    },
    "additionalModelRequestFields": {"top_k": 5, "nested": [None, True]},
    "requestMetadata": {"project": "demo"},
    "someFutureMember": {"ignored": True},
}


def test_valid_converse_body_is_parsed_with_blobs_decoded() -> None:
    params = parse(FULL)
    assert params["modelId"] == MODEL_ID
    content = params["messages"][0]["content"]
    assert content[0] == {"text": "What is in these?"}
    assert content[1]["image"]["source"]["bytes"] == PNG
    assert content[2]["document"] == {"format": "pdf", "name": "Report", "source": {"bytes": PDF}}
    assert params["messages"][1]["content"][0]["toolUse"]["input"] == {"city": "Oslo"}
    assert params["messages"][2]["content"][0]["toolResult"]["content"] == [{"json": {"temp": -3}}]
    assert params["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == SCHEMA
    assert params["inferenceConfig"] == {
        "maxTokens": 512,
        "temperature": 0.5,
        "topP": 1.0,
        "stopSequences": ["\n\nUser:"],
    }
    assert isinstance(params["inferenceConfig"]["topP"], float)
    assert params["additionalModelRequestFields"] == {"top_k": 5, "nested": [None, True]}
    assert params["requestMetadata"] == {"project": "demo"}
    assert "someFutureMember" not in params


def test_messages_are_optional_and_may_be_empty_per_the_model() -> None:
    # Converse dropped `required: messages` when prompt-management ARNs arrived; Messages has no `min`.
    assert parse({}) == {"modelId": MODEL_ID}
    assert parse(b"") == {"modelId": MODEL_ID}
    assert parse({"messages": []})["messages"] == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # "Value '32424.0' at 'inferenceConfig.temperature'": Bedrock prints floats as Java does, in quotes.
        (
            {"inferenceConfig": {"temperature": 2}},
            one("'2.0'", "inferenceConfig.temperature", "Member must have value less than or equal to 1"),
        ),
        (
            {"inferenceConfig": {"topP": -0.5}},
            one("'-0.5'", "inferenceConfig.topP", "Member must have value greater than or equal to 0"),
        ),
        (
            {"inferenceConfig": {"maxTokens": 0}},
            one("'0'", "inferenceConfig.maxTokens", "Member must have value greater than or equal to 1"),
        ),
        (
            {"inferenceConfig": {"stopSequences": ["ok", ""]}},
            one("''", "inferenceConfig.stopSequences.2.member", "Member must have length greater than or equal to 1"),
        ),
        (
            {"additionalModelResponseFieldPaths": [f"/f{i}" for i in range(11)]},
            one(
                "'[/f0, /f1, /f2, /f3, /f4, /f5, /f6, /f7, /f8, /f9, /f10]'",
                "additionalModelResponseFieldPaths",
                "Member must have length less than or equal to 10",
            ),
        ),
        # Bedrock leaves out values inside system and content blocks: "Value at 'system.1.member.text'".
        (
            {"system": [{"text": ""}]},
            one("", "system.1.member.text", "Member must have length greater than or equal to 1"),
        ),
        (
            {"messages": [{"content": [{"text": "hi"}]}]},
            one("null", "messages.1.member.role", "Member must not be null"),
        ),
        (
            {"toolConfig": {}},
            one("null", "toolConfig.tools", "Member must not be null"),
        ),
        (
            {"toolConfig": {"tools": []}},
            one("'[]'", "toolConfig.tools", "Member must have length greater than or equal to 1"),
        ),
        (
            {"messages": [{"role": "robot", "content": [{"text": "hi"}]}]},
            one("'robot'", "messages.1.member.role", "Member must satisfy enum value set: [user, assistant, system]"),
        ),
        (
            {"performanceConfig": {"latency": "fast"}},
            one("'fast'", "performanceConfig.latency", "Member must satisfy enum value set: [standard, optimized]"),
        ),
    ],
)
def test_constraint_violations_use_aws_wording(body: dict[str, Any], expected: str) -> None:
    assert error(body) == expected


@pytest.mark.parametrize(
    ("body", "path", "value", "kind"),
    [
        ({"messages": "hi"}, "messages", "'hi'", "list"),
        ({"inferenceConfig": []}, "inferenceConfig", "'[]'", "structure"),
        ({"inferenceConfig": {"maxTokens": "5"}}, "inferenceConfig.maxTokens", "'5'", "integer"),
        ({"inferenceConfig": {"maxTokens": 1.5}}, "inferenceConfig.maxTokens", "'1.5'", "integer"),
        ({"inferenceConfig": {"maxTokens": True}}, "inferenceConfig.maxTokens", "'true'", "integer"),
        ({"inferenceConfig": {"maxTokens": 2**31}}, "inferenceConfig.maxTokens", f"'{2**31}'", "integer"),
        ({"inferenceConfig": {"temperature": False}}, "inferenceConfig.temperature", "'false'", "number"),
        ({"inferenceConfig": {"stopSequences": [1]}}, "inferenceConfig.stopSequences.1.member", "'1'", "string"),
        (
            {"toolConfig": {"tools": [{"toolSpec": {"name": 7, "inputSchema": {"json": {}}}}]}},
            "toolConfig.tools.1.member.toolSpec.name",
            "'7'",
            "string",
        ),
        ({"requestMetadata": ["a"]}, "requestMetadata", "", "map"),
        (
            {"messages": [{"role": "user", "content": [{"text": {"a": [1, 2]}}]}]},
            "messages.1.member.content.1.member.text",
            "",
            "string",
        ),
    ],
)
def test_wrong_json_types(body: dict[str, Any], path: str, value: str, kind: str) -> None:
    assert error(body) == one(value, path, f"Member must be of type {kind}")


def test_integral_float_is_accepted_for_an_integer() -> None:
    assert parse({"inferenceConfig": {"maxTokens": 5.0}})["inferenceConfig"]["maxTokens"] == 5


def test_union_must_have_exactly_one_member() -> None:
    both = user({"text": "a", "cachePoint": {"type": "default"}})
    assert error(both) == one("", "messages.1.member.content.1.member", "Member must have exactly one member set")
    assert error(user({})) == one("", "messages.1.member.content.1.member", "Member must have exactly one member set")
    assert error(user({"futureBlock": {}})).startswith("1 validation error detected: Value at 'messages.1.member.")
    choice = {
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "a", "inputSchema": {"json": {}}}}],
            "toolChoice": {"auto": {}, "any": {}},
        }
    }
    assert error(choice) == one(
        "'{auto={}, any={}}'", "toolConfig.toolChoice", "Member must have exactly one member set"
    )


def test_bad_base64_is_a_validation_error() -> None:
    body = user({"image": {"format": "png", "source": {"bytes": "not base64!"}}})
    assert error(body) == one(
        "", "messages.1.member.content.1.member.image.source.bytes", "Member must be of type blob"
    )


def test_every_error_is_reported_in_order_with_a_count() -> None:
    body = {
        "messages": [{"role": "robot", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"temperature": 1.5, "maxTokens": 0},
    }
    assert error(body) == (
        "3 validation errors detected: "
        "Value 'robot' at 'messages.1.member.role' failed to satisfy constraint: "
        "Member must satisfy enum value set: [user, assistant, system]; "
        "Value '1.5' at 'inferenceConfig.temperature' failed to satisfy constraint: "
        "Member must have value less than or equal to 1; "
        "Value '0' at 'inferenceConfig.maxTokens' failed to satisfy constraint: "
        "Member must have value greater than or equal to 1"
    )


def test_long_values_are_cut_at_256_characters() -> None:
    name = "n" * 300
    body = {"toolConfig": {"tools": [{"toolSpec": {"name": name, "inputSchema": {"json": {}}}}]}}
    shown = f"'{'n' * 256}...'"
    path = "toolConfig.tools.1.member.toolSpec.name"
    assert error(body) == one(shown, path, "Member must have length less than or equal to 64")


def test_body_patterns_are_enforced_as_aws_does() -> None:
    body = {"toolConfig": {"tools": [{"toolSpec": {"name": "Count Tool", "inputSchema": {"json": {}}}}]}}
    assert error(body) == one("'Count Tool'", "toolConfig.tools.1.member.toolSpec.name",
                              "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+")
    body["toolConfig"]["tools"][0]["toolSpec"]["name"] = "count_tool-2"  # type: ignore[index]
    assert parse(body)["toolConfig"]["tools"][0]["toolSpec"]["name"] == "count_tool-2"


def test_patterns_run_in_linear_time() -> None:
    """A pattern that backtracks exponentially in Python's re answers at once on RE2 (matched whole, as Java)."""
    pattern = _compiled(r"[a-zA-Z0-9](-*[a-zA-Z0-9\+\-\.])*")
    assert pattern.fullmatch("a" + "-" * 5000 + "!") is None
    assert pattern.fullmatch("a--b.c") is not None
    assert _compiled(r"[a-z]{1,2048}").fullmatch("a" * 2048) is not None  # RE2 bounds counts at 1000


def test_map_keys_and_values_are_reported_once_at_the_map() -> None:
    too_many = {f"k{i}": "v" for i in range(17)}
    assert error({"requestMetadata": too_many}) == one(
        "", "requestMetadata", "Member must have length less than or equal to 16"
    )
    message = error({"requestMetadata": {"a": "x" * 257, "b": "y" * 300}})
    assert message == one(
        "",
        "requestMetadata",
        "Map value must satisfy constraint: [Member must have length less than or equal to 256, "
        "Member must have length greater than or equal to 0, "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9\\s:_@$#=/+,-.]{0,256}]",
    )
    assert error({"requestMetadata": {"": "v"}}).startswith(
        "1 validation error detected: Value at 'requestMetadata' failed to satisfy constraint: Map keys must satisfy "
        "constraint: [Member must have length less than or equal to 256, Member must have length greater than or"
    )


def test_structure_valued_map_items_are_walked_at_their_key() -> None:
    assert parse({"promptVariables": {"city": {"text": "Oslo"}}})["promptVariables"] == {"city": {"text": "Oslo"}}
    assert error({"promptVariables": {"city": {}}}) == one(
        "", "promptVariables.city", "Member must have exactly one member set"
    )


def test_count_tokens_converse_and_invoke_model_inputs() -> None:
    converse = {"input": {"converse": {"messages": FULL["messages"], "system": [{"text": "s"}]}}}
    params = parse(converse, "CountTokens")
    assert params["input"]["converse"]["messages"][0]["content"][1]["image"]["source"]["bytes"] == PNG
    native = json.dumps({"prompt": "hi"}).encode()
    params = parse({"input": {"invokeModel": {"body": b64(native)}}}, "CountTokens")
    assert params == {"modelId": MODEL_ID, "input": {"invokeModel": {"body": native}}}
    assert error({}, "CountTokens") == one("null", "input", "Member must not be null")
    assert error({"input": {}}, "CountTokens") == one("'{}'", "input", "Member must have exactly one member set")


def test_location_values_are_validated_too() -> None:
    message = error({}, modelId="")
    assert message.startswith(
        "2 validation errors detected: Value '' at 'modelId' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1; Value '' at 'modelId' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: "
    )
    assert error({}, modelId="a" * 2049).endswith("Member must have length less than or equal to 2048")
    with pytest.raises(ValidationException) as info:
        parse_json_body("Converse", b"{}")
    assert info.value.message == one("null", "modelId", "Member must not be null")
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-11b-instruct-v1:0"
    assert parse({}, modelId=arn)["modelId"] == arn


def test_query_string_values_are_coerced_from_text() -> None:
    params = parse_json_body(
        "ListCustomModels",
        b"",
        service="bedrock",
        location_values={"maxResults": "10", "isOwned": "true", "creationTimeAfter": "2024-05-01T12:00:00Z"},
    )
    assert params == {"maxResults": 10, "isOwned": True, "creationTimeAfter": datetime(2024, 5, 1, 12, tzinfo=UTC)}
    epoch = parse_json_body("ListAsyncInvokes", b"", location_values={"submitTimeAfter": "0"})
    assert epoch["submitTimeAfter"] == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationException) as info:
        parse_json_body("ListCustomModels", b"", service="bedrock", location_values={"maxResults": "0"})
    assert info.value.message == one("'0'", "maxResults", "Member must have value greater than or equal to 1")
    with pytest.raises(ValidationException) as info:
        parse_json_body("ListCustomModels", b"", service="bedrock", location_values={"creationTimeAfter": "soon"})
    assert info.value.message == one("'soon'", "creationTimeAfter", "Member must be of type timestamp")


def test_blob_payload_takes_the_raw_body() -> None:
    params = parse(b'{"prompt": "hi"}', "InvokeModel")
    assert params == {"modelId": MODEL_ID, "body": b'{"prompt": "hi"}'}
    # The sensitive Body shape hides its value, as Bedrock's own 25 MB message does.
    assert error(b"x" * 25_000_001, "InvokeModel") == one(
        "", "body", "Member must have length less than or equal to 25000000"
    )


def test_converse_stream_guardrail_enum() -> None:
    guardrail = {"guardrailIdentifier": "g", "guardrailVersion": "1", "streamProcessingMode": "later"}
    assert error({"guardrailConfig": guardrail}, "ConverseStream") == one(
        "'later'", "guardrailConfig.streamProcessingMode", "Member must satisfy enum value set: [sync, async]"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"messages": [', "Expecting value: line 1 column 15 (char 14)"),
        (b"\xff\xfe{}", "byte 0 is not valid UTF-8"),
        (b"[1, 2]", "it is a JSON list"),
        (b"null", "it is a JSON null"),
        (b'{"inferenceConfig": {"temperature": NaN}}', "NaN is not a JSON number"),
    ],
)
def test_unparseable_bodies_are_serialization_exceptions(body: bytes, reason: str) -> None:
    with pytest.raises(SerializationException) as info:
        parse(body)
    assert info.value.code == "SerializationException"
    assert info.value.fallback_status == 400
    assert info.value.message == f"Unable to parse request body: {reason}. Send a JSON object."
