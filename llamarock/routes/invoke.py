"""InvokeModel and InvokeModelWithResponseStream: Bedrock's native Llama body."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from llamarock.bedrock.native import InvocationMetrics, native_response, parse_native_request, stream_chunk
from llamarock.codec import eventstream
from llamarock.codec.rest_json import check_json_media_type, header_values
from llamarock.routes.common import Call, read_body, stream_error_frame, until_disconnect
from llamarock.services.inference import Target
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


async def prepare_native(
    call: Call, operation: str, accept_member: str
) -> tuple[Target, GenerationRequest, dict[str, str]]:
    """Shared front half of InvokeModel and its stream: headers, body, model, prompt."""
    headers = header_values(operation, call.request.headers)
    check_json_media_type(headers.get("contentType"), "contentType")
    check_json_media_type(headers.get(accept_member), "accept")
    body = await read_body(call.request)
    target = call.service.resolve(call.model_identifier, call.region)
    call.resolved(target, body)
    native = parse_native_request(body)
    call.service.check_ready(target)
    call.service.check_images(target, native.images)
    sampling = SamplingParams(temperature=native.temperature, top_p=native.top_p, max_tokens=native.max_gen_len)
    generation = call.service.native_request(target, native.prompt, sampling, call.request_id)
    generation = call.service.tiered(target, generation, headers.get("performanceConfigLatency"))
    echoed = {}
    if "performanceConfigLatency" in headers:
        echoed["X-Amzn-Bedrock-PerformanceConfig-Latency"] = headers["performanceConfigLatency"]
    if call.record is not None:
        call.record.performance_latency = headers.get("performanceConfigLatency")
        call.record.has_images = bool(native.images)
    if "serviceTier" in headers:
        echoed["X-Amzn-Bedrock-Service-Tier"] = headers["serviceTier"]
    return target, generation, echoed


async def invoke_model(call: Call) -> Response:
    """InvokeModel: the native Llama body in, ``{generation, ...counts, stop_reason}`` out."""
    target, generation, echoed = await prepare_native(call, "InvokeModel", "accept")

    async def run() -> Response:
        text: list[str] = []
        prompt_tokens = 0
        cached: int | None = None
        output_tokens = 0
        stop_reason = "length"
        async for chunk in call.service.generate(target, generation):
            text.append(chunk.text)
            output_tokens += chunk.token_count
            if chunk.prompt_tokens is not None:
                prompt_tokens = chunk.prompt_tokens
            if chunk.cached_tokens is not None:
                cached = chunk.cached_tokens
            if chunk.stop_reason is not None:
                stop_reason = chunk.stop_reason
        body = native_response("".join(text), prompt_tokens, output_tokens, stop_reason)
        call.usage(prompt_tokens - (cached or 0), output_tokens, cached)
        call.answered(body)
        headers = {
            "x-amzn-RequestId": call.request_id,
            "X-Amzn-Bedrock-Invocation-Latency": str(call.elapsed_ms()),
            # Bedrock's headers count cache reads apart from the computed input tokens; the native body's
            # prompt_token_count stays the whole prompt, as Llama reports it.
            "X-Amzn-Bedrock-Input-Token-Count": str(prompt_tokens - (cached or 0)),
            "X-Amzn-Bedrock-Output-Token-Count": str(output_tokens),
            "x-llamarock-served-by": target.deployment.name,
            **echoed,
        }
        if cached is not None:
            headers["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(cached)
        return Response(json.dumps(body, ensure_ascii=False), media_type="application/json", headers=headers)

    return await until_disconnect(call.request, run())


async def invoke_model_with_response_stream(call: Call) -> Response:
    """InvokeModelWithResponseStream: one ``chunk`` event per decoded token group, flushed as produced.

    The first chunk is awaited before the response starts, so that anything that fails before the first byte
    (validation, context overflow, a model that is not ready) is an ordinary JSON error; later failures are
    exception frames.
    """
    target, generation, echoed = await prepare_native(call, "InvokeModelWithResponseStream", "accept")
    chunks = call.service.generate(target, generation)
    try:
        first = await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
    first_byte_ms = call.elapsed_ms()

    async def frames() -> AsyncIterator[bytes]:
        prompt_tokens = first.prompt_tokens or 0
        cached = first.cached_tokens
        output_tokens = 0
        chunk: GenerationChunk | None = first
        is_first = True
        sent: list[dict] = []
        call.answered(sent, first_byte_ms)
        failure: BaseException | None = None
        try:
            while chunk is not None:
                output_tokens += chunk.token_count
                metrics = None
                if chunk.stop_reason is not None:
                    metrics = InvocationMetrics(
                        prompt_tokens - (cached or 0), output_tokens, call.elapsed_ms(), first_byte_ms, cached
                    )
                body = stream_chunk(
                    chunk.text,
                    prompt_tokens=prompt_tokens if is_first else None,
                    generation_tokens=output_tokens,
                    stop_reason=chunk.stop_reason,
                    metrics=metrics,
                )
                sent.append(body)
                yield eventstream.chunk_event(body)
                is_first = False
                if chunk.stop_reason is not None:
                    return
                chunk = await anext(chunks, None)
        except Exception as error:
            failure = error
            yield stream_error_frame(error, call.request_id)
        finally:
            call.usage(prompt_tokens - (cached or 0), output_tokens, cached)
            complete = failure is None and bool(sent) and sent[-1].get("stop_reason") is not None
            call.finish(200, failure, cancelled=failure is None and not complete)
            await chunks.aclose()

    headers = {
        "x-amzn-RequestId": call.request_id,
        "X-Amzn-Bedrock-Content-Type": "application/json",
        "x-llamarock-served-by": target.deployment.name,
        **echoed,
    }
    return StreamingResponse(frames(), media_type=eventstream.CONTENT_TYPE, headers=headers)
