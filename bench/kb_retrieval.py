"""Retrieval quality of the knowledge-base store on BEIR sets: nDCG@10, dense / BM25 / HYBRID.

Any folder in BEIR's layout works (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``). Chunking is off, as
in BEIR: one chunk per document, ``title + " " + text``. The store is the real ``SqliteVectorStore`` (sqlite-vec
exact cosine, FTS5 BM25 with the porter tokenizer) and the embedder the real embedded all-MiniLM-L6-v2.

- dense: ``search_type="SEMANTIC"``; BM25: ``"LEXICAL"``; hybrid: ``"HYBRID"`` with the store's fusion.
- ``--tune``: picks the fusion (method, weight or RRF constant, depth) on the **train** split only (never test),
  from each query's dense and lexical rankings, fused offline by the store's own ``fuse``; prints the choice and
  then evaluates it on the evaluation split.
- nDCG@10 as trec_eval's ``ndcg_cut_10`` (linear gains from the graded qrels, log2 discount, ideal from the qrels),
  averaged over the split's queries that have qrels.

Corpus and query embeddings are cached under ``--cache`` (default ``~/.cache/llamarock/bench``), keyed by the
corpus file's hash and the model, so reruns take seconds.

Usage: python bench/kb_retrieval.py [BEIR_FOLDER ...] [--split test] [--tune] [--cache DIR]
       (folders default to the subfolders of $LLAMAROCK_BEIR_ROOT that hold a corpus.jsonl)
Prints a table and one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamarock.engines.embedding import QUANTIZE_MODES, Quantize, embedded_default
from llamarock.knowledge.sqlite_store import SqliteVectorStore
from llamarock.knowledge.store import Fusion, StoredChunk, VectorStore, dense_score, fuse


@dataclass
class BeirSet:
    name: str
    corpus: dict[str, str]  # doc id -> title + " " + text
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> query id -> doc id -> grade
    digest: str


def load_beir(folder: Path) -> BeirSet:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/*.tsv (CRLF or LF, header line)."""
    corpus: dict[str, str] = {}
    sha = hashlib.sha256()
    with (folder / "corpus.jsonl").open("rb") as fh:
        for line in fh:
            sha.update(line)
            if line.strip():
                doc = json.loads(line)
                corpus[str(doc["_id"])] = (doc.get("title") or "").strip() + " " + (doc.get("text") or "").strip()
    queries = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for path in sorted((folder / "qrels").glob("*.tsv")):
        split: dict[str, dict[str, int]] = {}
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            next(reader, None)
            for row in reader:
                if len(row) >= 3 and row[0]:
                    grade = int(float(row[2]))
                    if grade > 0:
                        split.setdefault(row[0], {})[row[1]] = grade
        qrels[path.stem] = split
    return BeirSet(folder.name, corpus, queries, qrels, sha.hexdigest()[:16])


def ndcg_at(ranked: Sequence[str], grades: dict[str, int], k: int = 10) -> float:
    """trec_eval's ndcg_cut_k: sum (2^0-free) linear gain / log2(rank + 1), over the ideal ordering of the qrels."""
    dcg = sum(grades.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _embed_all(texts: Sequence[str], cache: Path, label: str, quantize: Quantize) -> np.ndarray:
    if cache.exists():
        return np.load(cache)
    embedder = embedded_default(threads=max(1, (os.cpu_count() or 1)), quantize=quantize)
    out: list[list[float]] = []
    started = time.perf_counter()

    async def run() -> None:
        for start in range(0, len(texts), 256):
            result = await embedder.embed(list(texts[start : start + 256]))
            out.extend(result.vectors)
            rate = len(out) / (time.perf_counter() - started)
            print(f"  embedding {label}: {len(out)}/{len(texts)} ({rate:.0f}/s)", file=sys.stderr, flush=True)
        await embedder.close()

    asyncio.run(run())
    array = np.asarray(out, dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, array)
    return array


def _index(beir: BeirSet, store: VectorStore, vectors: np.ndarray) -> None:
    for i, (doc_id, text) in enumerate(beir.corpus.items()):
        store.upsert(beir.name, doc_id, [StoredChunk(doc_id, text, vectors[i].tolist())])


def _rankings(
    store: VectorStore, kb: str, text: str, vector: list[float], depth: int
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The store's own dense and lexical candidate lists (row id, raw score) as HYBRID fuses them."""
    dense = [(rid, dense_score(d)) for rid, d in store._dense(kb, vector, depth, None)]
    lexical = store._lexical(kb, text, depth, None)
    return dense, lexical


def candidates() -> list[Fusion]:
    grid = [Fusion("rrf", rrf_k=c, depth=d) for c in (5, 10, 20, 40, 60, 100) for d in (50, 100, 200)]
    grid += [Fusion("convex", alpha=a / 20, depth=d) for a in range(1, 20) for d in (50, 100, 200)]
    return grid


def tune(
    sets: list[tuple[BeirSet, VectorStore, dict[str, list[float]]]], split: str = "train", limit: int = 800
) -> tuple[Fusion, dict[str, Any]]:
    """The fusion with the best mean (over sets) train nDCG@10; each set's train queries capped at ``limit``."""
    per_set: list[list[tuple[dict[str, int], list[tuple[int, float]], list[tuple[int, float]], dict[int, str]]]] = []
    for beir, store, qvecs in sets:
        qrels = beir.qrels.get(split)
        if not qrels:
            raise SystemExit(f"{beir.name} has no qrels/{split}.tsv to tune on")
        chosen = sorted(qrels)[:limit]
        rows = []
        for qid in chosen:
            dense, lexical = _rankings(store, beir.name, beir.queries[qid], qvecs[qid], 200)
            ids = {rid for rid, _ in dense} | {rid for rid, _ in lexical}
            names = {rid: row.document_id for rid, row in store._rows(beir.name, list(ids)).items()}
            rows.append((qrels[qid], dense, lexical, names))
        per_set.append(rows)
    table = []
    for fusion in candidates():
        means = []
        for rows in per_set:
            scores = []
            for grades, dense, lexical, names in rows:
                fused = fuse(dense[: fusion.depth], lexical[: fusion.depth], fusion)
                scores.append(ndcg_at([names[rid] for rid, _ in fused[:10]], grades))
            means.append(statistics.fmean(scores))
        table.append((statistics.fmean(means), means, fusion))
    table.sort(key=lambda t: -t[0])
    best = table[0][2]
    top = [{"fusion": f.__dict__, "train_ndcg10": [round(100 * m, 2) for m in ms]} for _, ms, f in table[:5]]
    rrf = next((ms, f) for _, ms, f in table if f.method == "rrf")
    best_rrf = {"fusion": rrf[1].__dict__, "train_ndcg10": [round(100 * m, 2) for m in rrf[0]]}
    return best, {"split": split, "queries_per_set": limit, "top5": top, "best_rrf": best_rrf}


def evaluate(
    beir: BeirSet, store: VectorStore, qvecs: dict[str, list[float]], split: str, fusion: Fusion
) -> dict[str, Any]:
    store.fusion = fusion
    qrels = beir.qrels[split]
    result: dict[str, Any] = {}
    for mode, search_type in (("dense", "SEMANTIC"), ("bm25", "LEXICAL"), ("hybrid", "HYBRID")):
        scores, latencies = [], []
        for qid, grades in qrels.items():
            started = time.perf_counter()
            hits = store.search(beir.name, beir.queries[qid], qvecs[qid], 10, search_type)
            latencies.append(time.perf_counter() - started)
            scores.append(ndcg_at([h.document_id for h in hits], grades))
        result[mode] = {
            "ndcg10": round(100 * statistics.fmean(scores), 2),
            "queries": len(scores),
            "search_ms_p50": round(1000 * statistics.median(latencies), 2),
        }
    return result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kb-retrieval-"))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tune", action="store_true", help="choose the fusion on the train split first")
    parser.add_argument("--tune-queries", type=int, default=800)
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="postgres: PgVectorStore on a pgserver started here (pip install pgserver)",
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llamarock" / "bench")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="int8",
                        help="the embedder's weights: int8 (the default) or none (fp32)")
    args = parser.parse_args()
    folders: list[Path] = args.folders
    if not folders:
        root = os.environ.get("LLAMAROCK_BEIR_ROOT")
        if not root:
            parser.error("name BEIR folders, or set LLAMAROCK_BEIR_ROOT to a folder of BEIR folders")
        folders = sorted(p for p in Path(root).iterdir() if (p / "corpus.jsonl").exists())
    pg_server: Any = None
    if args.store == "postgres":
        import warnings

        import pgserver


        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pg_server = pgserver.get_server(work / "pg", cleanup_mode="stop")
    try:
        _run_sets(args, folders, work, pg_server)
    finally:
        if pg_server is not None:
            pg_server.cleanup()


def _run_sets(args: argparse.Namespace, folders: list[Path], work: Path, pg_server: Any) -> None:
    if pg_server is not None:
        from llamarock.knowledge.pg_store import PgVectorStore
    loaded = []
    for folder in folders:
        beir = load_beir(folder)
        model = "all-MiniLM-L6-v2" + ("" if args.quantize == "none" else f"-{args.quantize}")
        doc_vecs = _embed_all(
            list(beir.corpus.values()),
            args.cache / f"{beir.name}-{beir.digest}-{model}-docs.npy",
            f"{beir.name} corpus",
            args.quantize,
        )
        qids = sorted(beir.queries)
        qarr = _embed_all(
            [beir.queries[q] for q in qids],
            args.cache / f"{beir.name}-{beir.digest}-{model}-queries.npy",
            f"{beir.name} queries",
            args.quantize,
        )
        qvecs = {q: qarr[i].tolist() for i, q in enumerate(qids)}
        store: VectorStore = (
            SqliteVectorStore(work / f"{beir.name}.sqlite") if pg_server is None else PgVectorStore(pg_server.get_uri())
        )
        store.drop(beir.name)
        started = time.perf_counter()
        _index(beir, store, doc_vecs)
        print(f"{beir.name}: indexed {len(beir.corpus)} docs in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        loaded.append((beir, store, qvecs))
    fusion = Fusion()
    report: dict[str, Any] = {"store": type(loaded[0][1]).__name__,
                              "embedder": f"all-MiniLM-L6-v2 (onnxruntime, quantize={args.quantize})"}
    if args.tune:
        fusion, report["tuning"] = tune(loaded, limit=args.tune_queries)
    report["fusion"] = fusion.__dict__
    print(f"fusion: {fusion}", file=sys.stderr)
    report["results"] = {}
    print(f"{'set':10} {'dense':>7} {'bm25':>7} {'hybrid':>7}   (nDCG@10 x100, {args.split})")
    for beir, store, qvecs in loaded:
        res = evaluate(beir, store, qvecs, args.split, fusion)
        report["results"][beir.name] = res
        print(
            f"{beir.name:10} {res['dense']['ndcg10']:7.2f} {res['bm25']['ndcg10']:7.2f} {res['hybrid']['ndcg10']:7.2f}"
        )
        store.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
