"""Model customization: fine-tuning jobs (Create/Get/List/StopModelCustomizationJob) that train a LoRA adapter on
the weights serving the base model, and the custom models they make (ListCustomModels, GetCustomModel,
DeleteCustomModel). docs/customization.md.

A job's life: ``InProgress`` (its rows are read from the blob store and each checked: a bad row fails the job with
a message naming its line; then one job at a time, ``customization_max_jobs``, trains in a child process,
``python -m llamarock.training.lora``) → ``Completed`` (the adapter is a custom model, Active) / ``Failed`` /
``Stopped`` (``Stopping`` meanwhile: the child stops before its next step). The child reports each step in the
job's folder (``training/job_files.py``); this service copies the progress into the job's row and ``/metrics``, and
at the end writes ``step_wise_training_metrics.csv`` and ``validation_metrics.csv`` under the output location, as
Bedrock lays them out. Restart-safe: at start-up, jobs left InProgress run their trainer again, which resumes from
its last checkpoint (every epoch and every ``customization_checkpoint_steps`` steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llamarock.bedrock import catalog
from llamarock.bedrock.customization import (
    TRAINING_COLUMNS,
    TRAINING_METRICS_FILE,
    VALIDATION_COLUMNS,
    VALIDATION_METRICS_FILE,
    Example,
    RowError,
    check_hyperparameters,
    custom_model_arn,
    fine_tunable,
    job_arn,
    parse_row,
)
from llamarock.bedrock.model_ids import foundation_model_arn
from llamarock.errors import ConflictException, ResourceNotFoundException, ValidationException
from llamarock.services.batch import split_s3_uri
from llamarock.services.deployments import DeploymentRegistry, embedded_model_path
from llamarock.services.idempotency import insert_once, request_digest, same_request
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError, BucketMissingError
from llamarock.storage.custom_models import CustomModel, CustomModelStore
from llamarock.storage.customization_jobs import CustomizationJob, CustomizationJobStore
from llamarock.storage.db import ListFilter
from llamarock.training import job_files, missing_packages
from llamarock.training.job_files import TrainingSpec

__all__ = ["CustomModel", "CustomizationJob", "CustomizationService", "ListFilter", "LiveProgress"]

log = logging.getLogger(__name__)

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
FOLDER = "customization"  # <data_dir>/customization/<job id>/, and base/ for the dequantized base weights


class JobFailed(Exception):
    """The job fails with this message (Bedrock's failureMessage)."""


@dataclass
class LiveProgress:
    """A running job's progress, in memory (for /metrics and the CLI)."""

    started: float = field(default_factory=time.monotonic)
    first_step: int | None = None
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    training_loss: float | None = None
    validation_loss: float | None = None
    checkpoint_step: int = 0
    resumed_from: int = 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        done = self.step - (self.first_step or 0)
        return done / elapsed if elapsed > 0 and self.first_step is not None else 0.0


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class CustomizationService:
    """Model customization jobs and the custom models they make."""

    def __init__(self, jobs: CustomizationJobStore, models: CustomModelStore, blobs: BlobStore,
                 registry: DeploymentRegistry, tagging: TaggingService, settings: Settings) -> None:
        self.jobs = jobs
        self.models = models
        self.blobs = blobs
        self.registry = registry
        self.tagging = tagging
        self.settings = settings
        self.root = Path(settings.data_dir) / FOLDER
        self.live: dict[str, LiveProgress] = {}
        self._slots = asyncio.Semaphore(settings.customization_max_jobs)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        tagging.register("model-customization-job", TaggableKind(self._job_exists))
        tagging.register("custom-model", TaggableKind(self._model_exists))

    def _job_exists(self, region: str, arn: str) -> bool:
        job = self.jobs.get(arn.rsplit("/", 1)[-1])
        return job is not None and job.region == region and job.arn == arn

    def _model_exists(self, region: str, arn: str) -> bool:
        return self.models.find(region, arn) is not None

    # ------------------------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """At start-up: run again every job a stopped server left unfinished (its trainer resumes from the last
        checkpoint)."""
        for job in await asyncio.to_thread(self.jobs.unfinished):
            log.info("resuming model customization job %s (%s)", job.job_id, job.status)
            self._spawn(job.job_id)

    async def close(self) -> None:
        """Stop the trainers without a status: the jobs resume at the next start."""
        self._closing = True
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id))
        self._runners[job_id] = task
        task.add_done_callback(lambda _: self._runners.pop(job_id, None))

    # ------------------------------------------------------------------------------------------- operations

    async def create(self, *, region: str, account: str, params: dict[str, Any]) -> CustomizationJob:
        """CreateModelCustomizationJob: checked, stored InProgress, and started at once."""
        kind = params.get("customizationType", "FINE_TUNING")
        identifier: str = params["baseModelIdentifier"]
        model_id = fine_tunable(identifier)
        if model_id is None:
            given = identifier.split(":foundation-model/", 1)[-1]
            if catalog.get(given) is None and catalog.get(given.removesuffix(":128k")) is None:
                raise ValidationException(
                    f"The base model {identifier} is not a valid model identifier. Fine-tuning takes one of: "
                    "meta.llama3-2-1b/3b/11b/90b-instruct-v1:0 or meta.llama3-1-8b/70b-instruct-v1:0 (or their :128k "
                    "form)."
                )
            raise ValidationException(
                f"The base model {identifier} does not support fine-tuning. Fine-tune a Llama 3.2 (1B, 3B, 11B, "
                "90B) or Llama 3.1 (8B, 70B) Instruct model."
            )
        if kind != "FINE_TUNING":
            raise ValidationException(
                f"The customization type {kind} is not supported for {model_id}. Use FINE_TUNING."
            )
        if params.get("customizationConfig") is not None:
            raise ValidationException("customizationConfig (distillation, reinforcement fine-tuning) is not "
                                      f"supported for {model_id}; leave it out for FINE_TUNING.")
        hyperparameters = check_hyperparameters(model_id, params.get("hyperParameters"),
                                                extended=self.settings.compat != "bedrock")
        training = params["trainingDataConfig"]
        if training.get("invocationLogsConfig") is not None or not training.get("s3Uri"):
            raise ValidationException("trainingDataConfig must give s3Uri, the JSONL file of training rows "
                                      "(invocation logs as training data are not supported).")
        split_s3_uri(training["s3Uri"], "trainingDataConfig.s3Uri")
        validators = (params.get("validationDataConfig") or {}).get("validators") or []
        if len(validators) > 1:
            raise ValidationException("validationDataConfig takes at most one validator for Meta Llama models.")
        for validator in validators:
            split_s3_uri(validator["s3Uri"], "validationDataConfig.validators.s3Uri")
        split_s3_uri(params["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
        self._weights(model_id)  # no deployment with weights for the base model: refused now, not at run time
        missing = missing_packages()
        if missing:
            raise ValidationException(
                f"Fine-tuning needs {', '.join(missing)}, which this server does not have. Install the train extra "
                "(pip install 'llamarock[train]') and restart the server."
            )
        job_tags = check_tags([(t["key"], t["value"]) for t in params.get("jobTags") or []], "jobTags")
        model_tags = check_tags([(t["key"], t["value"]) for t in params.get("customModelTags") or []],
                                "customModelTags")
        name: str = params["jobName"]
        model_name: str = params["customModelName"]
        token = params.get("clientRequestToken")
        request = {key: params[key] for key in (
            "trainingDataConfig", "validationDataConfig", "outputDataConfig", "vpcConfig", "customModelKmsKeyId",
            "jobTags", "customModelTags") if params.get(key) is not None}
        request["hyperParameters"] = hyperparameters
        digest = request_digest(name, model_name, identifier, params.get("roleArn"), request)
        if token is None or await asyncio.to_thread(self.jobs.find_token, region, token) is None:
            taken = await asyncio.to_thread(self.models.find, region, model_name)
            if taken is not None or await asyncio.to_thread(self.jobs.model_name_taken, region, model_name):
                raise ConflictException(f"A custom model named {model_name} already exists in {region}. Choose "
                                        "another customModelName.")
        base_form = identifier.split(":foundation-model/", 1)[-1]
        job_id = _new_id()
        now = self._clock()
        job = CustomizationJob(
            job_id=job_id, arn=job_arn(region, account, base_form, job_id), region=region, name=name,
            base_model_id=model_id, base_model_identifier=base_form, custom_model_name=model_name,
            custom_model_arn=custom_model_arn(region, account, base_form, _new_id()), role_arn=params["roleArn"],
            status="InProgress", creation_time=now, last_modified=now, request_digest=digest, request=request,
            client_token=token,
        )
        stored = await asyncio.to_thread(insert_once, self.jobs, job, lambda: ConflictException(
            f"A model customization job named {name} already exists in {region}. Choose another jobName."
        ))
        if stored is not job:
            return same_request(stored, digest, lambda: ConflictException(
                "The clientRequestToken was used before for a different CreateModelCustomizationJob request. Use a "
                "new token for a new job."
            ))
        await self.tagging.put(job.arn, job_tags)
        del model_tags  # written on the custom model when the job completes
        self._spawn(job_id)
        return job

    def _find(self, region: str, identifier: str) -> CustomizationJob:
        job = self.jobs.find(region, identifier)
        if job is None:
            raise ResourceNotFoundException(
                f"The model customization job {identifier} was not found in {region}. ListModelCustomizationJobs "
                "lists the jobs of this region."
            )
        return job

    async def get(self, region: str, identifier: str) -> CustomizationJob:
        return await asyncio.to_thread(self._find, region, identifier)

    async def page(self, query: ListFilter) -> tuple[list[CustomizationJob], bool]:
        return await asyncio.to_thread(self.jobs.page, query)

    async def stop(self, region: str, identifier: str) -> None:
        """StopModelCustomizationJob: the trainer stops before its next step."""
        job = await self.get(region, identifier)
        if job.status != "InProgress":
            raise ConflictException(f"The model customization job {job.arn} is {job.status}; only an InProgress job "
                                    "can be stopped.")
        updated = await asyncio.to_thread(self.jobs.set_status, job.job_id, "Stopping", self._clock(),
                                          only_from=("InProgress",))
        if updated is not None and updated.status != "Stopping":
            raise ConflictException(f"The model customization job {job.arn} is {updated.status}; it cannot be "
                                    "stopped.")
        folder = self.root / job.job_id
        if folder.is_dir():
            (folder / job_files.STOP).touch()
        if job.job_id not in self._runners:
            self._spawn(job.job_id)

    # ------------------------------------------------------------------------------------------- custom models

    async def model(self, region: str, identifier: str) -> CustomModel:
        found = await asyncio.to_thread(self.models.find, region, identifier)
        if found is None:
            raise ResourceNotFoundException(
                f"The custom model {identifier} was not found in {region}. ListCustomModels lists the custom models "
                "of this region."
            )
        return found

    async def all_models(self, region: str) -> list[CustomModel]:
        return await asyncio.to_thread(self.models.all, region)

    async def delete_model(self, region: str, identifier: str) -> None:
        """DeleteCustomModel: the row, its tags and its files (the adapter and its GGUF)."""
        model = await self.model(region, identifier)
        await asyncio.to_thread(self.models.delete, model.model_id)
        await self.tagging.drop(model.arn)
        data_dir = Path(self.settings.data_dir)
        for relative in (model.lora_gguf, model.adapter_dir):
            if relative:
                path = data_dir / relative
                with contextlib.suppress(OSError):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()

    # ------------------------------------------------------------------------------------------- running

    def _weights(self, model_id: str) -> tuple[str | None, str | None]:
        """(GGUF file, Hugging Face folder) of the deployment serving ``model_id``."""
        deployment = self.registry.for_model(model_id)
        if deployment is None:
            raise ValidationException(f"No deployment of this server serves {model_id}, so there are no weights to "
                                      "fine-tune. Add a [[deployments]] entry whose models include it.")
        engine = deployment.settings.engine or self.settings.engine
        path = deployment.settings.model_path
        if engine == "transformers" and path is not None and path.is_dir():
            return None, str(path)
        if engine == "llamacpp":
            return str(path or embedded_model_path()), None
        raise ValidationException(
            f"The deployment {deployment.name} that serves {model_id} runs the {engine} engine, which has no weights "
            "to fine-tune. Serve the model with the llamacpp engine (a GGUF) or the transformers engine (a Hugging "
            "Face folder)."
        )

    async def _set(self, job_id: str, status: str, message: str | None = None,
                   only_from: tuple[str, ...] | None = None) -> CustomizationJob | None:
        return await asyncio.to_thread(self.jobs.set_status, job_id, status, self._clock(), message,
                                       only_from=only_from)

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_job(job_id)
        except asyncio.CancelledError:
            raise
        except JobFailed as failed:
            await self._set(job_id, "Failed", str(failed)[:2048])
        except Exception as error:  # a job must end with a status, never hang InProgress with nothing running it
            log.exception("model customization job %s failed", job_id)
            await self._set(job_id, "Failed", f"Internal error: {error}"[:2048])
        finally:
            self.live.pop(job_id, None)

    async def _run_job(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.jobs.get, job_id)
        if job is None or job.finished:
            return
        folder = self.root / job_id
        if not (folder / job_files.SPEC).exists():
            await asyncio.to_thread(self._prepare, job, folder)
        async with self._slots:
            job = await asyncio.to_thread(self.jobs.get, job_id) or job
            if job.status == "Stopping":  # stopped while it waited (or before a restart): no trainer to start
                await asyncio.to_thread(self._write_metrics, job, folder)
                await self._set(job_id, "Stopped")
                return
            done = any(e.get("event") == "done" for e in job_files.read_progress(folder))
            code = job_files.EXIT_DONE if done and (folder / job_files.ADAPTER).is_dir() else await self._train(
                job, folder)
        job = await asyncio.to_thread(self.jobs.get, job_id) or job
        if code == job_files.EXIT_DONE:
            await asyncio.to_thread(self._complete, job, folder)
        elif code == job_files.EXIT_STOPPED:
            await asyncio.to_thread(self._write_metrics, job, folder)
            await self._set(job_id, "Stopped")
        elif code == job_files.EXIT_FAILED:
            error = (folder / job_files.ERROR)
            text = error.read_text().split("\n\n", 1)[0] if error.exists() else "the trainer failed"
            raise JobFailed(f"Training failed: {text}")
        else:
            raise JobFailed(f"The training process ended unexpectedly (exit status {code}); see "
                            f"{folder / 'trainer.log'}.")

    def _prepare(self, job: CustomizationJob, folder: Path) -> None:
        """Read and check the rows, and write the trainer's folder (spec last: its presence means prepared)."""
        train = self._read_rows(job.request["trainingDataConfig"]["s3Uri"], "training")
        validators = (job.request.get("validationDataConfig") or {}).get("validators") or []
        validation = self._read_rows(validators[0]["s3Uri"], "validation") if validators else []
        gguf, hf = self._weights(job.base_model_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in ((job_files.TRAIN, train), (job_files.VALIDATION, validation)):
            (folder / name).write_text("".join(json.dumps(row.to_json()) + "\n" for row in rows), encoding="utf-8")
        hyper = job.request["hyperParameters"]
        base_cache = None
        if gguf is not None:
            stat = os.stat(gguf)
            key = f"{Path(gguf).stem}-{stat.st_size}-{int(stat.st_mtime)}"
            (self.root / "base").mkdir(parents=True, exist_ok=True)
            base_cache = str(self.root / "base" / key)
        TrainingSpec(
            gguf=gguf, hf=hf, base_cache=base_cache, epochs=int(hyper["epochCount"]),
            batch_size=int(hyper["batchSize"]), learning_rate=float(hyper["learningRate"]),
            warmup_steps=int(hyper.get("learningRateWarmupSteps", "0")),
            max_length=self.settings.customization_max_tokens,
            checkpoint_every=self.settings.customization_checkpoint_steps,
            threads=self.settings.customization_threads or self.settings.threads,
            device=self.settings.customization_device,
            has_validation=bool(validation),
        ).write(folder)

    def _read_rows(self, uri: str, kind: str) -> list[Example]:
        bucket, key = split_s3_uri(uri, f"{kind} data s3Uri")
        try:
            listed = self.blobs.list(bucket, key)
        except BucketMissingError:
            raise JobFailed(f"The S3 bucket {bucket} of the {kind} data {uri} does not exist. Create it and upload "
                            "the JSONL file.") from None
        except BlobStoreError as error:
            raise JobFailed(f"Unable to read the {kind} data {uri}: {error}") from None
        if key in listed:
            keys = [key]
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            keys = [k for k in listed if k.startswith(prefix) and k.endswith(".jsonl")]
        if not keys:
            raise JobFailed(f"The {kind} data {uri} does not exist. Upload a JSONL file of rows there.")
        rows: list[Example] = []
        for name in keys:
            try:
                text = self.blobs.get(bucket, name).decode("utf-8")
            except UnicodeDecodeError:
                raise JobFailed(f"The {kind} data file s3://{bucket}/{name} is not UTF-8 text.") from None
            except BlobStoreError as error:
                raise JobFailed(f"Unable to read the {kind} data file s3://{bucket}/{name}: {error}") from None
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(parse_row(line, number, f"s3://{bucket}/{name}"))
                    except RowError as error:
                        raise JobFailed(f"Invalid {kind} data: {error}") from None
        if not rows:
            raise JobFailed(f"The {kind} data {uri} has no rows.")
        return rows

    async def _train(self, job: CustomizationJob, folder: Path) -> int:
        """Run the trainer until it exits; its exit status. Cancelled (the server is closing): the trainer is
        ended without a status, and resumes at the next start."""
        self._kill_stale(folder)
        live = self.live.setdefault(job.job_id, LiveProgress())
        self._follow(job.job_id, folder, live, 0)
        env = dict(os.environ)
        log_file = (folder / "trainer.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llamarock.training.lora", str(folder),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=env,
            )
        finally:
            log_file.close()
        offset = 0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=0.5)
                offset = self._follow(job.job_id, folder, live, offset)
                await asyncio.to_thread(self.jobs.set_progress, job.job_id, self._progress(live), self._clock())
                if process.returncode is not None:
                    return process.returncode
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            raise

    @staticmethod
    def _kill_stale(folder: Path) -> None:
        """A trainer a killed server left running in this folder is ended (it would race the new one)."""
        try:
            pid = int((folder / job_files.PID).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(folder).encode() in cmdline and b"llamarock.training.lora" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)

    @staticmethod
    def _follow(job_id: str, folder: Path, live: LiveProgress, offset: int) -> int:
        """Apply the progress lines written since ``offset``; the new offset."""
        path = folder / job_files.PROGRESS
        try:
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "start":
                live.total_steps = int(event["total_steps"])
                live.resumed_from = live.checkpoint_step = int(event["resumed_from"])
                live.step = live.resumed_from
                live.first_step = live.resumed_from
                live.started = time.monotonic()
            elif kind == "step":
                live.step = int(event["step"]) + 1
                live.epoch = int(event["epoch"])
                live.training_loss = float(event["loss"])
            elif kind == "validation":
                live.validation_loss = float(event["loss"])
            elif kind == "checkpoint":
                live.checkpoint_step = int(event["step"])
        return offset + end

    @staticmethod
    def _progress(live: LiveProgress) -> dict[str, Any]:
        return {"step": live.step, "total_steps": live.total_steps, "epoch": live.epoch,
                "training_loss": live.training_loss, "validation_loss": live.validation_loss,
                "checkpoint_step": live.checkpoint_step}

    # ------------------------------------------------------------------------------------------- outputs

    def output_prefix(self, job: CustomizationJob) -> tuple[str, str]:
        """(bucket, key prefix) of the job's output files: ``<s3Uri>/model-customization-job-<job id>/``."""
        bucket, key = split_s3_uri(job.request["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
        if key and not key.endswith("/"):
            key += "/"
        return bucket, f"{key}model-customization-job-{job.job_id}/"

    @staticmethod
    def metrics(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(training steps, validations) as the trainer reported them, each step once (the last report wins: a
        resumed run repeats the steps after its checkpoint)."""
        steps: dict[int, dict[str, Any]] = {}
        validations: dict[int, dict[str, Any]] = {}
        for event in job_files.read_progress(folder):
            if event.get("event") == "step":
                steps[int(event["step"])] = event
            elif event.get("event") == "validation":
                validations[int(event["step"])] = event
        return [steps[s] for s in sorted(steps)], [validations[s] for s in sorted(validations)]

    def _write_metrics(self, job: CustomizationJob, folder: Path) -> tuple[float | None, float | None]:
        """Write the CSVs; (last training loss, last validation loss)."""
        steps, validations = self.metrics(folder)
        bucket, prefix = self.output_prefix(job)

        def table(columns: tuple[str, ...], events: list[dict[str, Any]]) -> bytes:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for event in events:
                writer.writerow([event["step"], event["epoch"], event["loss"], event["perplexity"]])
            return out.getvalue().encode()

        try:
            self.blobs.put(bucket, prefix + TRAINING_METRICS_FILE, table(TRAINING_COLUMNS, steps))
            if job.request.get("validationDataConfig", {}).get("validators"):
                self.blobs.put(bucket, prefix + VALIDATION_METRICS_FILE, table(VALIDATION_COLUMNS, validations))
        except BlobStoreError as error:
            raise JobFailed(f"Unable to write the metrics to the output location "
                            f"{job.request['outputDataConfig']['s3Uri']}: {error}") from None
        return (steps[-1]["loss"] if steps else None), (validations[-1]["loss"] if validations else None)

    def _complete(self, job: CustomizationJob, folder: Path) -> None:
        training_loss, validation_loss = self._write_metrics(job, folder)
        details: dict[str, Any] = {
            "jobName": job.name,
            "hyperParameters": job.request["hyperParameters"],
            "trainingDataConfig": job.request["trainingDataConfig"],
            "validationDataConfig": job.request.get("validationDataConfig") or {"validators": []},
            "outputDataConfig": job.request["outputDataConfig"],
            "trainingMetrics": {"trainingLoss": training_loss} if training_loss is not None else {},
            "validationMetrics": [{"validationLoss": validation_loss}] if validation_loss is not None else [],
        }
        if job.request.get("customModelKmsKeyId"):
            details["modelKmsKeyArn"] = job.request["customModelKmsKeyId"]
        tags = [(t["key"], t["value"]) for t in job.request.get("customModelTags") or []]
        if tags:
            details["tags"] = [{"key": k, "value": v} for k, v in tags]
        if self.models.find(job.region, job.custom_model_arn) is None:
            self.models.insert(CustomModel(
                model_id=job.custom_model_arn.rsplit("/", 1)[-1], arn=job.custom_model_arn, region=job.region,
                name=job.custom_model_name, base_model_id=job.base_model_id,
                base_model_arn=foundation_model_arn(job.base_model_identifier, job.region),
                customization_type="FINE_TUNING", status="Active", created_at=self._clock(), job_arn=job.arn,
                adapter_dir=str((folder / job_files.ADAPTER).relative_to(Path(self.settings.data_dir))),
                details=details,
            ))
            if tags:
                self.tagging.store.put(job.custom_model_arn, tags, None)
        self.jobs.set_status(job.job_id, "Completed", self._clock())
