"""bedrock-runtime routes: ``POST /model/{modelId}/{action}``, matched on the raw path.

Handlers are named after the AWS operations they implement (``invoke_model``...); ``OPERATIONS`` maps each path
action to its operation and handler, which is what ``docs/api-coverage.md`` is generated from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarock.bedrock.native import InvocationMetrics, native_response, parse_native_request, stream_chunk
from llamarock.codec import eventstream
from llamarock.codec.errors import render_error
from llamarock.codec.rest_json import check_body_size, check_json_media_type, header_values, split_model_path
from llamarock.errors import (
    BedrockError,
    InternalServerException,
    ModelErrorException,
    ModelStreamErrorException,
    UnknownOperationException,
    ValidationException,
)
from llamarock.services.inference import InferenceService, Target
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Call:
    """What every runtime handler gets: the request, its id, start time and the resolved path pieces."""

    request: Request
    request_id: str
    started: float
    model_identifier: str
    service: InferenceService

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


Handler = Callable[[Call], Awaitable[Response]]


def error_response(error: BedrockError, request_id: str) -> Response:
    status, headers, body = render_error(error, request_id)
    return Response(body, status_code=status, headers=headers)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_body_size(int(declared))
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        check_body_size(len(body))
    return bytes(body)


async def _prepare(call: Call, operation: str, accept_member: str) -> tuple[Target, GenerationRequest, dict[str, str]]:
    """Shared front half of InvokeModel and its stream: headers, body, model, prompt."""
    headers = header_values(operation, call.request.headers)
    check_json_media_type(headers.get("contentType"), "contentType")
    check_json_media_type(headers.get(accept_member), "accept")
    body = await _read_body(call.request)
    target = call.service.resolve(call.model_identifier)
    native = parse_native_request(body)
    call.service.check_ready(target)
    call.service.check_images(target, native.images)
    sampling = SamplingParams(temperature=native.temperature, top_p=native.top_p, max_tokens=native.max_gen_len)
    generation = call.service.native_request(target, native.prompt, sampling, call.request_id)
    echoed = {}
    if "performanceConfigLatency" in headers:
        echoed["X-Amzn-Bedrock-PerformanceConfig-Latency"] = headers["performanceConfigLatency"]
    if "serviceTier" in headers:
        echoed["X-Amzn-Bedrock-Service-Tier"] = headers["serviceTier"]
    return target, generation, echoed


async def _until_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run ``work``, cancelling it (and so its generation) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        return Response(status_code=499)
    return task.result()


async def invoke_model(call: Call) -> Response:
    """InvokeModel: the native Llama body in, ``{generation, ...counts, stop_reason}`` out."""
    target, generation, echoed = await _prepare(call, "InvokeModel", "accept")

    async def run() -> Response:
        text: list[str] = []
        prompt_tokens = 0
        output_tokens = 0
        stop_reason = "length"
        async for chunk in call.service.generate(target, generation):
            text.append(chunk.text)
            output_tokens += chunk.token_count
            if chunk.prompt_tokens is not None:
                prompt_tokens = chunk.prompt_tokens
            if chunk.stop_reason is not None:
                stop_reason = chunk.stop_reason
        body = native_response("".join(text), prompt_tokens, output_tokens, stop_reason)
        headers = {
            "x-amzn-RequestId": call.request_id,
            "X-Amzn-Bedrock-Invocation-Latency": str(call.elapsed_ms()),
            "X-Amzn-Bedrock-Input-Token-Count": str(prompt_tokens),
            "X-Amzn-Bedrock-Output-Token-Count": str(output_tokens),
            "x-llamarock-served-by": target.deployment.name,
            **echoed,
        }
        return Response(json.dumps(body, ensure_ascii=False), media_type="application/json", headers=headers)

    return await _until_disconnect(call.request, run())


async def invoke_model_with_response_stream(call: Call) -> Response:
    """InvokeModelWithResponseStream: one ``chunk`` event per decoded token group, flushed as produced.

    The first chunk is awaited before the response starts, so that anything that fails before the first byte
    (validation, context overflow, a model that is not ready) is an ordinary JSON error; later failures are
    exception frames.
    """
    target, generation, echoed = await _prepare(call, "InvokeModelWithResponseStream", "accept")
    chunks = call.service.generate(target, generation)
    try:
        first = await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
    first_byte_ms = call.elapsed_ms()

    async def frames() -> AsyncIterator[bytes]:
        prompt_tokens = first.prompt_tokens or 0
        output_tokens = 0
        chunk: GenerationChunk | None = first
        is_first = True
        try:
            while chunk is not None:
                output_tokens += chunk.token_count
                metrics = None
                if chunk.stop_reason is not None:
                    metrics = InvocationMetrics(prompt_tokens, output_tokens, call.elapsed_ms(), first_byte_ms)
                body = stream_chunk(
                    chunk.text,
                    prompt_tokens=prompt_tokens if is_first else None,
                    generation_tokens=output_tokens,
                    stop_reason=chunk.stop_reason,
                    metrics=metrics,
                )
                yield eventstream.chunk_event(body)
                is_first = False
                if chunk.stop_reason is not None:
                    return
                chunk = await anext(chunks, None)
        except ModelErrorException as error:
            # After the first byte a model failure is the stream's own error shape.
            yield eventstream.exception_event(
                ModelStreamErrorException(error.message, originalStatusCode=500, originalMessage=error.message)
            )
        except BedrockError as error:
            yield eventstream.exception_event(error)
        except Exception:
            log.exception("stream failed (request %s)", call.request_id)
            yield eventstream.exception_event(
                InternalServerException(f"The server failed while streaming. Request id: {call.request_id}")
            )
        finally:
            await chunks.aclose()

    headers = {
        "x-amzn-RequestId": call.request_id,
        "X-Amzn-Bedrock-Content-Type": "application/json",
        "x-llamarock-served-by": target.deployment.name,
        **echoed,
    }
    return StreamingResponse(frames(), media_type=eventstream.CONTENT_TYPE, headers=headers)


def _not_implemented(operation: str) -> Handler:
    async def handler(call: Call) -> Response:
        raise ValidationException(
            f"{operation} is not implemented by this llamarock server yet. Use InvokeModel or "
            "InvokeModelWithResponseStream."
        )

    handler.__name__ = "not_implemented"
    return handler


OPERATIONS: dict[str, tuple[str, Handler]] = {
    "invoke": ("InvokeModel", invoke_model),
    "invoke-with-response-stream": ("InvokeModelWithResponseStream", invoke_model_with_response_stream),
    "converse": ("Converse", _not_implemented("Converse")),
    "converse-stream": ("ConverseStream", _not_implemented("ConverseStream")),
    "count-tokens": ("CountTokens", _not_implemented("CountTokens")),
}


async def model_operation(request: Request) -> Response:
    """Entry point for every ``POST /model/...`` request."""
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    try:
        model_identifier, action = split_model_path(request.scope.get("raw_path") or request.url.path.encode())
        entry = OPERATIONS.get(action)
        if entry is None or not model_identifier:
            raise UnknownOperationException(
                f"No operation matches POST {request.url.path}. The runtime operations are "
                "POST /model/{modelId}/" + "|".join(OPERATIONS) + "."
            )
        service: InferenceService = request.app.state.inference
        call = Call(request, request_id, started, model_identifier, service)
        return await entry[1](call)
    except BedrockError as error:
        return error_response(error, request_id)
    except Exception:
        log.exception("unexpected error (request %s)", request_id)
        return error_response(
            InternalServerException(f"The server encountered an internal error. Request id: {request_id}"), request_id
        )
