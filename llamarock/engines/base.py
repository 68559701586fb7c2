"""The Engine seam."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable

from llamarock.errors import EngineError
from llamarock.types import EngineInfo, GenerationChunk, GenerationRequest


class Engine(ABC):
    """Runs one loaded model.

    Lifecycle: construct (cheap), ``await load()`` (reads weights; may take a while), then any number of concurrent
    ``generate`` calls, then ``await close()``. ``generate`` is an async generator of chunks; closing it early (the
    client went away) must stop the work it started and free what it holds. It raises
    :class:`llamarock.errors.ContextOverflowError` before the first chunk when the prompt does not fit, and
    :class:`llamarock.errors.EngineError` for any other failure. Nothing here may block the event loop.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready = False
        self._active = 0
        self._generated_tokens = 0

    @property
    def ready(self) -> bool:
        """True once ``load`` has finished."""
        return self._ready

    def stats(self) -> dict[str, int]:
        """Live counters: ``active`` generations (running or waiting) and ``generated_tokens`` since start."""
        return {"active": self._active, "generated_tokens": self._generated_tokens}

    @property
    @abstractmethod
    def info(self) -> EngineInfo:
        """Facts about the served model; valid once loaded."""

    @abstractmethod
    async def load(self) -> None:
        """Load the weights. Must leave ``ready`` True on success."""

    @abstractmethod
    async def count_tokens(self, request: GenerationRequest) -> int:
        """How many prompt tokens ``generate`` would run for this request."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Generate; the first chunk carries ``prompt_tokens``, the last one ``stop_reason``."""

    @abstractmethod
    async def close(self) -> None:
        """Release the model; no generation may run afterwards."""



class ChunkRelay:
    """Hands the chunks of one generation from the thread that produces them (a decode loop, a generate() worker) to
    the event loop. :attr:`emit` is thread-safe; :meth:`chunks` yields them until the one that ends the generation,
    turns a failure into :class:`EngineError`, and calls ``cancel`` when its caller leaves before the end. Made on the
    event loop's thread."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

        def emit(item: GenerationChunk | BaseException) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

        self.emit = emit

    async def chunks(self, engine: str, cancel: Callable[[], None]) -> AsyncGenerator[GenerationChunk, None]:
        ended = False
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    ended = True
                    if isinstance(item, EngineError):
                        raise item
                    raise EngineError(f"{engine} failed while generating: {item}") from item
                ended = item.stop_reason is not None
                yield item
                if ended:
                    return
        finally:
            if not ended:  # the caller left early
                cancel()
