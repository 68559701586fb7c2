"""Admission to the engines: concurrency per deployment, priorities, and provisioned throughput's reserved capacity.

The one admission layer: every generation goes through :meth:`Scheduler.admit` (``InferenceService.generate`` wraps
the engine call in it), which owns queueing, deadlines, priorities and reserved capacity; the engine decodes what it
is given (its decode loop only waits for KV room and sequence ids). A deployment runs ``max_parallel`` sequences at
once, plus ``priority_slots`` that only prioritised requests may take. Provisioned throughput carves its share out of
them: each model unit of a provisioned model reserves ``provisioned_sequences_per_unit`` sequences and
``provisioned_tpm_per_unit`` tokens per minute that only requests through its ARN use. So:

* on-demand requests run at most ``max_parallel - reserved`` at once (prioritised ones, e.g. latency-optimized, also
  the priority slots); the others wait, highest priority first, in a queue of ``max_queue`` per priority class
  (prioritised, standard, flex). A full queue is ``ThrottlingException``; waiting longer than ``queue_timeout_s`` is
  ``ModelTimeoutException``.
* service tiers (:data:`TIER_PRIORITY`): ``priority`` and ``reserved`` requests are prioritised (ahead of the
  queue, and the priority slots); ``default`` is standard traffic; ``flex`` waits behind standard traffic, but only
  for ``flex_aging_s``: a flex request that has waited that long competes with standard ones in arrival order (it is
  served before every standard request that arrived after it), so a steady standard load delays flex traffic by at
  most ``flex_aging_s`` plus the standard queue ahead of it, and never starves it. When a slot is free, flex starts
  at once (the pool never idles while flex requests wait).
* requests through a provisioned model run at most its reserved sequences at once and wait within its reservation
  with the same bounds; beyond its tokens per minute they get ``ThrottlingException``. They carry
  :data:`PROVISIONED_PRIORITY`, so that the engine admits them ahead of on-demand requests.

The scheduler is in memory, one per process; the provisioning service tells it the reservations (from the database
at start-up, then at every change).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from llamarock.budget import TokenBucket, estimate_tokens
from llamarock.errors import BedrockError, ModelTimeoutException, ResourceNotFoundException, ThrottlingException
from llamarock.settings import DeploymentSettings, Settings
from llamarock.types import GenerationChunk, GenerationRequest

PROVISIONED_PRIORITY = 10
# Admission priority of each service tier (serviceTier); standard traffic is 0, latency-optimized 1.
TIER_PRIORITY: dict[str, int] = {"priority": 1, "reserved": 1, "default": 0, "flex": -1}
# Admission priority of batch inference records (model invocation jobs): behind every online tier, flex included,
# and never aged up to standard traffic as flex is (a batch record that waits too long is retried by its job).
BATCH_PRIORITY = -2
TOO_MANY_REQUESTS = "Too many requests, please wait before trying again."
TOO_MANY_TOKENS = "Too many tokens, please wait before trying again."
TIMED_OUT = "The request took too long to process. Processing time exceeded the model timeout length."


@dataclass(eq=False)
class _Waiter:
    priority: int
    order: int
    granted: asyncio.Future[None]
    since: float = 0.0


def _tier_class(priority: int) -> int:
    """The queue a priority waits in: prioritised (1), standard (0) or flex (-1); each holds ``max_queue``."""
    return (priority > 0) - (priority < 0)


class SlotPool:
    """The concurrent generations of one share of a deployment, and the requests waiting for one.

    ``capacity`` slots serve every request; ``extra`` more serve only prioritised ones (priority > 0). Waiters are
    served highest priority first, then in arrival order; each priority class may have ``max_queue`` waiting. A
    waiter below standard priority (flex) counts as standard once it has waited ``aging_s``.
    """

    def __init__(self, capacity: int, extra: int, max_queue: int, aging_s: float = 0.0) -> None:
        self.capacity = capacity
        self.extra = extra
        self.max_queue = max_queue
        self.aging_s = aging_s
        self.running = 0
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _limit(self, priority: int) -> int:
        return self.capacity + (self.extra if priority > 0 else 0)

    def _effective(self, waiter: _Waiter, now: float) -> int:
        if waiter.priority == TIER_PRIORITY["flex"] and now - waiter.since >= self.aging_s:
            return 0
        return waiter.priority

    def _grant(self) -> None:
        while self._waiters:
            now = time.monotonic()
            best = min(self._waiters, key=lambda w: (-self._effective(w, now), w.order))
            if self.running >= self._limit(best.priority):
                return
            self._waiters.remove(best)
            self.running += 1
            best.granted.set_result(None)

    async def acquire(
        self, priority: int, timeout_s: float, full: Callable[[], BedrockError], late: Callable[[], BedrockError]
    ) -> None:
        """Take a slot, waiting for one if need be; ``full()`` or ``late()`` is raised when that fails."""
        now = time.monotonic()
        ahead = any(self._effective(w, now) >= priority for w in self._waiters)
        if not ahead and self.running < self._limit(priority):
            self.running += 1
            return
        peers = sum(1 for w in self._waiters if _tier_class(w.priority) == _tier_class(priority))
        if self._limit(priority) == 0 or peers >= self.max_queue:
            raise full()
        waiter = _Waiter(priority, next(self._order), asyncio.get_running_loop().create_future(), now)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), timeout_s)
        except BaseException as exc:
            if waiter.granted.done():
                # Granted just as the wait ended (timeout or cancellation): pass the slot on.
                self.release()
            else:
                self._waiters.remove(waiter)
                waiter.granted.cancel()
            if isinstance(exc, TimeoutError):
                raise late() from None
            raise

    def release(self) -> None:
        self.running -= 1
        self._grant()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._grant()


@dataclass
class Reservation:
    """The capacity one provisioned model holds on the deployment serving its model."""

    arn: str
    name: str
    model_id: str
    deployment: str
    units: int
    pool: SlotPool
    budget: TokenBucket

    @property
    def sequences(self) -> int:
        return self.pool.capacity


@dataclass
class Admission:
    """A generation let through: ``request`` is what the engine should run (its priority set), ``count`` the tokens
    it used as they come, so that a provisioned model's token budget is settled with the real figure."""

    request: GenerationRequest
    reservation: Reservation | None = None
    tokens: int = field(default=0)

    def count(self, chunk: GenerationChunk) -> None:
        self.tokens += chunk.token_count + (chunk.prompt_tokens or 0)


@dataclass(frozen=True)
class DeploymentUse:
    name: str
    max_parallel: int
    priority_slots: int
    max_queue: int
    reserved: int
    on_demand: int
    on_demand_running: int
    on_demand_waiting: int


@dataclass(frozen=True)
class ReservationUse:
    arn: str
    name: str
    model_id: str
    deployment: str
    units: int
    sequences: int
    running: int
    waiting: int
    tokens_per_minute: int
    tokens_used: int


def request_tokens(request: GenerationRequest) -> int:
    """What an engine request may use (:func:`llamarock.budget.estimate_tokens` of its prompt and max tokens)."""
    if request.prompt is not None:
        chars = len(request.prompt)
    else:
        chars = sum(len(m.content) for m in request.messages or ())
    return estimate_tokens(chars + len(request.assistant_prefix), request.sampling.max_tokens)


class Scheduler:
    """Slot pools of every deployment and provisioned model of a server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._deployments: dict[str, DeploymentSettings] = {d.name: d for d in settings.effective_deployments()}
        self._on_demand = {
            name: SlotPool(spec.max_parallel, spec.priority_slots, spec.max_queue, spec.flex_aging_s)
            for name, spec in self._deployments.items()
        }
        self._reservations: dict[str, Reservation] = {}

    def add_deployment(self, spec: DeploymentSettings) -> None:
        """Admit requests to a deployment made while the server runs (an imported model's copy) like any other."""
        if spec.name not in self._deployments:
            self._deployments[spec.name] = spec
            self._on_demand[spec.name] = SlotPool(spec.max_parallel, spec.priority_slots, spec.max_queue,
                                                  spec.flex_aging_s)

    def sequences_for(self, units: int) -> int:
        return units * self.settings.provisioned_sequences_per_unit

    def tokens_per_minute_for(self, units: int) -> int:
        return units * self.settings.provisioned_tpm_per_unit

    def max_parallel(self, deployment: str) -> int:
        spec = self._deployments.get(deployment)
        return spec.max_parallel if spec is not None else 0

    def reserved(self, deployment: str, excluding: str | None = None) -> int:
        """Sequences reserved on a deployment by provisioned models (but ``excluding``)."""
        return sum(
            r.sequences for r in self._reservations.values() if r.deployment == deployment and r.arn != excluding
        )

    def reserve(self, arn: str, name: str, model_id: str, deployment: str, units: int) -> None:
        """Set (or change) a provisioned model's reservation."""
        sequences, per_minute = self.sequences_for(units), self.tokens_per_minute_for(units)
        current = self._reservations.get(arn)
        if current is None:
            spec = self._deployments.get(deployment)
            max_queue = spec.max_queue if spec is not None else 0
            self._reservations[arn] = Reservation(
                arn, name, model_id, deployment, units, SlotPool(sequences, 0, max_queue), TokenBucket(per_minute)
            )
        else:
            moved_from = current.deployment
            current.name, current.model_id, current.deployment, current.units = name, model_id, deployment, units
            current.pool.resize(sequences)
            current.budget.resize(per_minute)
            self._resize(moved_from)
        self._resize(deployment)

    def unreserve(self, arn: str) -> None:
        """Give a deleted provisioned model's capacity back to on-demand traffic (its running requests finish)."""
        reservation = self._reservations.pop(arn, None)
        if reservation is not None:
            self._resize(reservation.deployment)

    def _resize(self, deployment: str) -> None:
        pool = self._on_demand.get(deployment)
        if pool is not None:
            pool.resize(max(0, self.max_parallel(deployment) - self.reserved(deployment)))

    @contextlib.asynccontextmanager
    async def admit(
        self, deployment: str, request: GenerationRequest, provisioned_arn: str | None = None
    ) -> AsyncIterator[Admission]:
        """Hold a slot (and for a provisioned model, its tokens) for one generation, or raise the AWS error."""
        spec = self._deployments.get(deployment)
        timeout_s = spec.queue_timeout_s if spec is not None else 120.0
        if provisioned_arn is not None:
            async with self._provisioned(provisioned_arn, request, timeout_s) as admission:
                yield admission
            return
        pool = self._on_demand.get(deployment)
        if pool is None:
            yield Admission(request)
            return

        def full() -> BedrockError:
            reserved = self.reserved(deployment)
            if pool.capacity == 0:
                return ThrottlingException(
                    f"{TOO_MANY_REQUESTS} All {self.max_parallel(deployment)} sequences of deployment {deployment} "
                    "are reserved by provisioned throughput; invoke through a provisioned model ARN."
                )
            held = f" ({reserved} more are reserved by provisioned throughput)" if reserved else ""
            return ThrottlingException(
                f"{TOO_MANY_REQUESTS} Deployment {deployment} runs {pool.capacity} on-demand requests at once{held} "
                f"and has a full request queue ({pool.max_queue} waiting)."
            )

        def late() -> BedrockError:
            return ModelTimeoutException(
                f"{TIMED_OUT} (The request waited more than {timeout_s:g} s for deployment {deployment}.)"
            )

        await pool.acquire(request.priority, timeout_s, full, late)
        try:
            # Flex waits behind standard traffic here, in the one admission layer; admitted, it is the engine's
            # standard work (the decode loop never holds it back again).
            yield Admission(dataclasses.replace(request, priority=0) if request.priority < 0 else request)
        finally:
            pool.release()

    @contextlib.asynccontextmanager
    async def _provisioned(self, arn: str, request: GenerationRequest, timeout_s: float) -> AsyncIterator[Admission]:
        reservation = self._reservations.get(arn)
        if reservation is None:
            raise ResourceNotFoundException(f"The provisioned model {arn} was not found; it may have been deleted.")
        estimate = request_tokens(request)
        if not reservation.budget.take(estimate):
            raise ThrottlingException(
                f"{TOO_MANY_TOKENS} Provisioned model {reservation.name} allows {reservation.budget.per_minute} "
                f"tokens per minute ({reservation.units} model units); this request may use {estimate}."
            )

        def full() -> BedrockError:
            return ThrottlingException(
                f"{TOO_MANY_REQUESTS} Provisioned model {reservation.name} runs {reservation.sequences} requests at "
                f"once ({reservation.units} model units) and has {reservation.pool.max_queue} waiting; provision "
                "more model units for more."
            )

        def late() -> BedrockError:
            return ModelTimeoutException(
                f"{TIMED_OUT} (The request waited more than {timeout_s:g} s for provisioned model "
                f"{reservation.name}.)"
            )

        admission = Admission(
            dataclasses.replace(request, priority=max(request.priority, PROVISIONED_PRIORITY)), reservation
        )
        try:
            await reservation.pool.acquire(admission.request.priority, timeout_s, full, late)
        except BaseException:
            reservation.budget.give_back(estimate)
            raise
        try:
            yield admission
        finally:
            reservation.pool.release()
            reservation.budget.give_back(estimate - admission.tokens)

    def deployments(self) -> list[DeploymentUse]:
        return [
            DeploymentUse(
                name, spec.max_parallel, spec.priority_slots, spec.max_queue, self.reserved(name),
                self._on_demand[name].capacity, self._on_demand[name].running, self._on_demand[name].waiting,
            )
            for name, spec in self._deployments.items()
        ]

    def reservations(self) -> list[ReservationUse]:
        return [
            ReservationUse(
                r.arn, r.name, r.model_id, r.deployment, r.units, r.sequences, r.pool.running, r.pool.waiting,
                r.budget.per_minute, r.budget.used(),
            )
            for r in self._reservations.values()
        ]
