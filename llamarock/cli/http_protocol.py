"""uvicorn's h11 protocol with a deadline for a request's line and headers (uvicorn has none of its own).

A client that opens a connection and sends its request line and headers slowly, or not at all (slowloris), is
disconnected ``header_timeout_s`` after the connection opened or its previous response ended. Bodies have their
own deadline, ``body_read_timeout_s``, enforced by the edge; idle keep-alive connections uvicorn's
``timeout_keep_alive`` (``idle_timeout_s``). This relies on uvicorn's H11Protocol internals (``cycle``,
``handle_events``, ``on_response_complete``), pinned by requirements/lock.txt; tests/adversarial covers it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol that drops connections whose request headers do not arrive within ``header_timeout_s``."""

    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._deadline is not None and self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the request's headers are in: the edge's body deadline takes over

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers get the same deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def protocol(header_timeout_s: float) -> type[Any]:
    """The protocol class for ``uvicorn.run(http=...)`` with this deadline."""
    return type("LlamarockH11Protocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})
