"""How good Rerank's local reranker is (bedrock/rag.py's ``rerank_scores``), on BEIR sets: nDCG@10 on the test split.

Candidates are the top ``--depth`` documents by dense similarity (the embedded all-MiniLM-L6-v2; corpus and query
vectors come from bench/kb_retrieval.py's cache, or are computed and cached the same way). Printed per set:

- ``dense``: the candidates in dense order (what SEMANTIC retrieval returns);
- ``rerank``: the same candidates reordered by Rerank's scorer (0.5 × (1 + cosine) / 2 + 0.5 × bm25 / (1 + bm25),
  BM25 over the candidates).

Usage: python bench/kb_rerank.py [BEIR_FOLDER ...] [--depth 50] [--cache DIR]
Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kb_retrieval import _embed_all, load_beir, ndcg_at  # noqa: E402

from llamarock.bedrock import rag  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--split", default="test")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llamarock" / "bench")
    args = parser.parse_args()
    root = Path(os.environ.get("LLAMAROCK_BEIR_ROOT", ROOT.parent / "shared" / "data" / "ir"))
    folders = args.folders or [root / name for name in ("scifact", "nfcorpus")]
    report = {}
    for folder in folders:
        beir = load_beir(folder)
        ids = list(beir.corpus)
        texts = [beir.corpus[i] for i in ids]
        docs = _embed_all(texts, args.cache / f"{beir.name}-{beir.digest}-all-MiniLM-L6-v2-docs.npy", "corpus")
        qids = sorted(beir.queries)  # the order bench/kb_retrieval.py caches them in
        queries = _embed_all([beir.queries[q] for q in qids],
                             args.cache / f"{beir.name}-{beir.digest}-all-MiniLM-L6-v2-queries.npy", "queries")
        row_of = {q: i for i, q in enumerate(qids)}
        dense_scores, rerank_scores = [], []
        for qid, grades in beir.qrels[args.split].items():
            vector = queries[row_of[qid]]
            similarity = docs @ vector
            top = np.argsort(-similarity)[: args.depth]
            candidates = [ids[i] for i in top]
            dense_scores.append(ndcg_at(candidates, grades))
            order = rag.rerank_scores(beir.queries[qid], [beir.corpus[c] for c in candidates], vector.tolist(),
                                      [docs[i].tolist() for i in top])
            rerank_scores.append(ndcg_at([candidates[i] for i, _ in order], grades))
        report[beir.name] = {"queries": len(dense_scores), "depth": args.depth,
                             "dense_ndcg@10": round(100 * statistics.mean(dense_scores), 2),
                             "rerank_ndcg@10": round(100 * statistics.mean(rerank_scores), 2)}
        print(beir.name, report[beir.name], file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
