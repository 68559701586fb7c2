"""The runtime use cases, end to end: InvokeModel, Converse (and their streams) and CountTokens.

Each call goes resolve → checks (readiness, images) → render (one prompt rule, ``InferenceService.engine_request``)
→ performance tier → admission and generation (``InferenceService.generate``: the scheduler, then the engine) →
stop sequences → usage. Routes get an :class:`Invocation`: the Bedrock-level events of the answer (InvokeModel's
``chunk`` bodies, ConverseStream's ``messageStart`` ... ``metadata``), the usage they state, kept up to date as
they come, and once the events are drained the whole non-streaming response body. Streaming and non-streaming
answers are therefore the same generation, assembled the same way (the Converse response comes from the stream
assembler's final outcome).

The first engine chunk is awaited before the first event is yielded, so that whatever refuses a request before it
generates (throttling, a prompt too long for the context) fails the first ``anext`` and reaches the client as an
ordinary error response rather than inside a stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llamarock.bedrock import compat, imported_models
from llamarock.bedrock.converse import ChatRequest, chat_messages, converse_response, parse_chat_request, usage
from llamarock.bedrock.converse_stream import Event, StreamAssembler, output_schema
from llamarock.bedrock.guardrails import (
    NATIVE_CONFIG,
    STOP_REASON,
    GuardrailRequest,
    converse_config,
    converse_input,
    invoke_config,
    strip_native_config,
    tagged_prompt,
)
from llamarock.bedrock.images import native_images, place_image_tokens
from llamarock.bedrock.native import (
    InvocationMetrics,
    NativeRequest,
    decode_body,
    native_response,
    parse_native_request,
    stream_chunk,
)
from llamarock.context import ModelName
from llamarock.errors import ResourceNotFoundException, ValidationException
from llamarock.services.guardrail_runtime import CallGuard, ConverseGuard, GuardrailRuntime
from llamarock.services.inference import InferenceService, Target
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams, StopReason

Resolved = Callable[[Target], None] | None


class StopFilter:
    """Holds back text that could be the start of a stop sequence; reports the one that matched."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            position, stop = min(hits)
            self.matched = stop
            out, self.pending = self.pending[:position], ""
            return out
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    keep = max(keep, size)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Usage:
    """What an answer has cost so far (the one definition, docs/observability.md): ``prompt_tokens`` is the whole
    prompt, cached or not (CountTokens, InvokeModel's counts); ``cache_read_tokens`` the part of it reused from the
    prefix cache (None when the engine has no cache); ``input_tokens`` the rest, computed for this request
    (Converse ``inputTokens``, metering); ``output_tokens`` the generated ones. ``first_token_ms`` is when the first
    engine chunk arrived (ms since the request began)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    first_token_ms: int | None = None
    report_cache: bool = True  # False in ``--compat bedrock``: Bedrock reports no cache reads for Llama

    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens - (self.cache_read_tokens or 0)

    def add(self, chunk: GenerationChunk, elapsed_ms: int) -> None:
        if self.first_token_ms is None:
            self.first_token_ms = elapsed_ms
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_tokens is not None and self.report_cache:
            self.cache_read_tokens = chunk.cached_tokens
        self.output_tokens += chunk.token_count


@dataclass
class Invocation:
    """One runtime call, resolved and admitted lazily: drain ``events`` (or stream them), then read ``response``.

    ``headers`` are the Bedrock headers the answer echoes (performance tier, service tier); ``request_metadata``,
    ``performance_latency``, ``service_tier`` (None: the request named none, so ``default``) and ``has_images`` are
    facts of the request for its invocation record.
    """

    target: Target
    events: AsyncGenerator[Event, None]
    usage: Usage
    headers: dict[str, str] = field(default_factory=dict)
    request_metadata: dict[str, str] = field(default_factory=dict)
    performance_latency: str | None = None
    service_tier: str | None = None
    has_images: bool = False
    response: dict[str, Any] | None = None
    completed: bool = False
    guard: CallGuard | None = None  # the guardrail the request named, with its verdicts once checked

    async def drain(self) -> dict[str, Any]:
        """Run the events to their end and return the non-streaming response body."""
        async with contextlib.aclosing(self.events) as events:
            async for _ in events:
                pass
        assert self.response is not None
        return self.response


class InvocationService:
    """InvokeModel, Converse and CountTokens on the inference service's deployments."""

    def __init__(self, inference: InferenceService, guardrails: GuardrailRuntime | None = None) -> None:
        self.inference = inference
        self.compat: compat.Compat = inference.settings.compat
        self.guardrails = guardrails

    def _guard(self, request: GuardrailRequest | None, region: str | None, target: Target,
               operation: str) -> CallGuard | None:
        """The guardrail of one call (None: the request names none)."""
        if request is None:
            return None
        if self.guardrails is None:
            raise ResourceNotFoundException(
                f"The guardrail {request.identifier} (version {request.version}) does not exist: this server runs "
                "no guardrail service."
            )
        return self.guardrails.call(region or target.inference_region or self.inference.settings.region, request,
                                    operation,
                                    beyond=compat.checks_beyond_bedrock(self.compat))

    def _usage(self) -> Usage:
        return Usage(report_cache=compat.reports_cache(self.compat))

    # --------------------------------------------------------------------------------------------- InvokeModel

    def invoke(self, model: ModelName, region: str | None, body: bytes, headers: Mapping[str, str],
               request_id: str, started: float, resolved: Resolved = None, streaming: bool = False,
               priority: int | None = None) -> Invocation:
        """InvokeModel (and its stream) with Bedrock's native Llama body; ``headers`` are the operation's header
        members (already checked against the service model). ``resolved`` hears the target as soon as it is
        known, so that a call refused by a later check is still recorded against its model. ``priority``, when
        given, is the admission priority instead of the tiers' (batch records: ``scheduler.BATCH_PRIORITY``)."""
        target = self.inference.resolve(model, region)
        if resolved is not None:
            resolved(target)
        if target.imported_arn is not None:  # an imported model also takes OpenAI's body formats
            kind = imported_models.body_kind(body)
            if kind != "bedrock":
                if headers.get("guardrailIdentifier") is not None:
                    raise ValidationException(
                        "Guardrails are not applied to the OpenAI body formats of imported models yet. Send the "
                        "native body (prompt, max_gen_len), or use Converse with guardrailConfig."
                    )
                from llamarock.services.imported_invocation import invoke_openai  # it builds on this module

                return invoke_openai(self, kind, target, model, region, body, request_id, started, streaming,
                                     priority)
        named = headers.get("guardrailIdentifier") is not None or headers.get("guardrailVersion") is not None
        guarded = invoke_config(dict(headers), decode_body(body) if named or NATIVE_CONFIG.encode() in body else None)
        native = parse_native_request(strip_native_config(body) if guarded is not None else body)
        prompt, checked = tagged_prompt(native.prompt, guarded.tag_suffix if guarded is not None else None)
        compat.check_tier(self.compat, headers.get("serviceTier"), target.model.model_id)
        self.inference.check_ready(target)
        self.inference.check_images(target, native.images)
        request = self._native_request(target, native, request_id,
                                       prompt if guarded is not None else native.prompt)
        latency = headers.get("performanceConfigLatency")
        tier = headers.get("serviceTier")
        request = self.inference.tiered(target, request, latency, tier)
        if priority is not None:
            request = dataclasses.replace(request, priority=priority)
        echoed = {}
        if latency is not None:
            echoed["X-Amzn-Bedrock-PerformanceConfig-Latency"] = latency
        if tier is not None:
            echoed["X-Amzn-Bedrock-Service-Tier"] = tier
        invocation = Invocation(target, _empty(), self._usage(), echoed, performance_latency=latency,
                                has_images=bool(native.images), service_tier=tier)
        invocation.guard = self._guard(guarded, region, target, "InvokeModelWithResponseStream" if streaming
                                       else "InvokeModel")
        invocation.events = self._native_events(invocation, request, started, checked, streaming)
        return invocation

    def _native_request(self, target: Target, native: NativeRequest, request_id: str,
                        prompt: str | None = None) -> GenerationRequest:
        """The engine request of a native body (``prompt``: its prompt with guardrail input tags taken out, when
        they were there): its images decoded and checked, their ``<|image|>`` placed."""
        prompt = native.prompt if prompt is None else prompt
        images = native_images(target.model, native.images) if native.images else ()
        prompt = place_image_tokens(prompt, len(images)) if images else prompt
        sampling = SamplingParams(temperature=native.temperature, top_p=native.top_p, max_tokens=native.max_gen_len)
        return self.inference.engine_request(target, sampling, request_id, prompt=prompt, images=images)

    async def _native_events(self, invocation: Invocation, request: GenerationRequest, started: float,
                             checked: list[dict[str, Any]] | None = None,
                             streaming: bool = False) -> AsyncGenerator[Event, None]:
        used = invocation.usage
        text: list[str] = []
        stop: StopReason = "length"
        guard = invocation.guard
        out = None
        if guard is not None:  # the input is checked before generation: a blocked one never reaches the engine
            blocked = await guard.check_input(checked or [])
            if blocked is not None:
                members = guard.trace.native()
                took = InvocationMetrics(0, 0, _since(started), 0, None)
                yield "chunk", {**stream_chunk(blocked, prompt_tokens=0, generation_tokens=0, stop_reason="stop",
                                               metrics=took), **members}
                invocation.response = {**native_response(blocked, 0, 0, "stop"), **members}
                invocation.completed = True
                return
            out = guard.output(guard.request.stream_mode if streaming else "whole")
        try:
            async with contextlib.aclosing(self.inference.generate(invocation.target, request)) as chunks:
                async for chunk in chunks:
                    first = used.first_token_ms is None
                    used.add(chunk, _since(started))
                    text.append(chunk.text)
                    released = chunk.text
                    if out is not None:
                        released = await out.feed(chunk.text)
                        if out.stopped or chunk.stop_reason is not None:
                            released += await out.flush()
                    final = chunk.stop_reason is not None or (out is not None and out.stopped)
                    if out is not None and not released and not final and not first:
                        continue  # held back for the guardrail's check
                    metrics = None
                    if final:
                        stop = chunk.stop_reason or "stop"
                        metrics = InvocationMetrics(used.prompt_tokens, used.output_tokens, _since(started),
                                                    used.first_token_ms or 0, used.cache_read_tokens)
                    body = stream_chunk(
                        released, prompt_tokens=used.prompt_tokens if first else None,
                        generation_tokens=used.output_tokens, stop_reason=stop if final else None, metrics=metrics,
                    )
                    if guard is not None and (final or (out is not None and guard.output_intervened)):
                        body.update(guard.trace.native() if final else {"amazon-bedrock-guardrailAction":
                                                                       "INTERVENED"})
                    yield "chunk", body
                    if final:
                        break
        finally:
            if out is not None:
                out.close()
        generation = "".join(text)
        if out is not None and guard is not None and guard.output_intervened:
            generation = out.text
        invocation.response = native_response(generation, used.prompt_tokens, used.output_tokens, stop)
        if guard is not None:
            invocation.response.update(guard.trace.native())
        invocation.completed = True

    # ------------------------------------------------------------------------------------------------ Converse

    def converse(self, model: ModelName, region: str | None, params: dict[str, Any], request_id: str,
                 started: float, resolved: Resolved = None, seed: int | None = None,
                 streaming: bool = False, priority: int | None = None) -> Invocation:
        """Converse (and ConverseStream, ``streaming``) with a shape-valid body (``params``); ``resolved`` and
        ``priority`` as for :meth:`invoke`. ``seed`` fixes the sampler's random state (OpenAI Chat Completions'
        ``seed``; Converse has none)."""
        target = self.inference.resolve(model, region)
        if resolved is not None:
            resolved(target)
        compat.check_converse(self.compat, params, streaming, target.model.model_id)
        self.inference.check_ready(target)
        chat = parse_chat_request(params, target.model)
        self.inference.check_images(target, chat.images)
        request = self.inference.tiered(target, self._chat_request(target, chat, request_id, seed), chat.latency,
                                        chat.service_tier)
        if priority is not None:
            request = dataclasses.replace(request, priority=priority)
        invocation = Invocation(target, _empty(), self._usage(), request_metadata=dict(chat.request_metadata),
                                performance_latency=chat.latency, has_images=bool(chat.images),
                                service_tier=chat.service_tier)
        invocation.guard = self._guard(converse_config(params), region, target,
                                       "ConverseStream" if streaming else "Converse")
        checked = converse_input(params, invocation.guard.beyond) if invocation.guard is not None else []
        invocation.events = self._converse_events(invocation, chat, request, started, checked, streaming)
        return invocation

    def _chat_request(self, target: Target, chat: ChatRequest, request_id: str,
                      seed: int | None = None) -> GenerationRequest:
        messages, prefix, marks = chat_messages(chat)
        sampling = SamplingParams(temperature=chat.temperature, top_p=chat.top_p, max_tokens=chat.max_tokens,
                                  seed=seed)
        return self.inference.engine_request(target, sampling, request_id, messages=messages, prefix=prefix,
                                             json_schema=output_schema(chat),
                                             cache_marks=marks if compat.honours_cache_points(self.compat) else (),
                                             images=chat.images)

    async def _converse_events(self, invocation: Invocation, chat: ChatRequest, request: GenerationRequest,
                               started: float, checked: list[dict[str, Any]] | None = None,
                               streaming: bool = False) -> AsyncGenerator[Event, None]:
        """Generate, cutting the answer at the first stop sequence (which then ends the generation); with a
        guardrail, check the input first (a blocked input is answered with the blocked messaging, never generated)
        and the output as it comes (``ConverseGuard``)."""
        used = invocation.usage
        guard = invocation.guard
        out: ConverseGuard | None = None
        if guard is not None:
            blocked = await guard.check_input(checked or [])
            if blocked is not None:
                for event in self._blocked_input(invocation, chat, blocked, started):
                    yield event
                return
            out = ConverseGuard(guard, guard.request.stream_mode if streaming else "whole")
        stops = StopFilter(() if request.json_schema is not None else chat.stop_sequences)
        assembler = StreamAssembler(chat)
        native_stop: StopReason = "length"
        try:
            async with contextlib.aclosing(self.inference.generate(invocation.target, request)) as chunks:
                async for chunk in chunks:
                    if used.first_token_ms is None:
                        used.add(chunk, _since(started))
                        for event in assembler.start():
                            yield event
                    else:
                        used.add(chunk, _since(started))
                    text = stops.feed(chunk.text)
                    if stops.matched is None and chunk.stop_reason is not None:
                        text += stops.flush()
                    for event in await _guarded(out, assembler.feed(text)):
                        yield event
                    if out is not None and out.stopped:
                        native_stop = "stop"
                        break
                    if stops.matched is not None:
                        native_stop = "stop"
                        break
                    if chunk.stop_reason is not None:
                        native_stop = chunk.stop_reason
                        break
            events, outcome, reason = assembler.finish(
                native_stop, stops.matched, used.prompt_tokens, used.output_tokens, _since(started),
                used.cache_read_tokens
            )
            for event in await _guarded(out, events):
                yield event
        finally:
            if out is not None:
                out.text.close()
        counted = usage(used.prompt_tokens, used.output_tokens, used.cache_read_tokens)
        text, calls = outcome.text, outcome.calls
        if out is not None and guard is not None and guard.output_intervened:
            text, calls, reason = out.text.text, out.calls(outcome.calls), STOP_REASON
        invocation.response = converse_response(chat, text, calls, reason, counted, _since(started), stops.matched)
        trace = guard.trace.converse() if guard is not None else None
        if trace is not None:
            invocation.response["trace"] = trace
        invocation.completed = True

    def _blocked_input(self, invocation: Invocation, chat: ChatRequest, message: str,
                       started: float) -> list[Event]:
        """The answer to an input the guardrail blocked: its blocked messaging, no tokens (nothing was generated)."""
        assert invocation.guard is not None
        trace = invocation.guard.trace.converse()
        counted = usage(0, 0, None)
        latency = _since(started)
        metadata: dict[str, Any] = {"usage": counted, "metrics": {"latencyMs": latency}}
        if trace is not None:
            metadata["trace"] = trace
        invocation.response = converse_response(chat, message, [], STOP_REASON, counted, latency, None)
        if trace is not None:
            invocation.response["trace"] = trace
        invocation.completed = True
        return [
            ("messageStart", {"role": "assistant"}),
            ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": message}}),
            ("contentBlockStop", {"contentBlockIndex": 0}),
            ("messageStop", {"stopReason": STOP_REASON}),
            ("metadata", metadata),
        ]

    # --------------------------------------------------------------------------------------------- CountTokens

    async def count_tokens(self, model: ModelName, region: str | None, params: dict[str, Any],
                           request_id: str) -> tuple[int, Target]:
        """The input tokens Converse or InvokeModel would run for the same input, with the same template."""
        target = self.inference.resolve(model, region)
        self.inference.check_ready(target)
        source: dict[str, Any] = params.get("input") or {}
        if "converse" in source:
            chat = parse_chat_request(source["converse"], target.model)
            self.inference.check_images(target, chat.images)
            request = self._chat_request(target, chat, request_id)
        elif "invokeModel" in source:
            native = parse_native_request(source["invokeModel"]["body"])
            self.inference.check_images(target, native.images)
            request = self._native_request(target, native, request_id)
        else:
            raise ValidationException("The input field must contain exactly one of converse or invokeModel.")
        return await target.deployment.engine.count_tokens(request), target


async def _guarded(out: ConverseGuard | None, events: list[Event]) -> list[Event]:
    """Converse events through the output guard, if the call has one."""
    if out is None:
        return events
    passed: list[Event] = []
    for event in events:
        passed.extend(await out.filter(event))
    return passed


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _empty() -> AsyncGenerator[Event, None]:
    return
    yield  # pragma: no cover - makes this an async generator
