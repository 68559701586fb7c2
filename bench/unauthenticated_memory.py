"""Memory that clients without a valid credential can make `llamarock serve --auth enforce` hold: N connections
each declaring a 25 MB body and sending it, signed with an access key id the server does not know. Prints the
server's resident memory before and at its peak, as JSON. Run by hand; never a test.

Usage: .venv/bin/python bench/unauthenticated_memory.py [--connections 16] [--megabytes 25]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HEAD = (
    "POST /model/meta.llama3-1-8b-instruct-v1:0/invoke HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    "Authorization: AWS4-HMAC-SHA256 Credential=AKIANOSUCHKEY0000000/20250101/us-west-2/bedrock/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: 20250101T000000Z\r\nContent-Length: {length}\r\n\r\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--megabytes", type=int, default=25)
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--engine", "fake", "--auth", "enforce",
             "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            before = peak = _rss_mb(server.pid)
            head = HEAD.format(length=args.megabytes * 1_000_000).encode()

            def send() -> None:
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    try:
                        sock.sendall(head)
                        for _ in range(args.megabytes):
                            sock.sendall(b"x" * 1_000_000)
                    except OSError:
                        pass  # the server answered and closed before the body was sent: what it should do

            threads = [threading.Thread(target=send) for _ in range(args.connections)]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, _rss_mb(server.pid))
                time.sleep(0.05)
            peak = max(peak, _rss_mb(server.pid))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({"connections": args.connections, "declared_mb_each": args.megabytes,
                      "rss_before_mb": before, "rss_peak_mb": peak, "held_mb": round(peak - before, 1)}))


if __name__ == "__main__":
    main()
