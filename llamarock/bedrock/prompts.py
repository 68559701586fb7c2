"""Parse Llama-formatted InvokeModel prompts into chat messages, and render messages back into Llama formats.

Bedrock clients send InvokeModel prompts already written in a Llama chat format: Llama 3
(``<|start_header_id|>role<|end_header_id|> ... <|eot_id|>``), Llama 2 chat (``<s>[INST] <<SYS>>...<</SYS>> ...
[/INST] ... </s>``) or plain text. When the serving weights use another chat format, :func:`parse_prompt` recovers
the conversation so that it can be rendered with the serving model's own template. :func:`render_llama3` and
:func:`render_llama2` go the other way. Parsing is lenient: it never raises, drops empty turns and strips the
whitespace around each turn's content. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llamarock.types import ChatMessage, Role

PromptFormat = Literal["llama3", "llama2", "plain"]

_L3_HEADER = re.compile(r"<\|start_header_id\|>((?:(?!<\|).)*?)<\|end_header_id\|>", re.DOTALL)
_L3_TURN_END = re.compile(r"<\|eot_id\|>|<\|eom_id\|>")
_L3_TEXT_MARKERS = re.compile(r"<\|begin_of_text\|>|<\|end_of_text\|>")
_L3_ROLES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "ipython": "tool",
    "tool": "tool",
}
_L2_TOKENS = re.compile(r"(<s>|</s>|\[INST\]|\[/INST\]|<<SYS>>|<</SYS>>)")
_L2_SYSTEM_CLOSERS = frozenset({"<s>", "</s>", "[INST]", "[/INST]", "<</SYS>>"})

_L2Mode = Literal["none", "user", "assistant"]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt taken apart.

    ``messages`` holds the closed turns in order (empty for ``"plain"``). ``open_assistant`` is true when the prompt
    ends with an assistant turn awaiting generation; ``assistant_prefix`` is the text already written into that
    turn (a prefilled answer, ``""`` if none).
    """

    format: PromptFormat
    messages: tuple[ChatMessage, ...]
    assistant_prefix: str
    open_assistant: bool


def detect_format(prompt: str) -> PromptFormat:
    """Which chat format ``prompt`` is written in: ``<|start_header_id|>`` means Llama 3, ``[INST]`` Llama 2."""
    if "<|start_header_id|>" in prompt:
        return "llama3"
    if "[INST]" in prompt:
        return "llama2"
    return "plain"


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Take ``prompt`` apart into messages; never raises."""
    fmt = detect_format(prompt)
    if fmt == "llama3":
        return _parse_llama3(prompt)
    if fmt == "llama2":
        return _parse_llama2(prompt)
    return ParsedPrompt(format="plain", messages=(), assistant_prefix="", open_assistant=False)


def render_llama3(messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
    """Render ``messages`` in Meta's canonical Llama 3 format (role ``tool`` becomes ``ipython``)."""
    parts = ["<|begin_of_text|>"]
    for message in messages:
        role = "ipython" if message.role == "tool" else message.role
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{message.content}<|eot_id|>")
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def render_llama2(messages: Sequence[ChatMessage]) -> str:
    """Render ``messages`` in the Llama 2 chat format.

    System messages are joined with ``"\\n"`` and folded into the first ``[INST]``; tool messages count as user
    text. Consecutive messages of one side are joined with a blank line; an assistant message with no user message
    before it gets an empty ``[INST]``. The result ends with ``[/INST]`` when the last message is not the
    assistant's, else with ``</s>``.
    """
    system = "\n".join(m.content for m in messages if m.role == "system")
    turns: list[list[str | None]] = []  # [user text, assistant text or None]
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "assistant":
            if not turns:
                turns.append(["", None])
            current = turns[-1][1]
            turns[-1][1] = message.content if current is None else f"{current}\n\n{message.content}"
        elif turns and turns[-1][1] is None:
            turns[-1][0] = f"{turns[-1][0]}\n\n{message.content}"
        else:
            turns.append([message.content, None])
    if system and not turns:
        turns.append(["", None])
    parts: list[str] = []
    for index, (user, assistant) in enumerate(turns):
        sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if index == 0 and system else ""
        parts.append(f"<s>[INST] {sys_block}{user} [/INST]")
        if assistant is not None:
            parts.append(f" {assistant} </s>")
    return "".join(parts)


def _append(messages: list[ChatMessage], role: Role, content: str) -> None:
    """Add a message with ``content`` stripped, unless that leaves it empty."""
    text = content.strip()
    if text:
        messages.append(ChatMessage(role=role, content=text))


def _split_turn(segment: str) -> tuple[str, bool]:
    """A Llama 3 turn's body up to its end marker, and whether it had one."""
    end = _L3_TURN_END.search(segment)
    if end is None:
        return segment, False
    return segment[: end.start()], True


def _parse_llama3(prompt: str) -> ParsedPrompt:
    text = _L3_TEXT_MARKERS.sub("", prompt)
    headers = list(_L3_HEADER.finditer(text))
    messages: list[ChatMessage] = []
    lead, _ = _split_turn(text[: headers[0].start()] if headers else text)
    _append(messages, "user", lead)
    for index, header in enumerate(headers):
        last = index == len(headers) - 1
        body, closed = _split_turn(text[header.end() : len(text) if last else headers[index + 1].start()])
        role = _L3_ROLES.get(header.group(1).strip().lower(), "user")
        if last and role == "assistant" and not closed:
            return ParsedPrompt("llama3", tuple(messages), body.lstrip(), True)
        _append(messages, role, body)
    return ParsedPrompt("llama3", tuple(messages), "", False)


def _flush(messages: list[ChatMessage], mode: _L2Mode, buffer: list[str]) -> None:
    _append(messages, "assistant" if mode == "assistant" else "user", "".join(buffer))
    buffer.clear()


def _parse_llama2(prompt: str) -> ParsedPrompt:
    messages: list[ChatMessage] = []
    mode: _L2Mode = "none"  # "user": inside [INST]; "assistant": after [/INST]; "none": elsewhere
    buffer: list[str] = []  # text of the current turn
    system: list[str] | None = None  # text of an open <<SYS>> block
    for piece in _L2_TOKENS.split(prompt):
        if system is not None:
            if piece not in _L2_SYSTEM_CLOSERS:
                system.append(piece)
                continue
            _append(messages, "system", "".join(system))
            system = None
            if piece == "<</SYS>>":
                continue
        if piece == "<<SYS>>":
            if mode != "user":  # a system block outside [INST] (LangChain) closes the turn before it
                _flush(messages, mode, buffer)
                mode = "none"
            system = []
        elif piece == "[INST]":
            _flush(messages, mode, buffer)
            mode = "user"
        elif piece == "[/INST]":
            _flush(messages, mode, buffer)
            mode = "assistant"
        elif piece == "</s>" or (piece == "<s>" and mode != "user"):
            _flush(messages, mode, buffer)
            mode = "none"
        elif piece not in ("<s>", "<</SYS>>"):
            buffer.append(piece)
    if system is not None:
        _append(messages, "system", "".join(system))
    if mode == "assistant":
        return ParsedPrompt("llama2", tuple(messages), "".join(buffer).lstrip(), True)
    _flush(messages, mode, buffer)
    return ParsedPrompt("llama2", tuple(messages), "", False)
