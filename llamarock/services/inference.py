"""Inference use case: resolve a model identifier to a deployment, shape the prompt for its weights, generate.

Engine exceptions are translated here, once, into the error tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from llamarock.bedrock import catalog
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, ModelRef, parse_model_ref
from llamarock.bedrock.prompts import parse_prompt
from llamarock.bedrock.regions import RegionMap
from llamarock.errors import (
    AccessDeniedException,
    ContextOverflowError,
    EngineError,
    EngineNotReadyError,
    EngineOverloadedError,
    EngineTimeoutError,
    ModelErrorException,
    ModelNotReadyException,
    ModelTimeoutException,
    ServiceUnavailableException,
    ThrottlingException,
    UnsupportedSchemaError,
    ValidationException,
)
from llamarock.scheduler import Scheduler
from llamarock.services.deployments import Deployment, DeploymentConfigError, DeploymentRegistry
from llamarock.services.provisioning import ProvisioningService
from llamarock.settings import Settings
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

INPUT_TOO_LONG = "Input is too long for requested model."
# Engine admission priority of latency-optimized requests (standard traffic is 0).
LATENCY_OPTIMIZED_PRIORITY = 1


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


def shape_prompt(prompt: str, engine_format: str) -> tuple[tuple, str] | None:
    """Decide how a native prompt reaches the weights.

    Returns None when the prompt goes through unchanged (plain text, or already in the weights' own format),
    else the parsed messages and assistant prefix to render with the weights' chat template.
    """
    parsed = parse_prompt(prompt)
    if parsed.format == "plain" or parsed.format == engine_format:
        return None
    if not parsed.messages and not parsed.assistant_prefix:
        return None
    return parsed.messages, parsed.assistant_prefix


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
        try:
            self.regions = RegionMap(settings.model_regions, settings.on_demand_regions)
        except ValueError as exc:
            raise DeploymentConfigError(str(exc)) from exc

    def resolve(self, identifier: str, region: str | None = None) -> Target:
        """Map any accepted identifier form (or a configured alias) to a catalog model and its deployment.

        ``region`` is the region the request was signed for (the server's default region when it carried none).
        """
        region = region or self.settings.region
        ref = parse_model_ref(self.settings.aliases.get(identifier, identifier))
        if ref.kind == "provisioned-model-arn":
            if ref.region is not None and ref.region != region:
                raise ValidationException(
                    f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names a provisioned model in {ref.region}, "
                    f"but the request was signed for {region}. Sign the request for {ref.region}."
                )
            return self._provisioned(ref)
        placement = self._placement(ref, region)
        model = placement.model
        deployment = self.registry.for_model(model.model_id)
        if deployment is None:
            raise AccessDeniedException(
                "You don't have access to the model with the specified model ID. "
                f"No deployment of this server serves {model.model_id}; add it to a [[deployments]] entry."
            )
        return Target(ref, model, deployment, placement.inference_region)

    def place(self, identifier: str, region: str | None = None) -> Placement | None:
        """Where a request signed for ``region`` naming ``identifier`` runs, without needing a deployment here.

        None for a provisioned-model ARN: its reservation is this server's own. Raises Bedrock's refusal for an
        identifier the region cannot invoke, as :meth:`resolve` does.
        """
        ref = parse_model_ref(self.settings.aliases.get(identifier, identifier))
        if ref.kind == "provisioned-model-arn":
            return None
        return self._placement(ref, region or self.settings.region)

    def _placement(self, ref: ModelRef, region: str) -> Placement:
        model = catalog.get(self.settings.aliases.get(ref.model_id, ref.model_id))
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        return Placement(ref, model, self.regions.inference_region(model, ref, region))

    def _provisioned(self, ref: ModelRef) -> Target:
        """A provisioned-model ARN runs its (InService) provisioned model's catalog model on its reservation."""
        if self.provisioning is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        provisioned = self.provisioning.for_invocation(ref)
        model = catalog.get(provisioned.model_id)
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        deployment = self.registry.for_model(model.model_id)
        if deployment is None:
            raise AccessDeniedException(
                "You don't have access to the model with the specified model ID. "
                f"No deployment of this server serves {model.model_id}; add it to a [[deployments]] entry."
            )
        return Target(ref, model, deployment, ref.region, provisioned_arn=provisioned.arn)

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
                "Vision models do."
            )
        if not target.deployment.engine.info.supports_images:
            raise ValidationException(
                f"The model {target.model.model_id} is served by deployment {target.deployment.name}, which doesn't "
                "support image input. Map this model to a deployment with an image-capable engine, or send the "
                "request without images."
            )

    def native_request(
        self, target: Target, prompt: str, sampling: SamplingParams, request_id: str
    ) -> GenerationRequest:
        """The engine request for a native InvokeModel prompt."""
        shaped = shape_prompt(prompt, target.deployment.engine.info.chat_format)
        if shaped is None:
            return GenerationRequest(sampling=sampling, prompt=prompt, request_id=request_id)
        messages, prefix = shaped
        return GenerationRequest(
            sampling=sampling, messages=tuple(messages), assistant_prefix=prefix, request_id=request_id
        )

    def tiered(self, target: Target, request: GenerationRequest, latency: str | None) -> GenerationRequest:
        """Apply the request's performance tier: ``optimized`` is served ahead of standard traffic.

        As on Bedrock, only Llama 3.1 70B and 405B Instruct offer latency-optimized inference.
        """
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
        except EngineOverloadedError as exc:
            raise ThrottlingException(
                "Too many requests, please wait before trying again. "
                f"Deployment {target.deployment.name} has a full request queue."
            ) from exc
        except EngineTimeoutError as exc:
            raise ModelTimeoutException(
                "The request took too long to process. Processing time exceeded the model timeout length. "
                f"({exc})"
            ) from exc
        except UnsupportedSchemaError as exc:
            raise ValidationException(
                f"The JSON schema of this request cannot be enforced by deployment {target.deployment.name}: {exc}. "
                "Simplify the schema (plain objects, arrays, strings, numbers, enums)."
            ) from exc
        except EngineNotReadyError as exc:
            raise ModelNotReadyException(f"Model {target.model.model_id} is not ready for inference yet.") from exc
        except EngineError as exc:
            log.error("deployment %s failed (request %s): %s", target.deployment.name, request.request_id, exc)
            raise ModelErrorException(
                f"The model {target.model.model_id} failed while processing the request: {exc}",
                originalStatusCode=500,
                resourceName=target.deployment.name,
            ) from exc
        finally:
            await stream.aclose()
