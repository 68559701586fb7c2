"""Batch inference: model invocation jobs (Create/Get/List/StopModelInvocationJob), run in the background.

A job's life: ``Submitted`` → ``Validating`` (its input is read from the blob store and each line checked; a
missing input fails the job, a bad line becomes that record's ``error`` line) → ``Scheduled`` (waiting for one of
``batch_max_jobs`` running places) → ``InProgress`` (the executor runs the records not yet done, at
``scheduler.BATCH_PRIORITY``) → ``Completed`` / ``PartiallyCompleted`` (some records failed) / ``Failed`` /
``Stopped`` (``Stopping`` meanwhile) / ``Expired`` (``timeoutDurationInHours`` passed). Jobs start as soon as they
are created: no polling.

Durability: a record counts as processed once its result is committed in the metadata database
(``storage/batch.py``: result row and counters in one transaction, the row keyed by file and line). At start-up,
jobs left unfinished resume with the records not yet stored, so a ``kill -9`` loses nothing and repeats nothing;
the output files (``<s3Uri>/<job-id>/<file>.jsonl.out`` and ``manifest.json.out``) are written from the stored
results when the job ends, every record exactly once, in input order.

Each record is billed as an on-demand call of its invocation type, at ``batch_price_multiplier`` (Bedrock's 50%)
of its price, in usage and the cost report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from llamarock.context import ModelName
from llamarock.errors import (
    ConflictException,
    ModelNotReadyException,
    ResourceNotFoundException,
    ValidationException,
)
from llamarock.services.batch_local import LocalExecutor
from llamarock.services.batch_records import BatchExecutor, BatchJobSpec, BatchRecord, RecordOutcome
from llamarock.services.idempotency import insert_once, request_digest, same_request
from llamarock.services.invocation import InvocationService
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import Settings
from llamarock.storage.batch import BatchJob, BatchStore, JobFilter
from llamarock.storage.blobs import BlobStore, BlobStoreError, BucketMissingError

__all__ = ["BatchJob", "BatchService", "JobFilter", "parse_line", "split_s3_uri"]

log = logging.getLogger(__name__)

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
DEFAULT_TIMEOUT_HOURS = 168  # Bedrock's default timeoutDurationInHours (7 days)
RECORD_MEMBERS = frozenset({"recordId", "modelInput"})
OUTPUT_SUFFIX = ".out"  # records.jsonl -> records.jsonl.out
MANIFEST = "manifest.json.out"


class InputMissing(Exception):
    """The job's input cannot be read: the job fails with this message."""


@dataclasses.dataclass
class Progress:
    """A running job's pace, in memory (for ``message``, the CLI's bar and /metrics)."""

    started: float
    done_at_start: int
    done: int = 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self.done_at_start) / elapsed if elapsed > 0 else 0.0


def split_s3_uri(uri: str, member: str) -> tuple[str, str]:
    """``s3://bucket/key-or-prefix`` → (bucket, key); ValidationException otherwise."""
    if not uri.startswith("s3://") or len(uri) <= 5 or uri[5:].startswith("/"):
        raise ValidationException(
            f"The {member} {uri!r} is not a valid S3 URI. Give s3://<bucket>/<key or prefix>."
        )
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def parse_line(file: str, line: int, text: str) -> BatchRecord:
    """One input line as a record; a line that cannot run gets its ``problem``."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        return BatchRecord(line, file, None, None, f"Line {line} of {file} is not valid JSON: {error}.")
    if not isinstance(document, dict):
        return BatchRecord(line, file, None, None,
                           f"Line {line} of {file} is not a JSON object. Each line is {{\"recordId\": ..., "
                           "\"modelInput\": {...}}.")
    record_id = document.get("recordId")
    model_input = document.get("modelInput")
    record = BatchRecord(line, file, record_id if isinstance(record_id, str) else None,
                         model_input if isinstance(model_input, dict) else None)
    unknown = sorted(set(document) - RECORD_MEMBERS)
    if unknown:
        record.problem = (f"Line {line} of {file} has unknown fields: {', '.join(unknown)}. A record has only "
                          "recordId and modelInput.")
    elif not isinstance(record_id, str) or not record_id:
        record.problem = f"Line {line} of {file} has no recordId (a non-empty string). Give each record one."
    elif not isinstance(model_input, dict):
        record.problem = f"Line {line} of {file} has no modelInput object. Give the request body as modelInput."
    return record


class BatchService:
    """Model invocation jobs: the operations, and the runners that run them (one task per unfinished job)."""

    def __init__(self, store: BatchStore, blobs: BlobStore, invocations: InvocationService,
                 tagging: TaggingService, settings: Settings,
                 bill: Callable[[BatchJob, RecordOutcome], None] | None = None,
                 executor: BatchExecutor | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.invocations = invocations
        self.tagging = tagging
        self.settings = settings
        self.bill = bill
        self.executor = executor or self._make_executor()
        self._slots = asyncio.Semaphore(settings.batch_max_jobs)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self.progress: dict[str, Progress] = {}
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        tagging.register("model-invocation-job", TaggableKind(self._exists))

    def _make_executor(self) -> BatchExecutor:
        if self.settings.jobs_executor == "ray":
            from llamarock.services.batch_ray import make_ray_executor  # only with the ray extra installed

            return make_ray_executor(self.settings, self.invocations)
        return LocalExecutor(self.invocations, self.settings.batch_concurrency)

    def _exists(self, region: str, arn: str) -> bool:
        job = self.store.get(arn.rsplit("/", 1)[-1])
        return job is not None and job.region == region and job.arn == arn

    # ------------------------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """At start-up: resume every job a stopped server left unfinished."""
        for job in await asyncio.to_thread(self.store.unfinished):
            log.info("resuming model invocation job %s (%s)", job.job_id, job.status)
            self._spawn(job.job_id)

    async def close(self) -> None:
        """Leave the running jobs where they are (they resume at the next start)."""
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.executor.close()

    def _spawn(self, job_id: str) -> None:
        self._stops.setdefault(job_id, asyncio.Event())
        task = asyncio.create_task(self._run(job_id))
        self._runners[job_id] = task
        task.add_done_callback(lambda _: self._runners.pop(job_id, None))

    # ------------------------------------------------------------------------------------------- operations

    async def create(self, *, region: str, account: str, caller_arn: str, params: dict[str, Any]) -> BatchJob:
        """CreateModelInvocationJob: the job is stored Submitted and starts at once."""
        name: str = params["jobName"]
        model_id: str = params["modelId"]
        model = ModelName.parse(self.run_model_id(region, model_id), self.settings.aliases, account)
        with contextlib.suppress(ModelNotReadyException):  # e.g. a provisioned model still Creating: records wait
            self.invocations.inference.resolve(model, region)  # an unknown model is refused now, not at run time
        input_config = params["inputDataConfig"].get("s3InputDataConfig")
        output_config = params["outputDataConfig"].get("s3OutputDataConfig")
        if input_config is None:
            raise ValidationException("inputDataConfig must contain s3InputDataConfig.")
        if output_config is None:
            raise ValidationException("outputDataConfig must contain s3OutputDataConfig.")
        split_s3_uri(input_config["s3Uri"], "inputDataConfig.s3InputDataConfig.s3Uri")
        split_s3_uri(output_config["s3Uri"], "outputDataConfig.s3OutputDataConfig.s3Uri")
        tags = check_tags([(t["key"], t["value"]) for t in params.get("tags") or []])
        hours = params.get("timeoutDurationInHours")
        invocation_type = params.get("modelInvocationType", "InvokeModel")
        token = params.get("clientRequestToken")
        digest = request_digest(name, model_id, params.get("roleArn"), params["inputDataConfig"],
                                params["outputDataConfig"], params.get("vpcConfig"), hours, tags, invocation_type)
        now = self._clock()
        job_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        job = BatchJob(
            job_id=job_id, arn=f"arn:aws:bedrock:{region}:{account}:model-invocation-job/{job_id}", region=region,
            name=name, model_id=model_id, role_arn=params["roleArn"], invocation_type=invocation_type,
            input_config=params["inputDataConfig"], output_config=params["outputDataConfig"],
            vpc_config=params.get("vpcConfig"), timeout_hours=hours, status="Submitted", message=None,
            submit_time=now, last_modified=now, end_time=None,
            expiration_time=now + timedelta(hours=hours or DEFAULT_TIMEOUT_HOURS), client_token=token,
            request_digest=digest, caller_arn=caller_arn, tags=tuple(tags),
        )
        stored = await asyncio.to_thread(insert_once, self.store, job, lambda: ConflictException(
            f"A model invocation job named {name} is already in progress in {region}. Choose another jobName, or wait "
            "for that job to finish."
        ))
        if stored is not job:
            return same_request(stored, digest, lambda: ConflictException(
                "The clientRequestToken was used before for a different CreateModelInvocationJob request. Use a new "
                "token for a new job."
            ))
        await self.tagging.put(job.arn, tags)
        self._spawn(job.job_id)
        return job

    def _find(self, region: str, identifier: str) -> BatchJob:
        job_id = identifier.rsplit("/", 1)[-1]
        job = self.store.get(job_id)
        if job is None or job.region != region or (identifier.startswith("arn:") and identifier != job.arn):
            raise ResourceNotFoundException(
                f"The model invocation job {identifier} was not found in {region}. ListModelInvocationJobs lists "
                "the jobs of this region."
            )
        return job

    async def get(self, region: str, identifier: str) -> BatchJob:
        return await asyncio.to_thread(self._find, region, identifier)

    async def page(self, query: JobFilter) -> tuple[list[BatchJob], bool]:
        return await asyncio.to_thread(self.store.page, query)

    async def stop(self, region: str, identifier: str) -> None:
        """StopModelInvocationJob: a job not yet running stops at once; a running one within one record."""
        job = await self.get(region, identifier)
        if job.finished or job.status == "Stopping":
            raise ConflictException(
                f"The model invocation job {job.arn} is {job.status}; only a Submitted, Validating, Scheduled or "
                "InProgress job can be stopped."
            )
        updated = await asyncio.to_thread(
            self.store.set_status, job.job_id, "Stopping", self._clock(), "Stop requested.",
            only_from=("Submitted", "Validating", "Scheduled", "InProgress"),
        )
        self._stops.setdefault(job.job_id, asyncio.Event()).set()
        if updated is not None and updated.status != "Stopping":
            raise ConflictException(f"The model invocation job {job.arn} is {updated.status}; it cannot be stopped.")
        if job.job_id not in self._runners:
            self._spawn(job.job_id)  # nothing runs it (e.g. it failed to start): let a runner finish it

    def message(self, job: BatchJob) -> str | None:
        """``message`` as GetModelInvocationJob shows it: the job's progress while it runs, else what it ended with."""
        if job.status != "InProgress":
            return job.message
        text = f"Processed {job.processed} of {job.total if job.total is not None else '?'} records"
        text += f" ({job.succeeded} succeeded, {job.errors} failed)"
        progress = self.progress.get(job.job_id)
        if progress is not None and job.total is not None:
            rate = progress.rate()
            if rate > 0:
                eta = (job.total - job.processed) / rate
                text += f", {rate:.2f} records/s, about {eta:.0f} s left"
        return text + "."

    # ------------------------------------------------------------------------------------------- running

    async def _set(self, job_id: str, status: str, message: str | None = None, **kwargs: Any) -> BatchJob | None:
        return await asyncio.to_thread(self.store.set_status, job_id, status, self._clock(), message, **kwargs)

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_job(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a job must end with a status, never hang InProgress with nothing running it
            log.exception("model invocation job %s failed", job_id)
            await self._set(job_id, "Failed", f"The job failed: {error}")
        finally:
            self.progress.pop(job_id, None)
            self._stops.pop(job_id, None)

    async def _run_job(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None or job.finished:
            return
        stop = self._stops.setdefault(job_id, asyncio.Event())
        if job.status == "Stopping":
            stop.set()
        if job.status == "Submitted":
            job = await self._set(job_id, "Validating", only_from=("Submitted",)) or job
        try:
            records = await asyncio.to_thread(self._read_input, job)
        except InputMissing as missing:
            await self._set(job_id, "Failed", str(missing))
            return
        if stop.is_set():
            await self._finish(job, records, "Stopped", "Stopped before it started.")
            return
        if job.status in ("Submitted", "Validating"):
            await self._set(job_id, "Scheduled", f"{len(records)} records validated; waiting to start.",
                            only_from=("Validating",), total=len(records))
        if not await self._place(stop):
            await self._finish(job, records, "Stopped", "Stopped before it started.")
            return
        try:
            await self._run_placed(job_id, job, records, stop)
        finally:
            self._slots.release()

    async def _place(self, stop: asyncio.Event) -> bool:
        """Wait for one of ``batch_max_jobs`` running places; False (no place taken) when the job is stopped first."""
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not acquire.done():
                acquire.cancel()
        if acquire.done() and not acquire.cancelled():
            if stop.is_set():
                self._slots.release()
                return False
            return True
        return False

    async def _run_placed(self, job_id: str, job: BatchJob, records: list[BatchRecord], stop: asyncio.Event) -> None:
        job = await self._current(job)
        if job.expiration_time is not None and self._clock() >= job.expiration_time:
            await self._finish(job, records, "Expired", "The job did not finish before timeoutDurationInHours.")
            return
        if stop.is_set() or job.status == "Stopping":
            await self._finish(job, records, "Stopped", "Stopped.")
            return
        await self._set(job_id, "InProgress", only_from=("Scheduled", "Validating"), total=len(records))
        done = await asyncio.to_thread(self.store.done_lines, job_id)
        todo = [r for r in records if (r.file, r.line) not in done]
        self.progress[job_id] = Progress(time.monotonic(), len(done), len(done))
        expired = await self._execute(job, todo, stop)
        job = await self._current(job)
        if expired:
            await self._finish(job, records, "Expired", "The job did not finish before timeoutDurationInHours; "
                               "the records processed so far are in the output.")
        elif stop.is_set():
            await self._finish(job, records, "Stopped", "Stopped; the records processed before the stop are in "
                               "the output.")
        elif job.errors == 0:
            await self._finish(job, records, "Completed", f"All {job.processed} records processed successfully.")
        elif job.succeeded > 0:
            await self._finish(job, records, "PartiallyCompleted",
                               f"{job.errors} of {job.processed} records failed; their output lines hold the error.")
        else:
            await self._finish(job, records, "Failed",
                               f"All {job.errors} records failed; their output lines hold the error.")

    async def _current(self, job: BatchJob) -> BatchJob:
        stored: BatchJob | None = await asyncio.to_thread(self.store.get, job.job_id)
        return stored or job

    def run_model_id(self, region: str, model_id: str) -> str:
        """The identifier records run with: a provisioned model named by its name or id (the only forms of it that
        botocore's ``modelId`` pattern for batch admits) runs through its ARN; anything else as given."""
        imported = self.invocations.inference.imported
        if imported is not None:  # beyond Bedrock: an imported model (by name or id) runs batch jobs too
            arn = imported.resolve_batch_id(region, model_id)
            if arn is not None:
                return arn
        provisioning = self.invocations.inference.provisioning
        if provisioning is not None and not model_id.startswith("arn:"):
            for provisioned in provisioning.live():
                if provisioned.region == region and model_id in (provisioned.name, provisioned.provisioned_id):
                    return provisioned.arn
        return model_id

    def spec(self, job: BatchJob) -> BatchJobSpec:
        return BatchJobSpec(
            job_arn=job.arn, job_id=job.job_id, region=job.region, model_id=self.run_model_id(job.region, job.model_id),
            invocation_type="Converse" if job.invocation_type == "Converse" else "InvokeModel",
            account_id=self.settings.account_id, caller_arn=job.caller_arn,
        )

    async def _execute(self, job: BatchJob, todo: Sequence[BatchRecord], stop: asyncio.Event) -> bool:
        """Run the records; True when the job expired meanwhile."""
        progress = self.progress[job.job_id]
        expired = False

        async def emit(outcome: RecordOutcome) -> None:
            stored = await asyncio.to_thread(
                self.store.commit_result, job.job_id, outcome.file, outcome.line, outcome.ok, outcome.output,
                outcome.input_tokens, outcome.output_tokens, self._clock(),
            )
            if stored:
                progress.done += 1
                if self.bill is not None and (outcome.input_tokens or outcome.output_tokens):
                    self.bill(job, outcome)

        async def expire() -> None:
            nonlocal expired
            assert job.expiration_time is not None
            await asyncio.sleep(max(0.0, (job.expiration_time - self._clock()).total_seconds()))
            expired = True
            stop.set()

        watchdog = asyncio.create_task(expire()) if job.expiration_time is not None else None
        try:
            if todo:
                await self.executor.run(self.spec(job), todo, emit, stop)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return expired

    # ------------------------------------------------------------------------------------------- files

    def _input_keys(self, job: BatchJob) -> tuple[str, list[str], str]:
        """(bucket, keys, prefix the output names are relative to)."""
        uri = job.input_config["s3InputDataConfig"]["s3Uri"]
        bucket, key = split_s3_uri(uri, "s3Uri")
        try:
            listed = self.blobs.list(bucket, key)
        except BucketMissingError as error:
            raise InputMissing(
                f"The S3 bucket {bucket} of the input {uri} does not exist ({self.blobs.location}). Create it and "
                "upload the input JSONL files first."
            ) from error
        except BlobStoreError as error:
            raise InputMissing(f"Unable to read the input {uri}: {error}") from error
        if key and not key.endswith("/") and key in listed:  # one object
            return bucket, [key], key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        prefix = key + "/" if key and not key.endswith("/") else key
        keys = [k for k in listed if k.startswith(prefix) and k.endswith(".jsonl")]
        if not keys:
            raise InputMissing(
                f"The input location {uri} does not exist or has no .jsonl files. Upload the records as JSONL "
                "(one {\"recordId\": ..., \"modelInput\": {...}} object per line) and create the job again."
            )
        return bucket, keys, prefix

    def _read_input(self, job: BatchJob) -> list[BatchRecord]:
        bucket, keys, _ = self._input_keys(job)
        records: list[BatchRecord] = []
        for key in keys:
            try:
                data = self.blobs.get(bucket, key)
            except BlobStoreError as error:
                raise InputMissing(f"Unable to read the input object s3://{bucket}/{key}: {error}") from error
            text = data.decode("utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    records.append(parse_line(key, number, line))
        return records

    def output_location(self, job: BatchJob) -> tuple[str, str]:
        """(bucket, key prefix) the job's output files go under: ``<s3Uri>/<job-id>/``."""
        bucket, key = split_s3_uri(job.output_config["s3OutputDataConfig"]["s3Uri"], "s3Uri")
        if key and not key.endswith("/"):
            key += "/"
        return bucket, f"{key}{job.job_id}/"

    async def _finish(self, job: BatchJob, records: Sequence[BatchRecord], status: str, message: str | None) -> None:
        """Write the output files from the stored results, then the final status (so a kill in between only
        rewrites the same files)."""
        try:
            await asyncio.to_thread(self._write_output, job, records)
        except BlobStoreError as error:
            await self._set(job.job_id, "Failed", f"Unable to write the output to the output location: {error}")
            return
        await self._set(job.job_id, status, message)

    def _write_output(self, job: BatchJob, records: Sequence[BatchRecord]) -> None:
        _, key = split_s3_uri(job.input_config["s3InputDataConfig"]["s3Uri"], "s3Uri")
        files = list(dict.fromkeys(r.file for r in records))
        if files == [key]:  # one object: its name
            base = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        else:  # a prefix: the path below it
            base = key + "/" if key and not key.endswith("/") else key
        bucket, prefix = self.output_location(job)
        if not self.blobs.bucket_exists(bucket):
            raise BlobStoreError(f"the output bucket {bucket} does not exist ({self.blobs.location})")
        for file in files:
            lines = self.store.results(job.job_id, file)
            name = file[len(base):] if base and file.startswith(base) else file.rsplit("/", 1)[-1]
            body = "".join(line + "\n" for line in lines).encode()
            self.blobs.put(bucket, prefix + name + OUTPUT_SUFFIX, body)
        current = self.store.get(job.job_id) or job
        manifest = {
            "totalRecordCount": len(records), "processedRecordCount": current.processed,
            "successRecordCount": current.succeeded, "errorRecordCount": current.errors,
            "inputTokenCount": current.input_tokens, "outputTokenCount": current.output_tokens,
        }
        self.blobs.put(bucket, prefix + MANIFEST, json.dumps(manifest).encode())

