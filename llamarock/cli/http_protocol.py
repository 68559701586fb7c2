"""The socket layer: hypercorn serves HTTP/1.1 and HTTP/2 on one port, with llamarock's connection deadlines.

On a cleartext port a connection may speak HTTP/1.1, HTTP/2 with prior knowledge (h2c: the connection opens with
the HTTP/2 preface, as the AWS SDK for JavaScript v3 does against an ``http://`` endpoint) or upgrade to h2c; with
``--tls-cert/--tls-key`` the protocol is chosen by ALPN (``h2`` or ``http/1.1``). docs/architecture.md ("The socket
layer: why hypercorn") says why hypercorn rather than uvicorn (HTTP/1.1 only) or granian, with measurements, and
docs/security.md lists the limits.

Deadlines, the same as under uvicorn before:

- ``header_timeout_s``: a connection waiting for a request's head (from connect, from the end of its previous
  response; on HTTP/2, while no stream is open) is closed once this long has passed without a complete request
  head. hypercorn's own keep-alive timer covers exactly that span (it starts when the connection opens or becomes
  idle and stops when a request's headers are in), so it is the timer this deadline uses.
- ``idle_timeout_s``: such a connection that has sent no byte at all meanwhile is closed sooner, after this long
  (an HTTP/2 one after a GOAWAY naming the last stream it served).
- h2c with prior knowledge: hypercorn parses the preface as an HTTP/1.1 request, which stops its timer, and then
  hands the connection to HTTP/2 with no stream open; the deadline is restarted there (else a connection that sent
  only the preface was never closed).
- TLS handshakes get ``header_timeout_s`` too. Bodies have their own deadline, ``body_read_timeout_s``, enforced by
  the edge.

The two deadlines replace ``TCPServer._idle_timeout`` and note the time of each read in ``TCPServer._read_data``;
``GracefulH2Protocol`` keeps streams in flight when a client says GOAWAY. These are hypercorn internals, pinned by
requirements/lock.txt and covered by tests/adversarial/test_slow_clients.py, tests/test_http2.py and
tests/test_js_sdk.py.

Proxy headers (X-Forwarded-For/-Proto) are applied by uvicorn's ``ProxyHeadersMiddleware`` (a plain ASGI
middleware, independent of uvicorn's server), only for connections from ``forwarded_allow_ips``.
"""

from __future__ import annotations

import asyncio
import logging
from ssl import SSLError
from typing import Any

import h2.events
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from hypercorn import protocol as hypercorn_protocol
from hypercorn.asyncio import run as hypercorn_run
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from llamarock.settings import Settings


class GracefulH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 connection, where a client's GOAWAY(NO_ERROR) ends new streams, not those in flight.

    RFC 9113 6.8: after a GOAWAY the sender opens no new stream, and streams in progress may still complete. The
    AWS SDK for JavaScript sends one on every event stream (NodeHttp2Handler calls ``session.close()`` once the
    response headers are in), but the h2 library closes the whole connection on any GOAWAY it receives
    (python-hyper/h2 issue 1181) and hypercorn then drops it: every stream stopped after its first frame. Here the
    connection stays open while streams are in flight; the client closes it when they are done (or the idle
    deadline does).
    """

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        graceful = [event for event in events if isinstance(event, h2.events.ConnectionTerminated)
                    and event.error_code == ErrorCodes.NO_ERROR]
        if graceful and self.streams:
            self.connection.state_machine.state = ConnectionState.SERVER_OPEN
            events = [event for event in events if event not in graceful]
        await super()._handle_events(events)


class DeadlineTCPServer(TCPServer):
    """hypercorn's connection, closed ``idle_timeout_s`` after it went idle if silent, ``header_timeout_s`` if not."""

    idle_timeout_s = 5.0
    header_timeout_s = 10.0
    _last_read = float("-inf")

    async def _read_data(self) -> None:  # hypercorn's loop, plus the time of each read and the h2c switch
        while not self.reader.at_eof():
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV), self.config.read_timeout)
            except (ConnectionError, OSError, TimeoutError, SSLError):
                break
            else:
                self._last_read = self.loop.time()
                was_h11 = isinstance(self.protocol.protocol, H11Protocol)
                await self.protocol.handle(RawData(data))
                if was_h11 and isinstance(self.protocol.protocol, H2Protocol) and self.protocol.protocol.idle:
                    # h2c with prior knowledge: hypercorn read the preface as an HTTP/1.1 request, which stopped
                    # the deadline, and the HTTP/2 connection that took over has no stream yet: restart it.
                    await self.idle_task.restart(self._task_group, self._idle_timeout)
        await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        """Runs while the connection waits for a request's head; cancelled by hypercorn once the head is in."""
        went_idle = self.loop.time()
        first = min(self.idle_timeout_s, self.header_timeout_s)
        if not await self._terminated_within(first) and self._last_read >= went_idle:
            await self._terminated_within(self.header_timeout_s - first)  # it is sending: the header deadline
        inner = self.protocol.protocol
        if isinstance(inner, H2Protocol) and not inner.closed:
            # GOAWAY first, naming the last stream served: a request the client sent meanwhile is known unprocessed
            inner.connection.close_connection()
            await self.protocol_send(RawData(inner.connection.data_to_send()))
        await asyncio.shield(self._initiate_server_close())

    async def _terminated_within(self, seconds: float) -> bool:
        """Whether the server is shutting down within ``seconds`` (idle connections are closed at once then)."""
        try:
            await asyncio.wait_for(self.context.terminated.wait(), max(seconds, 0.0))
        except TimeoutError:
            return False
        return True


def config(settings: Settings) -> Config:
    """hypercorn's configuration for these settings (the deadlines live in ``tcp_server``)."""
    result = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    result.bind = [f"{host}:{settings.port}"]
    if settings.tls_cert is not None and settings.tls_key is not None:
        result.certfile, result.keyfile = str(settings.tls_cert), str(settings.tls_key)
    result.alpn_protocols = ["h2", "http/1.1"]
    result.keep_alive_timeout = settings.header_timeout_s
    result.ssl_handshake_timeout = settings.header_timeout_s
    result.accesslog = None  # the gate writes the access and audit lines
    result.errorlog = logging.getLogger("hypercorn.error")  # through llamarock's logging configuration
    result.loglevel = settings.log_level.upper()
    result.include_server_header = False
    result.graceful_timeout = 30  # on SIGTERM, requests in flight get this long to finish
    result.startup_timeout = 3600  # deployments load their weights at startup; a large one can take a while
    return result


def tcp_server(settings: Settings) -> type[TCPServer]:
    """The connection class with these deadlines."""
    return type("LlamarockTCPServer", (DeadlineTCPServer,), {
        "idle_timeout_s": float(settings.idle_timeout_s), "header_timeout_s": settings.header_timeout_s,
    })


def with_proxy_headers(app: Any, settings: Settings) -> Any:
    """``app`` trusting X-Forwarded-For/-Proto from ``forwarded_allow_ips`` only; nobody's when it is empty."""
    if not settings.forwarded_allow_ips:
        return app
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    return ProxyHeadersMiddleware(app, trusted_hosts=list(settings.forwarded_allow_ips))


def serve(app: Any, settings: Settings) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (then requests in flight get ``graceful_timeout`` to finish)."""
    vars(hypercorn_run)["TCPServer"] = tcp_server(settings)  # worker_serve builds each connection from this name
    vars(hypercorn_protocol)["H2Protocol"] = GracefulH2Protocol  # and ProtocolWrapper each HTTP/2 protocol
    asyncio.run(hypercorn_serve(with_proxy_headers(app, settings), config(settings)))
