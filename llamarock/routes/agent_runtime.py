"""Retrieval (``bedrock-agent-runtime``): Retrieve, RetrieveAndGenerate, RetrieveAndGenerateStream and Rerank.

RetrieveAndGenerate retrieves from the knowledge base (or reads the external sources), renders the prompt
(``bedrock/rag.py``), generates with the Llama model ``modelArn`` names through the runtime's Converse use case, and
answers the text with citations whose spans index it exactly. The generation is an invocation of that model like a
Converse call: it counts against the caller's quotas for the model and is recorded under the operation's name (usage
and cost, metrics, invocation logs). The stream sends the text as ``output`` events as it is
generated (citation markers taken out), then one ``citation`` event per cited part; the session id goes in the
``x-amzn-bedrock-knowledge-base-session-id`` header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from llamarock.auth.actions import model_resources
from llamarock.auth.gate import Gate, denial
from llamarock.auth.quotas import request_estimate
from llamarock.bedrock import rag
from llamarock.bedrock.guardrails import text_block
from llamarock.codec import eventstream
from llamarock.context import ModelName, RequestContext
from llamarock.errors import ValidationException
from llamarock.observability.records import new_record
from llamarock.routes.common import Call, event_stream, json_response, until_disconnect
from llamarock.routes.control import ControlCall
from llamarock.routes.invoke import note_request, note_target, note_usage
from llamarock.services.guardrail_runtime import CallGuard
from llamarock.services.invocation import Invocation
from llamarock.services.knowledge_retrieval import RagSession, RetrievalService, text_deltas

SESSION_HEADER = "x-amzn-bedrock-knowledge-base-session-id"


def _service(call: ControlCall) -> RetrievalService:
    service: RetrievalService = call.state.retrieval
    return service


async def retrieve(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    query = params["retrievalQuery"]
    if query.get("type", "TEXT") != "TEXT" or not query.get("text"):
        raise ValidationException("retrievalQuery needs text (type TEXT); image queries are not supported.")
    if params.get("nextToken"):
        # numberOfResults (at most 100) always fits one response, so no response carries a nextToken to pass back.
        raise ValidationException(
            "The nextToken is not valid: this knowledge base returns all numberOfResults results in one response "
            "and never issues a nextToken. Leave nextToken out."
        )
    results, action = await _service(call).retrieve(call.region, params["knowledgeBaseId"], query["text"],
                                                    params.get("retrievalConfiguration"),
                                                    params.get("guardrailConfiguration"))
    return {"retrievalResults": results, **({"guardrailAction": action} if action else {})}


def _authorise(call: ControlCall, params: dict[str, Any]) -> None:
    """What else RetrieveAndGenerate needs, as on AWS: bedrock:Retrieve on its knowledge base and
    bedrock:InvokeModel on its model (the row authorised bedrock:RetrieveAndGenerate itself)."""
    context: RequestContext = call.request.state.context
    principal = context.principal
    if principal is None:
        return
    configuration = params["retrieveAndGenerateConfiguration"]
    flavour = configuration.get("knowledgeBaseConfiguration") or configuration.get("externalSourcesConfiguration")
    if not flavour:
        return  # the service says which configuration is missing
    settings = call.state.settings
    needs: list[tuple[str, str]] = []
    if configuration.get("knowledgeBaseConfiguration"):
        kb_id = flavour.get("knowledgeBaseId", "")
        needs.append(("bedrock:Retrieve", f"arn:aws:bedrock:{call.region}:{call.account_id}:knowledge-base/{kb_id}"))
    model = ModelName.parse(flavour.get("modelArn", ""), settings.aliases, call.account_id)
    resources, _ = model_resources(model, call.region, call.account_id)
    needs += [("bedrock:InvokeModel", resource) for resource in resources]
    for action, resource in needs:
        decision = principal.policy.evaluate(action, resource, context.policy_context or {})
        if decision != "Allow":
            raise denial(principal.arn, action, resource, decision == "Deny")


@dataclass
class _Rag:
    """A RetrieveAndGenerate call once its sources are found: what it generates, and the call that records it."""

    session: RagSession
    query: str
    sources: list[rag.Source]
    model: ModelName | None  # None when the guardrail stopped the query: nothing is generated
    request: dict[str, Any]  # the Converse request that generates the answer
    call: Call  # records the generation as an invocation of the model (usage, cost, metrics, quotas)
    guard: CallGuard | None  # the guardrail that checks the query and the answer
    blocked: str | None  # the guardrail's blocked input messaging, when it intervened on the query

    async def checked(self, raw: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """The answer's text and citations from what the model wrote, checked by the guardrail (a blocked or masked
        answer has no citations: its spans would index text that is not there), and the guardrailAction member."""
        text, citations = rag.answer(raw, self.sources)
        if self.guard is None:
            return text, citations, {}
        output = self.guard.output("whole")
        guarded = await output.feed(text) + await output.flush()
        if self.guard.output_intervened:
            return guarded, [], {"guardrailAction": "INTERVENED"}
        return text, citations, {"guardrailAction": "NONE"}


async def _prepare(call: ControlCall, params: dict[str, Any]) -> _Rag:
    if not params.get("retrieveAndGenerateConfiguration"):
        raise ValidationException(
            "retrieveAndGenerateConfiguration is required: give its type (KNOWLEDGE_BASE or EXTERNAL_SOURCES) and "
            "the matching knowledgeBaseConfiguration or externalSourcesConfiguration."
        )
    _authorise(call, params)
    service = _service(call)
    session = await service.session(params.get("sessionId"))
    query = params["input"]["text"]
    operation = call.operation
    guard = service.rag_guard(call.region, params, operation)
    blocked = None if guard is None else await guard.check_input([text_block(query)])
    context: RequestContext = call.request.state.context
    if blocked is not None:  # nothing is retrieved or generated for a query the guardrail stops
        return _Rag(session, query, [], None, {}, Call(call.request, context), guard, blocked)
    sources, model_arn, generation = await service.sources(call.region, params, query, session.turns)
    template = (generation.get("promptTemplate") or {}).get("textPromptTemplate")
    prompt = rag.render(template, query, sources, session.turns)
    model, request = service.generation(model_arn, prompt, generation)
    # The generation counts against the caller's requests and tokens per minute for the model, as a Converse call
    # of it would (a ThrottlingException when over), and is recorded as an invocation of it under this operation.
    gate: Gate = call.state.gate
    gate.admit_model(context, model, request_estimate(json.dumps(request).encode()))
    record = new_record(context)
    record.model_identifier = model.identifier
    return _Rag(session, query, sources, model, request, Call(call.request, context, record), guard, None)


def _generate(call: ControlCall, prepared: _Rag) -> Invocation:
    recorded = prepared.call
    assert prepared.model is not None
    invocation = _service(call).generate(call.region, prepared.model, prepared.request, call.request_id,
                                         lambda target: note_target(recorded, target))
    note_request(recorded, invocation)
    return invocation


async def retrieve_and_generate(call: ControlCall, params: dict[str, Any]) -> Response:
    service = _service(call)

    async def answer() -> Response:
        prepared = await _prepare(call, params)
        session_id = prepared.session.session_id
        if prepared.blocked is not None:
            text = prepared.blocked
            body: dict[str, Any] = {"output": {"text": text}, "sessionId": session_id, "citations": [],
                                    "guardrailAction": "INTERVENED"}
        else:
            recorded = prepared.call
            with recorded.recording():
                invocation = _generate(call, prepared)
                raw = "".join([delta async for delta in text_deltas(invocation)])
                note_usage(recorded, invocation)
                text, citations, action = await prepared.checked(raw)
                body = {"output": {"text": text}, "sessionId": session_id, "citations": citations, **action}
                recorded.answered(body)
                recorded.finish()
        await service.remember(prepared.session, prepared.query, text)
        return json_response(body, {"x-amzn-RequestId": call.request_id})

    # A client that gives up (a read timeout, then its retry) cancels the generation it no longer waits for.
    return await until_disconnect(call.request, answer())


async def retrieve_and_generate_stream(call: ControlCall, params: dict[str, Any]) -> Response:
    service = _service(call)
    prepared = await _prepare(call, params)
    recorded = prepared.call
    headers = {SESSION_HEADER: prepared.session.session_id, "x-amzn-RequestId": call.request_id}
    if prepared.blocked is not None:
        return await event_stream(recorded, _guarded_frames(prepared.blocked, [], "INTERVENED"), headers, lambda: None)
    with recorded.recording():
        invocation = _generate(call, prepared)
    deltas = text_deltas(invocation)

    async def frames() -> AsyncIterator[tuple[bytes, Any]]:
        if prepared.guard is not None:
            # A guardrail checks the whole answer before any of it is sent (its citations index the checked text).
            text, citations, action = await prepared.checked("".join([delta async for delta in deltas]))
            async for frame in _guarded_frames(text, citations, action["guardrailAction"]):
                yield frame
            await service.remember(prepared.session, prepared.query, text)
            return
        answer = rag.StreamedAnswer()
        async for delta in deltas:
            fresh = answer.feed(delta)
            if fresh:
                yield eventstream.event("output", {"text": fresh}), {"output": {"text": fresh}}
        rest, citations = answer.finish(prepared.sources)
        if rest:
            yield eventstream.event("output", {"text": rest}), {"output": {"text": rest}}
        for citation in citations:
            event = {"citation": citation, **citation}
            yield eventstream.event("citation", event), {"citation": event}
        await service.remember(prepared.session, prepared.query, answer.sent)

    async def started() -> AsyncIterator[tuple[bytes, Any]]:
        # The first frame is awaited before the response starts (a refusal is then a plain JSON error); an answer
        # with no text at all still sends its (empty) output event.
        produced = False
        async for item in frames():
            produced = True
            yield item
        if not produced:
            yield eventstream.event("output", {"text": ""}), {"output": {"text": ""}}

    return await event_stream(recorded, started(), headers, lambda: note_usage(recorded, invocation))


async def _guarded_frames(text: str, citations: list[dict[str, Any]],
                          action: str) -> AsyncIterator[tuple[bytes, Any]]:
    """A checked answer as RetrieveAndGenerateStream sends it: its text, its citations, the guardrail's action."""
    yield eventstream.event("output", {"text": text}), {"output": {"text": text}}
    for citation in citations:
        event = {"citation": citation, **citation}
        yield eventstream.event("citation", event), {"citation": event}
    yield eventstream.event("guardrail", {"action": action}), {"guardrail": {"action": action}}


async def rerank(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    results = await _service(call).rerank(params["queries"], params["sources"], params["rerankingConfiguration"])
    return {"results": results}
