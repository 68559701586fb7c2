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
            # A stop ends each worker at once: the record it was running is abandoned (not emitted, so it is not
            # processed), and no other starts.
            for record in pending:
                if stop.is_set():
                    return
                running = asyncio.ensure_future(run_record(self.invocations, spec, record))
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if not running.done():
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                    return
                await emit(running.result())

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
