"""OpenAI-compatible Chat Completions on the runtime endpoint, as Bedrock serves it: ``GET /openai/v1/models`` and
``POST /openai/v1/chat/completions`` (docs/openai.md).

A chat completion is a Converse call in other words: the body is translated into the Converse request it stands for
(``bedrock/openai_chat.py``), run by the same use case as Converse (``InvocationService.converse``), and the Converse
answer or stream events are translated back, streamed as server-sent events. The row names the model in the body
(``model_in_body``): the edge authorises the call on that model's ARNs as ``bedrock:InvokeModel`` (a streamed one as
``bedrock:InvokeModelWithResponseStream``), quotas, metering, metrics and invocation logs count it as any
invocation, and its errors are OpenAI's error objects (``error_shape="openai"``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llamarock.bedrock import catalog, compat
from llamarock.bedrock.converse_stream import Event
from llamarock.bedrock.openai_chat import (
    DONE,
    ChunkStream,
    completion,
    completion_id,
    model_list,
    model_not_found,
    parse_request,
    sse,
)
from llamarock.context import RequestContext
from llamarock.errors import ValidationException
from llamarock.routes import runtime
from llamarock.routes.common import Call, event_stream, json_response, until_disconnect
from llamarock.routes.invoke import note_request, note_target, note_usage
from llamarock.services.inference import INPUT_TOO_LONG, InferenceService
from llamarock.services.invocation import InvocationService

SERVER_SENT_EVENTS = "text/event-stream"


async def list_models(request: Request) -> Response:
    """The model ids a caller may send as ``model``, from the region its request was signed for."""
    context: RequestContext = request.state.context
    inference: InferenceService = request.app.state.inference
    mode = inference.settings.compat
    body = model_list(inference.regions, context.region,
                      lambda model_id: inference.registry.for_model(model_id) is not None
                      and compat.serves_openai_chat(mode, model_id))
    return json_response(body, {"x-amzn-RequestId": context.request_id})


async def create_chat_completion(request: Request) -> Response:
    """A chat completion: run as an invocation (record, relay to a region's peer) like every runtime call."""
    return await runtime.serve(request, _chat_completion)


async def _chat_completion(call: Call) -> Response:
    chat = parse_request(call.body)
    model = call.model
    ref = model.ref
    if ref is None or (ref.kind != "provisioned-model-arn" and catalog.get(model.model_id) is None):
        raise model_not_found(chat.model)
    if not compat.serves_openai_chat(call.state().settings.compat, model.model_id):
        raise model_not_found(chat.model, "This server runs in --compat bedrock mode, and Amazon Bedrock serves Chat "
                              "Completions only for its OpenAI open-weight models, not for Meta Llama.")
    if call.record is not None:
        call.record.streaming = chat.stream
    service: InvocationService = call.state().invocations
    invocation = service.converse(model, call.region, chat.converse, call.request_id, call.context.started,
                                  lambda target: note_target(call, target), seed=chat.seed, streaming=chat.stream)
    note_request(call, invocation)
    invocation.events = _openai_codes(invocation.events)
    identifier, created = completion_id(call.request_id), int(time.time())
    headers = {"x-amzn-RequestId": call.request_id, "x-llamarock-served-by": invocation.target.deployment.name}

    if not chat.stream:
        async def run() -> Response:
            answer = completion(await invocation.drain(), chat.model, identifier, created)
            note_usage(call, invocation)
            call.answered(answer)
            # Bedrock's token-count headers too (as InvokeModel's), so a relaying region server counts the call.
            used = invocation.usage
            counts = {"X-Amzn-Bedrock-Input-Token-Count": str(used.input_tokens),
                      "X-Amzn-Bedrock-Output-Token-Count": str(used.output_tokens)}
            if used.cache_read_tokens is not None:
                counts["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(used.cache_read_tokens)
            return json_response(answer, {**headers, **counts})

        return await until_disconnect(call.request, run())

    chunks = ChunkStream(chat.model, identifier, created, chat.include_usage)

    async def frames() -> AsyncIterator[tuple[bytes, Any]]:
        async with contextlib.aclosing(invocation.events) as events:  # a stream ended early ends its generation
            async for event_type, payload in events:
                for chunk in chunks.feed(event_type, payload):
                    yield sse(chunk), chunk
        yield DONE, None

    headers["Cache-Control"] = "no-cache"
    return await event_stream(call, frames(), headers, lambda: note_usage(call, invocation),
                              media_type=SERVER_SENT_EVENTS)


async def _openai_codes(events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """The events, with OpenAI's code on the errors OpenAI clients recognise by it (a prompt longer than the
    context window is ``context_length_exceeded``, which LangChain and LiteLLM map to their own exceptions)."""
    try:
        async with contextlib.aclosing(events) as inner:
            async for event in inner:
                yield event
    except ValidationException as error:
        if error.message.startswith(INPUT_TOO_LONG):
            error.extra.setdefault("openai_code", "context_length_exceeded")
        raise
