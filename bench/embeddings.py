"""Speed and memory of the embedded embedder (all-MiniLM-L6-v2 on onnxruntime), in process.

Texts of exactly 64, 128 and 256 tokens (special tokens included; varied English words, deterministic) are embedded
in calls of 1, 8 and 32 texts; each configuration runs for about ``--seconds`` after one warm-up call, and the best
of ``--trials`` is kept (the machine is shared: the best trial is the least disturbed). Reports texts/s and tokens/s,
the resident memory after loading and at the end (VmRSS) and its peak (VmHWM), the machine's load average (other
work on the same cores slows every figure), and, with ``--sweep``, batch 32 at 256 tokens for several
``max_batch_tokens`` (the bound on padded tokens per onnxruntime run). The built graph is cached
(docs/embeddings.md): run it twice to see the memory of a start that reads the cache.

Usage: .venv/bin/python bench/embeddings.py [--threads 2] [--seconds 3] [--trials 3] [--sweep] [--quantize int8|none]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path

from llamarock.engines.embedding import OnnxBertEmbedder, minilm_zip_path

WORDS = (
    "the retrieval of relevant documents depends on how well the embedding model captures meaning across topics such "
    "as biology medicine physics history law finance software engineering and cooking while short queries must match "
    "long passages that describe experiments results methods patients proteins genes cells outcomes markets prices "
    "contracts courts rivers mountains recipes ingredients compilers databases networks protocols and algorithms"
).split()


def _memory_mib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def texts_of(embedder: OnnxBertEmbedder, tokens: int, count: int, seed: int) -> list[str]:
    """``count`` texts of exactly ``tokens`` tokens (special tokens included)."""
    cutter = OnnxBertEmbedder(minilm_zip_path(), max_tokens=tokens)  # its tokenizer only: fit() cuts at ``tokens``
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(tokens * 2))
        text, _ = cutter.fit(words, keep="start")
        assert embedder.count_tokens(text) == tokens, (tokens, embedder.count_tokens(text))
        out.append(text)
    return out


async def run(embedder: OnnxBertEmbedder, tokens: int, batch: int, seconds: float, trials: int) -> dict[str, float]:
    pool = texts_of(embedder, tokens, max(batch, 32), seed=tokens)
    await embedder.embed(pool[:batch])  # warm-up (first run of this shape)
    best = 0.0
    for _ in range(trials):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await embedder.embed(pool[:batch])
            done += batch
        best = max(best, done / (time.perf_counter() - started))
    return {"texts_per_s": round(best, 1), "tokens_per_s": round(best * tokens)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also compare max_batch_tokens at batch 32 x 256")
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8", help="the embedder: int8 or fp32")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    before = _memory_mib()
    embedder = OnnxBertEmbedder(minilm_zip_path(), threads=args.threads, quantize=args.quantize)
    started = time.perf_counter()
    await embedder.load()
    load_s = time.perf_counter() - started
    loaded = _memory_mib()
    results = {}
    for tokens in (64, 128, 256):
        for batch in (1, 8, 32):
            results[f"{tokens} tokens x batch {batch}"] = await run(embedder, tokens, batch, args.seconds, args.trials)
    after = _memory_mib()
    sweep = {}
    if args.sweep:
        for budget in (1024, 2048, 4096, 8192):
            # fp32: int8 runs each text alone, so the budget does not apply to it
            swept = OnnxBertEmbedder(minilm_zip_path(), threads=args.threads, max_batch_tokens=budget, quantize="none")
            await swept.load()
            sweep[str(budget)] = await run(swept, 256, 32, args.seconds, args.trials)
            await swept.close()
    await embedder.close()
    print(json.dumps({
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "load_s": round(load_s, 2),
        "memory_mib": {"before_load": before, "after_load": loaded, "after_runs": after},
        "results": results,
        "max_batch_tokens_sweep_256x32": sweep,
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
