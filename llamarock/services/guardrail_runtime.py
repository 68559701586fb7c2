"""Guardrails on the runtime: ApplyGuardrail, and the checks a guardrail makes around one Converse or InvokeModel call.

The policies are evaluated by the guardrail service (``services/guardrails.py``: ``apply`` answers ApplyGuardrail's
output body); this module decides what is checked when, and keeps the verdicts for the answer's trace:

- the **input** is checked before generation: a blocked input never reaches the scheduler or the engine (it costs no
  model tokens) and the answer is the guardrail's blocked messaging;
- the **output** is checked whole for non-streaming answers; a stream in ``sync`` mode is held back and checked in
  chunks of at least ``chunk_chars`` characters (cut at a sentence end), each sent only once checked (masked when the
  guardrail anonymizes); in ``async`` mode chunks are sent at once and checked in the background, and an
  intervention found later stops the stream with the blocked messaging (masking cannot take back what was sent: as
  on Bedrock, async mode does not mask);
- beyond Bedrock (not in ``--compat bedrock``), tool results and tool specs are checked with the input, and the tool
  calls the model writes are checked with the output (an intervention there withholds the calls: the answer is the
  blocked output messaging).

Every check is reported to ``observe`` (the /metrics guardrail series).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from llamarock.bedrock.guardrails import (
    STOP_REASON,
    GuardrailRequest,
    GuardTrace,
    blocks,
    intervened,
    output_text,
    text_block,
)

Source = Literal["INPUT", "OUTPUT"]
Event = tuple[str, dict[str, Any]]
# (guardrail id, version, source, operation, verdict, latency ms): one per check.
CheckObserver = Callable[[str, str, str, str, dict[str, Any], int], None]

CHUNK_CHARS = 200  # a streamed answer is checked in chunks of at least this many characters


class Applies(Protocol):
    """The guardrail service, as the runtime uses it (``services/guardrails.py:GuardrailService``)."""

    async def apply(self, region: str, identifier: str, version: str | None, source: Source,
                    content: list[dict[str, Any]], output_scope: str = "INTERVENTIONS") -> dict[str, Any]: ...

    def resolve(self, region: str, identifier: str, version: str | None = None) -> Any: ...

    def blocked_message(self, guardrail: Any, source: Source) -> str: ...


class GuardrailRuntime:
    """ApplyGuardrail, and :class:`CallGuard` for the guardrail of one runtime call."""

    def __init__(self, service: Applies, observe: CheckObserver | None = None,
                 chunk_chars: int = CHUNK_CHARS) -> None:
        self.service = service
        self.observe = observe
        self.chunk_chars = chunk_chars

    async def apply(self, region: str, identifier: str, version: str, source: Source, content: list[dict[str, Any]],
                    output_scope: str = "INTERVENTIONS", operation: str = "ApplyGuardrail") -> dict[str, Any]:
        started = time.monotonic()
        verdict = await self.service.apply(region, identifier, version, source, content, output_scope)
        if self.observe is not None:
            self.observe(identifier.rsplit("/", 1)[-1], version, source, operation, verdict,
                         int((time.monotonic() - started) * 1000))
        return verdict

    async def blocked_messaging(self, region: str, request: GuardrailRequest, source: Source) -> str:
        """The guardrail version's blocked messaging for ``source`` (what replaces content it only masked where
        masked content cannot stand: a prompt, a tool call)."""
        guardrail = self.service.resolve(region, request.identifier, request.version)
        if inspect.isawaitable(guardrail):
            guardrail = await guardrail
        return self.service.blocked_message(guardrail, source)

    def call(self, region: str, request: GuardrailRequest, operation: str, beyond: bool) -> CallGuard:
        return CallGuard(self, region, request, operation, beyond)


class CallGuard:
    """The guardrail of one runtime call: its input check, its output guards, and the verdicts for the trace."""

    def __init__(self, runtime: GuardrailRuntime, region: str, request: GuardrailRequest, operation: str,
                 beyond: bool) -> None:
        self.runtime = runtime
        self.region = region
        self.request = request
        self.operation = operation
        self.beyond = beyond  # check tool results, specs and calls too (not in --compat bedrock)
        self.trace = GuardTrace(request, outputs=[])

    async def check(self, source: Source, content: list[dict[str, Any]]) -> dict[str, Any]:
        verdict = await self.runtime.apply(self.region, self.request.identifier, self.request.version, source,
                                           content, self.request.output_scope, self.operation)
        if source == "INPUT":
            self.trace.input = verdict
        else:
            assert self.trace.outputs is not None
            self.trace.outputs.append(verdict)
        return verdict

    async def check_input(self, content: list[dict[str, Any]]) -> str | None:
        """Check the input; the text to answer with instead (the blocked input messaging) when the guardrail
        intervenes. As on Bedrock, an input the guardrail would only mask is not sent on masked: the model never
        sees it, and the answer is the blocked messaging.

        An input with nothing to check is still checked (an empty text): the guardrail must exist either way."""
        verdict = await self.check("INPUT", content or [text_block("")])
        if not intervened(verdict):
            return None
        return await self.blocked_text(verdict, "INPUT")

    async def blocked_text(self, verdict: dict[str, Any], source: Source) -> str:
        """What replaces content a verdict intervened on wholesale: its output (the blocked messaging) when it
        blocks, else the guardrail's blocked messaging."""
        if blocks(verdict):
            return output_text(verdict)
        return await self.runtime.blocked_messaging(self.region, self.request, source)

    def output(self, mode: Literal["whole", "sync", "async"]) -> OutputGuard:
        return OutputGuard(self, mode)

    @property
    def output_intervened(self) -> bool:
        return any(intervened(v) for v in self.trace.outputs or [])


class OutputGuard:
    """Checks the text of an answer as it is produced: :meth:`feed` takes what the model wrote and returns what may be
    sent now; :meth:`flush` the rest. After a blocking intervention :attr:`stopped` is set (stop generating) and the
    blocked messaging is what was returned."""

    def __init__(self, guard: CallGuard, mode: Literal["whole", "sync", "async"]) -> None:
        self.guard = guard
        self.mode = mode
        self.chunk = guard.runtime.chunk_chars if mode != "whole" else None
        self.raw: list[str] = []  # everything the model wrote
        self.sent: list[str] = []  # everything released (checked, masked or replaced)
        self.pending = ""
        self.stopped = False
        self.checked_any = False
        self._tasks: list[asyncio.Task[dict[str, Any]]] = []
        self._reported = False

    @property
    def text(self) -> str:
        return "".join(self.sent)

    def _cut(self) -> str:
        """The part of ``pending`` ready to check: at least a chunk, cut after its last sentence end (so that what a
        policy matches, a phone number or an address, is not split between two checks), or, past two chunks with no
        sentence end, after its last whitespace."""
        if self.chunk is None or len(self.pending) < self.chunk:
            return ""
        cut = max(self.pending.rfind(end) for end in (". ", "! ", "? ", "\n")) + 1
        if cut <= 0 and len(self.pending) >= 2 * self.chunk:
            cut = max(self.pending.rfind(c) for c in " \t") + 1
        if cut <= 0:
            if len(self.pending) < 4 * self.chunk:
                return ""
            cut = len(self.pending)
        segment, self.pending = self.pending[:cut], self.pending[cut:]
        return segment

    async def _release(self, segment: str) -> str:
        self.checked_any = True
        verdict = await self.guard.check("OUTPUT", [text_block(segment)])
        if intervened(verdict):
            self.note_model_output()
            if blocks(verdict):
                self.stopped = True
            segment = output_text(verdict)
        self.sent.append(segment)
        return segment

    def note_model_output(self) -> None:
        self.guard.trace.model_output = ["".join(self.raw) + self.pending]

    async def feed(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        self.raw.append(text)
        if self.mode == "async":
            return self._feed_async(text)
        self.pending += text
        segment = self._cut()
        return await self._release(segment) if segment else ""

    def _feed_async(self, text: str) -> str:
        self.pending += text
        segment = self._cut()
        if segment:
            self._tasks.append(asyncio.ensure_future(self.guard.check("OUTPUT", [text_block(segment)])))
        blocked = self._blocked_verdict(done_only=True)
        if blocked is not None:
            return self._stop_async(blocked)
        self.sent.append(text)
        return text

    def _blocked_verdict(self, done_only: bool) -> dict[str, Any] | None:
        for task in self._tasks:
            if task.done() or not done_only:
                verdict = task.result() if task.done() else None
                if verdict is not None and blocks(verdict):
                    return verdict
        return None

    def _stop_async(self, verdict: dict[str, Any]) -> str:
        self.stopped = True
        self.note_model_output()
        self._cancel()
        message = output_text(verdict)
        self.sent.append(message)
        return message

    def _cancel(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()

    async def flush(self) -> str:
        """The rest of the answer, checked (the whole answer, in ``whole`` mode)."""
        if self.stopped:
            return ""
        if self.mode == "async":
            segment, self.pending = self.pending, ""
            if segment:
                self._tasks.append(asyncio.ensure_future(self.guard.check("OUTPUT", [text_block(segment)])))
            if self._tasks:
                await asyncio.gather(*self._tasks)
            blocked = self._blocked_verdict(done_only=False)
            if blocked is not None:
                return self._stop_async(blocked)
            if any(intervened(task.result()) for task in self._tasks):
                self.note_model_output()
            return ""
        segment, self.pending = self.pending, ""
        released = await self._release(segment) if segment or not self.checked_any else ""
        if self.guard.output_intervened:
            self.note_model_output()  # the whole answer, not only up to the chunk that intervened
        return released

    def close(self) -> None:
        """Cancel background checks a stream ended early left running."""
        self._cancel()
        for task in self._tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()


class ConverseGuard:
    """The output guard of a Converse answer, as a filter of its events (``StreamAssembler``'s): text deltas go
    through the :class:`OutputGuard`, toolUse blocks are held until the message stops and checked then (beyond
    Bedrock), the stopReason becomes ``guardrail_intervened`` after an intervention, and the metadata event gets
    the trace."""

    def __init__(self, guard: CallGuard, mode: Literal["whole", "sync", "async"]) -> None:
        self.guard = guard
        self.text = guard.output(mode)
        self.held: list[Event] = []
        self.tool_blocks: set[int] = set()
        self.calls_blocked = False
        self.text_index = 0
        self.text_open = False
        self.tools_verdict: dict[str, Any] = {}

    @property
    def stopped(self) -> bool:
        return self.text.stopped

    def _delta(self, index: int, text: str) -> Event:
        self.text_open = True
        return ("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": text}})

    async def filter(self, event: Event) -> list[Event]:
        kind, payload = event
        index: int = payload.get("contentBlockIndex", -1)
        if kind == "contentBlockStart" and "toolUse" in (payload.get("start") or {}):
            self.tool_blocks.add(index)
        if index in self.tool_blocks:
            self.held.append(event)
            return []
        if kind == "contentBlockDelta" and "text" in payload["delta"]:
            self.text_index = index
            released = await self.text.feed(payload["delta"]["text"])
            return [self._delta(index, released)] if released else []
        if kind == "contentBlockStop":
            rest = await self.text.flush()
            return ([self._delta(index, rest)] if rest else []) + [event]
        if kind == "messageStop":
            return [*(await self._close_tools()), ("messageStop", self._stop(payload))]
        if kind == "metadata":
            trace = self.guard.trace.converse()
            return [("metadata", {**payload, "trace": trace} if trace is not None else payload)]
        return [event]

    async def _close_tools(self) -> list[Event]:
        if not self.held:
            return []
        if self.text.stopped or (self.guard.beyond and await self._tools_intervene()):
            self.calls_blocked = True
            index = min(self.tool_blocks)
            events: list[Event] = []
            if not self.text.stopped:  # the calls are withheld; what the guardrail answers instead is said as text
                said = await self.guard.blocked_text(self.tools_verdict, "OUTPUT")
                self.text.sent.append(said)
                events = [self._delta(index, said), ("contentBlockStop", {"contentBlockIndex": index})]
            self.held = []
            return events
        held, self.held = self.held, []
        return held

    async def _tools_intervene(self) -> bool:
        calls = [p["delta"]["toolUse"].get("input", "") for k, p in self.held
                 if k == "contentBlockDelta" and "toolUse" in p.get("delta", {})]
        self.tools_verdict = await self.guard.check("OUTPUT", [text_block("".join(calls))])
        if intervened(self.tools_verdict):
            self.guard.trace.model_output = ["".join(self.text.raw) + "".join(calls)]
            return True
        return False

    def _stop(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.guard.output_intervened:
            return {**payload, "stopReason": STOP_REASON}
        return payload

    def calls(self, calls: list[Any]) -> list[Any]:
        return [] if self.calls_blocked else calls
