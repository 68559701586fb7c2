"""Batch inference records: what one record of a model invocation job is, how it runs, and who runs them.

The seam between the batch job service (``services/batch.py``: the job's life, its durable progress, its output
files) and the executors that run records (``local``: in the server process; ``ray``: on a Ray cluster,
``services/batch_ray.py``). Everything here is plain data (JSON-serialisable, so that the Ray executor can ship it
to its workers) plus :func:`run_record`, which runs one record through an :class:`InvocationService` exactly as an
online InvokeModel or Converse call runs, at :data:`BATCH_PRIORITY`, and turns the answer or the error into the
record's output line. It needs nothing of the server but an ``InvocationService``, which a Ray worker builds from
``Settings``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llamarock.bedrock.model_ids import runtime_label
from llamarock.codec.service_model import error_status
from llamarock.codec.shapes import parse_json_body
from llamarock.context import ModelName
from llamarock.errors import BedrockError, ModelNotReadyException, ModelTimeoutException, ThrottlingException
from llamarock.scheduler import BATCH_PRIORITY

if TYPE_CHECKING:
    from llamarock.services.invocation import InvocationService

InvocationType = Literal["InvokeModel", "Converse"]
# Errors that say "not now" rather than "this record is wrong": the record is retried, not failed, for up to
# RETRY_FOR_S (then the last error is its error line).
RETRIED: tuple[type[BedrockError], ...] = (ThrottlingException, ModelTimeoutException, ModelNotReadyException)
RETRY_WAIT_S = 0.5
RETRY_FOR_S = 900.0


@dataclass
class BatchRecord:
    """One line of an input file. ``problem`` is why the line cannot run (bad JSON, no recordId, unknown fields):
    such a record is written as an ``error`` line, it does not fail the job."""

    line: int  # 1-based line number in its file
    file: str  # the input object's key
    record_id: str | None
    model_input: dict[str, Any] | None
    problem: str | None = None


@dataclass
class BatchJobSpec:
    """What a job's records need to run anywhere (JSON-serialisable: ``dataclasses.asdict`` and back)."""

    job_arn: str
    job_id: str
    region: str
    model_id: str  # as the user gave it: catalog id, alias, inference profile, provisioned model ARN...
    invocation_type: InvocationType
    account_id: str = ""
    caller_arn: str | None = None  # the principal that created the job (usage is attributed to it)
    access_key_id: str | None = None
    priority: int = BATCH_PRIORITY
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordOutcome:
    """A finished record: ``output`` is the exact JSON object of its ``.jsonl.out`` line. ``model_id``,
    ``deployment`` and ``provisioned_arn`` (added after the first version, with defaults) say what ran it, for
    billing; an executor that does not set them still works (the record is billed as unpriced)."""

    file: str
    line: int
    record_id: str | None
    output: dict[str, Any]
    ok: bool
    input_tokens: int
    output_tokens: int
    model_id: str | None = None  # the catalog model that ran it (None: it did not run), for pricing
    deployment: str | None = None
    provisioned_arn: str | None = None  # ran on a provisioned model's capacity (billed by the hour, not the token)


class BatchExecutor(Protocol):
    """Runs a job's records. ``run`` runs every record it is given (those not yet done), awaiting ``emit`` once per
    finished record (emit commits it durably: until it returns the record does not count as processed), and
    returns when all are emitted, or early once ``stop`` is set (records in flight may still finish and be
    emitted; none is emitted twice)."""

    async def run(self, spec: BatchJobSpec, records: Sequence[BatchRecord],
                  emit: Callable[[RecordOutcome], Awaitable[None]], stop: asyncio.Event) -> None: ...

    async def close(self) -> None: ...


def error_line(record: BatchRecord, code: int, message: str) -> RecordOutcome:
    """The output line of a record that failed: Bedrock's ``error`` member in place of ``modelOutput``."""
    output: dict[str, Any] = {}
    if record.record_id is not None:
        output["recordId"] = record.record_id
    if record.model_input is not None:
        output["modelInput"] = record.model_input
    output["error"] = {"errorCode": code, "errorMessage": message}
    return RecordOutcome(record.file, record.line, record.record_id, output, False, 0, 0)


async def run_record(invocations: InvocationService, spec: BatchJobSpec, record: BatchRecord) -> RecordOutcome:
    """Run one record as an online call of the job's invocation type would run, at the job's (batch) priority.

    A record the engines cannot take now (throttled, queue timeout, model not ready) waits and is retried for up to
    :data:`RETRY_FOR_S`: batch traffic yields to on-demand traffic, it does not fail because of it. Any other Bedrock
    error is the record's ``error`` line, with the HTTP status botocore gives the error.
    """
    if record.problem is not None or record.model_input is None:
        return error_line(record, 400, record.problem or "The record has no modelInput.")
    settings = invocations.inference.settings
    model = ModelName.parse(spec.model_id, settings.aliases, settings.account_id)
    give_up = time.monotonic() + RETRY_FOR_S
    while True:
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        try:
            if spec.invocation_type == "Converse":
                params = parse_json_body("Converse", json.dumps(record.model_input).encode(),
                                         location_values={"modelId": runtime_label(spec.model_id, model.ref)})
                invocation = invocations.converse(model, spec.region, params, request_id, started,
                                                  priority=spec.priority)
            else:
                body = json.dumps(record.model_input).encode()
                invocation = invocations.invoke(model, spec.region, body, {}, request_id, started,
                                                priority=spec.priority)
            response = await invocation.drain()
        except RETRIED as error:
            if time.monotonic() < give_up:
                await asyncio.sleep(RETRY_WAIT_S)
                continue
            return error_line(record, error_status(error.code) or error.fallback_status, error.message)
        except BedrockError as error:
            return error_line(record, error_status(error.code) or error.fallback_status, error.message)
        used = invocation.usage
        output = {"recordId": record.record_id, "modelInput": record.model_input, "modelOutput": response}
        target = invocation.target
        return RecordOutcome(record.file, record.line, record.record_id, output, True, used.input_tokens,
                             used.output_tokens, target.model.model_id, target.deployment.name,
                             target.provisioned_arn)
