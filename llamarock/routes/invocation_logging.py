"""Put/Get/DeleteModelInvocationLoggingConfiguration (``/logging/modelinvocations``) on the ``bedrock`` routes.

The configuration is per region, as in Bedrock. ``s3Config.bucketName`` (and ``cloudWatchConfig``'s
``largeDataDeliveryS3Config``) must follow S3's bucket naming rules and name a bucket that exists in llamarock's
blob store, and its ``keyPrefix`` must make valid keys on every blob store (no ``..``, ``//``, over-long segment,
...; ``check_config`` in the service), or the Put fails with Bedrock's ValidationException. The codec checks only
the shape's lengths, so these rules live in the service, which also applies them to configurations stored before
them. No message names a server path. ``cloudWatchConfig`` is accepted: its log group becomes a folder of JSON-lines
files under the data dir (see ``llamarock/observability/invocation_log.py``). The work is done by
``app.state.invocation_log``; its store and blob calls block, so they run in a worker thread.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from llamarock.routes.control import ControlCall


async def put_model_invocation_logging_configuration(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await run_in_threadpool(call.state.invocation_log.put_config, call.region, params["loggingConfig"])
    return {}


async def get_model_invocation_logging_configuration(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    config = await run_in_threadpool(call.state.invocation_log.get_config, call.region)
    return {"loggingConfig": config} if config is not None else {}


async def delete_model_invocation_logging_configuration(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await run_in_threadpool(call.state.invocation_log.delete_config, call.region)
    return {}
