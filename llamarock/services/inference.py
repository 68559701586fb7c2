"""Inference use case: resolve a model identifier to a deployment, shape the prompt for its weights, generate.

Engine exceptions are translated here, once, into the error tree.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from llamarock.bedrock import catalog
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, ModelRef, parse_model_ref
from llamarock.bedrock.prompts import parse_prompt
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
from llamarock.services.deployments import Deployment, DeploymentRegistry
from llamarock.settings import Settings
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

INPUT_TOO_LONG = "Input is too long for requested model."


@dataclass(frozen=True)
class Target:
    """A request's model, resolved: the identifier as sent, its catalog entry and the deployment serving it."""

    ref: ModelRef
    model: CatalogModel
    deployment: Deployment


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

    def __init__(self, registry: DeploymentRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def resolve(self, identifier: str, region: str | None = None) -> Target:
        """Map any accepted identifier form (or a configured alias) to a catalog model and its deployment.

        ``region`` is the region the request was signed for (the server's default region when it carried none).
        """
        region = region or self.settings.region
        ref = parse_model_ref(self.settings.aliases.get(identifier, identifier))
        model = catalog.get(self.settings.aliases.get(ref.model_id, ref.model_id))
        if model is None:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        deployment = self.registry.for_model(model.model_id)
        if deployment is None:
            raise AccessDeniedException(
                "You don't have access to the model with the specified model ID. "
                f"No deployment of this server serves {model.model_id}; add it to a [[deployments]] entry."
            )
        return Target(ref, model, deployment)

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

    async def generate(self, target: Target, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Generate with the target's engine, translating engine failures into Bedrock errors."""
        self.check_ready(target)
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
