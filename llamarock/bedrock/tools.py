"""Llama 3.1 tool calling: the tools' system prompt, tool turns rendered as text, and tool calls parsed back.

Converse's ``toolConfig`` becomes Meta's JSON tool-calling instructions (:func:`tools_system_prompt`); ``toolUse``
blocks in earlier assistant turns are written as the JSON the model would have produced (:func:`render_tool_call`)
and ``toolResult`` blocks become ``ipython`` turns (:func:`render_tool_result`). A generated answer is a tool call
only when it is *entirely* tool calls in one of the formats Llama models emit (:func:`parse_tool_calls`).
:func:`call_schema` and :func:`parse_call_json` serve engines that can constrain generation to a JSON schema.
Pure: no I/O.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: Converse's ``toolSpec`` with ``inputSchema.json`` as ``input_schema``."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: becomes a ``toolUse`` block."""

    tool_use_id: str
    name: str
    input: dict[str, Any]


PYTHON_TAG = "<|python_tag|>"
# How a tool-call answer may start, after leading whitespace (see could_be_tool_call).
_CALL_OPENERS = ("{", "[", "<function", PYTHON_TAG)
# Special tokens an engine may leave at the end of a tool-call turn.
_TRAILING_TOKENS = re.compile(r"(?:\s*(?:<\|eom_id\|>|<\|eot_id\|>|<\|end_of_text\|>))+\s*$")
_FUNCTION_TAG = re.compile(r"<function=([^>]*)>(.*?)</function>", re.DOTALL)
_SEPARATORS = " \t\r\n;"

_INSTRUCTIONS = (
    "Environment: ipython\n\n"
    "Given the following functions, please respond with a JSON for a function call with its proper arguments that "
    "best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
    "Do not use variables. To call several functions, write one JSON object per line and nothing else. "
    "If none of the functions helps to answer, answer in plain text without any JSON.\n\n"
    "When you receive a tool call response, use the output to format an answer to the original user question.\n\n"
    "The functions:"
)


def new_tool_use_id() -> str:
    """A fresh ``toolUseId`` that looks like Bedrock's: ``tooluse_`` and 22 url-safe characters."""
    return "tooluse_" + secrets.token_urlsafe(16)


def _schema(spec: ToolSpec) -> dict[str, Any]:
    return spec.input_schema or {"type": "object"}


def tools_system_prompt(tools: Sequence[ToolSpec]) -> str:
    """Meta's Llama 3.1 JSON tool-calling instructions followed by each tool's definition, one JSON per paragraph."""
    definitions = [
        json.dumps(
            {
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": _schema(tool)},
            },
            ensure_ascii=False,
        )
        for tool in tools
    ]
    return "\n\n".join([_INSTRUCTIONS, *definitions])


def render_tool_call(call: ToolCall) -> str:
    """An earlier assistant ``toolUse`` as the JSON the model is told to write."""
    return json.dumps({"name": call.name, "parameters": call.input}, ensure_ascii=False)


def _result_part(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return json.dumps(block, ensure_ascii=False, default=str)
    if "text" in block:
        return str(block["text"])
    if "json" in block:
        return json.dumps(block["json"], ensure_ascii=False, default=str)
    if "document" in block:
        document = block["document"]
        name = document.get("name", "") if isinstance(document, dict) else ""
        return f"[document {name}]" if name else "[document]"
    if "image" in block:
        return "[image]"
    return "[" + ", ".join(block) + "]" if block else ""


def render_tool_result(content: Any, status: str | None) -> str:
    """The text of the ``ipython`` turn for a ``toolResult``: its text and JSON blocks, ``Error: `` first on error."""
    blocks = content if isinstance(content, list | tuple) else [content]
    text = "\n".join(part for part in (_result_part(block) for block in blocks if block is not None) if part)
    if status == "error":
        return f"Error: {text}" if text else "Error"
    return text


def _call_from_object(obj: Any, names: frozenset[str]) -> ToolCall | None:
    """A call from ``{"name": ..., "parameters"|"arguments": {...}}`` (arguments may be a JSON string)."""
    if not isinstance(obj, dict) or not set(obj) <= {"name", "parameters", "arguments", "type"}:
        return None
    if "parameters" in obj and "arguments" in obj:
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in names or obj.get("type", "function") != "function":
        return None
    arguments = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_tool_use_id(), name, arguments)


def _json_objects(text: str) -> list[Any] | None:
    """The JSON values ``text`` consists of, separated by whitespace or ``;``; None if anything else is there."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index] in _SEPARATORS:
            index += 1
        if index == len(text):
            return values
        try:
            value, index = decoder.raw_decode(text, index)
        except (json.JSONDecodeError, RecursionError):
            return None
        values.append(value)


def _parse_json_calls(text: str, names: frozenset[str]) -> list[ToolCall] | None:
    values = _json_objects(text)
    if not values:
        return None
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    calls = [_call_from_object(value, names) for value in values]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _parse_function_tags(text: str, names: frozenset[str]) -> list[ToolCall] | None:
    calls: list[ToolCall] = []
    position = 0
    for match in _FUNCTION_TAG.finditer(text):
        if text[position : match.start()].strip(_SEPARATORS):
            return None
        position = match.end()
        body = match.group(2).strip()
        call = _call_from_object({"name": match.group(1).strip(), "parameters": body}, names)
        if call is None:
            return None
        calls.append(call)
    if not calls or text[position:].strip(_SEPARATORS):
        return None
    return calls


def _parse_pythonic(text: str, names: frozenset[str]) -> list[ToolCall] | None:
    """``[f(a=1), g(b="x")]``: keyword arguments with literal values only."""
    try:
        with warnings.catch_warnings(action="ignore"):  # e.g. "invalid escape sequence" in a string argument
            tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls: list[ToolCall] = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        if node.func.id not in names or any(keyword.arg is None for keyword in node.keywords):
            return None
        try:
            arguments = {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in node.keywords}
            # A toolUse input must be JSON: tuples become lists; sets, bytes, complex numbers and NaN are refused.
            arguments = json.loads(json.dumps(arguments, allow_nan=False))
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        calls.append(ToolCall(new_tool_use_id(), node.func.id, arguments))
    return calls


def _normalise(text: str) -> str:
    text = _TRAILING_TOKENS.sub("", text).strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG) :].strip()
    return text


def parse_tool_calls(text: str, tools: Sequence[ToolSpec]) -> list[ToolCall] | None:
    """The tool calls ``text`` consists of, or None when it is not entirely calls of the known ``tools``.

    Accepted, after whitespace and an optional leading ``<|python_tag|>``: JSON objects
    ``{"name": ..., "parameters"|"arguments": {...}}`` (one, several separated by ``;`` or newlines, or a JSON list of
    them), ``<function=NAME>{...}</function>`` tags, and a pythonic list ``[f(a=1), g(b="x")]``.
    """
    names = frozenset(tool.name for tool in tools)
    body = _normalise(text)
    if not names or not body or not could_be_tool_call(body):
        return None
    if body.startswith("<function"):
        return _parse_function_tags(body, names)
    return _parse_json_calls(body, names) or (_parse_pythonic(body, names) if body.startswith("[") else None)


def call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON schema of one call ``{"name": ..., "parameters": {...}}`` of any of ``tools``."""
    schemas = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "parameters": _schema(tool)},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    if not schemas:
        raise ValueError("call_schema needs at least one tool")
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def parse_call_json(text: str, tools: Sequence[ToolSpec]) -> ToolCall:
    """The call in ``text``, generated under :func:`call_schema`; ValueError if it is not one call of ``tools``."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"the tool call is not valid JSON: {error}") from None
    call = _call_from_object(obj, frozenset(tool.name for tool in tools))
    if call is None:
        raise ValueError("the JSON is not a call of one of the tools")
    return call


def could_be_tool_call(prefix: str) -> bool:
    """Whether an answer starting with ``prefix`` may still turn out to be a tool call (so must not be streamed yet)."""
    start = prefix.lstrip()
    return any(start.startswith(opener) or opener.startswith(start) for opener in _CALL_OPENERS)


# What may complete a JSON text cut off mid-token, tried shortest first before the open containers are closed.
_COMPLETIONS = ("", '"', "null", ": null", '": null', '"": null', "0", "e", "ue", "rue", "lse", "ull", "ll", "l")


def close_partial_json(text: str) -> str | None:
    """The shortest suffix found that makes ``text``, a JSON object cut off by a token limit, parse as an object;
    None when no such suffix is found. Used so that a forced tool call cut by maxTokens ends as the same toolUse
    block in Converse and ConverseStream (the stream sends the suffix as its last input fragment)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    closers = "".join(reversed(stack))
    stripped = text.rstrip()
    if escaped:
        candidates = ['\\"' + c for c in _COMPLETIONS]  # a lone backslash escapes itself, then the string closes
    elif in_string:
        candidates = ['"' + c for c in _COMPLETIONS]
    else:
        candidates = list(_COMPLETIONS)
    if stripped.endswith(","):  # a trailing comma needs one more element or member
        candidates = ['"": null' if (stack and stack[-1] == "}") else "null", *candidates]
    for middle in candidates:
        suffix = middle + closers
        try:
            value = json.loads(text + suffix)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return suffix
    return None
