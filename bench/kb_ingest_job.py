"""Knowledge-base ingestion end to end, as a user runs it: S3 upload, StartIngestionJob, poll until COMPLETE.

Starts `llamarock serve` (the fake engine for text generation, which ingestion does not use; the embedded
all-MiniLM-L6-v2 and the embedded SQLite store), uploads --docs documents of a BEIR corpus through the S3 endpoint
(.txt, .md and .html, a third each), creates a knowledge base and an S3 data source with the default chunking, and
times one ingestion job from StartIngestionJob to COMPLETE: listing, reading, parsing, chunking, embedding (documents
of a group embedded in one batch, as the server does) and storing. The chunk count is read from the store afterwards.
With --embedder-only, it also times the embedder alone on the same chunk texts, to show its share.

Usage: .venv/bin/python bench/kb_ingest_job.py [BEIR_FOLDER] [--docs 300] [--quantize int8|none]
       (the folder defaults to $LLAMAROCK_BEIR_ROOT/scifact)
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from conftest import DUMMY_CREDENTIALS, start_server, stop_server  # noqa: E402
from kb_ingest import _file  # noqa: E402  (the same files as bench/kb_ingest.py)

REGION = "us-west-2"
EMBEDDING = f"arn:aws:bedrock:{REGION}::foundation-model/amazon.titan-embed-text-v2:0"


def _client(service: str, url: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=url, aws_access_key_id=DUMMY_CREDENTIALS[
        "AWS_ACCESS_KEY_ID"], aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, read_timeout=300))


def run(args: argparse.Namespace) -> dict[str, Any]:
    docs = []
    with (args.folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            docs.append((doc.get("title", ""), doc.get("text", "")))
            if len(docs) == args.docs:
                break
    tmp = Path(tempfile.mkdtemp(prefix="kb-ingest-job-"))
    # The default embedding deployment, with the embedder's weights as --quantize says.
    config = f'[[embedding_deployments]]\nname = "minilm-l6-embedded"\nmodels = ["*"]\nquantize = "{args.quantize}"\n'
    server = start_server(tmp, "--engine", "fake", config=config)
    try:
        s3, agent = _client("s3", server.url), _client("bedrock-agent", server.url)
        s3.create_bucket(Bucket="bench-docs", CreateBucketConfiguration={"LocationConstraint": REGION})
        for i, (title, body) in enumerate(docs):
            name, data = _file(i, title, body)
            s3.put_object(Bucket="bench-docs", Key=f"corpus/{name}", Body=data)
        kb = agent.create_knowledge_base(
            name="bench", roleArn="arn:aws:iam::000000000000:role/kb",
            knowledgeBaseConfiguration={"type": "VECTOR",
                                        "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": EMBEDDING}},
        )["knowledgeBase"]["knowledgeBaseId"]
        while agent.get_knowledge_base(knowledgeBaseId=kb)["knowledgeBase"]["status"] != "ACTIVE":
            time.sleep(0.1)
        ds = agent.create_data_source(knowledgeBaseId=kb, name="corpus", dataSourceConfiguration={
            "type": "S3", "s3Configuration": {"bucketArn": "arn:aws:s3:::bench-docs"}})["dataSource"]["dataSourceId"]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        job = agent.start_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds)["ingestionJob"]["ingestionJobId"]
        while True:
            got = agent.get_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds, ingestionJobId=job)["ingestionJob"]
            if got["status"] in ("COMPLETE", "FAILED", "STOPPED"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        with sqlite3.connect(tmp / "data" / "knowledge" / "vectors.db") as db:
            tables = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
            table = next(t for t in tables if t[0] == "c" and t[1:].isdigit())  # the knowledge base's chunk table
            texts = [row[0] for row in db.execute(f"select text from {table}")]
        report: dict[str, Any] = {
            "quantize": args.quantize, "documents": len(docs), "status": got["status"], "statistics": got["statistics"],
            "chunks": len(texts), "seconds": round(elapsed, 2), "chunks_per_s": round(len(texts) / elapsed, 1),
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "cpus": os.cpu_count(),
        }
    finally:
        stop_server(server)
    if args.embedder_only:
        from llamarock.engines.embedding import embedded_default

        async def embed_all() -> float:
            embedder = embedded_default(threads=os.cpu_count() or 1, quantize=args.quantize)
            await embedder.load()
            begun = time.perf_counter()
            for at in range(0, len(texts), 64):
                await embedder.embed(texts[at:at + 64])
            took = time.perf_counter() - begun
            await embedder.close()
            return took

        took = asyncio.run(embed_all())
        report["embedder_only"] = {"seconds": round(took, 2), "chunks_per_s": round(len(texts) / took, 1),
                                   "share_of_job": round(took / report["seconds"], 3)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--embedder-only", action="store_true")
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8", help="the embedder: int8 or fp32")
    args = parser.parse_args()
    if args.folder is None:
        root = os.environ.get("LLAMAROCK_BEIR_ROOT")
        if not root:
            parser.error("name a BEIR folder, or set LLAMAROCK_BEIR_ROOT to a folder holding scifact/")
        args.folder = Path(root) / "scifact"
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
