"""Custom models served as LoRA adapters: CreateCustomModel, the custom model deployments, and the lookups and
adapter conversion the invocation path needs.

A custom model is a LoRA adapter over a catalog base model (``storage/custom_models.py``; customization jobs insert
their own rows there). It is served by the deployment that serves its base model, with the adapter applied to its
requests only (``GenerationRequest.adapter``): nothing restarts, the engine loads the adapter on its first request.
The adapter is converted to llama.cpp's GGUF LoRA format once (``modelfiles/lora_gguf.py``), at creation for
CreateCustomModel and on first use for a model a job made, and the file is recorded on the model (``lora_gguf``).

CreateCustomModel (beyond Bedrock, whose CreateCustomModel takes Amazon Nova artifacts only): ``modelSourceConfig.
s3DataSource.s3Uri`` is a prefix of the blob store holding a peft adapter folder (``adapter_config.json`` and
``adapter_model.safetensors``) or one ``.gguf`` LoRA file. The request has no member for the base model, so it is
taken from, in order: the tag ``llamarock:baseModel`` (a catalog model id or foundation-model ARN), then the
adapter's ``base_model_name_or_path`` when that is a catalog model id or foundation-model ARN. Anything else is a
ValidationException saying how to name it.

Invocation: a custom model's ARN or name on demand (beyond Bedrock: ``--compat bedrock`` refuses it as Bedrock does,
which requires Provisioned Throughput), a provisioned model holding one (``services/provisioning.py``), or a custom
model deployment's ARN.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import (
    INVALID_MODEL_IDENTIFIER,
    ModelRef,
    custom_model_arn,
    custom_model_deployment_arn,
    foundation_model_arn,
    parse_model_ref,
)
from llamarock.errors import (
    ConflictException,
    ModelNotReadyException,
    ResourceNotFoundException,
    ValidationException,
)
from llamarock.modelfiles.lora_gguf import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterFormatError,
    BaseModel,
    check_lora_gguf,
    convert_peft,
    read_adapter_config,
    read_base,
)
from llamarock.services.deployments import Deployment, DeploymentRegistry
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError, BucketMissingError
from llamarock.storage.custom_model_deployments import CustomModelDeployment, CustomModelDeploymentStore
from llamarock.storage.custom_models import CustomModel, CustomModelStore
from llamarock.types import Adapter

log = logging.getLogger(__name__)

BASE_MODEL_TAG = "llamarock:baseModel"
FOLDER = "custom-models"  # under the data dir: <model id>/adapter/ (a copied peft folder) and <model id>/lora.gguf
MAX_ADAPTER_BYTES = 4 << 30
_ID_ALPHABET = string.ascii_lowercase + string.digits


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass(frozen=True)
class Invocable:
    """What a runtime request naming a custom model (directly, or through a custom model deployment) runs."""

    model: CustomModel
    deployment_arn: str | None = None


class CustomModelService:
    """Custom models as served: creation from the blob store, resolution for invocations, adapter files."""

    def __init__(self, store: CustomModelStore, deployments: CustomModelDeploymentStore, blobs: BlobStore,
                 registry: DeploymentRegistry, tagging: TaggingService, settings: Settings) -> None:
        self.store = store
        self.deployment_store = deployments
        self.blobs = blobs
        self.registry = registry
        self.tagging = tagging
        self.settings = settings
        self._bases: dict[str, BaseModel] = {}  # base GGUF path -> its shapes, read once
        self._converting: dict[str, asyncio.Lock] = {}
        tagging.register("custom-model-deployment", TaggableKind(
            lambda region, arn: self.deployment_store.find(region, arn) is not None))

    # ------------------------------------------------------------------------------------------- base models

    def _serving(self, base_model_id: str) -> Deployment:
        """The deployment that serves a custom model's base model, if it can apply LoRA adapters."""
        deployment = self.registry.for_model(base_model_id)
        if deployment is None:
            raise ValidationException(
                f"No deployment of this server serves {base_model_id}, the custom model's base model; add it to a "
                "[[deployments]] entry."
            )
        if deployment.engine_name != "llamacpp":
            raise ValidationException(
                f"The custom model's base model {base_model_id} is served by deployment {deployment.name} with the "
                f"{deployment.engine_name} engine, which cannot apply LoRA adapters; serve it with the llamacpp "
                "engine (a GGUF model)."
            )
        return deployment

    def _base(self, deployment: Deployment) -> BaseModel:
        base = self._bases.get(deployment.weights)
        if base is None:
            try:
                base = read_base(Path(deployment.weights))
            except AdapterFormatError as exc:
                raise ValidationException(f"Deployment {deployment.name} cannot serve LoRA adapters: {exc}.") from exc
            self._bases[deployment.weights] = base
        return base

    def _base_model_id(self, identifier: str, source: str) -> str:
        """A catalog id from a model id, alias or foundation-model ARN; ValidationException naming ``source``."""
        model_id = identifier
        if identifier.startswith("arn:"):
            try:
                ref = parse_model_ref(identifier)
            except ValidationException:
                ref = None
            model_id = ref.model_id if ref is not None and ref.kind == "foundation-model-arn" else ""
        model_id = self.settings.aliases.get(model_id, model_id)
        model = catalog.get(model_id)
        if model is None or model.is_embedding:
            raise ValidationException(
                f"The base model {identifier!r} ({source}) is not a Llama model of the catalog. Give a model id such "
                "as meta.llama3-2-1b-instruct-v1:0 or its foundation-model ARN (`llamarock models` lists them)."
            )
        return model.model_id

    # ------------------------------------------------------------------------------------------- CreateCustomModel

    async def create(self, *, region: str, account: str, name: str, s3_uri: str | None,
                     tags: list[tuple[str, str]], client_token: str | None) -> CustomModel:
        """A new Active custom model from an adapter in the blob store (or the one an earlier create with the same
        token made)."""
        tags = check_tags(tags, "modelTags")
        if client_token is not None:
            earlier = next((m for m in await asyncio.to_thread(self.store.all, region)
                            if m.client_token == client_token), None)
            if earlier is not None:
                if earlier.name != name or earlier.details.get("s3Uri") != s3_uri:
                    raise ValidationException(
                        "The clientRequestToken was already used for a different CreateCustomModel request; use a "
                        "new token for a new request."
                    )
                return earlier
        if s3_uri is None:
            raise ValidationException(
                "CreateCustomModel needs modelSourceConfig.s3DataSource.s3Uri: the S3 prefix of a LoRA adapter (a "
                "peft folder with adapter_config.json and adapter_model.safetensors, or a .gguf LoRA). SageMaker "
                "model packages (customModelDataSource) are not supported."
            )
        if await asyncio.to_thread(self.store.find, region, name) is not None:
            raise ConflictException(f"A custom model named {name} already exists in this account and region. Choose "
                                    "another modelName, or delete the existing one first.")
        model_id = _new_id()
        folder = self.settings.data_dir / FOLDER / model_id
        try:
            model = await asyncio.to_thread(self._create, region, account, name, s3_uri, dict(tags), client_token,
                                            model_id, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if tags:
            await self.tagging.put(model.arn, tags)
        log.info("custom model %s created over %s", model.arn, model.base_model_id)
        return model

    def _create(self, region: str, account: str, name: str, s3_uri: str, tags: dict[str, str],
                client_token: str | None, model_id: str, folder: Path) -> CustomModel:
        files = self._download(s3_uri, folder / "source")
        ggufs = [path for path in files if path.suffix == ".gguf"]
        peft = (folder / "source" / CONFIG_FILE).is_file() or (folder / "source" / WEIGHTS_FILE).is_file()
        if not peft and len(ggufs) != 1:
            raise ValidationException(
                f"The S3 location {s3_uri} holds no LoRA adapter: it needs {CONFIG_FILE} and {WEIGHTS_FILE} (a peft "
                "adapter folder, as save_pretrained writes it) or exactly one .gguf LoRA file"
                + (f"; it has {len(ggufs)} .gguf files" if ggufs else "") + "."
            )
        adapter_base = ""
        if peft:
            try:
                adapter_base = str(read_adapter_config(folder / "source").get("base_model_name_or_path") or "")
            except AdapterFormatError as exc:
                raise ValidationException(f"The adapter at {s3_uri} cannot be served: {exc}.") from exc
        if BASE_MODEL_TAG in tags:
            base_model_id = self._base_model_id(tags[BASE_MODEL_TAG], f"tag {BASE_MODEL_TAG}")
        elif adapter_base and (adapter_base.startswith("arn:") or catalog.get(
                self.settings.aliases.get(adapter_base, adapter_base)) is not None):
            base_model_id = self._base_model_id(adapter_base, f"{CONFIG_FILE}'s base_model_name_or_path")
        else:
            said = f" ({CONFIG_FILE} says base_model_name_or_path {adapter_base!r})" if adapter_base else ""
            raise ValidationException(
                f"CreateCustomModel cannot tell which base model the adapter at {s3_uri} is for{said}. Tag the model "
                f"with key {BASE_MODEL_TAG} and a catalog model id as value (modelTags), or set "
                "base_model_name_or_path in adapter_config.json to the catalog model id."
            )
        deployment = self._serving(base_model_id)
        base = self._base(deployment)
        lora = folder / "lora.gguf"
        try:
            if peft:
                summary = convert_peft(folder / "source", base, lora)
            else:
                summary = check_lora_gguf(ggufs[0], base)
                ggufs[0].replace(lora)
        except AdapterFormatError as exc:
            raise ValidationException(
                f"The adapter at {s3_uri} cannot be served over {base_model_id} ({deployment.name}): {exc}."
            ) from exc
        relative = folder.relative_to(self.settings.data_dir)
        model = CustomModel(
            model_id=model_id, arn=custom_model_arn(region, account, base_model_id, model_id), region=region,
            name=name, base_model_id=base_model_id, base_model_arn=foundation_model_arn(base_model_id, region),
            customization_type="IMPORTED", status="Active", created_at=datetime.now(UTC),
            adapter_dir=str(relative / "source") if peft else None, lora_gguf=str(relative / "lora.gguf"),
            client_token=client_token,
            details={"s3Uri": s3_uri, "modelSourceConfig": {"s3DataSource": {"s3Uri": s3_uri}},
                     "rank": summary.rank, "alpha": summary.alpha, "modules": summary.modules},
        )
        self.store.insert(model)
        return model

    def _download(self, s3_uri: str, into: Path) -> list[Path]:
        """Copy the adapter's objects (those directly under the prefix, or the one object named) to ``into``."""
        bucket, key = split_s3_uri(s3_uri)
        try:
            listed = self.blobs.list(bucket, key)
        except BucketMissingError as exc:
            raise ValidationException(f"The S3 bucket {bucket} of {s3_uri} does not exist "
                                      f"({self.blobs.location}).") from exc
        except BlobStoreError as exc:
            raise ValidationException(f"Unable to read {s3_uri}: {exc}") from exc
        if key in listed and not key.endswith("/"):
            keys = [key]
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            keys = [k for k in listed if k.startswith(prefix) and "/" not in k[len(prefix):]]
        if not keys:
            raise ValidationException(f"The S3 location {s3_uri} is empty: upload the adapter's files there first.")
        into.mkdir(parents=True, exist_ok=True)
        total = 0
        files = []
        for name in keys:
            try:
                data = self.blobs.get(bucket, name)
            except BlobStoreError as exc:
                raise ValidationException(f"Unable to read s3://{bucket}/{name}: {exc}") from exc
            total += len(data)
            if total > MAX_ADAPTER_BYTES:
                raise ValidationException(f"The adapter at {s3_uri} is larger than {MAX_ADAPTER_BYTES >> 30} GiB.")
            path = into / name.rsplit("/", 1)[-1]
            path.write_bytes(data)
            files.append(path)
        return files

    # ------------------------------------------------------------------------------------------- invocation

    def find(self, region: str, identifier: str) -> CustomModel | None:
        """A custom model of ``region`` by ARN or name (the store's record: customization jobs add and delete
        them)."""
        return self.store.find(region, identifier)

    def for_invocation(self, ref: ModelRef, region: str) -> Invocable:
        """The Active custom model a runtime request names (custom model ARN or name, or a custom model deployment's
        ARN); ValidationException with Bedrock's words when there is none."""
        if ref.kind == "custom-model-deployment-arn":
            deployment = self.deployment_store.find(ref.region or region, ref.requested)
            if deployment is None:
                raise ResourceNotFoundException(
                    f"The custom model deployment {ref.requested} was not found. Check the ARN "
                    "(ListCustomModelDeployments lists them)."
                )
            model = self.store.find(deployment.region, deployment.model_arn)
            if model is None:
                raise ResourceNotFoundException(
                    f"The custom model {deployment.model_arn} of deployment {deployment.name} no longer exists."
                )
            return Invocable(self._active(model), deployment.arn)
        model = self.store.find(ref.region or region, ref.requested)
        if model is None:
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} No custom model {ref.requested} exists in {ref.region or region} "
                "(ListCustomModels lists them)."
            )
        return Invocable(self._active(model))

    @staticmethod
    def _active(model: CustomModel) -> CustomModel:
        if model.status == "Active":
            return model
        if model.status == "Creating":
            raise ModelNotReadyException(f"The custom model {model.name} is still being created; retry when it is "
                                         "Active.")
        raise ValidationException(f"The custom model {model.name} failed and cannot be invoked: "
                                  f"{model.failure_message or 'its customization job failed'}.")

    def base_model_of(self, identifier: str, region: str) -> CustomModel:
        """The custom model a CreateProvisionedModelThroughput ``modelId`` names (its ARN or name), checked
        servable; ResourceNotFoundException when there is none."""
        model = self.store.find(region, identifier)
        if model is None:
            raise ResourceNotFoundException(
                f"The model {identifier} was not found. Give the ARN of a custom model of {region} "
                "(ListCustomModels lists them) or a catalog model id."
            )
        self._serving(self._active(model).base_model_id)
        return model

    async def adapter(self, model_arn: str) -> Adapter:
        """The request-level adapter of a custom model (by ARN), converting its peft folder on first use."""
        region = model_arn.split(":")[3]
        model = await asyncio.to_thread(self.store.find, region, model_arn)
        if model is None:
            raise ValidationException(f"{INVALID_MODEL_IDENTIFIER} The custom model {model_arn} no longer exists.")
        if model.lora_gguf is None or not (self.settings.data_dir / model.lora_gguf).is_file():
            lock = self._converting.setdefault(model.model_id, asyncio.Lock())
            async with lock:
                model = await asyncio.to_thread(self.store.find, region, model_arn) or model
                if model.lora_gguf is None or not (self.settings.data_dir / model.lora_gguf).is_file():
                    model = await asyncio.to_thread(self._convert, model)
        assert model.lora_gguf is not None
        return Adapter(model.arn, str(self.settings.data_dir / model.lora_gguf))

    def _convert(self, model: CustomModel) -> CustomModel:
        """Convert a custom model's peft folder (a customization job's output) to a GGUF LoRA and record it."""
        if model.adapter_dir is None:
            raise ValidationException(f"The custom model {model.name} has no adapter to serve.")
        deployment = self._serving(model.base_model_id)
        out = self.settings.data_dir / FOLDER / model.model_id / "lora.gguf"
        try:
            convert_peft(self.settings.data_dir / model.adapter_dir, self._base(deployment), out)
        except AdapterFormatError as exc:
            raise ValidationException(f"The custom model {model.name} cannot be served over {model.base_model_id}: "
                                      f"{exc}.") from exc
        log.info("converted the adapter of custom model %s to %s", model.arn, out)
        return self.store.update(model, lora_gguf=str(out.relative_to(self.settings.data_dir)))

    # ------------------------------------------------------------------------------------------- deployments

    async def create_deployment(self, *, region: str, account: str, name: str, model_arn: str,
                                description: str | None, tags: list[tuple[str, str]],
                                client_token: str | None) -> CustomModelDeployment:
        tags = check_tags(tags)
        existing = await asyncio.to_thread(self.deployment_store.all, region)
        if client_token is not None:
            earlier = next((d for d in existing if d.client_token == client_token), None)
            if earlier is not None:
                if earlier.name != name or earlier.model_arn != model_arn:
                    raise ValidationException(
                        "The clientRequestToken was already used for a different CreateCustomModelDeployment "
                        "request; use a new token for a new request."
                    )
                return earlier
        if any(d.name == name for d in existing):
            raise ValidationException(f"A custom model deployment named {name} already exists in this account and "
                                      "region. Choose another modelDeploymentName.")
        model = await self._deployable(region, model_arn)
        deployment_id = _new_id()
        now = datetime.now(UTC)
        deployment = CustomModelDeployment(
            deployment_id, custom_model_deployment_arn(region, account, deployment_id), region, name, model.arn,
            "Active", now, now, description, client_token=client_token,
        )
        await asyncio.to_thread(self.deployment_store.insert, deployment)
        if tags:
            await self.tagging.put(deployment.arn, tags)
        return deployment

    async def _deployable(self, region: str, model_arn: str) -> CustomModel:
        """The Active custom model a deployment names, its adapter converted (so the first request only loads it)."""
        model = await asyncio.to_thread(self.store.find, region, model_arn)
        if model is None or model.arn != model_arn:
            raise ResourceNotFoundException(f"The custom model {model_arn} was not found in {region} "
                                            "(ListCustomModels lists them).")
        self._serving(self._active(model).base_model_id)
        await self.adapter(model.arn)
        return model

    async def get_deployment(self, region: str, identifier: str) -> CustomModelDeployment:
        found = await asyncio.to_thread(self.deployment_store.find, region, identifier)
        if found is None:
            raise ResourceNotFoundException(
                f"The custom model deployment {identifier} was not found in {region}. Give the ARN or name of a "
                "deployment of this region (ListCustomModelDeployments lists them)."
            )
        return found

    async def list_deployments(self, region: str) -> list[CustomModelDeployment]:
        return await asyncio.to_thread(self.deployment_store.all, region)

    async def update_deployment(self, region: str, identifier: str, model_arn: str) -> CustomModelDeployment:
        current = await self.get_deployment(region, identifier)
        model = await self._deployable(region, model_arn)
        return await asyncio.to_thread(
            self.deployment_store.update, current, model_arn=model.arn, update_model_arn=model.arn,
            update_status="UpdateCompleted", updated_at=datetime.now(UTC),
        )

    async def delete_deployment(self, region: str, identifier: str) -> None:
        current = await self.get_deployment(region, identifier)
        await asyncio.to_thread(self.deployment_store.delete, current.deployment_id)
        await self.tagging.drop(current.arn)


def deployment_shape(deployment: CustomModelDeployment) -> dict[str, Any]:
    """GetCustomModelDeployment's members."""
    shown: dict[str, Any] = {
        "customModelDeploymentArn": deployment.arn,
        "modelDeploymentName": deployment.name,
        "modelArn": deployment.model_arn,
        "createdAt": deployment.created_at,
        "status": deployment.status,
        "lastUpdatedAt": deployment.updated_at,
    }
    if deployment.description:
        shown["description"] = deployment.description
    if deployment.failure_message:
        shown["failureMessage"] = deployment.failure_message
    if deployment.update_model_arn and deployment.update_status:
        shown["updateDetails"] = {"modelArn": deployment.update_model_arn, "updateStatus": deployment.update_status}
    return shown
