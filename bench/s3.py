"""S3 endpoint throughput on loopback: boto3's upload_file / download_file of one large file (multipart, 8 MiB
parts), over HTTP (payload SHA-256 signed, as boto3 does there) and HTTPS (aws-chunked with a CRC32 trailer), and
PutObject / GetObject / HeadObject latency of small objects; plus the server's peak resident memory (VmHWM), which
stays flat because PutObject and UploadPart bodies are streamed to disk.

Usage: .venv/bin/python bench/s3.py [--size-mb 256] [--small 300]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import DUMMY_CREDENTIALS, Server, start_server, stop_server


def _client(server: Server) -> Any:
    return boto3.client("s3", region_name="us-west-2", endpoint_url=server.url,
                        verify=str(server.cert) if server.cert else None,
                        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(retries={"mode": "standard", "max_attempts": 1}))


def _hwm(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _run(server: Server, work: Path, size_mb: int, small: int) -> dict[str, Any]:
    s3 = _client(server)
    s3.create_bucket(Bucket="bench")
    big, back = work / "big.bin", work / "back.bin"
    config = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4)
    started = time.perf_counter()
    s3.upload_file(str(big), "bench", "big.bin", Config=config)
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    s3.download_file("bench", "big.bin", str(back), Config=config)
    download_s = time.perf_counter() - started
    assert back.stat().st_size == big.stat().st_size
    body = os.urandom(4096)
    puts, gets, heads = [], [], []
    for index in range(small):
        for bucket, call in ((puts, lambda k: s3.put_object(Bucket="bench", Key=k, Body=body)),
                             (gets, lambda k: s3.get_object(Bucket="bench", Key=k)["Body"].read()),
                             (heads, lambda k: s3.head_object(Bucket="bench", Key=k))):
            started = time.perf_counter()
            call(f"small/{index:05d}")
            bucket.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    listed = sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket="bench", Prefix="small/"))
    list_ms = (time.perf_counter() - started) * 1000
    return {
        "upload_MBps": round(size_mb / upload_s, 1), "download_MBps": round(size_mb / download_s, 1),
        "put_4k_p50_ms": round(statistics.median(puts), 2), "get_4k_p50_ms": round(statistics.median(gets), 2),
        "head_p50_ms": round(statistics.median(heads), 2), f"list_{listed}_keys_ms": round(list_ms, 1),
        "server_peak_rss_MB": _hwm(server),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--small", type=int, default=300)
    args = parser.parse_args()
    results: dict[str, Any] = {"size_mb": args.size_mb, "small_objects": args.small}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (work / "big.bin").open("wb") as file:
            for _ in range(args.size_mb):
                file.write(os.urandom(1024**2))
        for name, tls in (("http", False), ("https", True)):
            (work / name).mkdir()
            server = start_server(work / name, "--engine", "fake", tls=tls)
            try:
                results[name] = _run(server, work, args.size_mb, args.small)
            finally:
                stop_server(server)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
