"""Embedding models served as models: the embedding deployments, and the use cases on them.

``[[embedding_deployments]]`` (or the embedded all-MiniLM-L6-v2 when none is configured) map the catalog's embedding
model ids (Titan Text Embeddings, Cohere Embed v3) to embedders, first match wins, by shell-style patterns. Two use
cases run on them:

- :meth:`EmbeddingService.embed`: vectors for texts by catalog id or ARN (knowledge bases' ``embeddingModelArn``);
- :meth:`EmbeddingService.invoke`: InvokeModel with a Titan or Cohere body, answered in that model's shape.

Engine exceptions are translated here, once, into the error tree (as ``services/inference.py`` does for Llama).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from llamarock.bedrock import catalog
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.embeddings import EmbeddingRequest, cohere_response, parse_request, titan_response
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, parse_model_ref
from llamarock.context import ModelName
from llamarock.engines.embedding import MINILM_NAME, MINILM_PACKAGE, Embedder, Embeddings, OnnxBertEmbedder
from llamarock.errors import (
    BedrockError,
    DeploymentConfigError,
    EngineError,
    ModelErrorException,
    ServiceUnavailableException,
    ThrottlingException,
    ValidationException,
)
from llamarock.services.inference import InferenceService
from llamarock.settings import EmbeddingDeploymentSettings, Settings

log = logging.getLogger(__name__)

# Bedrock's refusal of an embedding model id by InvokeModelWithResponseStream (Converse and the other generating
# operations: inference.EMBEDDING_NOT_GENERATIVE).
STREAMING_UNSUPPORTED = "The model is unsupported for streaming."
THROTTLED = "Too many requests, please wait before trying again."


def build_embedder(spec: EmbeddingDeploymentSettings, settings: Settings) -> tuple[Embedder, str]:
    """The embedder of one embedding deployment and a description of its weights (cheap: nothing loads here)."""
    threads = spec.threads or settings.threads
    if spec.engine == "onnx":
        if spec.model_path is None:
            # The embedded weights are located when they load: a missing package fails the first request (with the
            # install command), not the server's start.
            embedder: Embedder = OnnxBertEmbedder(None, threads=threads, max_tokens=spec.max_tokens or 256,
                                                  max_batch=spec.max_batch, quantize=spec.quantize)
            return embedder, f"{MINILM_PACKAGE} ({MINILM_NAME})"
        if not spec.model_path.is_file():
            raise DeploymentConfigError(f"embedding deployment {spec.name!r}: model zip not found: {spec.model_path}")
        embedder = OnnxBertEmbedder(spec.model_path, name=spec.model_path.stem, threads=threads,
                                    max_tokens=spec.max_tokens or 256, max_batch=spec.max_batch,
                                    quantize=spec.quantize)
        return embedder, str(spec.model_path)
    if spec.engine == "llamacpp":
        from llamarock.engines.embedding_llamacpp import LlamaCppEmbedder

        assert spec.model_path is not None  # the settings' validator requires it
        if not spec.model_path.is_file():
            raise DeploymentConfigError(f"embedding deployment {spec.name!r}: GGUF file not found: {spec.model_path}")
        return LlamaCppEmbedder(spec.model_path, threads=threads, max_tokens=spec.max_tokens,
                                pooling=spec.pooling), str(spec.model_path)
    from llamarock.engines.embedding_remote import RemoteEmbedder

    assert spec.url is not None  # the settings' validator requires it
    model = spec.remote_model or spec.name
    return RemoteEmbedder(spec.url, model=model, dimensions=spec.dimensions, api_key=spec.api_key,
                          max_tokens=spec.max_tokens or 8192, timeout_s=spec.timeout_s,
                          max_batch=spec.max_batch), f"{model} at {spec.url}"


@dataclass
class EmbeddingDeployment:
    """A configured embedding deployment and its embedder."""

    settings: EmbeddingDeploymentSettings
    embedder: Embedder
    weights: str
    model_ids: list[str] = field(default_factory=list)
    error: str | None = None
    active: int = 0
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def engine_name(self) -> str:
        return self.settings.engine


@dataclass(frozen=True)
class EmbeddingTarget:
    """An embedding request's model, resolved: its catalog entry, the deployment serving it, where it runs."""

    model: CatalogModel
    deployment: EmbeddingDeployment
    inference_region: str | None = None
    # Set when the request names an application inference profile: usage is attributed to it and its tags.
    profile_arn: str | None = None
    profile_tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EmbeddingAnswer:
    """InvokeModel's answer for an embedding model: the body in the model's shape and the input tokens it read."""

    body: dict[str, object]
    input_tokens: int


class EmbeddingService:
    """The embedding deployments of a server, and embedding by catalog id (or ARN) on them."""

    def __init__(self, settings: Settings, inference: InferenceService | None = None) -> None:
        self.settings = settings
        self.inference = inference
        self.deployments: list[EmbeddingDeployment] = []
        self._by_model: dict[str, EmbeddingDeployment] = {}
        embedding_ids = [m.model_id for m in catalog.EMBEDDING_MODELS]
        for spec in settings.effective_embedding_deployments():
            unknown = [p for p in spec.models if not fnmatch.filter(embedding_ids, p)]
            if unknown:
                raise DeploymentConfigError(
                    f"embedding deployment {spec.name!r} names models that are not embedding models of the catalog: "
                    f"{', '.join(unknown)} (they are {', '.join(embedding_ids)})"
                )
            embedder, weights = build_embedder(spec, settings)
            self.deployments.append(EmbeddingDeployment(spec, embedder, weights))
        for model in catalog.EMBEDDING_MODELS:
            for deployment in self.deployments:
                if any(fnmatch.fnmatchcase(model.model_id, p) for p in deployment.settings.models):
                    self._by_model[model.model_id] = deployment
                    deployment.model_ids.append(model.model_id)
                    break

    # ------------------------------------------------------------------------------------------------- lifecycle

    def for_model(self, model_id: str) -> EmbeddingDeployment | None:
        """The deployment that serves an embedding model id, or None."""
        return self._by_model.get(model_id)

    async def load_all(self) -> None:
        """Load the deployments marked ``preload``; failures are recorded on the deployment, not raised."""
        await asyncio.gather(*(self._load(d) for d in self.deployments if d.settings.preload),
                             return_exceptions=True)

    async def close_all(self) -> None:
        await asyncio.gather(*(d.embedder.close() for d in self.deployments), return_exceptions=True)

    async def _load(self, deployment: EmbeddingDeployment) -> None:
        """Load once (the first request waits for it); a failure is kept and answered as ServiceUnavailable."""
        if deployment.embedder.ready and deployment.error is None:
            return
        async with deployment._loading:
            if deployment.error is None and not deployment.embedder.ready:
                try:
                    await deployment.embedder.load()
                except (DeploymentConfigError, EngineError, OSError) as exc:
                    deployment.error = str(exc)
                    log.error("embedding deployment %s failed to load: %s", deployment.name, exc)
                else:
                    log.info("embedding deployment %s ready: engine=%s weights=%s dimensions=%s serves %s",
                             deployment.name, deployment.engine_name, deployment.weights,
                             deployment.embedder.dimensions, ", ".join(deployment.model_ids))
        if deployment.error is not None:
            raise ServiceUnavailableException(
                f"The embedding deployment {deployment.name} failed to load: {deployment.error}"
            )

    # ---------------------------------------------------------------------------------------------- resolution

    def is_embedding(self, model: ModelName, region: str | None = None) -> bool:
        """Whether a request's model identifier names an embedding model of the catalog: by id, foundation-model
        ARN (aliases applied) or an application inference profile copied from one. Identifiers that cannot be
        resolved are not: their own refusal comes from the Llama path."""
        if model.ref is None or model.ref.kind == "provisioned-model-arn":
            return False
        if model.ref.kind == "application-inference-profile-arn":
            profiles = self.inference.profiles if self.inference is not None else None
            if profiles is None:
                return False
            try:
                profile, _, _ = profiles.for_invocation(model.ref, region or self.settings.region)
            except BedrockError:
                return False
            found = catalog.get(profile.model_id)
        else:
            found = catalog.get(model.model_id)
        return found is not None and found.is_embedding

    def resolve(self, model: ModelName, region: str | None = None) -> EmbeddingTarget:
        """The catalog model and deployment of an InvokeModel request naming an embedding model (by id, ARN or
        application inference profile); Bedrock's refusal when ``region`` cannot invoke it."""
        region = region or self.settings.region
        ref = model.parsed()
        if ref.kind == "application-inference-profile-arn" and self.inference is not None \
                and self.inference.profiles is not None:
            profile, source, tags = self.inference.profiles.for_invocation(ref, region)
            found = catalog.get(profile.model_id)
            if found is None or not found.is_embedding:
                raise ValidationException(INVALID_MODEL_IDENTIFIER)
            where = self.inference.regions.inference_region(found, source, region)
            return EmbeddingTarget(found, self._deployment(found), where, profile.arn, tags)
        found = catalog.get(model.model_id)
        if found is None or not found.is_embedding:
            raise ValidationException(INVALID_MODEL_IDENTIFIER)
        inference_region = None
        if self.inference is not None:
            placement = self.inference.place(model, region)
            inference_region = placement.inference_region if placement is not None else None
        return EmbeddingTarget(found, self._deployment(found), inference_region)

    def _deployment(self, model: CatalogModel) -> EmbeddingDeployment:
        deployment = self.for_model(model.model_id)
        if deployment is None:
            raise ValidationException(
                f"The model {model.model_id} is not served here: no embedding deployment of this server claims it. "
                "Add it to an [[embedding_deployments]] entry's models."
            )
        return deployment

    def model_for(self, model_id: str) -> CatalogModel:
        """The embedding catalog model a catalog id or foundation-model ARN names; ValidationException otherwise."""
        try:
            ref = parse_model_ref(model_id)
        except ValidationException:
            raise ValidationException(
                f"{model_id} is not a valid embedding model identifier: use an embedding model id "
                f"({', '.join(m.model_id for m in catalog.EMBEDDING_MODELS)}) or its foundation-model ARN."
            ) from None
        found = catalog.get(ref.model_id)
        if found is None or not found.is_embedding:
            raise ValidationException(
                f"{model_id} is not an embedding model. The embedding models are "
                f"{', '.join(m.model_id for m in catalog.EMBEDDING_MODELS)}."
            )
        return found

    # ------------------------------------------------------------------------------------------------ use cases

    async def dimensions_for(self, model_id: str) -> tuple[int, ...]:
        """The vector sizes the deployment serving ``model_id`` (id or ARN) can give, its default first (loads it:
        a GGUF's size is known only then). For checking a knowledge base's ``dimensions`` when it is created."""
        return (await self.embedder_for(model_id)).dimensions

    async def embedder_for(self, model_id: str) -> Embedder:
        """The loaded embedder serving an embedding model id or ARN (for callers that embed many batches, such as
        ingestion; they call its ``embed`` themselves and translate EngineError)."""
        deployment = self._deployment(self.model_for(model_id))
        await self._load(deployment)
        return deployment.embedder

    async def embed(self, model_id: str, texts: Sequence[str], *, dimensions: int | None = None,
                    normalize: bool = True) -> Embeddings:
        """Vectors for ``texts`` from the deployment serving ``model_id`` (a catalog id or foundation-model ARN).

        ``dimensions`` None means the served model's own size; a size it cannot give is a ValidationException
        naming those it can. Engine failures are ModelErrorException; a full queue ThrottlingException."""
        model = self.model_for(model_id)
        return await self._run(model, self._deployment(model), list(texts), dimensions, normalize)

    async def _run(self, model: CatalogModel, deployment: EmbeddingDeployment, texts: list[str],
                   dimensions: int | None, normalize: bool) -> Embeddings:
        async with self._admitted(deployment):
            await self._load(deployment)
            embedder = deployment.embedder
            if dimensions is not None and dimensions not in embedder.dimensions:
                given = ", ".join(map(str, embedder.dimensions))
                raise ValidationException(
                    f"Malformed input request: #/dimensions: {dimensions} is not a size the served model gives, please "
                    f"reformat your input and try again. {model.model_id} is served by {embedder.name} (embedding "
                    f"deployment {deployment.name}), which gives {given} dimensions: send dimensions {given} or leave "
                    "it out."
                )
            try:
                return await embedder.embed(texts, normalize=normalize, dimensions=dimensions)
            except ValueError as exc:
                raise ValidationException(f"Malformed input request: {exc}, please reformat your input and try "
                                          "again.") from exc
            except EngineError as exc:
                log.error("embedding deployment %s failed: %s", deployment.name, exc)
                raise ModelErrorException(
                    f"The model {model.model_id} failed while processing the request: {exc}",
                    originalStatusCode=500, resourceName=deployment.name,
                ) from exc

    @contextlib.asynccontextmanager
    async def _admitted(self, deployment: EmbeddingDeployment) -> AsyncIterator[None]:
        if deployment.active >= deployment.settings.max_queue:
            raise ThrottlingException(THROTTLED)
        deployment.active += 1
        try:
            yield
        finally:
            deployment.active -= 1

    async def invoke(self, target: EmbeddingTarget, body: bytes, request_id: str) -> EmbeddingAnswer:
        """InvokeModel with the target model's body (Titan V2, Titan G1 or Cohere Embed v3)."""
        facts = target.model.embedding
        assert facts is not None
        request = parse_request(facts, body)
        deployment = target.deployment
        await self._load(deployment)
        texts = self._fit(target, request)
        result = await self._run(target.model, deployment, texts, request.dimensions, request.normalize)
        if facts.body == "cohere-v3":
            return EmbeddingAnswer(cohere_response(request, result.vectors, request_id), sum(result.token_counts))
        (vector,), (count,) = result.vectors, result.token_counts
        return EmbeddingAnswer(titan_response(facts, request, vector, count), count)

    def _fit(self, target: EmbeddingTarget, request: EmbeddingRequest) -> list[str]:
        """The texts as the served model reads them: Titan's input limit checked, Cohere's ``truncate`` applied
        (NONE refuses a text longer than the served model's window; START keeps its end; END its start)."""
        facts = target.model.embedding
        assert facts is not None
        embedder = target.deployment.embedder
        texts = list(request.texts)
        for index, text in enumerate(texts):
            kept, total = embedder.fit(text, keep="end" if request.truncate == "START" else "start")
            if facts.body != "cohere-v3":
                if total > facts.max_input_tokens:
                    raise ValidationException(
                        f"400 Bad Request: Too many input tokens. Max input tokens: {facts.max_input_tokens}, request "
                        f"input token count: {total}"
                    )
                continue
            if request.truncate == "NONE" and kept != text:
                raise ValidationException(
                    f"Malformed input request: #/texts/{index}: the text is {total} tokens, more than the "
                    f"{embedder.max_tokens} the served model ({embedder.name}) reads, please reformat your input and "
                    "try again. Send truncate END or START to cut it, or shorten it."
                )
            texts[index] = kept
        return texts
