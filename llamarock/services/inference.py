"""Inference: resolve a model identifier to a deployment, shape the prompt for its weights, admit, generate.

The use cases (``services/invocation.py``) are built on it. Engine exceptions are translated here, once, into the
error tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamarock.bedrock import catalog, compat
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.converse import prompt_marks, render_for
from llamarock.bedrock.images import IMAGE_TOKEN
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, RESOURCE_KINDS, ModelRef
from llamarock.bedrock.native import EMPTY_PROMPT
from llamarock.bedrock.prompts import parse_prompt
from llamarock.bedrock.regions import RegionMap
from llamarock.context import ModelName
from llamarock.errors import (
    AccessDeniedException,
    ContextOverflowError,
    DeploymentConfigError,
    EmptyPromptError,
    EngineError,
    EngineNotReadyError,
    ModelErrorException,
    ModelNotReadyException,
    ReplicaThrottledError,
    ReplicaUnavailableError,
    ResourceNotFoundException,
    ServiceUnavailableException,
    ThrottlingException,
    UnsupportedSchemaError,
    ValidationException,
)
from llamarock.scheduler import TIER_PRIORITY, Scheduler
from llamarock.services.deployments import Deployment, DeploymentRegistry
from llamarock.services.profiles import ProfileService

if TYPE_CHECKING:
    from llamarock.services.custom_models import CustomModelService
from llamarock.services.provisioning import ProvisioningService
from llamarock.settings import Settings
from llamarock.types import CacheMark, ChatMessage, GenerationChunk, GenerationRequest, SamplingParams

if TYPE_CHECKING:
    from llamarock.services.model_import import ImportedModelService

log = logging.getLogger(__name__)

INPUT_TOO_LONG = "Input is too long for requested model."
# Bedrock's refusal of an embedding model id by Converse, ConverseStream, CountTokens and the like.
EMBEDDING_NOT_GENERATIVE = (
    "This action doesn't support the model that you provided. Try again with a supported text or chat model."
)
# Engine admission priority of latency-optimized requests (standard traffic is 0).
LATENCY_OPTIMIZED_PRIORITY = 1
# Chat formats llamarock renders itself (bedrock/prompts.py); other weights get messages and use their template.
LLAMA_FORMATS = ("llama3", "llama2")


@dataclass(frozen=True)
class Placement:
    """A request's model and the region that runs it (a cross-region inference profile's pick)."""

    ref: ModelRef
    model: CatalogModel
    inference_region: str


@dataclass(frozen=True)
class Target:
    """A request's model, resolved: the identifier as sent, its catalog entry and the deployment serving it."""

    ref: ModelRef
    model: CatalogModel
    deployment: Deployment
    # The region that runs the request (a cross-region inference profile's pick); invocation logs' inferenceRegion.
    inference_region: str | None = None
    # Set when the request names a provisioned model: it runs on that model's reserved capacity.
    provisioned_arn: str | None = None
    # Set when the request names an application inference profile: usage is attributed to it and its tags.
    profile_arn: str | None = None
    profile_tags: tuple[tuple[str, str], ...] = ()
    # Set when the request names an imported model (Custom Model Import): its ARN; it runs on its own engine.
    imported_arn: str | None = None
    # Set when the request runs a custom model (its ARN): the deployment applies the model's LoRA adapter.
    custom_model_arn: str | None = None


class InferenceService:
    """Runs generations for the runtime routes."""

    def __init__(
        self,
        registry: DeploymentRegistry,
        settings: Settings,
        scheduler: Scheduler | None = None,
        provisioning: ProvisioningService | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.scheduler = scheduler or Scheduler(settings)
        self.provisioning = provisioning
        # Application inference profiles (set by create_app: the profile service shares this region map).
        self.profiles: ProfileService | None = None
        # Imported models (set by create_app: services/model_import.py serves each on its own engine).
        self.imported: ImportedModelService | None = None
        # Custom models served as LoRA adapters over their base model's deployment (set by create_app).
        self.custom_models: CustomModelService | None = None
        try:
            on_demand = compat.on_demand_overrides(settings.compat, catalog.MODELS, settings.on_demand_regions)
            self.regions = RegionMap(settings.model_regions, on_demand)
        except ValueError as exc:
            raise DeploymentConfigError(str(exc)) from exc
        self.enforce_end_of_life = compat.enforces_end_of_life(settings.compat, settings.enforce_end_of_life)
        ended = [m.model_id for m in catalog.MODELS if m.dates.ended() and registry.for_model(m.model_id) is not None]
        if ended:
            log.info("%s reached the end of their life on Bedrock; %s", ", ".join(ended),
                     "they are refused as Bedrock refuses them (enforce_end_of_life)" if self.enforce_end_of_life
                     else "they are still served here (set enforce_end_of_life to refuse them as Bedrock does)")

    def resolve(self, model: ModelName, region: str | None = None) -> Target:
        """Map any accepted identifier form (or a configured alias) to a catalog model and its deployment.

        ``region`` is the region the request was signed for (the server's default region when it carried none).
        """
        region = region or self.settings.region
        ref = model.parsed()
        if ref.kind == "provisioned-model-arn":
            if ref.region is not None and ref.region != region:
                raise ValidationException(
                    f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names a provisioned model in {ref.region}, "
                    f"but the request was signed for {region}. Sign the request for {ref.region}."
                )
            return self._provisioned(ref)
        if ref.kind == "application-inference-profile-arn":
            return self._application_profile(ref, region)
        if ref.kind == "imported-model-arn":
            if self.imported is None:
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            return self.imported.target(ref, region)
        if self.custom_models is not None and (ref.kind in ("custom-model-arn", "custom-model-deployment-arn") or (
                ref.kind == "model-id" and catalog.get(model.model_id) is None
                and self.custom_models.find(region, ref.requested) is not None)):
            return self._custom(ref, region)
        placement = self._placement(model, region)
        deployment = self._deployment(placement.model)
        return Target(ref, placement.model, deployment, placement.inference_region)

    def place(self, model: ModelName, region: str | None = None) -> Placement | None:
        """Where a request signed for ``region`` naming ``model`` runs, without needing a deployment here.

        None for a provisioned-model or application inference profile ARN (this server's own). Raises Bedrock's
        refusal for an identifier the region cannot invoke, as :meth:`resolve` does.
        """
        if model.parsed().kind in RESOURCE_KINDS:
            return None
        return self._placement(model, region or self.settings.region)

    def _placement(self, name: ModelName, region: str) -> Placement:
        ref = name.parsed()
        model = catalog.get(name.model_id)
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        self._check_life(model)
        return Placement(ref, model, self.regions.inference_region(model, ref, region))

    def _check_life(self, model: CatalogModel) -> None:
        """Bedrock's refusal of a model past its end of life, when ``enforce_end_of_life`` is on."""
        if self.enforce_end_of_life and model.dates.ended():
            raise ResourceNotFoundException(catalog.END_OF_LIFE)

    def _application_profile(self, ref: ModelRef, region: str) -> Target:
        """An application inference profile runs its source's model where its source would (its region, or its
        system-defined profile's pick)."""
        if self.profiles is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        profile, source, tags = self.profiles.for_invocation(ref, region)
        model = catalog.get(profile.model_id)
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        self._check_life(model)
        inference_region = self.regions.inference_region(model, source, region)
        return Target(ref, model, self._deployment(model), inference_region, profile_arn=profile.arn,
                      profile_tags=tags)

    def _deployment(self, model: CatalogModel) -> Deployment:
        if model.is_embedding:
            # Embedding models answer InvokeModel only (services/embeddings.py); every generating operation refuses
            # them as Bedrock does.
            raise ValidationException(EMBEDDING_NOT_GENERATIVE)
        deployment = self.registry.for_model(model.model_id)
        if deployment is None:
            raise AccessDeniedException(
                "You don't have access to the model with the specified model ID. "
                f"No deployment of this server serves {model.model_id}; add it to a [[deployments]] entry."
            )
        return deployment

    def _custom(self, ref: ModelRef, region: str) -> Target:
        """A custom model (by ARN or name, on demand: beyond Bedrock, which requires Provisioned Throughput) or a
        custom model deployment runs its base model's deployment with the model's adapter."""
        assert self.custom_models is not None
        if ref.kind != "custom-model-deployment-arn" and not compat.serves_custom_models_on_demand(
                self.settings.compat):
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        if ref.kind == "custom-model-arn" and ref.region is not None and ref.region != region:
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names a custom model in {ref.region}, but the "
                f"request was signed for {region}. Sign the request for {ref.region}."
            )
        custom = self.custom_models.for_invocation(ref, region).model
        model = catalog.get(custom.base_model_id)
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        self._check_life(model)
        return Target(ref, model, self._deployment(model), region, custom_model_arn=custom.arn)

    def _provisioned(self, ref: ModelRef) -> Target:
        """A provisioned-model ARN runs its (InService) provisioned model's catalog model on its reservation."""
        if self.provisioning is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        provisioned = self.provisioning.for_invocation(ref)
        model = catalog.get(provisioned.model_id)
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        self._check_life(model)
        custom = provisioned.model_arn if ":custom-model/" in provisioned.model_arn else None
        return Target(ref, model, self._deployment(model), ref.region, provisioned_arn=provisioned.arn,
                      custom_model_arn=custom)

    def check_ready(self, target: Target) -> None:
        deployment = target.deployment
        if deployment.error is not None:
            raise ServiceUnavailableException(
                f"The deployment {deployment.name} serving {target.model.model_id} failed to load: {deployment.error}"
            )
        if not deployment.engine.ready:
            raise ModelNotReadyException(
                f"Model {target.model.model_id} is not ready for inference yet: deployment {deployment.name} is "
                "still loading. Retry shortly."
            )

    def check_images(self, target: Target, images: Sequence[object]) -> None:
        """Images are accepted only by vision models served by an engine that supports them."""
        if not images:
            return
        if not target.model.supports_images:
            raise ValidationException(
                "Malformed input request: #: extraneous key [images] is not permitted, please reformat your input "
                f"and try again. {target.model.model_id} does not accept images; only the Llama 3.2 11B and 90B "
                "Vision and the Llama 4 models do."
            )
        if not target.deployment.engine.info.supports_images:
            raise ValidationException(
                f"The model {target.model.model_id} is served by deployment {target.deployment.name}, which doesn't "
                "support image input. Map this model to a deployment with an image-capable engine, or send the "
                "request without images."
            )

    def engine_request(
        self,
        target: Target,
        sampling: SamplingParams,
        request_id: str,
        *,
        prompt: str | None = None,
        messages: Sequence[ChatMessage] = (),
        prefix: str = "",
        json_schema: dict[str, Any] | None = None,
        cache_marks: tuple[CacheMark, ...] = (),
        images: tuple[bytes, ...] = (),
    ) -> GenerationRequest:
        """The engine request for a native ``prompt`` or for chat ``messages`` (plus the answer's prefilled start).

        The one rule of prompt formatting: text reaches the weights in their own chat format. A native prompt that
        is plain text or already in the weights' format goes through as written; a prompt in another Llama format
        is parsed back into messages. Messages are rendered by llamarock itself when the weights use a Llama format
        (llama3, llama2: tool calls and results in Llama's own words), and by the engine with the weights' chat
        template otherwise. ``cache_marks`` (on ``messages``) follow the messages into the prompt. ``images`` (checked
        by the Bedrock layer) go with it, one ``<|image|>`` in the prompt or messages standing for each.
        """
        request = self._engine_request(target, sampling, request_id, prompt=prompt, messages=messages, prefix=prefix,
                                       json_schema=json_schema, cache_marks=cache_marks)
        if target.deployment.engine.info.supports_images:
            texts = [request.prompt] if request.prompt is not None else [m.content for m in request.messages or ()]
            placeholders = sum(text.count(IMAGE_TOKEN) for text in texts)
            if placeholders != len(images):
                raise ValidationException(
                    f"The request's text contains {placeholders} {IMAGE_TOKEN} tokens for {len(images)} images: "
                    f"{IMAGE_TOKEN} is reserved for the images themselves. Remove it from the text."
                )
        return dataclasses.replace(request, images=images) if images else request

    def _engine_request(
        self,
        target: Target,
        sampling: SamplingParams,
        request_id: str,
        *,
        prompt: str | None,
        messages: Sequence[ChatMessage],
        prefix: str,
        json_schema: dict[str, Any] | None,
        cache_marks: tuple[CacheMark, ...],
    ) -> GenerationRequest:
        engine_format = target.deployment.engine.info.chat_format
        if prompt is not None:
            parsed = parse_prompt(prompt)
            if parsed.format in ("plain", engine_format) or not (parsed.messages or parsed.assistant_prefix):
                return GenerationRequest(sampling=sampling, prompt=prompt, request_id=request_id,
                                         json_schema=json_schema)
            messages, prefix = parsed.messages, parsed.assistant_prefix
        if engine_format in LLAMA_FORMATS:
            rendered = render_for(engine_format, tuple(messages), prefix)
            return GenerationRequest(sampling=sampling, prompt=rendered, request_id=request_id,
                                     json_schema=json_schema,
                                     cache_marks=prompt_marks(engine_format, tuple(messages), rendered, cache_marks))
        return GenerationRequest(sampling=sampling, messages=tuple(messages), assistant_prefix=prefix,
                                 request_id=request_id, json_schema=json_schema, cache_marks=cache_marks)

    def tiered(self, target: Target, request: GenerationRequest, latency: str | None,
               service_tier: str | None = None) -> GenerationRequest:
        """Apply the request's performance tier (``optimized`` is served ahead of standard traffic) and its service
        tier (the scheduler's priority of ``priority``, ``reserved``, ``default`` or ``flex``: TIER_PRIORITY).

        As on Bedrock, only Llama 3.1 70B and 405B Instruct offer latency-optimized inference.
        """
        if service_tier is not None:
            request = dataclasses.replace(request, priority=TIER_PRIORITY[service_tier])
        if latency != "optimized":
            return request
        if not target.model.latency_optimized:
            offered = ", ".join(m.model_id for m in catalog.MODELS if m.latency_optimized)
            raise ValidationException(
                f"The model {target.model.model_id} doesn't support latency-optimized inference. It is offered for "
                f"{offered}; send performanceConfig latency 'standard' (or leave it out) for this model."
            )
        return dataclasses.replace(request, priority=max(request.priority, LATENCY_OPTIMIZED_PRIORITY))

    async def generate(self, target: Target, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Generate once the scheduler admits the request (on-demand share, or the provisioned model's reservation).

        Raises ThrottlingException or ModelTimeoutException before the first chunk when it is not admitted.
        """
        self.check_ready(target)
        if target.custom_model_arn is not None and self.custom_models is not None:
            adapter = await self.custom_models.adapter(target.custom_model_arn)
            request = dataclasses.replace(request, adapter=adapter)
        async with self.scheduler.admit(target.deployment.name, request, target.provisioned_arn) as admission:
            async with contextlib.aclosing(self._engine_chunks(target, admission.request)) as chunks:
                async for chunk in chunks:
                    admission.count(chunk)
                    yield chunk

    async def _engine_chunks(
        self, target: Target, request: GenerationRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Generate with the target's engine, translating engine failures into Bedrock errors."""
        stream = target.deployment.engine.generate(request)
        try:
            async for chunk in stream:
                yield chunk
        except ContextOverflowError as exc:
            raise ValidationException(
                f"{INPUT_TOO_LONG} The prompt is {exc.prompt_tokens} tokens; deployment {target.deployment.name} "
                f"has a context window of {exc.context_length} tokens. Shorten the prompt."
            ) from exc
        except EmptyPromptError as exc:
            raise ValidationException(
                f"{EMPTY_PROMPT} The weights of deployment {target.deployment.name} give an empty prompt no tokens "
                "to generate from."
            ) from exc
        except UnsupportedSchemaError as exc:
            raise ValidationException(
                f"The JSON schema of this request cannot be enforced by deployment {target.deployment.name}: {exc}. "
                "Simplify the schema (plain objects, arrays, strings, numbers, enums)."
            ) from exc
        except EngineNotReadyError as exc:
            raise ModelNotReadyException(f"Model {target.model.model_id} is not ready for inference yet.") from exc
        except ReplicaThrottledError as exc:  # remote replicas answered 429/503 (engines/remote.py)
            message = (f"Deployment {target.deployment.name} serving {target.model.model_id} is at capacity: {exc}. "
                       f"Retry after about {max(1, math.ceil(exc.retry_after_s))} seconds.")
            if exc.status == 503:
                raise ServiceUnavailableException(message) from exc
            raise ThrottlingException(message) from exc
        except ReplicaUnavailableError as exc:
            raise ServiceUnavailableException(
                f"Deployment {target.deployment.name} serving {target.model.model_id} has no healthy replica: {exc}. "
                "Retry shortly."
            ) from exc
        except EngineError as exc:
            log.error("deployment %s failed (request %s): %s", target.deployment.name, request.request_id, exc)
            raise ModelErrorException(
                f"The model {target.model.model_id} failed while processing the request: {exc}",
                originalStatusCode=500,
                resourceName=target.deployment.name,
            ) from exc
        finally:
            await stream.aclose()
