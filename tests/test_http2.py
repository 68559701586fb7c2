"""HTTP/2 beside HTTP/1.1 on one port: h2c with prior knowledge (what the AWS SDK for JavaScript v3 does against an
``http://`` endpoint), ALPN ``h2`` over TLS; event streams flushed per token over both protocols; the connection
deadlines and the proxy-header rule hold for HTTP/2 connections too."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from tests.conftest import Server, closed_within, start_server, stop_server

SLOW = "meta.llama3-8b-instruct-v1:0"  # FAKE_CONFIG's fake-slow: 16 tokens, 200 ms apart
SLOW_TOKENS = 16
TOKEN_DELAY_S = 0.2
SMALL = "meta.llama3-1-8b-instruct-v1:0"


def _client(protocol: str, **kwargs: Any) -> httpx.Client:
    """An httpx client that speaks only ``protocol``: "HTTP/2" is h2c with prior knowledge on http:// URLs."""
    return httpx.Client(http1=protocol == "HTTP/1.1", http2=protocol == "HTTP/2", timeout=30, **kwargs)


def _arrivals(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[str, list[tuple[float, str, Any]]]:
    """POST a streaming request; each event-stream message as (arrival time, event type, decoded payload)."""
    events: list[tuple[float, str, Any]] = []
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        frames = EventStreamBuffer()
        for data in response.iter_raw():
            arrived = time.monotonic()
            frames.add_data(data)
            for message in frames:
                events.append((arrived, message.headers[":event-type"], json.loads(message.payload)))
        return response.http_version, events


def _assert_flushed_per_token(events: list[tuple[float, str, Any]], token_events: int) -> None:
    """Token events came one by one as generated, not buffered to the end: at least ``token_events`` of them, and
    the first arrived before the generation of the others was done (the fake engine sleeps 200 ms before each
    token, so the gap from the first to the last token event is at least 200 ms per token in between, whatever the
    machine's speed; a buffered stream would deliver them all together)."""
    times = [arrived for arrived, kind, _ in events if kind in ("chunk", "contentBlockDelta")]
    assert len(times) >= token_events
    assert times == sorted(times)
    assert times[-1] - times[0] >= 0.5 * TOKEN_DELAY_S * (len(times) - 1)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_invoke_model_stream_flushes_per_token(fake_server: Server, protocol: str) -> None:
    with _client(protocol) as client:
        version, events = _arrivals(client, f"{fake_server.url}/model/{SLOW}/invoke-with-response-stream",
                                    {"prompt": "count", "max_gen_len": 64})
    assert version == protocol
    chunks = [json.loads(base64.b64decode(payload["bytes"])) for _, kind, payload in events if kind == "chunk"]
    assert "".join(chunk["generation"] for chunk in chunks).split() == ["one", "two", "three", "four", "five", "six",
        "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
    assert chunks[-1]["stop_reason"] == "stop"
    _assert_flushed_per_token(events, SLOW_TOKENS)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_converse_stream_flushes_per_token(fake_server: Server, protocol: str) -> None:
    with _client(protocol) as client:
        version, events = _arrivals(client, f"{fake_server.url}/model/{SLOW}/converse-stream",
                                    {"messages": [{"role": "user", "content": [{"text": "count"}]}]})
    assert version == protocol
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert events[-1][2]["usage"]["outputTokens"] == SLOW_TOKENS
    _assert_flushed_per_token(events, SLOW_TOKENS)


def test_concurrent_streams_share_one_http2_connection(fake_server: Server) -> None:
    import concurrent.futures

    with _client("HTTP/2") as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        url = f"{fake_server.url}/model/{SMALL}/invoke"
        responses = list(pool.map(lambda n: client.post(url, json={"prompt": f"hi {n}"}), range(8)))
        assert {r.http_version for r in responses} == {"HTTP/2"}
        assert all(r.status_code == 200 and "generation" in r.json() for r in responses)
        assert len({r.headers["x-amzn-requestid"] for r in responses}) == 8
        error = client.post(f"{fake_server.url}/model/{SMALL}/invoke", content=b"{", headers={
            "content-type": "application/json"})
    assert error.status_code == 400 and error.headers["x-amzn-errortype"].startswith("ValidationException")


def test_h2c_upgrade_from_http11(fake_server: Server) -> None:
    host, port = fake_server.url.removeprefix("http://").split(":")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = connection.initiate_upgrade_connection()  # the HTTP2-Settings value, base64
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                     b"HTTP2-Settings: " + settings + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(connection.data_to_send())
        events = connection.receive_data(rest)
        while not any(isinstance(event, h2.events.StreamEnded) for event in events):
            chunk = sock.recv(65536)
            assert chunk, "closed before the upgraded response ended"
            events += connection.receive_data(chunk)
    response = next(event for event in events if isinstance(event, h2.events.ResponseReceived))
    body = b"".join(event.data for event in events if isinstance(event, h2.events.DataReceived))
    assert (response.stream_id, dict(response.headers)[b":status"]) == (1, b"200") and json.loads(body)


def test_a_stream_in_flight_outlives_the_clients_goaway(fake_server: Server) -> None:
    """The AWS SDK for JavaScript sends GOAWAY(NO_ERROR) once an event stream's response headers are in (it will
    open no more streams on that connection); the stream must still run to its end (RFC 9113 6.8)."""
    sock, connection = _h2_socket(fake_server)
    with sock:
        connection.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "a"),
                                    (":path", f"/model/{SLOW}/converse-stream"), ("content-type", "application/json")])
        connection.send_data(1, json.dumps({"messages": [{"role": "user", "content": [{"text": "count"}]}]}).encode(),
                             end_stream=True)
        sock.sendall(connection.data_to_send())
        sock.settimeout(30)
        frames, ended, went_away = EventStreamBuffer(), False, False
        kinds: list[str] = []
        while not ended:
            data = sock.recv(65536)
            assert data, f"connection closed after {kinds}"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and not went_away:
                    # GOAWAY(last_stream_id=0, NO_ERROR), as NodeHttp2Handler sends it (raw: h2 itself would stop
                    # reading the connection after sending one)
                    sock.sendall(connection.data_to_send() + bytes.fromhex("000008070000000000") + bytes(8))
                    went_away = True
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                    frames.add_data(event.data)
                    kinds += [message.headers[":event-type"] for message in frames]
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                elif isinstance(event, h2.events.StreamReset):
                    pytest.fail(f"stream reset after {kinds}")
            sock.sendall(connection.data_to_send())
    assert went_away and kinds.count("contentBlockDelta") == SLOW_TOKENS and kinds[-1] == "metadata"


# ------------------------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    server = start_server(tmp_path_factory.mktemp("tls"), "--engine", "fake", tls=True)
    assert server.cert is not None
    yield server.url, server.cert
    stop_server(server)


def test_tls_negotiates_h2_or_http11_by_alpn(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.selected_alpn_protocol() == "h2"
    for protocol in ("HTTP/2", "HTTP/1.1"):
        with _client(protocol, verify=ssl.create_default_context(cafile=str(cert))) as client:
            version, events = _arrivals(client, f"{url}/model/{SMALL}/converse-stream",
                                        {"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
        assert version == protocol
        assert events[-1][1] == "metadata"


# ---------------------------------------------------------------------------------------- deadlines and proxies


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("strict-h2"), "--engine", "fake", "--header-timeout-s", "1",
                          "--idle-timeout-s", "1", "--body-read-timeout-s", "1")
    yield server
    stop_server(server)


def _h2_socket(server: Server) -> tuple[socket.socket, h2.connection.H2Connection]:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    return sock, connection


def test_http2_connections_that_never_send_a_request_head_are_dropped(strict: Server) -> None:
    silent, _ = _h2_socket(strict)  # the preface and SETTINGS, then nothing
    slow, connection = _h2_socket(strict)
    # A HEADERS frame without END_HEADERS: the head is never complete (the CONTINUATION never comes).
    block = connection.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/model/x/invoke"),
                                       (":authority", "a")])
    slow.sendall(len(block).to_bytes(3, "big") + b"\x01\x00" + (1).to_bytes(4, "big") + block)
    started = time.monotonic()
    try:
        assert closed_within(silent, 5) and closed_within(slow, 5)
        assert time.monotonic() - started < 5
    finally:
        silent.close()
        slow.close()


def test_an_idle_http2_connection_is_dropped_after_its_requests(strict: Server) -> None:
    with _client("HTTP/2") as client:
        assert client.get(f"{strict.url}/healthz").http_version == "HTTP/2"
        sock, connection = _h2_socket(strict)
        with sock:
            connection.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/healthz"),
                                        (":authority", "a")], end_stream=True)
            sock.sendall(connection.data_to_send())
            sock.settimeout(5)
            events: list[h2.events.Event] = []
            while data := sock.recv(65536):  # answered, then told GOAWAY and closed once idle past idle_timeout_s
                events += connection.receive_data(data)
    assert any(isinstance(event, h2.events.StreamEnded) for event in events)
    goaway = events[-1]
    assert isinstance(goaway, h2.events.ConnectionTerminated)
    assert (goaway.error_code, goaway.last_stream_id) == (h2.errors.ErrorCodes.NO_ERROR, 1)


def test_an_http2_body_that_stalls_gets_a_request_timeout(strict: Server) -> None:
    sock, connection = _h2_socket(strict)
    with sock:
        connection.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", f"/model/{SMALL}/invoke"),
                                    (":authority", "a"), ("content-type", "application/json")])
        connection.send_data(1, b'{"prompt": "')  # ... and nothing more
        sock.sendall(connection.data_to_send())
        status = None
        while status is None:
            data = sock.recv(65536)
            assert data, "closed without an answer"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                    errortype = dict(event.headers)[b"x-amzn-errortype"]
    assert status == b"408" and errortype.startswith(b"RequestTimeoutException")


def _source_ips(data: Path) -> list[str]:
    lines = (data / "logs" / "audit.jsonl").read_text().splitlines()
    return [record["sourceIp"] for record in map(json.loads, lines) if record.get("operation") == "InvokeModel"]


def test_proxy_headers_only_from_forwarded_allow_ips(tmp_path: Path) -> None:
    forged = {"x-forwarded-for": "10.1.2.3", "x-forwarded-proto": "https"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    untrusting = start_server(tmp_path / "a", "--engine", "fake", "--forwarded-allow-ips", "192.0.2.1")
    trusting = start_server(tmp_path / "b", "--engine", "fake", "--forwarded-allow-ips", "127.0.0.1")
    try:
        for server in (untrusting, trusting):
            for protocol in ("HTTP/1.1", "HTTP/2"):
                with _client(protocol) as client:
                    response = client.post(f"{server.url}/model/{SMALL}/invoke", json={"prompt": "hi"},
                                           headers=forged)
                assert (response.status_code, response.http_version) == (200, protocol)
    finally:
        stop_server(untrusting)
        stop_server(trusting)
    assert _source_ips(tmp_path / "a" / "data") == ["127.0.0.1", "127.0.0.1"]
    assert _source_ips(tmp_path / "b" / "data") == ["10.1.2.3", "10.1.2.3"]
