"""What runs inside a Ray worker of the ``ray`` batch executor (``services/batch_ray.py``).

:class:`BatchWorker` is a plain class; the executor turns it into a Ray actor (``ray.remote``), one per node of the
cluster (``ray_workers_per_node``). Each builds llamarock's own engine and an :class:`InvocationService` from the
server's settings, on its own node, once, and loads only the deployment that serves its model: the weights load once
per worker, not per record. :meth:`BatchWorker.run_batch` runs a few records at once through the same
:func:`run_record` the local executor uses and yields each outcome as soon as it is finished, stamped with where it
ran (:class:`WorkerStamp`).

This module imports no Ray: it is importable (and type-checked) where Ray is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llamarock.context import ModelName
from llamarock.errors import ConfigError
from llamarock.scheduler import Scheduler
from llamarock.services.batch_records import BatchJobSpec, BatchRecord, RecordOutcome, run_record
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.inference import InferenceService
from llamarock.services.invocation import InvocationService
from llamarock.settings import Settings

log = logging.getLogger(__name__)

# Settings a worker has no use for and that should not travel to the cluster: credentials, databases, local files.
NOT_SHIPPED = frozenset({
    "peer_access_key_id", "peer_secret_access_key", "blob_store_access_key_id", "blob_store_secret_access_key",
    "database_url", "knowledge_rds_url", "knowledge_rds_urls", "tls_cert", "tls_key", "data_dir", "region_servers",
})


def shipped_settings(settings: Settings) -> dict[str, Any]:
    """The settings a worker rebuilds: what the operator set (config file, flags, environment), as JSON values.

    Defaults are left out, so that a worker computes those on its own node (``threads`` from its CPUs, the
    embedded model's path from its own install), and so are credentials and the server's local storage.
    """
    data = settings.model_dump(mode="json", exclude_unset=True)
    return {key: value for key, value in data.items() if key not in NOT_SHIPPED}


@dataclass(frozen=True)
class WorkerStamp:
    """Where a record ran: the Ray node, the worker process and its host."""

    node_id: str
    pid: int
    host: str


class BatchWorker:
    """A Ray actor: llamarock's engine for one model, on one node, running batch records."""

    def __init__(self, settings: dict[str, Any], model_id: str, cpus: int) -> None:
        data = dict(settings)
        # The engine gets the CPUs the actor reserved, unless the operator chose its threads.
        data.setdefault("threads", cpus)
        self.settings = Settings(**data)
        self.model_id = model_id
        self.registry = DeploymentRegistry(self.settings)
        self.invocations = InvocationService(InferenceService(self.registry, self.settings, Scheduler(self.settings)))
        self.stamp = WorkerStamp(_ray_node_id(), os.getpid(), socket.gethostname())
        self._loaded: asyncio.Task[None] | None = None

    async def start(self) -> WorkerStamp:
        """Load the weights of the deployment serving the model (once); where this worker runs."""
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(self._load())
        await asyncio.shield(self._loaded)
        return self.stamp

    async def _load(self) -> None:
        name = ModelName.parse(self.model_id, self.settings.aliases, self.settings.account_id)
        deployment = self.registry.for_model(name.model_id)
        if deployment is None:
            raise ConfigError(
                f"no deployment of the settings the Ray workers got serves {self.model_id}; add it to a "
                "[[deployments]] entry"
            )
        await deployment.engine.load()
        log.info("Ray batch worker pid %d on node %s: deployment %s loaded (%s)", self.stamp.pid,
                 self.stamp.node_id, deployment.name, deployment.weights)

    async def run_batch(self, spec: BatchJobSpec, records: Sequence[BatchRecord]
                        ) -> AsyncIterator[tuple[RecordOutcome, WorkerStamp]]:
        """Run ``records`` at once; yield each one's outcome as soon as it is finished (a Ray streaming call)."""
        await self.start()
        tasks = [asyncio.ensure_future(run_record(self.invocations, spec, record)) for record in records]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished, self.stamp
        finally:  # the caller cancelled (a stopped job) or went away: stop generating the rest
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close(self) -> None:
        await self.registry.close_all()


def _ray_node_id() -> str:
    """The id of the Ray node this process runs on (only called inside a Ray worker)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())
