"""Real llama-server replicas for the remote-engine tests and bench/router.py: llama.cpp's server from the PyPI wheel
``xllamacpp`` (its embedded HTTP server), serving the embedded SmolLM2 GGUF, one child process each on a free loopback
port. Run as a script, this file is the child: ``python tests/llama_replicas.py PORT SLOTS CONTEXT THREADS
[CACHE_RAM_MIB]`` (the host-memory prompt cache; -1 leaves llama-server's default)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LlamaReplica:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    slots: int
    context: int
    threads: int
    cache_ram_mib: int = -1

    def kill(self) -> None:
        """SIGKILL: the replica dies at once, mid-stream, as a crashed node would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """Start it again on the same port (after :meth:`kill`)."""
        self.kill()
        self.log_path.unlink(missing_ok=True)
        fresh = _spawn(self.port, self.slots, self.context, self.threads, self.cache_ram_mib)
        self.process, self.log_path = fresh.process, fresh.log_path
        wait_healthy(self)

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def metrics(self) -> dict[str, float]:
        """The replica's own Prometheus counters (``/metrics``), by name."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(port: int, slots: int, context: int, threads: int, cache_ram_mib: int = -1) -> LlamaReplica:
    log = tempfile.NamedTemporaryFile(prefix=f"llama-server-{port}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), str(slots), str(context), str(threads), str(cache_ram_mib)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return LlamaReplica(f"http://127.0.0.1:{port}", port, process, Path(log.name), slots, context, threads,
                        cache_ram_mib)


def wait_healthy(replica: LlamaReplica, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {replica.process.returncode}:\n"
                               f"{replica.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(replica.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    replica.kill()
    raise RuntimeError(f"llama-server did not become healthy:\n{replica.log_path.read_text()[-3000:]}")


def start_replicas(count: int, *, slots: int = 4, context: int = 4096, threads: int = 1,
                   cache_ram_mib: int = -1) -> list[LlamaReplica]:
    """``count`` healthy llama-server replicas (``slots`` parallel sequences sharing ``context`` tokens)."""
    replicas = [_spawn(free_port(), slots, context, threads, cache_ram_mib) for _ in range(count)]
    try:
        for replica in replicas:
            wait_healthy(replica)
    except Exception:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: list[LlamaReplica]) -> None:
    """Stop them (SIGKILL: a replica keeps nothing worth a graceful stop, and its server ignores SIGTERM)."""
    for replica in replicas:
        replica.kill()
        replica.log_path.unlink(missing_ok=True)


def _serve(port: int, slots: int, context: int, threads: int, cache_ram_mib: int = -1) -> None:
    import xllamacpp

    from llamarock.services.deployments import embedded_model_path

    params = xllamacpp.CommonParams()
    params.model.path = str(embedded_model_path())
    params.n_parallel = slots
    params.n_ctx = context
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.endpoint_metrics = True
    if cache_ram_mib >= 0:
        params.cache_ram_mib = cache_ram_mib
    server = xllamacpp.Server(params)
    print(json.dumps({"listening": server.listening_address}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    _serve(*(int(arg) for arg in sys.argv[1:6]))
