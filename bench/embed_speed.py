"""Speed and fidelity of the embedded embedder (all-MiniLM-L6-v2 on onnxruntime), fp32 against int8.

For each ``quantize`` mode and thread count, through ``OnnxBertEmbedder.embed`` (tokenizing included):

- ``one_query_ms``: one short text (a SciFact claim, about 20 tokens), as InvokeModel with a Titan body sends it;
- ``topic_segments_ms``: the five segments of ``bench/guardrails.py``'s 1,000-character text in one call, what a
  denied-topic check embeds (the guardrail's topics themselves are embedded once per version);
- ``chunks_per_s``: SciFact abstracts cut to the model's 256-token window (the size of a default ingestion chunk), 32
  per call, as an ingestion job sends them;
- ``cosine_to_fp32``: of each mode's vectors for 64 SciFact abstracts and 64 claims (min and mean).

Each figure is measured ``--repeats`` times and printed as best and median: on a machine shared with other work
only the best is near the machine's own speed. Wall time; ``cpu`` adds the process's CPU time per call (best), which
other work on the machine inflates much less: with one thread it is the compute itself.

Usage: python bench/embed_speed.py [--repeats 5] [--threads 1 2] [--modes none int8] [--corpus PATH]
Prints a table and one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from guardrails import thousand_chars

from llamarock.engines.embedding import QUANTIZE_MODES, OnnxBertEmbedder, minilm_zip_path
from llamarock.guardrails.text import segments

BEIR_ROOT = os.environ.get("LLAMAROCK_BEIR_ROOT")  # a folder holding BEIR data sets (scifact/ among them)
DEFAULT_CORPUS = Path(BEIR_ROOT) / "scifact" if BEIR_ROOT else None


def _load(folder: Path) -> tuple[list[str], list[str]]:
    with open(folder / "corpus.jsonl") as f:
        docs = [json.loads(line) for line in f]
    with open(folder / "queries.jsonl") as f:
        queries = [json.loads(line)["text"] for line in f]
    return [f"{d['title']} {d['text']}" for d in docs], queries


async def _timed(fn: Callable[[], Awaitable[Any]], repeats: int) -> tuple[float, float, float]:
    """Best and median wall time, and the best CPU time, of ``repeats`` calls."""
    await fn()  # warm
    times, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        await fn()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return min(times), statistics.median(times), min(cpu)


async def measure(mode: str, threads: int, docs: list[str], queries: list[str], repeats: int) -> dict[str, Any]:
    embedder = OnnxBertEmbedder(minilm_zip_path(), threads=threads, quantize=mode)  # type: ignore[arg-type]
    started = time.perf_counter()
    await embedder.load()
    load_s = time.perf_counter() - started
    long_docs = [d for d in docs if embedder.count_tokens(d) >= 256][:32]
    topic_text = segments(thousand_chars(random.Random(3)))
    query = queries[0]
    one = await _timed(lambda: embedder.embed([query]), repeats * 4)
    topic = await _timed(lambda: embedder.embed(topic_text), repeats * 2)
    chunks = await _timed(lambda: embedder.embed(long_docs), max(1, repeats // 2))
    vectors = np.array((await embedder.embed(docs[:64] + queries[:64])).vectors)
    await embedder.close()
    return {
        "quantize": mode, "threads": threads, "load_s": round(load_s, 2),
        "one_query_ms": {"best": round(one[0] * 1000, 2), "median": round(one[1] * 1000, 2),
                         "cpu": round(one[2] * 1000, 2),
                         "tokens": embedder.count_tokens(query)},
        "topic_segments_ms": {"best": round(topic[0] * 1000, 1), "median": round(topic[1] * 1000, 1),
                              "cpu": round(topic[2] * 1000, 1),
                              "segments": len(topic_text),
                              "tokens": sum(embedder.count_tokens(t) for t in topic_text)},
        "chunks_per_s": {"best": round(len(long_docs) / chunks[0], 1), "median": round(len(long_docs) / chunks[1], 1),
                         "per_cpu_s": round(len(long_docs) / chunks[2], 1),
                         "tokens_per_chunk": 256},
        "_vectors": vectors,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--modes", nargs="+", choices=QUANTIZE_MODES, default=["none", "int8"])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="a BEIR folder (corpus and queries), e.g. SciFact; default $LLAMAROCK_BEIR_ROOT/scifact")
    args = parser.parse_args()
    if args.corpus is None:
        parser.error("give --corpus (a BEIR folder such as SciFact) or set LLAMAROCK_BEIR_ROOT")
    docs, queries = _load(args.corpus)
    rows = [await measure(mode, threads, docs, queries, args.repeats) for threads in args.threads
            for mode in args.modes]
    reference = next((r["_vectors"] for r in rows if r["quantize"] == "none"), None)
    for row in rows:
        vectors = row.pop("_vectors")
        if reference is not None:
            cos = (vectors * reference).sum(axis=1)
            row["cosine_to_fp32"] = {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 4)}
    print(f"{'quantize':8} {'threads':>7} {'1 query ms':>16} {'5 segments ms':>16} {'chunks/s':>14} {'cos fp32':>14}"
          f" {'cpu: 1 query, 5 segments ms, chunks/cpu-s':>44}")
    for r in rows:
        cos = r.get("cosine_to_fp32", {})
        one = r["one_query_ms"]
        print(f"{r['quantize']:8} {r['threads']:7} {one['best']:7.1f} /{one['median']:7.1f} "
              f"{r['topic_segments_ms']['best']:7.1f} /{r['topic_segments_ms']['median']:7.1f} "
              f"{r['chunks_per_s']['best']:6.1f} /{r['chunks_per_s']['median']:6.1f} "
              f"{cos.get('min', float('nan')):6.4f}/{cos.get('mean', float('nan')):6.4f}"
              f" {one['cpu']:14.1f} {r['topic_segments_ms']['cpu']:14.1f} {r['chunks_per_s']['per_cpu_s']:14.1f}")
    print("(best / median of the repeats, wall time; then the best CPU time)")
    print(json.dumps({"load_average": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
