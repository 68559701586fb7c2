"""Custom Model Import: model import jobs (Create/Get/ListModelImportJob), imported models (Get/List/
DeleteImportedModel), and serving them on demand (docs/model-import.md).

A job reads ``modelDataSource.s3DataSource.s3Uri`` from the blob store: a Hugging Face Llama folder (config.json,
safetensors, tokenizer) converted to GGUF by ``modelfiles/hf_to_gguf.py``, or, beyond Bedrock, one ``.gguf`` file
taken as it is. It runs in a worker thread (one task per job), is ``InProgress`` meanwhile and ends ``Completed``
(its imported model stored in the same transaction) or ``Failed`` with a ``failureMessage`` saying what the folder
lacks. Restart-safe: a job left ``InProgress`` by a stopped server starts again at start-up (the conversion writes
``<file>.part`` and renames it when whole, so a half-written file is never taken for weights).

Serving: each imported model gets its own llama.cpp engine (built by ``services/deployments.py``'s builder), loaded
on the first request for it. That request, and any other until the load is done, get ``ModelNotReadyException``
(Bedrock's answer for a cold imported model; the SDKs retry it). A model nobody used for ``imported_model_idle_s``
is unloaded (scale to zero). While a copy is loaded it is billed as Bedrock bills imported models: its Custom Model
Units for each 5-minute window from the first successful inference call until it is unloaded
(``bedrock/imported_models.py``), through the ``bill`` callback (the usage recorder: ``observability/imported.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from llamarock.bedrock import imported_models
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, ModelRef
from llamarock.errors import (
    ConflictException,
    ModelNotReadyException,
    ResourceNotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from llamarock.modelfiles.hf_to_gguf import ConversionError, convert, gguf_facts
from llamarock.scheduler import Scheduler
from llamarock.services.batch import split_s3_uri
from llamarock.services.deployments import Deployment, build_engine
from llamarock.services.idempotency import request_digest
from llamarock.services.inference import Target
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import DeploymentSettings, Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError, BucketMissingError
from llamarock.storage.db import ListFilter
from llamarock.storage.model_import import ImportedModel, ImportJob, ModelImportStore

__all__ = ["CmuWindow", "ImportJob", "ImportedModel", "ImportedModelService", "ListFilter"]

log = logging.getLogger(__name__)

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "chat_template.jinja", "model.safetensors.index.json", "special_tokens_map.json")


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


@dataclass(frozen=True)
class CmuWindow:
    """One billed 5-minute window of one imported model's copy."""

    model: ImportedModel
    started: datetime
    units: int
    cost: Decimal


class _Copy:
    """One imported model's loaded (or loading) copy."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.loading: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()
        self.window_end: float | None = None  # the billing window running now (None: no inference yet)


class ImportedModelService:
    """Model import jobs, imported models, and the engines that serve them."""

    def __init__(self, store: ModelImportStore, blobs: BlobStore, tagging: TaggingService, settings: Settings,
                 bill: Callable[[CmuWindow], None] | None = None, scheduler: Scheduler | None = None) -> None:
        self.store = store
        self.scheduler = scheduler  # admits requests to each loaded copy like any deployment's
        self.blobs = blobs
        self.tagging = tagging
        self.settings = settings
        self.bill = bill
        self.root = settings.data_dir / "imported-models"
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._copies: dict[str, _Copy] = {}
        self._known: dict[str, ImportedModel] = {}  # imported models by id, read once (they never change)
        self._reaper: asyncio.Task[None] | None = None
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        tagging.register("model-import-job", TaggableKind(self._job_exists))
        tagging.register("imported-model", TaggableKind(self._model_exists))

    def _job_exists(self, region: str, arn: str) -> bool:
        job = self.store.get_job(arn.rsplit("/", 1)[-1])
        return job is not None and job.region == region and job.arn == arn

    def _model_exists(self, region: str, arn: str) -> bool:
        model = self.store.get_model(arn.rsplit("/", 1)[-1])
        return model is not None and model.region == region and model.arn == arn

    # ------------------------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """At start-up: run again every job a stopped server left InProgress; start the idle reaper."""
        for job in await asyncio.to_thread(self.store.in_progress):
            log.info("resuming model import job %s", job.job_id)
            self._spawn(job.job_id)
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        tasks = [*self._runners.values(), *([self._reaper] if self._reaper is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for model_id in list(self._copies):
            await self._unload(model_id)

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._run(job_id))
        self._runners[job_id] = task
        task.add_done_callback(lambda _: self._runners.pop(job_id, None))

    # ------------------------------------------------------------------------------------------- operations

    async def create(self, *, region: str, account: str, params: dict[str, Any]) -> ImportJob:
        """CreateModelImportJob: stored InProgress, run at once."""
        source = params["modelDataSource"].get("s3DataSource")
        if source is None:
            raise ValidationException("modelDataSource must contain s3DataSource (the S3 location of the model "
                                      "files).")
        split_s3_uri(source["s3Uri"], "modelDataSource.s3DataSource.s3Uri")
        job_tags = check_tags([(t["key"], t["value"]) for t in params.get("jobTags") or []])
        model_tags = check_tags([(t["key"], t["value"]) for t in params.get("importedModelTags") or []])
        token = params.get("clientRequestToken")
        digest = request_digest(params["jobName"], params["importedModelName"], params["roleArn"],
                                params["modelDataSource"], params.get("vpcConfig"), job_tags, model_tags,
                                params.get("importedModelKmsKeyId"))
        now = self._clock()
        job_id = _new_id()
        details: dict[str, Any] = {"modelTags": [list(t) for t in model_tags]}
        for member in ("vpcConfig", "importedModelKmsKeyId"):
            if params.get(member) is not None:
                details[member] = params[member]
        job = ImportJob(
            job_id=job_id, arn=imported_models.model_import_job_arn(region, account, job_id), region=region,
            name=params["jobName"], model_id=_new_id(), model_name=params["importedModelName"],
            role_arn=params["roleArn"], s3_uri=source["s3Uri"], status="InProgress", created=now, last_modified=now,
            client_token=token, request_digest=digest, details=details,
        )
        stored = await asyncio.to_thread(self._insert, job)
        if stored is not job:
            if stored.request_digest != digest:
                raise ConflictException("The clientRequestToken was used before for a different "
                                        "CreateModelImportJob request. Use a new token for a new job.")
            return stored
        await self.tagging.put(job.arn, job_tags)
        self._spawn(job.job_id)
        return job

    def _insert(self, job: ImportJob) -> ImportJob:
        with self.store.lock:
            if job.client_token is not None:
                existing = self.store.find_token(job.region, job.client_token)
                if existing is not None:
                    return existing
            if self.store.name_taken(job.region, job.name):
                raise ConflictException(f"A model import job named {job.name} already exists in {job.region}. "
                                        "Choose another jobName.")
            if self.store.model_name_taken(job.region, job.model_name):
                raise ConflictException(f"An imported model named {job.model_name} already exists (or is being "
                                        f"imported) in {job.region}. Choose another importedModelName, or delete "
                                        "that model first.")
            self.store.insert(job)
            return job

    async def get_job(self, region: str, identifier: str) -> ImportJob:
        job = await asyncio.to_thread(self.store.job, region, identifier)
        if job is None or (identifier.startswith("arn:") and identifier != job.arn):
            raise ResourceNotFoundException(f"The model import job {identifier} was not found in {region}. "
                                            "ListModelImportJobs lists the jobs of this region.")
        return job

    async def jobs_page(self, query: ListFilter) -> tuple[list[ImportJob], bool]:
        return await asyncio.to_thread(self.store.jobs_page, query)

    async def get_model(self, region: str, identifier: str) -> ImportedModel:
        model = await asyncio.to_thread(self.store.model, region, identifier)
        if model is None or (identifier.startswith("arn:") and identifier != model.arn):
            raise ResourceNotFoundException(f"The imported model {identifier} was not found in {region}. "
                                            "ListImportedModels lists the imported models of this region.")
        return model

    async def models_page(self, query: ListFilter) -> tuple[list[ImportedModel], bool]:
        return await asyncio.to_thread(self.store.models_page, query)

    async def delete_model(self, region: str, identifier: str) -> None:
        """DeleteImportedModel: the model, its copy (unloaded), its weights and its tags."""
        model = await self.get_model(region, identifier)
        self._known.pop(model.model_id, None)
        await self._unload(model.model_id)
        await asyncio.to_thread(self.store.delete_model, model.model_id)
        with contextlib.suppress(FileNotFoundError):
            (self.settings.data_dir / model.gguf_path).unlink()
        await self.tagging.put(model.arn, [])

    # ------------------------------------------------------------------------------------------- running a job

    async def _run(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None or job.status != "InProgress":
            return
        try:
            model = await asyncio.to_thread(self._import, job)
        except asyncio.CancelledError:
            raise
        except (ConversionError, ImportFailure) as failure:
            log.info("model import job %s failed: %s", job.job_id, failure)
            await asyncio.to_thread(self.store.finish, job, self._clock(), None, str(failure))
            return
        except Exception as error:  # a job must end with a status, never stay InProgress with nothing running it
            log.exception("model import job %s failed", job.job_id)
            await asyncio.to_thread(self.store.finish, job, self._clock(), None, f"The import failed: {error}")
            return
        await asyncio.to_thread(self.store.finish, job, self._clock(), model)
        await self.tagging.put(model.arn, [(k, v) for k, v in job.details.get("modelTags", [])])
        log.info("model import job %s completed: %s (%s)", job.job_id, model.arn, model.name)

    def _import(self, job: ImportJob) -> ImportedModel:
        """Stage the source objects, convert (or take the GGUF), and describe the weights (runs in a thread)."""
        work = self.root / f"job-{job.job_id}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        output = self.root / f"{job.model_id}.gguf"
        try:
            started = time.monotonic()
            source = self._stage(job, work)
            if source.suffix == ".gguf":
                _place(source, output)
            else:
                convert(source, output, self.settings.imported_model_dtype)
            facts = gguf_facts(output)
            log.info("model import job %s: %s converted in %.1f s", job.job_id, job.s3_uri,
                     time.monotonic() - started)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        units = imported_models.custom_model_units(
            facts["parameters"], facts["blocks"], facts["kv_heads"], facts["head_dim"], facts["context_length"])
        return ImportedModel(
            model_id=job.model_id, arn=imported_models.imported_model_arn(job.region, self.settings.account_id,
                                                                         job.model_id),
            region=job.region, name=job.model_name, job_arn=job.arn, job_name=job.name, s3_uri=job.s3_uri,
            created=self._clock(), architecture="LLaMA", gguf_path=str(output.relative_to(self.settings.data_dir)),
            parameters=facts["parameters"], size_bytes=output.stat().st_size, custom_model_units=units,
            instruct=bool(facts["chat_template"]), context_length=facts["context_length"],
        )

    def _stage(self, job: ImportJob, work: Path) -> Path:
        """The source as a local path: a ``.gguf`` file, or a folder of the Hugging Face files."""
        bucket, key = split_s3_uri(job.s3_uri, "s3Uri")
        try:
            listed = self.blobs.list(bucket, key)
        except BucketMissingError as error:
            raise ImportFailure(f"The S3 bucket {bucket} of {job.s3_uri} does not exist. Create it and upload the "
                                "model files first.") from error
        except BlobStoreError as error:
            raise ImportFailure(f"Unable to read {job.s3_uri}: {error}") from error
        if key.endswith(".gguf") and key in listed:
            return self._fetch(bucket, key, work / key.rsplit("/", 1)[-1])
        prefix = key + "/" if key and not key.endswith("/") else key
        files = {k[len(prefix):]: k for k in listed if k.startswith(prefix) and "/" not in k[len(prefix):]}
        ggufs = [name for name in files if name.endswith(".gguf")]
        if not any(name.endswith(".safetensors") for name in files) and len(ggufs) == 1 \
                and "config.json" not in files:
            return self._fetch(bucket, files[ggufs[0]], work / ggufs[0])
        if not files:
            raise ImportFailure(f"{job.s3_uri} holds no model files. Upload a Hugging Face model folder "
                                "(config.json, *.safetensors, tokenizer.json, tokenizer_config.json) or a .gguf file "
                                "under that prefix.")
        if "config.json" not in files:
            raise ImportFailure(f"{job.s3_uri} has no config.json: it is not a Hugging Face model folder. Upload "
                                "config.json, the *.safetensors weights, tokenizer.json and tokenizer_config.json.")
        folder = work / "model"
        folder.mkdir()
        for name, object_key in files.items():
            if name.endswith(".safetensors") or name in HF_FILES:
                self._fetch(bucket, object_key, folder / name)
        return folder

    def _fetch(self, bucket: str, key: str, path: Path) -> Path:
        """One object as a local file: a hard link to the local blob store's file where there is one."""
        objects = getattr(self.blobs, "objects", None)
        found = None
        with contextlib.suppress(OSError, BlobStoreError):
            found = objects.head(bucket, key) if objects is not None else None
        if found is not None:
            _place(found.path, path)
            return path
        try:
            path.write_bytes(self.blobs.get(bucket, key))
        except BlobStoreError as error:
            raise ImportFailure(f"Unable to read s3://{bucket}/{key}: {error}") from error
        return path

    # ------------------------------------------------------------------------------------------- serving

    def target(self, ref: ModelRef, region: str) -> Target:
        """The target of an invocation naming an imported model's ARN; ModelNotReadyException while its copy loads
        (the first request starts the load)."""
        if ref.region is not None and ref.region != region:
            raise ValidationException(f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names an imported model "
                                      f"in {ref.region}, but the request was signed for {region}.")
        model = self._known.get(ref.imported_id or "") or self.store.get_model(ref.imported_id or "")
        if model is None or model.arn != ref.requested:
            raise ResourceNotFoundException(f"The imported model {ref.requested} was not found. ListImportedModels "
                                            "lists the imported models of this region.")
        self._known[model.model_id] = model
        copy = self._copy(model)
        if copy.deployment.error is not None:
            error = copy.deployment.error
            self._copies.pop(model.model_id, None)  # the next request tries again
            raise ServiceUnavailableException(f"The imported model {model.arn} failed to load: {error}")
        if not copy.deployment.engine.ready:
            raise ModelNotReadyException(
                f"Model is not ready for inference. Wait and try your request again. The imported model {model.name} "
                "is being loaded (it was scaled to zero after being idle, or was never used)."
            )
        copy.last_used = time.monotonic()
        self._meter(model, copy)
        entry = imported_models.catalog_entry(model.arn, model.name, model.region, model.context_length,
                                              model.parameters, model.instruct)
        return Target(ref, entry, copy.deployment, region, imported_arn=model.arn)

    def resolve_batch_id(self, region: str, model_id: str) -> str | None:
        """An imported model named by name or id (the forms botocore's batch ``modelId`` admits) as its ARN."""
        if model_id.startswith("arn:"):
            return None
        model = self.store.model(region, model_id)
        return model.arn if model is not None else None

    def _copy(self, model: ImportedModel) -> _Copy:
        copy = self._copies.get(model.model_id)
        if copy is not None:
            return copy
        spec = DeploymentSettings(name=f"imported-{model.model_id}", models=[], engine="llamacpp",
                                  model_path=self.settings.data_dir / model.gguf_path,
                                  threads=self.settings.imported_model_threads)
        engine, engine_name, weights = build_engine(spec, self.settings)
        if self.scheduler is not None:
            self.scheduler.add_deployment(spec)
        copy = _Copy(Deployment(spec, engine, engine_name, weights, model_ids=[model.arn]))
        self._copies[model.model_id] = copy
        copy.loading = asyncio.get_running_loop().create_task(self._load(model, copy))
        return copy

    async def _load(self, model: ImportedModel, copy: _Copy) -> None:
        started = time.monotonic()
        try:
            await copy.deployment.engine.load()
        except Exception as error:
            copy.deployment.error = str(error)
            log.error("imported model %s failed to load: %s", model.arn, error)
            return
        copy.last_used = time.monotonic()
        log.info("imported model %s (%s) loaded in %.2f s", model.name, model.arn, time.monotonic() - started)

    def _meter(self, model: ImportedModel, copy: _Copy) -> None:
        """Bill the window this request falls in, if it is a new one (the first one opens at the first inference)."""
        now = time.monotonic()
        if copy.window_end is not None and now < copy.window_end:
            return
        copy.window_end = now + imported_models.BILLING_WINDOW_S
        self._bill(model)

    def _bill(self, model: ImportedModel) -> None:
        if self.bill is None:
            return
        units = model.custom_model_units
        cost = imported_models.window_cost(units, self.settings.imported_model_cmu_price_per_minute)
        try:
            self.bill(CmuWindow(model, self._clock(), units, cost))
        except Exception:
            log.exception("cannot record the Custom Model Units of %s", model.arn)

    async def _reap(self) -> None:
        """Unload copies idle for ``imported_model_idle_s``; bill each further window of a loaded copy."""
        idle_s = self.settings.imported_model_idle_s
        while True:
            await asyncio.sleep(min(5.0, max(0.05, idle_s / 4)))
            now = time.monotonic()
            for model_id, copy in list(self._copies.items()):
                engine = copy.deployment.engine
                if not engine.ready:
                    continue
                if engine.stats()["active"]:
                    copy.last_used = now
                elif now - copy.last_used >= idle_s:
                    log.info("imported model %s idle for %.0f s: scaling to zero", model_id, now - copy.last_used)
                    await self._unload(model_id)
                    continue
                if copy.window_end is not None and now >= copy.window_end:
                    model = await asyncio.to_thread(self.store.get_model, model_id)
                    if model is not None:
                        copy.window_end += imported_models.BILLING_WINDOW_S
                        self._bill(model)

    async def _unload(self, model_id: str) -> None:
        copy = self._copies.pop(model_id, None)
        if copy is None:
            return
        if copy.loading is not None and not copy.loading.done():
            copy.loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await copy.loading
        with contextlib.suppress(Exception):
            await copy.deployment.engine.close()


class ImportFailure(Exception):
    """The job's source cannot be read; the job fails with this message."""


def _place(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content: a hard link where the file system allows, else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(source, partial)
        partial.replace(target)

