"""Shared fixtures: live `llamarock serve` processes on free loopback ports, and boto3 clients for them.

``server`` runs the real embedded SmolLM2 model; ``fake_server`` runs the scripted fake engine with a few
deployments that misbehave on purpose (see FAKE_CONFIG).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def closed_within(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes the connection within ``within_s`` (reading what it sends meanwhile)."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    cert: Path | None = None  # the self-signed certificate of a server started with ``tls=True``

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.cert)) if self.cert is not None else None

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5, context=self.ssl_context()) as response:
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


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``tmp``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


def start_server(tmp: Path, *args: str, config: str | None = None, tls: bool = False) -> Server:
    """`llamarock serve` on a free loopback port, healthy; with ``tls``, over HTTPS with a self-signed certificate
    (``Server.cert``, ``Server.ssl_context()``)."""
    port = free_port()
    command = [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir", str(tmp / "data")]
    if config is not None:
        (tmp / "config.toml").write_text(config)
        command += ["--config", str(tmp / "config.toml")]
    cert = None
    if tls:
        cert, key = self_signed(tmp)
        command += ["--tls-cert", str(cert), "--tls-key", str(key)]
    command += list(args)
    log_path = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}", process, log_path, cert)
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
