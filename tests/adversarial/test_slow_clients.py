"""Slow and greedy clients, with the limits set from settings: headers that never finish (slowloris), bodies that
stall, idle connections, and more declared body bytes at once than the server will hold."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, closed_within, start_server, stop_server

SMALL = "meta.llama3-1-8b-instruct-v1:0"


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("slow"), "--engine", "fake", "--header-timeout-s", "1",
                          "--body-read-timeout-s", "1", "--idle-timeout-s", "1",
                          "--pending-body-limit-bytes", "25000000")
    yield server
    stop_server(server)


def _address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _invoke(server: Server) -> float:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/model/{SMALL}/invoke", content=json.dumps({"prompt": "hi"}), timeout=10)
    assert response.status_code == 200
    return time.monotonic() - started


def test_headers_that_never_finish_are_dropped(strict: Server) -> None:
    connections = []
    for _ in range(50):
        sock = socket.create_connection(_address(strict), timeout=5)
        sock.sendall(b"POST /model/x/invoke HTTP/1.1\r\nHost: a\r\nX-Slow: ")  # ... and never the rest
        connections.append(sock)
    try:
        assert _invoke(strict) < 5  # the server keeps serving meanwhile
        started = time.monotonic()
        assert all(closed_within(sock, 5) for sock in connections)
        assert time.monotonic() - started < 5
    finally:
        for sock in connections:
            sock.close()


def test_a_silent_connection_and_an_idle_keep_alive_are_dropped(strict: Server) -> None:
    with socket.create_connection(_address(strict), timeout=5) as silent:
        assert closed_within(silent, 5)
    with socket.create_connection(_address(strict), timeout=5) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert closed_within(idle, 5)  # answered, then closed once idle past idle_timeout_s


def test_a_body_that_stalls_gets_a_request_timeout(strict: Server) -> None:
    with socket.create_connection(_address(strict), timeout=10) as sock:
        sock.sendall(f"POST /model/{SMALL}/invoke HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{\"prompt\": \"".encode())  # ... and nothing more
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 408") and "RequestTimeoutException" in answer


def test_declared_bodies_beyond_the_budget_are_refused_at_once(strict: Server) -> None:
    with socket.create_connection(_address(strict), timeout=10) as first:
        head = (f"POST /model/{SMALL}/invoke HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                "Content-Length: 20000000\r\n\r\n")
        first.sendall(head.encode() + b'{"prompt": "')  # holds 20 MB of the 25 MB budget while it trickles
        time.sleep(0.2)
        response = httpx.post(f"{strict.url}/model/{SMALL}/invoke", content=b"x" * 10_000_000, timeout=10,
                              headers={"content-type": "application/json"})
        assert response.status_code == 503
        assert response.headers["x-amzn-errortype"].startswith("ServiceUnavailableException")
        assert "pending_body_limit_bytes" in response.json()["message"]
    time.sleep(1.5)  # the first one timed out and gave its share back
    assert _invoke(strict) < 5
