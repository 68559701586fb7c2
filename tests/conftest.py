"""Shared fixtures: live `llamarock serve` processes on free loopback ports, and boto3 clients for them.

``server`` runs the real embedded SmolLM2 model; ``fake_server`` runs the scripted fake engine with a few
deployments that misbehave on purpose (see FAKE_CONFIG).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDLLAMAROCKTEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}

FAKE_CONFIG = """
[[deployments]]
name = "fake-failing"
engine = "fake"
models = ["meta.llama2-70b-v1"]
fake_fail_after = 3

[[deployments]]
name = "fake-slow"
engine = "fake"
models = ["meta.llama3-8b-instruct-v1:0"]
fake_reply = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
fake_token_delay_ms = 200

[[deployments]]
name = "fake-small-context"
engine = "fake"
models = ["meta.llama2-13b-chat-v1"]
context_length = 64

[[deployments]]
name = "fake-echo"
engine = "fake"
models = ["meta.llama3-3-70b-instruct-v1:0"]
fake_reply = "{prompt}"

[[deployments]]
name = "fake-default"
engine = "fake"
models = ["*"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def client(self, service: str = "bedrock-runtime", region: str = "us-west-2", **config: object) -> Any:
        """A boto3 client of ``service`` (bedrock-runtime, bedrock...) for this server, signed for ``region``."""
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=300, **config),
        )


def start_server(tmp: Path, *args: str, config: str | None = None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", str(tmp / "data")]
    if config is not None:
        (tmp / "config.toml").write_text(config)
        command += ["--config", str(tmp / "config.toml")]
    command += list(args)
    log_path = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            status, _ = server.health()
            if status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`llamarock serve` on the embedded SmolLM2 model, every catalog id."""
    srv = start_server(tmp_path_factory.mktemp("real"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`llamarock serve` on scripted fake deployments (see FAKE_CONFIG)."""
    srv = start_server(tmp_path_factory.mktemp("fake"), config=FAKE_CONFIG)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def runtime(server: Server) -> object:
    """boto3 bedrock-runtime client for the real-model server."""
    return server.client()


@pytest.fixture(scope="session")
def fake_runtime(fake_server: Server) -> object:
    """boto3 bedrock-runtime client for the fake-engine server."""
    return fake_server.client()
