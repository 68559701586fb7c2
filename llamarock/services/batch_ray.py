"""The ``ray`` batch executor (``jobs_executor = "ray"``): records fanned out as Ray tasks to workers that run
llamarock's engine on their own node, so that one job uses a whole cluster (docs/batch.md, "Ray executor").

The server is a Ray driver: it connects to the cluster at ``ray_address`` (``ray.init(address=...)``; ``"local"``
starts a single-node Ray inside the server instead) the first time a job runs. For each deployment a job needs it
keeps ``ray_workers_per_node`` long-lived worker actors on every alive node (``services/batch_ray_worker.py``): each
builds llamarock's engine from the server's settings on its node, so the weights load once per worker and must be at
the same path on every node (or be the embedded model, installed with llamarock). Workers are owned by the server:
they end with it (and with ``close``).

Records go to the workers a few at a time (``run_batch``, a Ray streaming call); each outcome comes back as soon as
its record is finished and is handed to ``emit`` at once, so the job's durable progress, restart-safety and Stop
are the same as with the local executor. A worker that dies (its process killed, its node lost) is restarted by Ray
where it can be; the records it had not finished go back to the queue and run on whichever worker is free, so none
is lost, and none is emitted twice (outcomes are emitted once per record, by file and line). A record whose batch
failed ``MAX_ATTEMPTS`` times (a record that crashes its worker) is written as an ``error`` line. Stop cancels the
batches in flight (``ray.cancel``) and returns.

Every Ray call is awaited (``await ref``, ``async for`` over a streaming call) or run in a thread
(``ray.init``, the node list), so the server's event loop never blocks on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llamarock.context import ModelName
from llamarock.errors import ConfigError, LlamarockError
from llamarock.services.batch_ray_worker import BatchWorker, WorkerStamp, shipped_settings
from llamarock.services.batch_records import BatchExecutor, BatchJobSpec, BatchRecord, RecordOutcome, error_line
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.inference import InferenceService
from llamarock.services.invocation import InvocationService
from llamarock.settings import Settings

log = logging.getLogger(__name__)

# A record whose batch failed this many times (its worker died, or the call raised) is written as an error line.
MAX_ATTEMPTS = 3
# How long a job waits for the cluster to offer a node for its workers, and for a worker to load its weights.
NODE_WAIT_S = 60.0
START_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 10.0
NAMESPACE = "llamarock"


class RayExecutorError(LlamarockError):
    """The Ray cluster cannot run the job (unreachable, no node can host a worker, every worker failed)."""


def make_ray_executor(settings: Settings, invocations: InvocationService | None = None) -> BatchExecutor:
    """The Ray executor for ``settings.ray_address``. ``invocations`` (the server's) resolves provisioned-model and
    application-inference-profile ARNs, which only the server knows, to their catalog model before records leave
    for the cluster. Raises ConfigError when Ray is not installed or no address is set."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "jobs_executor = \"ray\" needs Ray: install llamarock with the ray extra (pip install 'llamarock[ray]'), "
            "the same Ray version as the cluster's"
        ) from exc
    if not settings.ray_address:
        raise ConfigError(
            "jobs_executor = \"ray\" needs ray_address: the Ray cluster's address (e.g. 10.0.0.5:6379), or \"local\" "
            "to start a single-node Ray inside the server"
        )
    return RayExecutor(settings, invocations)


@dataclass
class _Worker:
    """One worker actor and what is known of it."""

    actor: Any
    node_id: str
    stamp: WorkerStamp | None = None
    records: int = 0


@dataclass
class _Pool:
    """The workers of one deployment."""

    model_id: str
    workers: list[_Worker] = field(default_factory=list)
    jobs: int = 0  # jobs running on it now


class RayExecutor:
    """See the module docstring."""

    def __init__(self, settings: Settings, invocations: InvocationService | None = None) -> None:
        self.settings = settings
        self.address = settings.ray_address
        self.workers_per_node = settings.ray_workers_per_node
        self.worker_cpus = settings.ray_worker_cpus
        self._shipped = shipped_settings(settings)
        # Resolves a job's model to its deployment (and catalog id) without loading anything.
        self._inference = invocations.inference if invocations is not None else InferenceService(
            DeploymentRegistry(settings), settings)
        self._pools: dict[str, _Pool] = {}
        self._lock = asyncio.Lock()
        self._connected = False
        self._last_start_error = ""
        self._starting: set[asyncio.Task[_Pool]] = set()

    # ------------------------------------------------------------------------------------------- the cluster

    async def _connect(self) -> None:
        if self._connected:
            return
        import ray

        address = None if self.address == "local" else self.address
        if address is not None:
            await _reachable(address)
        try:
            await asyncio.to_thread(
                ray.init, address=address, namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True,
                include_dashboard=False if address is None else None,
            )
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: the address is wrong or unreachable
            raise RayExecutorError(f"cannot connect to the Ray cluster at {self.address}: {exc}") from exc
        self._connected = True
        log.info("connected to the Ray cluster at %s", self.address)

    def _target(self, spec: BatchJobSpec) -> tuple[str, str, BatchJobSpec]:
        """The job's deployment name and catalog model id, and the spec the workers get: a provisioned-model or
        application-inference-profile ARN (known only to the server) is replaced by its catalog model id."""
        name = ModelName.parse(spec.model_id, self.settings.aliases, self.settings.account_id)
        target = self._inference.resolve(name, spec.region)
        shipped = spec
        if target.provisioned_arn is not None or target.profile_arn is not None:
            shipped = replace(spec, model_id=target.model.model_id)
        return target.deployment.name, target.model.model_id, shipped

    async def _alive_nodes(self) -> list[str]:
        """Alive nodes with room for a worker; waits up to NODE_WAIT_S for one to join."""
        import ray

        loop = asyncio.get_running_loop()
        deadline = loop.time() + NODE_WAIT_S
        while True:
            nodes = await asyncio.to_thread(ray.nodes)
            alive = [str(n["NodeID"]) for n in nodes
                     if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= self.worker_cpus]
            if alive or loop.time() > deadline:
                return alive
            await asyncio.sleep(0.5)

    async def _pool(self, deployment: str, model_id: str) -> _Pool:
        """The deployment's workers, with new ones on nodes that joined since; every one started (weights loaded)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        async with self._lock:
            # Workers of other deployments that no job is using give their CPUs back (their weights are unloaded).
            for name, idle in list(self._pools.items()):
                if name != deployment and idle.jobs == 0:
                    self._kill(idle)
                    del self._pools[name]
            pool = self._pools.setdefault(deployment, _Pool(model_id))
            pool.workers = await self._started(deployment, pool.workers)  # those gone for good are dropped
            nodes = await self._alive_nodes()
            if not nodes and not pool.workers:
                raise RayExecutorError(
                    f"no alive node of the Ray cluster at {self.address} has {self.worker_cpus} CPU(s) for a batch "
                    "worker (ray_worker_cpus)"
                )
            have = Counter(w.node_id for w in pool.workers)
            actor_class = ray.remote(BatchWorker)
            new = [
                _Worker(actor_class.options(
                    num_cpus=self.worker_cpus,
                    # Prefer this node; a worker restarted after its node died goes wherever there is room.
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
                    max_restarts=-1, max_task_retries=0, max_concurrency=1000,
                ).remote(self._shipped, model_id, self.worker_cpus), node)
                for node in nodes for _ in range(self.workers_per_node - have[node])
            ]
            pool.workers += await self._started(deployment, new)
            if not pool.workers:
                raise RayExecutorError(f"no Ray batch worker for deployment {deployment} could start: "
                                       f"{self._last_start_error}")
            return pool

    async def _started(self, deployment: str, workers: list[_Worker]) -> list[_Worker]:
        """The workers that are started (weights loaded); the others are killed, and logged."""
        import ray

        async def start(worker: _Worker) -> None:
            worker.stamp = await asyncio.wait_for(worker.actor.start.remote(), START_TIMEOUT_S)

        results = await asyncio.gather(*(start(w) for w in workers), return_exceptions=True)
        started = []
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                self._last_start_error = _first_line(result)
                log.warning("a Ray batch worker for deployment %s on node %s did not start: %s", deployment,
                            worker.node_id, self._last_start_error)
                with contextlib.suppress(Exception):
                    ray.kill(worker.actor)
            else:
                started.append(worker)
        return started

    # ----------------------------------------------------------------------------------------------- the job

    async def run(self, spec: BatchJobSpec, records: Sequence[BatchRecord],
                  emit: Callable[[RecordOutcome], Awaitable[None]], stop: asyncio.Event) -> None:
        if not records or stop.is_set():
            return
        deployment, model_id, shipped = self._target(spec)
        await self._connect()
        # Workers may take long to load their weights: a stop meanwhile returns at once (they go on starting, for
        # the next job).
        starting = asyncio.ensure_future(self._pool(deployment, model_id))
        self._starting.add(starting)
        starting.add_done_callback(_forget(self._starting))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not starting.done():
            return
        pool = starting.result()
        spec_deployment = next(d for d in self.settings.effective_deployments() if d.name == deployment)
        per_call = max(1, spec_deployment.max_parallel // _Job.CALLS_PER_WORKER)
        pool.jobs += 1
        try:
            await _Job(self, shipped, records, emit, stop, per_call).run(pool)
        finally:
            pool.jobs -= 1

    @staticmethod
    def _kill(pool: _Pool) -> None:
        import ray

        for worker in pool.workers:
            with contextlib.suppress(Exception):
                ray.kill(worker.actor)
        pool.workers.clear()

    async def close(self) -> None:
        for task in list(self._starting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self._connected:
            return
        import ray

        for pool in self._pools.values():
            self._kill(pool)
        self._pools.clear()
        await asyncio.to_thread(ray.shutdown)
        self._connected = False


def _forget(tasks: set[asyncio.Task[_Pool]]) -> Callable[[asyncio.Task[_Pool]], None]:
    """A done callback: drop the task from ``tasks``, its failure retrieved (a failure nobody awaited is logged)."""

    def done(task: asyncio.Task[_Pool]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("Ray batch workers did not start: %s", task.exception())

    return done


def _key(record: BatchRecord | RecordOutcome) -> tuple[str, int]:
    return record.file, record.line


class _Job:
    """One run of a job's records over a pool: a shared queue, two calls in flight per worker."""

    CALLS_PER_WORKER = 2

    def __init__(self, executor: RayExecutor, spec: BatchJobSpec, records: Sequence[BatchRecord],
                 emit: Callable[[RecordOutcome], Awaitable[None]], stop: asyncio.Event, per_call: int) -> None:
        self.executor = executor
        self.spec = spec
        self.queue: deque[BatchRecord] = deque(records)
        self.open = {_key(r) for r in records}  # not yet emitted
        self.attempts: Counter[tuple[str, int]] = Counter()
        self.emit = emit
        self.stop = stop
        self.per_call = per_call
        self.changed = asyncio.Condition()
        self.by_worker: Counter[tuple[str, int]] = Counter()

    def finished(self) -> bool:
        return not self.open or self.stop.is_set()

    async def run(self, pool: _Pool) -> None:
        async def wake_on_stop() -> None:
            await self.stop.wait()
            async with self.changed:
                self.changed.notify_all()

        watcher = asyncio.create_task(wake_on_stop())
        drivers = [asyncio.create_task(self._drive(worker)) for worker in pool.workers
                   for _ in range(self.CALLS_PER_WORKER)]
        try:
            await asyncio.gather(*drivers)
        finally:
            watcher.cancel()
            for task in drivers:
                task.cancel()
            for task in (watcher, *drivers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for (node, pid), count in sorted(self.by_worker.items()):
            log.info("batch job %s: %d record(s) ran on Ray worker pid %d on node %s", self.spec.job_id, count, pid,
                     node)
        if self.open and not self.stop.is_set():
            raise RayExecutorError(
                f"every Ray batch worker failed; {len(self.open)} record(s) of job {self.spec.job_id} did not run"
            )

    async def _next_batch(self) -> list[BatchRecord] | None:
        """Up to ``per_call`` records to run, or None when the job is finished (or stopped)."""
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.queue) or self.finished())
            if self.finished():
                return None
            return [self.queue.popleft() for _ in range(min(self.per_call, len(self.queue)))]

    async def _drive(self, worker: _Worker) -> None:
        """Send batches to ``worker`` until the job is finished; a worker that is gone for good ends its driver."""
        import ray

        while (batch := await self._next_batch()) is not None:
            calls = worker.actor.run_batch.remote(self.spec, batch)
            try:
                await self._stream(calls, worker)
            except ray.exceptions.RayError as exc:
                await self._failed(batch, exc, worker)
                if not await self._alive(worker):
                    return
            except BaseException:  # cancelled (the job ended another way), or emit failed: the call is not wanted
                ray.cancel(calls)
                raise
            else:
                # A call that ended without an outcome for a record it was given would lose it: put it back.
                await self._requeue([r for r in batch if _key(r) in self.open and r not in self.queue])
            if self.stop.is_set():
                ray.cancel(calls)
                return

    async def _stream(self, calls: Any, worker: _Worker) -> None:
        """Emit each outcome of a streaming call as it arrives; stop listening (and cancel it) once stopped."""
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            while True:
                following = asyncio.ensure_future(calls.__anext__())
                await asyncio.wait({following, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                        await following
                    return
                try:
                    ref = following.result()
                except StopAsyncIteration:
                    return
                outcome, stamp = await ref
                await self._emit(outcome, stamp)
                worker.records += 1
        finally:
            stopped.cancel()

    async def _emit(self, outcome: RecordOutcome, stamp: WorkerStamp) -> None:
        key = _key(outcome)
        if key not in self.open:  # already emitted from an earlier attempt: never twice
            return
        self.open.discard(key)
        self.by_worker[(stamp.node_id, stamp.pid)] += 1
        log.debug("batch job %s: record %s line %d (%s) ran on Ray worker pid %d on node %s (%s)", self.spec.job_id,
                  outcome.file, outcome.line, outcome.record_id, stamp.pid, stamp.node_id, stamp.host)
        await self.emit(outcome)
        async with self.changed:
            self.changed.notify_all()

    async def _failed(self, batch: Sequence[BatchRecord], error: Exception, worker: _Worker) -> None:
        """A batch's call failed: its unfinished records go back to the queue, or become error lines at the last
        attempt."""
        left = [r for r in batch if _key(r) in self.open]
        log.warning("batch job %s: a call to the Ray worker on node %s failed with %d of its %d record(s) unfinished "
                    "(each runs again, %d attempts at most): %s", self.spec.job_id, worker.node_id, len(left),
                    len(batch), MAX_ATTEMPTS, _first_line(error))
        again = []
        for record in left:
            self.attempts[_key(record)] += 1
            if self.attempts[_key(record)] >= MAX_ATTEMPTS:
                self.open.discard(_key(record))
                await self.emit(error_line(record, 500, (
                    f"The record failed on {MAX_ATTEMPTS} Ray batch workers; the last error was: {_first_line(error)}"
                )))
            else:
                again.append(record)
        await self._requeue(again)

    async def _requeue(self, records: Sequence[BatchRecord]) -> None:
        async with self.changed:
            self.queue.extendleft(reversed(records))
            self.changed.notify_all()

    async def _alive(self, worker: _Worker) -> bool:
        """Whether a worker that failed a call is back: Ray restarts a dead worker (on its node, or wherever there is
        room) and answers "restarting" meanwhile. False, and its driver ends, once Ray says it is dead for good."""
        import ray

        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not self.stop.is_set():
            try:
                worker.stamp = await asyncio.wait_for(worker.actor.start.remote(), deadline - loop.time())
                return True
            except ray.exceptions.ActorUnavailableError:  # restarting
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)
            except Exception as exc:  # ActorDiedError: gone for good (or it did not come back in time)
                log.warning("Ray batch worker on node %s is gone: %s", worker.node_id, _first_line(exc))
                return False
        return False


async def _reachable(address: str) -> None:
    """Refuse at once an address where nothing listens: Ray's own connection attempt retries for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayExecutorError(f"ray_address {address!r} is not a Ray head's host:port (e.g. 10.0.0.5:6379)")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise RayExecutorError(f"cannot reach the Ray cluster at {address}: {exc or 'timed out'}") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
