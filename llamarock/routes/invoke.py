"""InvokeModel and InvokeModelWithResponseStream: Bedrock's native Llama body (the use case is
``services/invocation.py``; this module speaks HTTP: headers in, JSON or event-stream out)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from llamarock.codec import eventstream
from llamarock.codec.rest_json import check_json_media_type, header_values
from llamarock.errors import ValidationException
from llamarock.routes.common import Call, event_stream, json_response, until_disconnect
from llamarock.services.embeddings import STREAMING_UNSUPPORTED, EmbeddingService
from llamarock.services.inference import Target
from llamarock.services.invocation import Invocation, InvocationService


def _invoke(call: Call) -> Invocation:
    """Shared front half: the header members (checked against the service model), then the use case."""
    headers = header_values(call.operation, call.request.headers)
    check_json_media_type(headers.get("contentType"), "contentType")
    check_json_media_type(headers.get("accept"), "accept")
    service: InvocationService = call.state().invocations
    invocation = service.invoke(call.model, call.region, call.body, headers, call.request_id, call.context.started,
                                lambda target: note_target(call, target),
                                streaming=call.operation == "InvokeModelWithResponseStream")
    note_request(call, invocation)
    return invocation


def note_target(call: Call, target: Target) -> None:
    """What the invocation record learns once the model is resolved: model, deployment, region, the body."""
    record = call.record
    if record is not None:
        record.model_id = target.model.model_id
        record.deployment = target.deployment.name
        record.inference_region = target.inference_region
        record.provisioned_model_arn = target.provisioned_arn
        record.inference_profile_arn = target.profile_arn
        record.resource_tags = dict(target.profile_tags)
        record.input_body = call.body


def note_request(call: Call, invocation: Invocation) -> None:
    """What the invocation record learns once the request is checked: its metadata, tiers and images."""
    record = call.record
    if record is None:
        return
    record.request_metadata = dict(invocation.request_metadata)
    record.performance_latency = invocation.performance_latency
    record.service_tier = invocation.service_tier
    record.has_images = invocation.has_images


def note_usage(call: Call, invocation: Invocation) -> None:
    used = invocation.usage
    call.usage(used.input_tokens, used.output_tokens, used.cache_read_tokens)
    guard, record = invocation.guard, call.record
    if guard is not None and record is not None:
        record.guardrail_id, record.guardrail_version = guard.request.guardrail_id, guard.request.version
        if guard.trace.input is not None:
            record.guardrail_action = "INTERVENED" if guard.trace.intervened else "NONE"
            record.guardrail_intervened = guard.trace.intervened_on()


async def invoke_model(call: Call) -> Response:
    """InvokeModel: the native Llama body in, ``{generation, ...counts, stop_reason}`` out; for an embedding model
    (Titan, Cohere) its own body in and its vectors out (``services/embeddings.py``)."""
    embeddings: EmbeddingService = call.state().embeddings
    if embeddings.is_embedding(call.model, call.region):
        return await invoke_embedding_model(call, embeddings)
    invocation = _invoke(call)

    async def run() -> Response:
        body = await invocation.drain()
        note_usage(call, invocation)
        call.answered(body)
        used = invocation.usage
        headers = {
            "x-amzn-RequestId": call.request_id,
            "X-Amzn-Bedrock-Invocation-Latency": str(call.elapsed_ms()),
            # InvokeModel counts the whole prompt, cached or not, like the body's prompt_token_count (the
            # definition: docs/observability.md); the cache-read header says how much of it the cache supplied.
            "X-Amzn-Bedrock-Input-Token-Count": str(used.prompt_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(used.output_tokens),
            "x-llamarock-served-by": invocation.target.deployment.name,
            **invocation.headers,
        }
        if used.cache_read_tokens is not None:
            headers["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(used.cache_read_tokens)
        return json_response(body, headers)

    return await until_disconnect(call.request, run())


async def invoke_embedding_model(call: Call, service: EmbeddingService) -> Response:
    """InvokeModel on an embedding model: Titan V2 / G1 or Cohere Embed v3 body in, that model's answer out. The
    input tokens are the vectors' tokens (the header, the record, usage and metrics); there are no output tokens."""
    headers = header_values(call.operation, call.request.headers)
    check_json_media_type(headers.get("contentType"), "contentType")
    check_json_media_type(headers.get("accept"), "accept")
    target = service.resolve(call.model, call.region)
    record = call.record
    if record is not None:
        record.model_id = target.model.model_id
        record.deployment = target.deployment.name
        record.inference_region = target.inference_region
        record.inference_profile_arn = target.profile_arn
        record.resource_tags = dict(target.profile_tags)
        record.input_body = call.body

    async def run() -> Response:
        answer = await service.invoke(target, call.body, call.request_id)
        call.usage(answer.input_tokens, 0, None)
        call.answered(answer.body)
        return json_response(answer.body, {
            "x-amzn-RequestId": call.request_id,
            "X-Amzn-Bedrock-Invocation-Latency": str(call.elapsed_ms()),
            "X-Amzn-Bedrock-Input-Token-Count": str(answer.input_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": "0",
            "x-llamarock-served-by": target.deployment.name,
        })

    return await until_disconnect(call.request, run())


async def invoke_model_with_response_stream(call: Call) -> Response:
    """InvokeModelWithResponseStream: one ``chunk`` event per decoded token group, flushed as produced."""
    embeddings: EmbeddingService = call.state().embeddings
    if embeddings.is_embedding(call.model, call.region):
        raise ValidationException(STREAMING_UNSUPPORTED)
    invocation = _invoke(call)

    async def frames() -> AsyncIterator[tuple[bytes, Any]]:
        async with contextlib.aclosing(invocation.events) as events:  # a stream ended early ends its generation
            async for _, body in events:
                yield eventstream.chunk_event(body), body

    headers = {
        "x-amzn-RequestId": call.request_id,
        "X-Amzn-Bedrock-Content-Type": "application/json",
        "x-llamarock-served-by": invocation.target.deployment.name,
        **invocation.headers,
    }
    return await event_stream(call, frames(), headers, lambda: note_usage(call, invocation))
