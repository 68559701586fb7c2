"""Tests for llamarock.bedrock.prompts: parsing Llama-formatted prompts and rendering messages back."""

from __future__ import annotations

import json
import random

from llamarock.bedrock.prompts import (
    ParsedPrompt,
    detect_format,
    parse_prompt,
    render_llama2,
    render_llama3,
)
from llamarock.types import ChatMessage


def _m(role: str, content: str) -> ChatMessage:
    return ChatMessage(role=role, content=content)  # type: ignore[arg-type]


# --- Llama 3 -----------------------------------------------------------------------------------------------------


def test_spec_single_turn_prompt() -> None:
    prompt = "Describe the purpose of a 'hello world' program in one line."
    formatted_prompt = f"""
<|begin_of_text|><|start_header_id|>user<|end_header_id|>
{prompt}
<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>
"""
    assert detect_format(formatted_prompt) == "llama3"
    assert parse_prompt(formatted_prompt) == ParsedPrompt(
        format="llama3", messages=(_m("user", prompt),), assistant_prefix="", open_assistant=True
    )


def test_spec_multi_turn_conversation() -> None:
    conversation = [
        ("system", "You are a helpful assistant."),
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
        ("user", "And of Italy?"),
    ]
    prompt = (
        "<|begin_of_text|>"
        + "".join(
            f"<|start_header_id|>{role}<|end_header_id|>\n{message}\n<|eot_id|>\n" for role, message in conversation
        )
        + "<|start_header_id|>assistant<|end_header_id|>\n"
    )
    parsed = parse_prompt(prompt)
    assert parsed.format == "llama3"
    assert parsed.messages == tuple(_m(role, message) for role, message in conversation)
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == ""


def _batch_record(prompt: str) -> str:
    formatted_prompt = f"""
    <|begin_of_text|><|start_header_id|>user<|end_header_id|>
    {prompt}
    <|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>
    """
    return formatted_prompt


def test_spec_batch_example_indented() -> None:
    prompt = "Summarize this record.\n    It spans two lines."
    parsed = parse_prompt(_batch_record(prompt))
    assert parsed.format == "llama3"
    assert parsed.messages == (_m("user", prompt),)
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == ""


def test_langchain_llama3_form() -> None:
    prompt = "\n".join(
        [
            "<|begin_of_text|>",
            "<|start_header_id|>system<|end_header_id|>Be terse.<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>Hi there<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>Hello!<|eot_id|>",
            "<|start_header_id|>user<|end_header_id|>How are you?<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ]
    )
    parsed = parse_prompt(prompt)
    assert parsed.messages == (
        _m("system", "Be terse."),
        _m("user", "Hi there"),
        _m("assistant", "Hello!"),
        _m("user", "How are you?"),
    )
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == ""


def test_aws_doc_template() -> None:
    prompt = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat can you help me with?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>"
    )
    parsed = parse_prompt(prompt)
    assert parsed == ParsedPrompt("llama3", (_m("user", "What can you help me with?"),), "", True)


def test_llama3_prefilled_assistant() -> None:
    prompt = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nList three colours.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nSure, here they are:\n1."
    )
    parsed = parse_prompt(prompt)
    assert parsed.messages == (_m("user", "List three colours."),)
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == "Sure, here they are:\n1."


def test_llama3_ends_after_user_turn() -> None:
    prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
    parsed = parse_prompt(prompt)
    assert parsed == ParsedPrompt("llama3", (_m("user", "Hello"),), "", False)


def test_llama3_closed_assistant_turn_is_a_message() -> None:
    prompt = render_llama3([_m("user", "Hi"), _m("assistant", "Hello")], add_generation_prompt=False)
    parsed = parse_prompt(prompt + "<|end_of_text|>")
    assert parsed.messages == (_m("user", "Hi"), _m("assistant", "Hello"))
    assert parsed.open_assistant is False


def test_llama3_ipython_eom_unknown_roles_and_leading_text() -> None:
    prompt = (
        "Leading words<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>get_weather()<|eom_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 20}<|eot_id|>"
        "<|start_header_id|>narrator<|end_header_id|>\n\nAn aside<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    parsed = parse_prompt(prompt)
    assert parsed.messages == (
        _m("user", "Leading words"),
        _m("user", "Weather?"),
        _m("assistant", "<|python_tag|>get_weather()"),
        _m("tool", '{"temp": 20}'),
        _m("user", "An aside"),
    )
    assert parsed.open_assistant is True


def test_llama3_odd_inputs() -> None:
    assert parse_prompt("<|begin_of_text|>") == ParsedPrompt("plain", (), "", False)
    stray = ParsedPrompt("llama3", (_m("user", "<|start_header_id|>"),), "", False)
    assert parse_prompt("<|start_header_id|>") == stray
    assert parse_prompt("<|start_header_id|>assistant<|end_header_id|>") == ParsedPrompt("llama3", (), "", True)
    parsed = parse_prompt("<|eot_id|><|end_header_id|>x<|start_header_id|>user<|end_header_id|>")
    assert parsed.format == "llama3"
    assert parsed.open_assistant is False


# --- Llama 2 -----------------------------------------------------------------------------------------------------


def test_llama2_canonical_multi_turn() -> None:
    prompt = (
        "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
        "<s>[INST] How are you? [/INST]"
    )
    assert detect_format(prompt) == "llama2"
    parsed = parse_prompt(prompt)
    assert parsed == ParsedPrompt(
        "llama2",
        (_m("system", "You are helpful."), _m("user", "Hi"), _m("assistant", "Hello!"), _m("user", "How are you?")),
        "",
        True,
    )


def test_llama2_aws_doc_one_line_form() -> None:
    prompt = "<s>[INST] <<SYS>> You are a poet. <</SYS>> Write a haiku about rain. [/INST]"
    parsed = parse_prompt(prompt)
    assert parsed.messages == (_m("system", "You are a poet."), _m("user", "Write a haiku about rain."))
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == ""


def test_llama2_without_system() -> None:
    parsed = parse_prompt("[INST] Tell me a joke. [/INST]")
    assert parsed == ParsedPrompt("llama2", (_m("user", "Tell me a joke."),), "", True)


def test_llama2_prefilled_assistant() -> None:
    parsed = parse_prompt("<s>[INST] Count to three. [/INST] One, two,")
    assert parsed.messages == (_m("user", "Count to three."),)
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == "One, two,"


def test_llama2_closed_final_answer() -> None:
    parsed = parse_prompt("<s>[INST] Hi [/INST] Hello </s>")
    assert parsed == ParsedPrompt("llama2", (_m("user", "Hi"), _m("assistant", "Hello")), "", False)


def test_langchain_llama2_legacy_form() -> None:
    prompt = "\n".join(
        [
            "<<SYS>> Be brief. <</SYS>>",
            "[INST] What is 2+2? [/INST]",
            "4",
            "[INST] And 3+3? [/INST]",
        ]
    )
    parsed = parse_prompt(prompt)
    assert parsed.messages == (
        _m("system", "Be brief."),
        _m("user", "What is 2+2?"),
        _m("assistant", "4"),
        _m("user", "And 3+3?"),
    )
    assert parsed.open_assistant is True
    assert parsed.assistant_prefix == ""


def test_llama2_odd_inputs() -> None:
    assert parse_prompt("[INST]") == ParsedPrompt("llama2", (), "", False)
    assert parse_prompt("[/INST] [INST]") == ParsedPrompt("llama2", (), "", False)
    parsed = parse_prompt("<</SYS>> x [INST] <<SYS>> unclosed system [/INST] y")
    assert parsed.messages == (_m("user", "x"), _m("system", "unclosed system"))
    assert parsed.assistant_prefix == "y"


# --- plain -------------------------------------------------------------------------------------------------------


def test_plain_prompts() -> None:
    for prompt in ["", "   ", "Tell me about llamas.", "Human: hi\n\nAssistant:", "<s> <<SYS>> no inst here"]:
        assert detect_format(prompt) == "plain"
        assert parse_prompt(prompt) == ParsedPrompt("plain", (), "", False)


# --- rendering and round trips -----------------------------------------------------------------------------------


def test_render_llama3_canonical() -> None:
    messages = [_m("system", "S"), _m("user", "U"), _m("tool", "T")]
    assert render_llama3(messages) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
        "<|start_header_id|>ipython<|end_header_id|>\n\nT<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_llama3([], add_generation_prompt=False) == "<|begin_of_text|>"


def test_render_llama2_canonical() -> None:
    messages = [_m("system", "S1"), _m("system", "S2"), _m("user", "U1"), _m("assistant", "A1"), _m("user", "U2")]
    assert render_llama2(messages) == "<s>[INST] <<SYS>>\nS1\nS2\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]"
    assert render_llama2([_m("user", "U")]) == "<s>[INST] U [/INST]"
    assert render_llama2([]) == ""


def test_round_trip_llama3() -> None:
    messages = (
        _m("system", "Be kind."),
        _m("user", "Hi\n\nthere"),
        _m("assistant", "Hello."),
        _m("tool", "{}"),
        _m("user", "Bye"),
    )
    assert parse_prompt(render_llama3(messages)) == ParsedPrompt("llama3", messages, "", True)


def test_round_trip_llama2() -> None:
    messages = (_m("system", "Be kind."), _m("user", "Hi"), _m("assistant", "Hello."), _m("user", "Bye"))
    assert parse_prompt(render_llama2(messages)) == ParsedPrompt("llama2", messages, "", True)
    closed = messages[:3]
    assert parse_prompt(render_llama2(closed)) == ParsedPrompt("llama2", closed, "", False)


def test_round_trip_random_conversations() -> None:
    rng = random.Random(1234)
    words = ["alpha", "beta", "gamma", "delta", "x", "42", "new\nline"]
    for _ in range(200):
        content = [" ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(rng.randint(1, 6))]
        roles3 = [rng.choice(["system", "user", "assistant", "tool"]) for _ in content]
        msgs3 = tuple(_m(role, text) for role, text in zip(roles3, content, strict=True))
        assert parse_prompt(render_llama3(msgs3)).messages == msgs3
        msgs2: tuple[ChatMessage, ...] = tuple(
            _m("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(content)
        )
        if rng.random() < 0.5:
            msgs2 = (_m("system", "sys prompt"), *msgs2)
        parsed = parse_prompt(render_llama2(msgs2))
        assert parsed.messages == msgs2
        assert parsed.open_assistant is (msgs2[-1].role != "assistant")


# --- robustness --------------------------------------------------------------------------------------------------

_FRAGMENTS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "user",
    "assistant",
    "system",
    "ipython",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<|",
    "|>",
    "[",
    "]",
    "<",
    ">",
    " ",
    "\n",
    "hello",
    "é😀",
]


def test_random_strings_never_raise() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        prompt = "".join(rng.choices(_FRAGMENTS, k=rng.randint(0, 30)))
        if rng.random() < 0.2:
            prompt = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 40))) + prompt
        parsed = parse_prompt(prompt)
        assert parsed.format == detect_format(prompt)
        assert all(m.content and m.content == m.content.strip() for m in parsed.messages)
        assert all(m.role in ("system", "user", "assistant", "tool") for m in parsed.messages)
        if parsed.format == "plain":
            assert parsed == ParsedPrompt("plain", (), "", False)
        if not parsed.open_assistant:
            assert parsed.assistant_prefix == ""


# --- cachePoint blocks -------------------------------------------------------------------------------------------


def test_cache_points_become_marks_on_the_messages_and_offsets_in_a_llama3_prompt() -> None:
    from llamarock.bedrock import catalog
    from llamarock.bedrock.converse import chat_messages, parse_chat_request, prompt_marks, render_for
    from llamarock.types import CacheMark

    model = catalog.get("meta.llama3-1-8b-instruct-v1:0")
    assert model is not None
    cache = {"cachePoint": {"type": "default"}}
    manual = "The manual. Valve 3 opens at 21 kPa."
    chat = parse_chat_request({
        "system": [{"text": "Be brief."}, cache, {"text": "Cite the manual."}],
        "messages": [
            {"role": "user", "content": [{"text": manual}, cache, {"text": "When does valve 3 open?"}]},
            {"role": "assistant", "content": [{"text": "At 21 kPa."}, cache]},
            {"role": "user", "content": [{"text": "And valve 4?"}]},
        ],
    }, model)
    messages, prefix, marks = chat_messages(chat)
    assert prefix == ""
    # The system prompt up to its cachePoint; the first user message up to the manual; the whole assistant message.
    assert marks == (CacheMark(0, len("Be brief.")), CacheMark(1, len(manual)), CacheMark(2, None))
    prompt = render_for("llama3", messages, prefix)
    offsets = [m.chars for m in prompt_marks("llama3", messages, prompt, marks)]
    assert offsets[0] == prompt.index("Be brief.") + len("Be brief.")
    assert offsets[1] == prompt.index(manual) + len(manual)
    assert prompt[: offsets[2]].endswith("At 21 kPa.<|eot_id|><|start_header_id|>")
    assert offsets == sorted(offsets) and offsets[2] < len(prompt)


def test_a_cache_point_after_the_tools_marks_the_system_prompt_that_holds_them() -> None:
    from llamarock.bedrock import catalog
    from llamarock.bedrock.converse import chat_messages, parse_chat_request
    from llamarock.types import CacheMark

    model = catalog.get("meta.llama3-1-8b-instruct-v1:0")
    assert model is not None
    tool = {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}
    request = {"system": [{"text": "Be brief."}], "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
               "toolConfig": {"tools": [tool, {"cachePoint": {"type": "default"}}]}}
    messages, _, marks = chat_messages(parse_chat_request(request, model))
    assert marks == (CacheMark(0, None),) and "weather" in messages[0].content
    request["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "schema": json.dumps({"type": "object"}), "name": "answer"}}}}
    messages, _, marks = chat_messages(parse_chat_request(request, model))
    # The schema instruction follows the tools in the system prompt: the mark stops before it.
    (mark,) = marks
    assert mark.chars is not None and messages[0].content[: mark.chars].rstrip().endswith("}")
    assert "JSON schema" in messages[0].content[mark.chars:]


def test_a_document_before_the_cache_point_is_cached_with_the_text_before_it() -> None:
    from llamarock.bedrock import catalog
    from llamarock.bedrock.converse import parse_chat_request

    model = catalog.get("meta.llama3-1-8b-instruct-v1:0")
    assert model is not None
    document = {"document": {"name": "manual", "format": "txt", "source": {"bytes": b"Valve 3 opens at 21 kPa."}}}
    chat = parse_chat_request({"messages": [{"role": "user", "content": [
        {"text": "Read this."}, {"cachePoint": {"type": "default"}}, document, {"text": "When does valve 3 open?"},
    ]}]}, model)
    turn = chat.turns[0]
    # Documents come first in the turn's text: what precedes the cachePoint and starts the text is no document.
    assert turn.cache_at == (0,)
    chat = parse_chat_request({"messages": [{"role": "user", "content": [
        document, {"cachePoint": {"type": "default"}}, {"text": "When does valve 3 open?"},
    ]}]}, model)
    turn = chat.turns[0]
    cached = turn.text[: turn.cache_at[0]]
    assert "Valve 3 opens at 21 kPa." in cached and "When does valve 3 open?" not in cached
    assert turn.text[turn.cache_at[0]:].strip() == "When does valve 3 open?"
