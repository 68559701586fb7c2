"""Knowledge-base ingestion speed, Retrieve latency and memory, on the embedded store and embedder.

1. Ingestion, end to end: ``--docs`` documents of a BEIR corpus written out as .txt, .md and .html files (a third
   each), each parsed, chunked (Bedrock's default: 300 tokens, 20% overlap), embedded (all-MiniLM-L6-v2 on
   onnxruntime) and upserted into a ``SqliteVectorStore`` by ``knowledge.pipeline.prepare`` - what an ingestion
   job runs per file. Reports chunks/s and the share of the time spent embedding.
2. The store is then filled to ``--chunks`` chunks (10,000) with real texts and their real vectors: the corpus'
   documents and queries, embedded once and cached by bench/kb_retrieval.py (or embedded here if not cached).
3. Retrieve latency at that size: for ``--queries`` queries, embedding the query plus a HYBRID search with
   numberOfResults 5 (Bedrock's default), as Retrieve does; also the search alone, SEMANTIC and HYBRID, and HYBRID
   with a metadata filter. p50 and p95.
4. Memory: the process' resident set (VmRSS) and its peak (VmHWM) with the embedder loaded and the store at that
   size, after the bench's own copies of the vectors are freed.

Usage: python bench/kb_ingest.py [BEIR_FOLDER] [--docs 300] [--chunks 10000] [--queries 300] [--threads 2]
       [--quantize int8|none]
       (the folder defaults to $LLAMAROCK_BEIR_ROOT/scifact)
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import html
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_retrieval import _embed_all, load_beir

from llamarock.engines.embedding import embedded_default
from llamarock.knowledge.pipeline import DocumentSource, prepare
from llamarock.knowledge.sqlite_store import SqliteVectorStore
from llamarock.knowledge.store import StoredChunk

KB = "bench"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def _file(i: int, title: str, body: str) -> tuple[str, bytes]:
    kind = ("txt", "md", "html")[i % 3]
    if kind == "txt":
        return f"doc{i}.txt", f"{title}\n\n{body}\n".encode()
    if kind == "md":
        return f"doc{i}.md", f"# {title}\n\n{body}\n".encode()
    page = f"<html><head><title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
    return f"doc{i}.html", (page + f"<p>{html.escape(body)}</p></body></html>").encode()


def _pct(values: list[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder: Path = args.folder
    beir = load_beir(folder)
    titles: dict[str, str] = {}
    bodies: dict[str, str] = {}
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            titles[doc["_id"]], bodies[doc["_id"]] = doc.get("title", ""), doc.get("text", "")
    work = Path(tempfile.mkdtemp(prefix="kb-ingest-"))
    store = SqliteVectorStore(work / "kb.sqlite")
    embedder = embedded_default(threads=args.threads, quantize=args.quantize)
    await embedder.load()
    report: dict[str, Any] = {"corpus": beir.name, "threads": args.threads, "cpus": os.cpu_count(),
                              "quantize": args.quantize}

    # 1. ingestion end to end
    ids = list(beir.corpus)[: args.docs]
    files = [_file(i, titles[d], bodies[d]) for i, d in enumerate(ids)]
    embed_time = 0.0
    original = embedder.embed

    async def timed_embed(texts: Any, *, normalize: bool = True) -> Any:
        nonlocal embed_time
        started = time.perf_counter()
        try:
            return await original(texts, normalize=normalize)
        finally:
            embed_time += time.perf_counter() - started

    embedder.embed = timed_embed  # type: ignore[method-assign]
    started = time.perf_counter()
    chunks = 0
    for (name, data), doc_id in zip(files, ids, strict=True):
        source = DocumentSource(doc_id, name, data, f"s3://bench/{name}", "DS1", {"year": 2000 + len(name) % 20})
        prepared = await prepare(source, None, embedder)
        await asyncio.to_thread(store.upsert, KB, doc_id, prepared.chunks)
        chunks += len(prepared.chunks)
    elapsed = time.perf_counter() - started
    embedder.embed = original  # type: ignore[method-assign]
    report["ingest"] = {
        "documents": len(files),
        "chunks": chunks,
        "seconds": round(elapsed, 2),
        "chunks_per_s": round(chunks / elapsed, 1),
        "embedding_share": round(embed_time / elapsed, 3),
        "chunks_per_s_without_embedding": round(chunks / max(elapsed - embed_time, 1e-9), 1),
        "load_average": os.getloadavg()[0],
    }
    print(f"ingest: {report['ingest']}", file=sys.stderr)

    # 2. fill to --chunks with real texts and cached vectors
    model = "all-MiniLM-L6-v2"
    doc_vecs = _embed_all(
        list(beir.corpus.values()), args.cache / f"{beir.name}-{beir.digest}-{model}-docs.npy", "docs"
    )
    qids = sorted(beir.queries)
    q_vecs = _embed_all(
        [beir.queries[q] for q in qids], args.cache / f"{beir.name}-{beir.digest}-{model}-queries.npy", "queries"
    )
    texts = list(beir.corpus.values()) + [beir.queries[q] for q in qids]
    vectors = np.concatenate([doc_vecs, q_vecs])
    need = args.chunks - store.count(KB)
    if need > len(texts):
        texts = texts * (need // len(texts) + 1)
        vectors = np.concatenate([vectors] * (need // len(vectors) + 1))
    started = time.perf_counter()
    batch: list[StoredChunk] = []
    for i in range(need):
        store.upsert(KB, f"fill{i}", [StoredChunk(f"fill{i}", texts[i], vectors[i].tolist(), {"year": 2000 + i % 20})])
    del batch, vectors, doc_vecs, texts
    report["fill"] = {"chunks": store.count(KB), "seconds": round(time.perf_counter() - started, 1)}
    print(f"fill: {report['fill']}", file=sys.stderr)

    # 3. Retrieve latency
    queries = [beir.queries[q] for q in sorted(beir.qrels.get("test", beir.queries))][: args.queries]
    for q in queries[:5]:  # warm the reader connection and caches
        store.search(KB, q, q_vecs[0].tolist(), 5, "HYBRID")
    retrieve, semantic, hybrid, filtered = [], [], [], []
    flt = {
        "andAll": [
            {"greaterThanOrEquals": {"key": "year", "value": 2005}},
            {"lessThan": {"key": "year", "value": 2010}},
        ]
    }
    for q in queries:
        t0 = time.perf_counter()
        vec = (await embedder.embed([q])).vectors[0]
        t1 = time.perf_counter()
        await asyncio.to_thread(store.search, KB, q, vec, 5, "HYBRID")
        t2 = time.perf_counter()
        retrieve.append(t2 - t0)
        hybrid.append(t2 - t1)
        t3 = time.perf_counter()
        store.search(KB, q, vec, 5, "SEMANTIC")
        t4 = time.perf_counter()
        store.search(KB, q, vec, 5, "HYBRID", flt)
        t5 = time.perf_counter()
        semantic.append(t4 - t3)
        filtered.append(t5 - t4)
    report["retrieve_ms"] = {
        "chunks": store.count(KB),
        "queries": len(queries),
        "embed+hybrid p50": _pct(retrieve, 50),
        "embed+hybrid p95": _pct(retrieve, 95),
        "hybrid search p50": _pct(hybrid, 50),
        "hybrid search p95": _pct(hybrid, 95),
        "semantic search p50": _pct(semantic, 50),
        "semantic search p95": _pct(semantic, 95),
        "hybrid+filter p50": _pct(filtered, 50),
        "hybrid+filter p95": _pct(filtered, 95),
        "mean": round(1000 * statistics.fmean(retrieve), 2),
    }
    del q_vecs
    gc.collect()
    report["load_average_end"] = os.getloadavg()[0]
    report["memory_mb"] = {
        "rss": _status("VmRSS"),
        "peak_rss": _status("VmHWM"),
        "store_file": round(sum(p.stat().st_size for p in work.iterdir()) / 2**20, 1),
    }
    await embedder.close()
    store.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8", help="the embedder: int8 or fp32")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llamarock" / "bench")
    args = parser.parse_args()
    if args.folder is None:
        root = os.environ.get("LLAMAROCK_BEIR_ROOT")
        if not root:
            parser.error("name a BEIR folder, or set LLAMAROCK_BEIR_ROOT to a folder holding scifact/")
        args.folder = Path(root) / "scifact"
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
