"""What the model wrote, turned into Converse content: text and tool calls, at the end or as stream events.

Three ways an answer can hold a tool call:
- forced to one known tool (``toolChoice.tool``, or ``any`` with one tool): the output is constrained to the tool's
  input schema, so it *is* the input JSON, streamed as ``toolUse`` input fragments from the first token;
- forced to one of several tools (``any``): constrained to ``{"name", "parameters"}`` and emitted once complete;
- ``auto``: the answer is held back while its start could still be a Llama tool call and streamed as text once it
  cannot; what was held back is parsed at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llamarock.bedrock.converse import ChatRequest, response_fields, tool_use_block, usage
from llamarock.bedrock.tools import (
    ToolCall,
    call_schema,
    close_partial_json,
    could_be_tool_call,
    new_tool_use_id,
    parse_call_json,
)
from llamarock.bedrock.tools import parse_tool_calls as parse_auto_calls

Event = tuple[str, dict[str, Any]]


def output_schema(chat: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema the engine must follow for this request, if any."""
    forced = chat.forced_tools
    if len(forced) == 1:
        return forced[0].input_schema
    if forced:
        return call_schema(forced)
    return chat.output_schema


@dataclass
class Outcome:
    """The final content of an answer."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    malformed: bool = False
    cut_off: bool = False  # a forced tool call closed after maxTokens cut it (see finalize)


def finalize(chat: ChatRequest, text: str, truncated: bool) -> Outcome:
    """Split a complete answer into text and tool calls.

    A call forced to one tool and cut off by maxTokens is still a toolUse block (stopReason ``max_tokens``), whose
    input is the generated JSON closed by :func:`~llamarock.bedrock.tools.close_partial_json`'s suffix: the same
    block ConverseStream has streamed (it sends that suffix as the last input fragment). Its input may lack
    required members. Calls forced to one of several tools, which stream nothing before they are complete, end as
    text when cut off, in both operations."""
    forced = chat.forced_tools
    try:
        if len(forced) == 1:
            suffix = (close_partial_json(text) or "") if truncated else ""
            value = json.loads(text + suffix)
            if not isinstance(value, dict):
                raise ValueError("tool input is not a JSON object")
            return Outcome("", [ToolCall(new_tool_use_id(), forced[0].name, value)], cut_off=bool(suffix))
        if forced:
            return Outcome("", [parse_call_json(text, forced)])
    except ValueError:
        return Outcome(text, malformed=not truncated)
    if chat.tool_choice == "auto":
        calls = parse_auto_calls(text, chat.tools)
        if calls:
            return Outcome("", calls)
    return Outcome(text)


def stop_reason(chat: ChatRequest, outcome: Outcome, native_stop: str, stop_sequence: str | None) -> str:
    """Converse's stopReason for a finished answer."""
    if outcome.cut_off:
        return "max_tokens"
    if outcome.calls:
        return "tool_use"
    if outcome.malformed:
        return "malformed_tool_use" if chat.forced_tools else "malformed_model_output"
    if stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if native_stop == "length" else "end_turn"


class StreamAssembler:
    """Turns text deltas into ConverseStream events, in Bedrock's order."""

    def __init__(self, chat: ChatRequest) -> None:
        self.chat = chat
        forced = chat.forced_tools
        self.streamed_tool: ToolCall | None = None
        if len(forced) == 1:
            self.mode = "tool"
            self.streamed_tool = ToolCall(new_tool_use_id(), forced[0].name, {})
        elif forced:
            self.mode = "hold"
        elif chat.tool_choice == "auto":
            self.mode = "undecided"
        else:
            self.mode = "text"
        self.text: list[str] = []
        self.held: list[str] = []
        self.block = 0
        self.block_open = False

    def start(self) -> list[Event]:
        return [("messageStart", {"role": "assistant"})]

    def _text_delta(self, text: str) -> Event:
        self.block_open = True
        return ("contentBlockDelta", {"contentBlockIndex": self.block, "delta": {"text": text}})

    def feed(self, delta: str) -> list[Event]:
        if not delta:
            return []
        self.text.append(delta)
        if self.mode == "text":
            return [self._text_delta(delta)]
        if self.mode == "tool":
            assert self.streamed_tool is not None
            events: list[Event] = []
            if not self.block_open:
                self.block_open = True
                start = {"toolUseId": self.streamed_tool.tool_use_id, "name": self.streamed_tool.name}
                events.append(("contentBlockStart", {"contentBlockIndex": self.block, "start": {"toolUse": start}}))
            fragment = {"toolUse": {"input": delta}}
            events.append(("contentBlockDelta", {"contentBlockIndex": self.block, "delta": fragment}))
            return events
        self.held.append(delta)
        if self.mode == "undecided" and not could_be_tool_call("".join(self.held)):
            self.mode = "text"
            held, self.held = "".join(self.held), []
            return [self._text_delta(held)]
        return []

    def finish(self, native_stop: str, stop_sequence: str | None, input_tokens: int, output_tokens: int,
               latency_ms: int, cache_read: int | None = None) -> tuple[list[Event], Outcome, str]:
        """The closing events, the final content and the stopReason."""
        text = "".join(self.text)
        outcome = finalize(self.chat, text, truncated=native_stop == "length")
        events: list[Event] = []
        if self.mode == "tool" and outcome.calls and self.streamed_tool is not None:
            outcome.calls[0] = ToolCall(self.streamed_tool.tool_use_id, self.streamed_tool.name, outcome.calls[0].input)
            if outcome.cut_off:
                events.extend(self.feed(close_partial_json(text) or ""))
            events.append(("contentBlockStop", {"contentBlockIndex": self.block}))
        elif outcome.calls:
            if self.block_open:
                events.append(("contentBlockStop", {"contentBlockIndex": self.block}))
                self.block += 1
            for call in outcome.calls:
                block = tool_use_block(call)["toolUse"]
                start = {"toolUse": {"toolUseId": block["toolUseId"], "name": block["name"]}}
                delta = {"toolUse": {"input": json.dumps(block["input"])}}
                events.append(("contentBlockStart", {"contentBlockIndex": self.block, "start": start}))
                events.append(("contentBlockDelta", {"contentBlockIndex": self.block, "delta": delta}))
                events.append(("contentBlockStop", {"contentBlockIndex": self.block}))
                self.block += 1
        else:
            held = "".join(self.held)
            if held or (self.mode == "tool" and not self.block_open):
                events.append(self._text_delta(held or text))
            elif not self.block_open:
                events.append(self._text_delta(""))
            events.append(("contentBlockStop", {"contentBlockIndex": self.block}))
        reason = stop_reason(self.chat, outcome, native_stop, stop_sequence)
        stop: dict[str, Any] = {"stopReason": reason}
        fields = response_fields(self.chat, stop_sequence)
        if fields is not None:
            stop["additionalModelResponseFields"] = fields
        events.append(("messageStop", stop))
        metadata: dict[str, Any] = {"usage": usage(input_tokens, output_tokens, cache_read),
                                    "metrics": {"latencyMs": latency_ms}}
        if self.chat.latency is not None:
            metadata["performanceConfig"] = {"latency": self.chat.latency}
        if self.chat.service_tier is not None:
            metadata["serviceTier"] = {"type": self.chat.service_tier}
        events.append(("metadata", metadata))
        return events, outcome, reason
