"""The ``local`` batch executor (the default): a job's records run in the server process, on its own deployments,
``batch_concurrency`` at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from llamarock.services.batch_records import BatchJobSpec, BatchRecord, RecordOutcome, run_record
from llamarock.services.invocation import InvocationService


class LocalExecutor:
    """Runs records through the server's own :class:`InvocationService`, ``concurrency`` at once."""

    def __init__(self, invocations: InvocationService, concurrency: int) -> None:
        self.invocations = invocations
        self.concurrency = concurrency

    async def run(self, spec: BatchJobSpec, records: Sequence[BatchRecord],
                  emit: Callable[[RecordOutcome], Awaitable[None]], stop: asyncio.Event) -> None:
        pending = iter(records)

        async def worker() -> None:
            # Each worker takes the next record only while the job is not stopped: a stop takes effect within the
            # record each worker is running.
            for record in pending:
                if stop.is_set():
                    return
                outcome = await run_record(self.invocations, spec, record)
                await emit(outcome)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(self.concurrency, len(records))))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        return None
