"""The scheduler on its own: slot pools, priorities, queue bounds and deadlines, reservations and token budgets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from llamarock.budget import TokenBucket
from llamarock.errors import BedrockError, ModelTimeoutException, ThrottlingException
from llamarock.scheduler import PROVISIONED_PRIORITY, TIER_PRIORITY, Admission, Scheduler, SlotPool, request_tokens
from llamarock.settings import load_settings
from llamarock.types import GenerationRequest, SamplingParams

ARN = "arn:aws:bedrock:us-west-2:000000000000:provisioned-model/abcdefghijkl"


def _request(priority: int = 0, max_tokens: int = 10, prompt: str = "12345678") -> GenerationRequest:
    return GenerationRequest(sampling=SamplingParams(max_tokens=max_tokens), prompt=prompt, priority=priority)


def _full() -> BedrockError:
    return ThrottlingException("full")


def _late() -> BedrockError:
    return ModelTimeoutException("late")


def _scheduler(**deployment: object) -> Scheduler:
    spec = {"name": "d", "engine": "fake", "max_parallel": 2, "max_queue": 1, "queue_timeout_s": 5.0,
            "priority_slots": 0, **deployment}
    return Scheduler(load_settings(deployments=[spec], provisioned_sequences_per_unit=1, provisioned_tpm_per_unit=100))


@contextlib.asynccontextmanager
async def _holding(scheduler: Scheduler, request: GenerationRequest, arn: str | None = None) -> AsyncIterator[None]:
    """Admit a request in the background and keep it running until the block ends."""
    admitted = asyncio.Event()
    done = asyncio.Event()

    async def run() -> None:
        async with scheduler.admit("d", request, arn):
            admitted.set()
            await done.wait()

    task = asyncio.ensure_future(run())
    await asyncio.wait_for(admitted.wait(), 1)
    try:
        yield
    finally:
        done.set()
        await task


async def _waiters_get_free_slots_by_priority_then_arrival() -> None:
    pool = SlotPool(capacity=1, extra=0, max_queue=5)
    await pool.acquire(0, 5, _full, _late)
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await pool.acquire(priority, 5, _full, _late)
        order.append(name)
        pool.release()

    tasks = [asyncio.ensure_future(wait(n, p)) for n, p in (("a", 0), ("b", 1), ("c", 0), ("d", 1))]
    await asyncio.sleep(0)
    assert pool.waiting == 4
    pool.release()
    await asyncio.gather(*tasks)
    assert order == ["b", "d", "a", "c"]
    assert pool.running == 0


async def _each_priority_class_has_its_own_bounded_queue_and_priority_slots() -> None:
    pool = SlotPool(capacity=1, extra=1, max_queue=1)
    await pool.acquire(0, 5, _full, _late)
    standard = asyncio.ensure_future(pool.acquire(0, 5, _full, _late))
    await asyncio.sleep(0)
    with pytest.raises(ThrottlingException):
        await pool.acquire(0, 5, _full, _late)
    # A prioritised request takes the priority slot at once, although standard requests wait.
    await asyncio.wait_for(pool.acquire(1, 5, _full, _late), 1)
    assert pool.running == 2 and pool.waiting == 1
    pool.release()
    pool.release()
    await asyncio.wait_for(standard, 1)
    assert pool.running == 1


async def _a_wait_longer_than_the_deadline_is_a_timeout_and_frees_its_place() -> None:
    pool = SlotPool(capacity=1, extra=0, max_queue=1)
    await pool.acquire(0, 5, _full, _late)
    with pytest.raises(ModelTimeoutException):
        await pool.acquire(0, 0.05, _full, _late)
    assert pool.waiting == 0
    cancelled = asyncio.ensure_future(pool.acquire(0, 5, _full, _late))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert pool.waiting == 0 and pool.running == 1


async def _a_reservation_takes_capacity_from_on_demand_traffic() -> None:
    scheduler = _scheduler()
    scheduler.reserve(ARN, "pt", "meta.llama3-1-8b-instruct-v1:0", "d", 1)
    assert [(d.reserved, d.on_demand) for d in scheduler.deployments()] == [(1, 1)]
    async with _holding(scheduler, _request()):
        # The one on-demand sequence is busy: the next request waits (a queue of 1), the one after is throttled...
        waiting = asyncio.ensure_future(_admit_once(scheduler, _request()))
        await asyncio.sleep(0.01)
        assert scheduler.deployments()[0].on_demand_waiting == 1
        with pytest.raises(ThrottlingException, match="1 more are reserved by provisioned throughput"):
            await _admit_once(scheduler, _request())
        # ...while the provisioned model's request starts at once, and goes ahead in the engine's queue.
        async with scheduler.admit("d", _request(), ARN) as admission:
            assert admission.request.priority == PROVISIONED_PRIORITY
            assert scheduler.reservations()[0].running == 1
    await asyncio.wait_for(waiting, 1)
    scheduler.unreserve(ARN)
    assert [(d.reserved, d.on_demand, d.on_demand_running) for d in scheduler.deployments()] == [(0, 2, 0)]


async def _admit_once(scheduler: Scheduler, request: GenerationRequest, arn: str | None = None) -> None:
    async with scheduler.admit("d", request, arn):
        pass


async def _all_capacity_reserved_throttles_on_demand_at_once() -> None:
    scheduler = _scheduler()
    scheduler.reserve(ARN, "pt", "meta.llama3-1-8b-instruct-v1:0", "d", 2)
    with pytest.raises(ThrottlingException, match="invoke through a provisioned model ARN"):
        async with scheduler.admit("d", _request()):
            pass


async def _provisioned_tokens_per_minute_are_enforced_and_settled_with_real_use() -> None:
    scheduler = _scheduler()
    scheduler.reserve(ARN, "pt", "meta.llama3-1-8b-instruct-v1:0", "d", 1)
    request = _request(max_tokens=40)
    assert request_tokens(request) == 42
    async with scheduler.admit("d", request, ARN) as admission:
        assert isinstance(admission, Admission)
        admission.tokens = 12
    assert 12 <= scheduler.reservations()[0].tokens_used <= 13
    async with scheduler.admit("d", request, ARN) as admission:
        admission.tokens = 80
    with pytest.raises(ThrottlingException, match="allows 100 tokens per minute"):
        async with scheduler.admit("d", request, ARN):
            pass
    assert scheduler.reservations()[0].running == 0


def test_token_budget_refills_continuously() -> None:
    now = [0.0]
    budget = TokenBucket(60, clock=lambda: now[0])
    assert budget.take(60) and not budget.take(1)
    now[0] = 10.0
    assert budget.used() == 50
    assert budget.take(10) and not budget.take(1)
    # A request bigger than a minute's allowance waits for a full bucket instead of never passing.
    now[0] = 100.0
    assert budget.take(500) and budget.used() == 500


def test_waiters_get_free_slots_by_priority_then_arrival() -> None:
    asyncio.run(_waiters_get_free_slots_by_priority_then_arrival())


def test_each_priority_class_has_its_own_bounded_queue_and_priority_slots() -> None:
    asyncio.run(_each_priority_class_has_its_own_bounded_queue_and_priority_slots())


def test_a_wait_longer_than_the_deadline_is_a_timeout_and_frees_its_place() -> None:
    asyncio.run(_a_wait_longer_than_the_deadline_is_a_timeout_and_frees_its_place())


def test_a_reservation_takes_capacity_from_on_demand_traffic() -> None:
    asyncio.run(_a_reservation_takes_capacity_from_on_demand_traffic())


def test_all_capacity_reserved_throttles_on_demand_at_once() -> None:
    asyncio.run(_all_capacity_reserved_throttles_on_demand_at_once())


def test_provisioned_tokens_per_minute_are_enforced_and_settled_with_real_use() -> None:
    asyncio.run(_provisioned_tokens_per_minute_are_enforced_and_settled_with_real_use())


# ------------------------------------------------------------------------------------------------- service tiers
FLEX, DEFAULT, PRIORITY = TIER_PRIORITY["flex"], TIER_PRIORITY["default"], TIER_PRIORITY["priority"]


async def _grant_order(pool: SlotPool, arrivals: list[tuple[str, int]]) -> list[str]:
    """The order in which ``arrivals`` (name, priority), queued in that order behind one held slot, are served."""
    await pool.acquire(DEFAULT, 5, _full, _late)
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await pool.acquire(priority, 5, _full, _late)
        order.append(name)
        pool.release()

    tasks = []
    for name, priority in arrivals:
        tasks.append(asyncio.ensure_future(wait(name, priority)))
        await asyncio.sleep(0)
    assert pool.waiting == len(arrivals)
    pool.release()
    await asyncio.gather(*tasks)
    assert pool.running == 0
    return order


def test_tiers_are_served_priority_then_default_then_flex() -> None:
    assert TIER_PRIORITY["reserved"] == PRIORITY > DEFAULT > FLEX
    pool = SlotPool(capacity=1, extra=0, max_queue=5, aging_s=3600)
    arrivals = [("flex1", FLEX), ("default1", DEFAULT), ("priority1", PRIORITY), ("flex2", FLEX), ("default2", DEFAULT)]
    order = asyncio.run(_grant_order(pool, arrivals))
    assert order == ["priority1", "default1", "default2", "flex1", "flex2"]


def test_flex_that_waited_its_aging_time_competes_with_default_in_arrival_order() -> None:
    # aging_s=0: every waiting flex request has aged, so it is served before the default ones that came after it;
    # priority traffic stays ahead.
    pool = SlotPool(capacity=1, extra=0, max_queue=5, aging_s=0)
    arrivals = [("default1", DEFAULT), ("flex1", FLEX), ("default2", DEFAULT), ("priority1", PRIORITY)]
    assert asyncio.run(_grant_order(pool, arrivals)) == ["priority1", "default1", "flex1", "default2"]


async def _flex_has_its_own_queue_and_runs_as_standard_work_once_admitted() -> None:
    scheduler = _scheduler(max_parallel=1, max_queue=1)
    async with _holding(scheduler, _request()):
        standard = asyncio.ensure_future(_admit_once(scheduler, _request(DEFAULT)))
        flex = asyncio.ensure_future(_admit_once(scheduler, _request(FLEX)))
        await asyncio.sleep(0.01)
        # One standard and one flex request wait: each class has its own queue of max_queue (1)...
        assert scheduler.deployments()[0].on_demand_waiting == 2
        with pytest.raises(ThrottlingException):
            await _admit_once(scheduler, _request(FLEX))
        with pytest.raises(ThrottlingException):
            await _admit_once(scheduler, _request(DEFAULT))
    await asyncio.wait_for(asyncio.gather(standard, flex), 1)
    # ...and an admitted flex request reaches the engine as standard work, never held back there again.
    async with scheduler.admit("d", _request(FLEX)) as admission:
        assert admission.request.priority == DEFAULT


def test_flex_has_its_own_queue_and_runs_as_standard_work_once_admitted() -> None:
    asyncio.run(_flex_has_its_own_queue_and_runs_as_standard_work_once_admitted())


def test_free_slots_serve_flex_at_once() -> None:
    async def run() -> int:
        pool = SlotPool(capacity=2, extra=1, max_queue=0, aging_s=3600)
        await asyncio.wait_for(pool.acquire(FLEX, 5, _full, _late), 1)
        await asyncio.wait_for(pool.acquire(FLEX, 5, _full, _late), 1)
        # The priority slot is not flex's: with a queue of 0, a third flex request is throttled.
        with pytest.raises(ThrottlingException):
            await pool.acquire(FLEX, 5, _full, _late)
        return pool.running

    assert asyncio.run(run()) == 2
