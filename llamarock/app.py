"""``create_app(settings)``: wires settings, stores, services, observers, the edge and the dispatcher.
No module-level state."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from llamarock.auth.gate import Gate
from llamarock.observability.batch import BatchCollector, batch_biller
from llamarock.observability.customization import CustomizationCollector
from llamarock.observability.imported import cmu_biller
from llamarock.observability.invocation_log import InvocationLog
from llamarock.observability.metrics import InvocationMetrics
from llamarock.observability.records import Observers
from llamarock.observability.usage import UsageRecorder, UsageStore
from llamarock.routes.dispatch import dispatch_app
from llamarock.routes.edge import Edge
from llamarock.routes.operations import OperationTable
from llamarock.scheduler import Scheduler
from llamarock.services.batch import BatchService
from llamarock.services.custom_models import CustomModelService
from llamarock.services.customization import CustomizationService
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.guardrail_runtime import GuardrailRuntime
from llamarock.services.guardrails import GuardrailService
from llamarock.services.inference import InferenceService
from llamarock.services.invocation import InvocationService
from llamarock.services.knowledge import KnowledgeService
from llamarock.services.knowledge_ingestion import IngestionService
from llamarock.services.knowledge_retrieval import RetrievalService
from llamarock.services.model_access import ModelAccessService
from llamarock.services.model_import import ImportedModelService
from llamarock.services.peers import PeerService
from llamarock.services.profiles import ProfileService
from llamarock.services.provisioning import ProvisioningService
from llamarock.services.s3 import S3Service
from llamarock.services.tagging import TaggingService
from llamarock.settings import Settings
from llamarock.storage.batch import BatchStore
from llamarock.storage.blobs import open_blob_store
from llamarock.storage.custom_model_deployments import CustomModelDeploymentStore
from llamarock.storage.custom_models import CustomModelStore
from llamarock.storage.customization_jobs import CustomizationJobStore
from llamarock.storage.db import Database
from llamarock.storage.guardrails import GuardrailStore
from llamarock.storage.keys import KeyStore
from llamarock.storage.knowledge import KnowledgeStore
from llamarock.storage.logging_config import LoggingConfigStore
from llamarock.storage.model_access import ModelAccessStore
from llamarock.storage.model_import import ModelImportStore
from llamarock.storage.profiles import ProfileStore
from llamarock.storage.provisioned import ProvisionedStore
from llamarock.storage.tags import TagStore


def create_app(settings: Settings) -> Starlette:
    """The ASGI application. Deployments start loading when the app starts; /healthz says when they are ready."""
    database = Database.for_settings(settings)  # one SQLAlchemy engine for every store of the app
    registry = DeploymentRegistry(settings)
    observers = Observers()
    usage = UsageRecorder(settings, UsageStore(database))
    blobs = open_blob_store(settings)  # one blob store: invocation logs, knowledge-base data sources
    invocation_log = InvocationLog(settings, blobs, LoggingConfigStore(database))
    invocation_metrics = InvocationMetrics(lambda: registry.deployments, lambda: dict(invocation_log.counts))
    gate = Gate(settings, KeyStore(database, settings.data_dir))
    for observer in (usage, invocation_metrics, invocation_log, gate):
        observers.add(observer)
    scheduler = Scheduler(settings)
    provisioning = ProvisioningService(ProvisionedStore(database), registry, scheduler, settings)
    inference = InferenceService(registry, settings, scheduler, provisioning)
    tagging = TaggingService(TagStore(database), settings.account_id)  # every taggable resource registers with it
    provisioning.taggable(tagging)
    profiles = ProfileService(ProfileStore(database), tagging, inference.regions, settings.account_id)
    inference.profiles = profiles
    model_access = ModelAccessService(ModelAccessStore(database), inference.regions, settings.prices)
    peers = PeerService(settings, inference)
    embeddings = EmbeddingService(settings, inference)  # embedding models: InvokeModel, knowledge bases
    invocations = InvocationService(inference)
    knowledge = KnowledgeService(KnowledgeStore(database), blobs, embeddings, invocations, tagging, settings)
    ingestion = IngestionService(knowledge)  # ingestion jobs and documents of the knowledge bases
    guardrails = GuardrailService(GuardrailStore(database), tagging, embeddings, settings.account_id)
    # The runtime's guardrails: ApplyGuardrail, guardrailConfig and InvokeModel's headers; each check on /metrics.
    guardrail_runtime = GuardrailRuntime(guardrails, invocation_metrics.guardrail_check)
    invocations.guardrails = guardrail_runtime
    retrieval = RetrievalService(knowledge, guardrail_runtime)  # Retrieve, RetrieveAndGenerate, Rerank
    # Batch inference jobs (docs/batch.md): records billed as batch, progress on /metrics.
    batch = BatchService(BatchStore(database), blobs, invocations, tagging, settings, batch_biller(usage))
    invocation_metrics.registry.register(BatchCollector(batch))
    # Custom Model Import (docs/model-import.md): import jobs, imported models on their own engines, CMU metering.
    model_import = ImportedModelService(ModelImportStore(database), blobs, tagging, settings,
                                        cmu_biller(usage, f"arn:aws:iam::{settings.account_id}:root"), scheduler)
    inference.imported = model_import
    # Fine-tuning jobs and the custom models they make (docs/customization.md): trainers run as child processes.
    customization = CustomizationService(CustomizationJobStore(database), CustomModelStore(database), blobs, registry,
                                         tagging, settings)
    invocation_metrics.registry.register(CustomizationCollector(customization))
    # Custom models served as LoRA adapters over their base model's deployment (CreateCustomModel, PT, deployments).
    custom_models = CustomModelService(CustomModelStore(database), CustomModelDeploymentStore(database), blobs,
                                       registry, tagging, settings)
    inference.custom_models = provisioning.custom_models = custom_models

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(registry.load_all())
        embedding_loading = asyncio.create_task(embeddings.load_all())
        await asyncio.to_thread(invocation_log.start)
        await provisioning.load()
        await profiles.load()
        await guardrails.load()
        provisioned_models = asyncio.create_task(provisioning.run())
        await knowledge.start()  # finishes knowledge-base creations and deletions a stopped server left half-done
        await ingestion.start()  # resumes the ingestion jobs a stopped server left running
        await batch.start()  # resumes the model invocation jobs a stopped server left unfinished
        await model_import.start()  # runs again the model import jobs a stopped server left InProgress
        await customization.start()  # resumes the fine-tuning jobs a stopped server left training
        try:
            yield
        finally:
            await batch.close()
            await model_import.close()
            await customization.close()
            await ingestion.close()
            await knowledge.close()
            provisioned_models.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await provisioned_models
            for task in (loading, embedding_loading):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.close_all()
            await embeddings.close_all()
            await peers.close()
            await asyncio.to_thread(usage.close)
            await asyncio.to_thread(invocation_log.close)
            database.close()

    app = Starlette(
        middleware=[Middleware(Edge, table=OperationTable(s3_hosts=s3_hosts(settings)), gate=gate,
                               observers=observers, settings=settings)],
        lifespan=lifespan,
    )
    app.router.default = dispatch_app  # every request the edge lets through, whatever its path
    app.state.settings = settings
    app.state.gate = gate
    app.state.registry = registry
    app.state.observers = observers
    app.state.usage = usage
    app.state.metrics = invocation_metrics
    app.state.invocation_log = invocation_log
    app.state.provisioning = provisioning
    app.state.inference = inference
    app.state.tagging = tagging
    app.state.profiles = profiles
    app.state.model_access = model_access
    app.state.invocations = invocations
    app.state.knowledge = knowledge
    app.state.ingestion = ingestion
    app.state.retrieval = retrieval
    app.state.batch = batch
    app.state.model_import = model_import
    app.state.customization = customization
    app.state.peers = peers
    app.state.embeddings = embeddings
    app.state.guardrails = guardrails  # guardrail CRUD, and apply() for ApplyGuardrail and guardrailConfig
    app.state.guardrail_runtime = guardrail_runtime
    app.state.s3 = S3Service(settings)
    app.state.custom_models = custom_models
    return app


def s3_hosts(settings: Settings) -> list[str]:
    """The host names S3 virtual-hosted-style requests may put a bucket in front of: ``s3_virtual_hosts``, and
    ``host`` when it is a name rather than an address."""
    hosts = list(settings.s3_virtual_hosts)
    try:
        ipaddress.ip_address(settings.host.strip("[]"))
    except ValueError:
        hosts.append(settings.host)
    return hosts
