"""Converse, ConverseStream and CountTokens through boto3 against the REAL model (SmolLM2-135M via llama.cpp).

The protocol details are pinned on the fake engine in test_converse.py; here every rule is proven on real generation:
plain answers with consistent usage, forced tool calls (``toolChoice.tool`` and ``any``) and structured output that
always validate against their JSON schema thanks to constrained decoding (also streamed, input JSON reassembled from
the ``contentBlockDelta`` fragments botocore decodes), a tool round trip, stop sequences, document blocks, and
CountTokens == ``usage.inputTokens``. The 135M model is weak, so assertions are about shape and validity, not wisdom.

Usage follows Bedrock's semantics: ``inputTokens`` counts the input *not* read from or written to a prompt cache,
``cacheReadInputTokens``/``cacheWriteInputTokens`` (when present) count the rest, and ``totalTokens`` is all of them
plus ``outputTokens`` (langchain-aws and litellm add them up that way). Llama on Bedrock has no prompt caching, so
there the whole prompt is ``inputTokens``; :func:`prompt_tokens` is the whole prompt either way.
"""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import pypdf
import pytest
from botocore.exceptions import ClientError
from test_documents import make_pdf

MODEL = "meta.llama3-1-8b-instruct-v1:0"
LLAMA2_CHAT = "meta.llama2-13b-chat-v1"
LLAMA3 = "meta.llama3-8b-instruct-v1:0"

# Schemas for forced calls and structured output. Strings and arrays are bounded so a small model cannot ramble past
# maxTokens (a truncated answer is max_tokens, not a call, and would prove nothing).
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
ORDER_SCHEMA = {  # nested objects, an array of objects, integers, booleans
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 24}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
        },
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 12}, "quantity": {"type": "integer"}},
                "required": ["sku", "quantity"],
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "gift": {"type": "boolean"},
    },
    "required": ["customer", "items", "gift"],
}
SETTINGS_SCHEMA = {  # enums (of strings, in an array, of integers), integers, booleans, a number
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "level": {"type": "string", "enum": ["low", "medium", "high"]},
        "retries": {"type": "integer"},
        "colors": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "maxItems": 3},
        "ratio": {"type": "number"},
        "priority": {"enum": [1, 2, 3]},
    },
    "required": ["enabled", "level", "retries", "colors", "ratio", "priority"],
}
EVENT_SCHEMA = {  # deeper nesting, an array of integers, an optional property, no additional properties
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "location": {
            "type": "object",
            "properties": {
                "venue": {"type": "string", "maxLength": 24},
                "coordinates": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                    "required": ["lat", "lon"],
                },
            },
            "required": ["venue", "coordinates"],
        },
        "days": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4},
        "public": {"type": "boolean"},
        "notes": {"type": "string", "maxLength": 20},
    },
    "required": ["title", "location", "days", "public"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "place_order": ORDER_SCHEMA, "configure": SETTINGS_SCHEMA,
           "schedule_event": EVENT_SCHEMA}
PROMPTS = {
    "get_weather": "What's the weather like in Paris today?",
    "place_order": "Order two blue mugs and one teapot for Alice, she is a VIP. It is a gift.",
    "configure": "Turn the alarm on at high level with 3 retries, colors red and blue, ratio 0.5, priority 2.",
    "schedule_event": "Schedule the Jazz Night concert at Blue Hall (48.85, 2.35) on days 5 and 6, open to all.",
}


def tool(name: str, description: str = "") -> dict[str, Any]:
    return {"toolSpec": {"name": name, "description": description or f"The {name} tool.",
                         "inputSchema": {"json": SCHEMAS[name]}}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"text": text}]}


def text_of(response: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in response["output"]["message"]["content"])


def tool_uses(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [block["toolUse"] for block in response["output"]["message"]["content"] if "toolUse" in block]


def prompt_tokens(usage: dict[str, int]) -> int:
    """The whole prompt: Bedrock's inputTokens excludes the tokens read from or written to a prompt cache."""
    return usage["inputTokens"] + usage.get("cacheReadInputTokens", 0) + usage.get("cacheWriteInputTokens", 0)


def check_usage(usage: dict[str, int], max_tokens: int | None = None) -> None:
    assert usage["inputTokens"] >= 0 and usage["outputTokens"] >= 0 and prompt_tokens(usage) > 0
    assert usage["totalTokens"] == prompt_tokens(usage) + usage["outputTokens"], usage
    if max_tokens is not None:
        assert usage["outputTokens"] <= max_tokens


def converse_stream(client: Any, **kwargs: Any) -> dict[str, Any]:
    """Run ConverseStream, check Bedrock's event grammar, and rebuild a Converse-like response from the events.

    Text blocks have no contentBlockStart; a toolUse block is contentBlockStart (id, name), input JSON string
    fragments in contentBlockDelta, contentBlockStop. Then messageStop, then metadata (usage, metrics), last.
    """
    events = [next(iter(event.items())) for event in client.converse_stream(**kwargs)["stream"]]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "messageStart" and events[0][1] == {"role": "assistant"}
    assert kinds[-2:] == ["messageStop", "metadata"] and kinds.count("messageStop") == 1
    blocks: dict[int, dict[str, Any]] = {}
    open_block: int | None = None
    for kind, payload in events[1:-2]:
        index = payload.get("contentBlockIndex")
        if kind == "contentBlockStart":
            assert open_block is None and index not in blocks
            start = payload["start"]["toolUse"]
            blocks[index] = {"toolUse": {"toolUseId": start["toolUseId"], "name": start["name"], "fragments": []}}
            open_block = index
        elif kind == "contentBlockDelta":
            assert open_block in (None, index)
            delta = payload["delta"]
            if "toolUse" in delta:
                assert "toolUse" in blocks[index], "toolUse input delta without a contentBlockStart"
                blocks[index]["toolUse"]["fragments"].append(delta["toolUse"]["input"])
            else:
                blocks.setdefault(index, {"text": ""})["text"] += delta["text"]
            open_block = index
        else:
            assert kind == "contentBlockStop" and index == open_block, kinds
            open_block = None
    assert open_block is None, "a content block was never stopped"
    assert sorted(blocks) == list(range(len(blocks))), "content block indexes must count up from 0"
    content = []
    for index in sorted(blocks):
        block = blocks[index]
        if "toolUse" in block:
            use, raw = block["toolUse"], "".join(block["toolUse"]["fragments"])
            try:
                tool_input = json.loads(raw)
            except json.JSONDecodeError:  # only a call cut short by maxTokens may be partial
                assert events[-2][1]["stopReason"] == "max_tokens", raw
                tool_input = raw
            content.append({"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"], "input": tool_input},
                            "fragments": use["fragments"]})
        else:
            content.append(block)
    stop, metadata = events[-2][1], events[-1][1]
    assert metadata["metrics"]["latencyMs"] >= 0
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop["stopReason"],
            "usage": metadata["usage"], "events": events, **({"additionalModelResponseFields":
                                                               stop["additionalModelResponseFields"]}
                                                              if "additionalModelResponseFields" in stop else {})}


def call(runtime: Any, streaming: bool, **kwargs: Any) -> dict[str, Any]:
    return converse_stream(runtime, **kwargs) if streaming else runtime.converse(**kwargs)


STREAMING = pytest.mark.parametrize("streaming", [False, True], ids=["converse", "stream"])


# ------------------------------------------------------------------------------------------------------ plain text


@STREAMING
def test_plain_answer_with_consistent_usage(runtime: Any, streaming: bool) -> None:
    request = {"messages": [user("What is the capital of France?")], "system": [{"text": "Answer in one sentence."}]}
    response = call(runtime, streaming, modelId=MODEL, inferenceConfig={"maxTokens": 24}, **request)
    assert response["output"]["message"]["role"] == "assistant"
    assert text_of(response).strip() and not tool_uses(response)
    assert response["stopReason"] in ("end_turn", "max_tokens")
    usage = response["usage"]
    check_usage(usage, 24)
    assert usage["outputTokens"] > 0
    if response["stopReason"] == "max_tokens":
        assert usage["outputTokens"] == 24
    counted = runtime.count_tokens(modelId=MODEL, input={"converse": request})["inputTokens"]
    assert prompt_tokens(usage) == counted


def test_stream_text_arrives_in_several_deltas(runtime: Any) -> None:
    response = converse_stream(runtime, modelId=MODEL, messages=[user("Tell me a story about a dragon.")],
                               inferenceConfig={"maxTokens": 16})
    deltas = [payload for kind, payload in response["events"] if kind == "contentBlockDelta"]
    assert len(deltas) > 1 and all(payload["contentBlockIndex"] == 0 for payload in deltas)
    assert "contentBlockStart" not in [kind for kind, _ in response["events"]]
    assert response["stopReason"] in ("end_turn", "max_tokens")
    check_usage(response["usage"], 16)


# ------------------------------------------------------------------------------------------------- forced tool use


@STREAMING
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_forced_tool_call_validates_against_its_schema(runtime: Any, name: str, streaming: bool) -> None:
    decoy = "get_weather" if name != "get_weather" else "configure"  # the named tool is not the only one
    response = call(
        runtime, streaming, modelId=MODEL, messages=[user(PROMPTS[name])], inferenceConfig={"maxTokens": 300},
        toolConfig={"tools": [tool(name), tool(decoy)], "toolChoice": {"tool": {"name": name}}},
    )
    assert response["stopReason"] == "tool_use", response
    content = response["output"]["message"]["content"]
    assert len(content) == 1 and "toolUse" in content[0], content
    use = content[0]["toolUse"]
    assert use["name"] == name and use["toolUseId"].startswith("tooluse_")
    jsonschema.validate(use["input"], SCHEMAS[name])
    check_usage(response["usage"], 300)
    if streaming:  # the input JSON was streamed as string fragments from the first token, not in one piece
        assert len(content[0]["fragments"]) > 1
        starts = [payload for kind, payload in response["events"] if kind == "contentBlockStart"]
        assert starts == [{"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": use["toolUseId"],
                                                                         "name": name}}}]


@STREAMING
@pytest.mark.parametrize("pair", [("get_weather", "place_order"), ("configure", "schedule_event")])
def test_any_tool_choice_calls_one_of_the_tools_with_valid_input(
    runtime: Any, pair: tuple[str, str], streaming: bool
) -> None:
    response = call(
        runtime, streaming, modelId=MODEL, messages=[user(PROMPTS[pair[0]])], inferenceConfig={"maxTokens": 300},
        toolConfig={"tools": [tool(name) for name in pair], "toolChoice": {"any": {}}},
    )
    assert response["stopReason"] == "tool_use", response
    uses = tool_uses(response)
    assert len(uses) == 1 and not text_of(response)
    assert uses[0]["name"] in pair and uses[0]["toolUseId"].startswith("tooluse_")
    jsonschema.validate(uses[0]["input"], SCHEMAS[uses[0]["name"]])


def test_forced_tool_call_respects_integer_bounds(runtime: Any) -> None:
    schema = {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 1999}},
              "required": ["year"]}
    spec = {"toolSpec": {"name": "set_year", "description": "Set a year of the 20th century.",
                         "inputSchema": {"json": schema}}}
    try:
        response = runtime.converse(
            modelId=MODEL, messages=[user("Set the year to 7.")], inferenceConfig={"maxTokens": 40},
            toolConfig={"tools": [spec], "toolChoice": {"tool": {"name": "set_year"}}},
        )
    except ClientError as error:  # refusing a schema it cannot enforce would be honest too
        code = error.response["Error"]["Code"]
        assert code == "ValidationException"
        return
    assert response["stopReason"] == "tool_use"
    jsonschema.validate(tool_uses(response)[0]["input"], schema)


# ------------------------------------------------------------------------------------------------ structured output


STRUCTURED = {
    "person": ({"type": "object",
                "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
                               "email": {"type": "string", "maxLength": 40}},
                "required": ["name", "age"], "additionalProperties": False},
               "Invent a person with a name and an age."),
    "recipe": ({"type": "object",
                "properties": {"title": {"type": "string", "maxLength": 30},
                               "ingredients": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                               "minItems": 1, "maxItems": 4},
                               "vegetarian": {"type": "boolean"}},
                "required": ["title", "ingredients", "vegetarian"]},
               "Give me a pancake recipe."),
    "review": ({"type": "object",
                "properties": {"sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
                               "stars": {"enum": [1, 2, 3, 4, 5]},
                               "aspects": {"type": "array", "maxItems": 2, "items": {
                                   "type": "object",
                                   "properties": {"aspect": {"type": "string", "maxLength": 16},
                                                  "good": {"type": "boolean"}},
                                   "required": ["aspect", "good"]}}},
                "required": ["sentiment", "stars", "aspects"]},
               "Classify this review: 'The food was great but the service was slow.'"),
}


@STREAMING
@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_structured_output_parses_and_validates(runtime: Any, name: str, streaming: bool) -> None:
    schema, prompt = STRUCTURED[name]
    text_format = {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema), "name": name}}}
    response = call(runtime, streaming, modelId=MODEL, messages=[user(prompt)], inferenceConfig={"maxTokens": 200},
                    outputConfig={"textFormat": text_format})
    assert response["stopReason"] == "end_turn", response
    assert not tool_uses(response)
    jsonschema.validate(json.loads(text_of(response)), schema)
    check_usage(response["usage"], 200)


# -------------------------------------------------------------------------------------------------- tool round trip


@STREAMING
def test_tool_round_trip_is_answered(runtime: Any, streaming: bool) -> None:
    tools = [tool("get_weather", "Current weather for a city.")]
    question = user("What's the weather like in Paris today?")
    first = runtime.converse(modelId=MODEL, messages=[question], inferenceConfig={"maxTokens": 60},
                             toolConfig={"tools": tools, "toolChoice": {"tool": {"name": "get_weather"}}})
    assert first["stopReason"] == "tool_use"
    use = tool_uses(first)[0]
    result = {"role": "user", "content": [
        {"toolResult": {"toolUseId": use["toolUseId"], "status": "success",
                        "content": [{"json": {"temperature": 21, "unit": use["input"]["unit"], "sky": "sunny"}},
                                    {"text": "Light wind from the west."}]}},
    ]}
    request = {"messages": [question, first["output"]["message"], result], "toolConfig": {"tools": tools}}
    second = call(runtime, streaming, modelId=MODEL, inferenceConfig={"maxTokens": 48}, **request)
    # The 135M model may answer or call the tool again; either way the answer must be a well-formed one.
    assert second["output"]["message"]["role"] == "assistant"
    calls = tool_uses(second)
    if calls:
        assert second["stopReason"] == "tool_use"
        for again in calls:
            assert again["name"] == "get_weather" and isinstance(again["input"], dict)
            assert again["toolUseId"].startswith("tooluse_") and again["toolUseId"] != use["toolUseId"]
    else:
        assert text_of(second).strip() and second["stopReason"] in ("end_turn", "max_tokens")
    check_usage(second["usage"], 48)
    counted = runtime.count_tokens(modelId=MODEL, input={"converse": request})["inputTokens"]
    assert prompt_tokens(second["usage"]) == counted > prompt_tokens(first["usage"])


def test_tool_error_result_is_accepted(runtime: Any) -> None:
    tools = [tool("get_weather", "Current weather for a city.")]
    use = {"toolUseId": "tooluse_earlier01", "name": "get_weather", "input": {"city": "Atlantis", "unit": "celsius"}}
    response = runtime.converse(
        modelId=MODEL, inferenceConfig={"maxTokens": 32}, toolConfig={"tools": tools},
        messages=[user("Weather in Atlantis?"), {"role": "assistant", "content": [{"toolUse": use}]},
                  {"role": "user", "content": [{"toolResult": {
                      "toolUseId": "tooluse_earlier01", "status": "error",
                      "content": [{"text": "Unknown city: Atlantis"}]}}]}],
    )
    assert response["stopReason"] in ("end_turn", "max_tokens", "tool_use")
    assert response["output"]["message"]["content"]
    check_usage(response["usage"], 32)


# -------------------------------------------------------------------------------------------------- stop sequences


COUNTING = [user("Count from one to thirty in words, separated by commas."), assistant("one, two, three")]


@STREAMING
def test_stop_sequence_cuts_the_real_answer(runtime: Any, streaming: bool) -> None:
    # The prefill makes the continuation ", four, five, ..." so "," certainly comes; without a stop it runs on.
    unstopped = runtime.converse(modelId=MODEL, messages=COUNTING, inferenceConfig={"maxTokens": 24})
    assert "," in text_of(unstopped)
    response = call(runtime, streaming, modelId=MODEL, messages=COUNTING,
                    inferenceConfig={"maxTokens": 24, "stopSequences": ["never-ever", ","]},
                    additionalModelResponseFieldPaths=["/stop_sequence"])
    assert response["stopReason"] == "stop_sequence"
    assert response["additionalModelResponseFields"] == {"stop_sequence": ","}
    assert "," not in text_of(response)
    assert response["usage"]["outputTokens"] < 24


@STREAMING
def test_stop_sequence_inside_a_sentence(runtime: Any, streaming: bool) -> None:
    # An "e" appears within a few tokens of any English answer; the answer is cut before it, mid-token if need be.
    response = call(runtime, streaming, modelId=MODEL, messages=[user("Describe the sea in two sentences.")],
                    inferenceConfig={"maxTokens": 40, "stopSequences": ["e"]},
                    additionalModelResponseFieldPaths=["/stop_sequence"])
    assert response["stopReason"] == "stop_sequence"
    assert response["additionalModelResponseFields"] == {"stop_sequence": "e"}
    assert "e" not in text_of(response)


# ------------------------------------------------------------------------------------------------------- documents


FACTS = ("Harbor Lane Bakery opened in 1987. It sells sourdough, rye and seeded loaves. The owner is Maria Lopez. "
         "Opening hours are seven to three, Tuesday to Sunday.")
HTML = ("<!DOCTYPE html><html><head><title>Bakery</title><style>p { color: #333; margin: 0 auto; }</style>"
        "<script>var tracking = {id: 12345, enabled: true};</script></head><body><div class=\"main-content wrapper\">"
        f"<p id=\"facts\" style=\"font-weight: bold\">{FACTS}</p></div></body></html>")
CSV = "product,price,stock\nsourdough,4.50,12\nrye,3.80,7\nseeded,5.10,0\nbaguette,2.20,30\n"


def pdf_of(text: str) -> bytes:
    data = make_pdf(text)
    assert text in pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()  # a real, readable PDF
    return data


def with_document(fmt: str, data: bytes, question: str = "What does the document say?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"document": {"format": fmt, "name": "Bakery notes", "source": {"bytes": data}}}, {"text": question}]}]


def input_tokens(runtime: Any, messages: list[dict[str, Any]]) -> int:
    response = runtime.converse(modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 2})
    assert response["stopReason"] in ("end_turn", "max_tokens") and response["output"]["message"]["content"]
    check_usage(response["usage"], 2)
    return prompt_tokens(response["usage"])


@pytest.mark.parametrize(
    ("fmt", "data", "minimum"),
    [("txt", FACTS.encode(), 25), ("csv", CSV.encode(), 20), ("html", HTML.encode(), 25), ("md", FACTS.encode(), 25),
     ("pdf", None, 25)],
)
def test_document_is_accepted_and_its_text_counted(runtime: Any, fmt: str, data: bytes | None, minimum: int) -> None:
    data = pdf_of(FACTS) if data is None else data
    without = input_tokens(runtime, [user("What does the document say?")])
    grown = input_tokens(runtime, with_document(fmt, data)) - without
    assert grown >= minimum


def test_document_text_not_markup_is_counted(runtime: Any) -> None:
    plain = input_tokens(runtime, with_document("txt", FACTS.encode()))
    html_as_html = input_tokens(runtime, with_document("html", HTML.encode()))
    html_as_txt = input_tokens(runtime, with_document("txt", HTML.encode()))
    pdf = input_tokens(runtime, with_document("pdf", pdf_of(FACTS)))
    # The HTML's tags, style and script are dropped: about the plain text's size, far less than the raw markup.
    assert abs(html_as_html - plain) <= 4 and html_as_txt > html_as_html + 40
    assert abs(pdf - plain) <= 4  # the PDF's text is extracted, not its bytes


def test_documents_stream_too(runtime: Any) -> None:
    messages = with_document("pdf", pdf_of(FACTS), "Who is the owner?")
    streamed = converse_stream(runtime, modelId=MODEL, messages=messages, inferenceConfig={"maxTokens": 12})
    assert text_of(streamed).strip()
    assert prompt_tokens(streamed["usage"]) == input_tokens(runtime, messages)


# ----------------------------------------------------------------------------------- CountTokens == usage.inputTokens


def _doc(fmt: str, data: bytes, name: str = "Notes") -> dict[str, Any]:
    return {"document": {"format": fmt, "name": name, "source": {"bytes": data}}}


WEATHER_TOOLS = {"tools": [tool("get_weather", "Current weather for a city.")]}
TWO_TOOLS = {"tools": [tool("get_weather"), tool("place_order")]}
EARLIER_CALL = {"toolUseId": "tooluse_abc123", "name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}}
COUNT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": (MODEL, {"messages": [user("Hello!")]}),
    "system": (MODEL, {"messages": [user("Hello!")], "system": [{"text": "You are a pirate. Answer like one."}]}),
    "two-system-blocks": (MODEL, {"messages": [user("Hi")], "system": [{"text": "Be brief."}, {"text": "Be kind."}]}),
    "multi-turn": (MODEL, {"messages": [user("My name is Ada."), assistant("Nice to meet you, Ada!"),
                                        user("What is my name?")]}),
    "long-multi-turn": (MODEL, {"system": [{"text": "You are a math tutor."}], "messages": [
        user("What is 2+2?"), assistant("4."), user("And times 3?"), assistant("12."), user("Minus 5?")]}),
    "unicode": (MODEL, {"messages": [user("Traduis « bonjour » en 日本語 🙂, s'il te plaît.")]}),
    "tools-auto": (MODEL, {"messages": [user("Weather in Oslo?")], "toolConfig": WEATHER_TOOLS}),
    "tools-any": (MODEL, {"messages": [user("Weather in Oslo?")],
                          "toolConfig": {**TWO_TOOLS, "toolChoice": {"any": {}}}}),
    "tools-named": (MODEL, {"messages": [user("Weather in Oslo?")],
                            "toolConfig": {**TWO_TOOLS, "toolChoice": {"tool": {"name": "place_order"}}}}),
    "tool-round-trip": (MODEL, {"toolConfig": WEATHER_TOOLS, "system": [{"text": "Use tools."}], "messages": [
        user("Weather in Oslo?"), {"role": "assistant", "content": [{"text": "Checking."}, {"toolUse": EARLIER_CALL}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_abc123", "content": [
            {"json": {"temperature": -3, "sky": "snow"}}, {"text": "Windy."}]}}, {"text": "Thanks, and tomorrow?"}]},
    ]}),
    "tool-error": (MODEL, {"toolConfig": WEATHER_TOOLS, "messages": [
        user("Weather in Oslo?"), {"role": "assistant", "content": [{"toolUse": EARLIER_CALL}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_abc123", "status": "error",
                                                     "content": [{"text": "Service down"}]}}]},
    ]}),
    "document-txt": (MODEL, {"messages": [{"role": "user", "content": [_doc("txt", FACTS.encode()),
                                                                        {"text": "Who owns it?"}]}]}),
    "document-csv": (MODEL, {"messages": [{"role": "user", "content": [_doc("csv", CSV.encode()),
                                                                        {"text": "What is out of stock?"}]}]}),
    "document-html": (MODEL, {"messages": [{"role": "user", "content": [_doc("html", HTML.encode()),
                                                                         {"text": "When did it open?"}]}]}),
    "documents-pdf-and-md-with-system": (MODEL, {"system": [{"text": "Answer from the documents."}], "messages": [
        {"role": "user", "content": [_doc("pdf", make_pdf("Revenue grew 12 percent", "Costs fell"), "Q3 report"),
                                     _doc("md", b"# Plan\n\n- hire\n- build", "Plan"), {"text": "Summarize."}]}]}),
    "prefill": (MODEL, {"messages": [user("Give me a JSON object with a name."), assistant('{"name": "')]}),
    "prefill-multi-turn-system": (MODEL, {"system": [{"text": "Count."}], "messages": [
        user("Count to five."), assistant("1 2 3 4 5"), user("Now to ten."), assistant("1 2 3")]}),
    "llama2": (LLAMA2_CHAT, {"messages": [user("Hello!")], "system": [{"text": "You are terse."}]}),
    "llama2-multi-turn-prefill-document": (LLAMA2_CHAT, {"messages": [
        user("Hi"), assistant("Hello."),
        {"role": "user", "content": [_doc("txt", FACTS.encode()), {"text": "Summarize."}]}, assistant("Summary:")]}),
    "llama3": (LLAMA3, {"messages": [user("Hi"), assistant("Hey."), user("Tell me a joke.")],
                        "system": [{"text": "Be funny."}]}),
}


@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_count_tokens_equals_converse_input_tokens(runtime: Any, case: str) -> None:
    model_id, request = COUNT_CASES[case]
    counted = runtime.count_tokens(modelId=model_id, input={"converse": request})["inputTokens"]
    response = runtime.converse(modelId=model_id, inferenceConfig={"maxTokens": 2}, **request)
    assert prompt_tokens(response["usage"]) == counted
    check_usage(response["usage"], 2)
    streamed = converse_stream(runtime, modelId=model_id, inferenceConfig={"maxTokens": 1}, **request)
    assert prompt_tokens(streamed["usage"]) == counted
    check_usage(streamed["usage"], 1)


def test_count_tokens_cases_are_twenty_and_varied() -> None:
    assert len(COUNT_CASES) >= 20
    requests = [request for _, request in COUNT_CASES.values()]
    assert {model for model, _ in COUNT_CASES.values()} == {MODEL, LLAMA2_CHAT, LLAMA3}
    assert any("system" in r for r in requests) and any("toolConfig" in r for r in requests)
    assert any(r["messages"][-1]["role"] == "assistant" for r in requests)
    assert any(len(r["messages"]) >= 3 for r in requests)
    assert any("document" in block for r in requests for m in r["messages"] for block in m["content"])
