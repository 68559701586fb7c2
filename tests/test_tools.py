"""Llama 3.1 tool calling: prompt, rendering, parsing, constrained-call schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llamarock.bedrock.tools import (
    ToolCall,
    ToolSpec,
    call_schema,
    could_be_tool_call,
    new_tool_use_id,
    parse_call_json,
    parse_tool_calls,
    render_tool_call,
    render_tool_result,
    tools_system_prompt,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city.",
    input_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        "required": ["city"],
    },
)
TIME = ToolSpec(name="get_time", description="The time in a time zone.", input_schema={})
TOOLS = [WEATHER, TIME]
ID = re.compile(r"^tooluse_[A-Za-z0-9_-]{22}$")


def calls(text: str, tools: list[ToolSpec] = TOOLS) -> list[tuple[str, dict[str, object]]] | None:
    parsed = parse_tool_calls(text, tools)
    return None if parsed is None else [(call.name, call.input) for call in parsed]


def test_prompt_lists_every_tool_with_its_schema() -> None:
    prompt = tools_system_prompt(TOOLS)
    assert "Given the following functions, please respond with a JSON for a function call" in prompt
    assert '{"name": function name, "parameters": dictionary of argument name and its value}' in prompt
    assert prompt == tools_system_prompt(TOOLS)
    definitions = [json.loads(line) for line in prompt.split("\n\n") if line.startswith('{"type"')]
    assert definitions == [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": schema}}
        for t, schema in [(WEATHER, WEATHER.input_schema), (TIME, {"type": "object"})]
    ]


def test_render_tool_call_is_what_the_model_writes() -> None:
    call = ToolCall("tooluse_x", "get_weather", {"city": "Paris"})
    assert render_tool_call(call) == '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert calls(render_tool_call(call)) == [("get_weather", {"city": "Paris"})]


def test_render_tool_result() -> None:
    content = [{"json": {"temp": 21}}, {"text": "sunny"}]
    assert render_tool_result(content, "success") == '{"temp": 21}\nsunny'
    assert render_tool_result(content, None) == '{"temp": 21}\nsunny'
    assert render_tool_result([{"text": "city not found"}], "error") == "Error: city not found"
    assert render_tool_result([], "error") == "Error"
    placeholders = render_tool_result([{"document": {"name": "Q3", "format": "pdf"}}, {"image": {}}], None)
    assert placeholders == "[document Q3]\n[image]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
        (
            '  <|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}}<|eom_id|>',
            [("get_weather", {"city": "Paris"})],
        ),
        ('{"type": "function", "name": "get_time", "parameters": {}}', [("get_time", {})]),
        ('{"name": "get_time"}', [("get_time", {})]),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', [("get_weather", {"city": "Oslo"})]),
        (
            '{"name": "get_weather", "parameters": {"city": "Paris; France"}}; '
            '{"name": "get_time", "parameters": {"tz": "CET"}}',
            [("get_weather", {"city": "Paris; France"}), ("get_time", {"tz": "CET"})],
        ),
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"}}\n'
            '{"name": "get_weather", "parameters": {"city": "Rome"}}',
            [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
        ),
        (
            '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]',
            [("get_weather", {"city": "Paris"}), ("get_time", {})],
        ),
        (
            '{\n  "name": "get_weather",\n  "parameters": {\n    "city": "Paris"\n  }\n}\n',
            [("get_weather", {"city": "Paris"})],
        ),
        ('<function=get_weather>{"city": "Paris"}</function>', [("get_weather", {"city": "Paris"})]),
        (
            '<function=get_weather>{"city": "Paris"}</function>\n<function=get_time>{}</function>',
            [("get_weather", {"city": "Paris"}), ("get_time", {})],
        ),
        ("<function=get_time></function>", [("get_time", {})]),
        (
            '[get_weather(city="Paris"), get_time(tz="CET")]',
            [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})],
        ),
        (
            "[get_weather(city='Paris', unit=None, days=(1, 2), x=-1.5)]",
            [("get_weather", {"city": "Paris", "unit": None, "days": [1, 2], "x": -1.5})],
        ),
        ("<|python_tag|>[get_time()]", [("get_time", {})]),
    ],
)
def test_accepted_tool_call_formats(text: str, expected: list[tuple[str, dict[str, object]]]) -> None:
    assert calls(text) == expected
    assert could_be_tool_call(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "The weather in Paris is sunny.",
        'Use {"name": "get_weather", "parameters": {"city": "Paris"}} to get the weather.',
        '{"name": "get_weather", "parameters": {"city": "Paris"}} That is the call I would make.',
        'Here it is: {"name": "get_weather", "parameters": {"city": "Paris"}}',
        "In Python, a dict looks like {'a': 1} and a set like {1, 2}.",
        '{"city": "Paris", "temperature": 21}',
        '{"name": "Bob", "parameters": {}}',
        '{"name": "get_weather", "parameters": "Paris"}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}, "explanation": "because"}',
        '{"name": "get_weather", "parameters": {}, "arguments": {}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
        "[1, 2, 3]",
        "[]",
        '[{"name": "get_weather", "parameters": {}}, "and then"]',
        "[get_weather(city=input())]",
        '[get_weather("Paris")]',
        "[get_weather(**kwargs)]",
        '[os.system("rm -rf /")]',
        '[unknown_tool(city="Paris")]',
        "[get_weather(city={1, 2})]",
        '<function=unknown>{"a": 1}</function>',
        '<function=get_weather>{"city": "Paris"}</function> and more text',
        "<function=get_weather>not json</function>",
        "[" * 5000,
        "{" * 5000,
    ],
)
def test_not_a_tool_call(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) is None


def test_unknown_tool_name_is_not_a_call() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert parse_tool_calls(text, [TIME]) is None
    assert parse_tool_calls(text, []) is None


def test_tool_use_ids_are_fresh_and_bedrock_shaped() -> None:
    ids = {new_tool_use_id() for _ in range(200)}
    assert len(ids) == 200 and all(ID.match(tool_use_id) for tool_use_id in ids)
    parsed = parse_tool_calls('[get_weather(city="Paris"), get_weather(city="Paris")]', TOOLS)
    assert parsed is not None and len({call.tool_use_id for call in parsed}) == 2
    assert all(ID.match(call.tool_use_id) for call in parsed)


def test_call_schema_of_one_tool() -> None:
    schema = call_schema([WEATHER])
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}})
    assert not validator.is_valid({"name": "get_weather", "parameters": {"unit": "C"}})
    assert not validator.is_valid({"name": "get_weather", "parameters": {"city": "Paris", "unit": "K"}})
    assert not validator.is_valid({"name": "get_time", "parameters": {"city": "Paris"}})
    assert not validator.is_valid({"name": "get_weather", "parameters": {"city": "Paris"}, "extra": 1})
    assert not validator.is_valid({"name": "get_weather"})


def test_call_schema_of_several_tools() -> None:
    schema = call_schema(TOOLS)
    assert len(schema["anyOf"]) == 2
    assert schema["anyOf"][1]["properties"]["parameters"] == {"type": "object"}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"name": "get_time", "parameters": {}})
    assert validator.is_valid({"name": "get_weather", "parameters": {"city": "Paris"}})
    assert not validator.is_valid({"name": "get_time", "parameters": "CET"})
    assert not validator.is_valid({"name": "get_date", "parameters": {}})
    with pytest.raises(ValueError):
        call_schema([])


def test_parse_call_json_round_trip() -> None:
    original = ToolCall("tooluse_x", "get_weather", {"city": "Paris", "unit": "C"})
    text = render_tool_call(original)
    jsonschema.validate(json.loads(text), call_schema(TOOLS))
    call = parse_call_json(text, TOOLS)
    assert (call.name, call.input) == (original.name, original.input)
    assert ID.match(call.tool_use_id)


@pytest.mark.parametrize(
    "text", ["not json", "[]", '{"name": "get_date", "parameters": {}}', '{"name": "get_time", "parameters": []}']
)
def test_parse_call_json_refuses_non_calls(text: str) -> None:
    with pytest.raises(ValueError):
        parse_call_json(text, TOOLS)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", True),
        ("  \n", True),
        ("{", True),
        ('  {"name": "get_w', True),
        ("[get_weather(", True),
        ("<", True),
        ("<fun", True),
        ("<function=get", True),
        ("<|python", True),
        ("<|python_tag|>[", True),
        ("The", False),
        ("<b>bold</b>", False),
        ("<|eot_id|>", False),
        ("Sure! {", False),
    ],
)
def test_could_be_tool_call(prefix: str, expected: bool) -> None:
    assert could_be_tool_call(prefix) is expected
