"""What RetrieveAndGenerate adds over the generation itself (issue target: at most 60 ms), through real boto3.

Starts `llamarock serve` (embedded SmolLM2, embedded all-MiniLM-L6-v2, embedded SQLite store), creates a knowledge
base from --documents generated documents, then for each of --questions questions, interleaved:

- RetrieveAndGenerate with greedy decoding and --tokens tokens, timed end to end;
- Converse with the very prompt RetrieveAndGenerate ran (the same retrieved chunks rendered by bedrock/rag.py, the
  same system text and question, the same greedy decoding and token limit), timed end to end;

Both prompts start with a random nonce of the same length (through a promptTemplate that is Bedrock's default with
the nonce in front), so neither call reuses the other's prompt from the prefix cache: both process their whole
prompt, as a first call does.
- Retrieve alone, timed.

The overhead is RetrieveAndGenerate − Converse per question (same output tokens: both decode greedily from the same
prompt; the bench checks the answers agree). Prints one JSON object with medians and p95s.

By default generation runs on llamarock's fake engine (a fixed reply, no model), so the difference is llamarock's own
work (retrieval, prompt, citations) and not the noise of a CPU model on a busy machine; --real uses the embedded
SmolLM2 instead (then both calls decode the same number of tokens, and the noise is the model's).

Usage: .venv/bin/python bench/kb_rag_overhead.py [--documents 200] [--questions 15] [--tokens 16] [--real]
Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import start_server, stop_server  # noqa: E402

from llamarock.bedrock import rag  # noqa: E402

REGION = "us-west-2"
FAKE_CONFIG = """
[[deployments]]
name = "fake"
engine = "fake"
models = ["*"]
fake_reply = "Item three of the collection measures forty units, as the notes record."
"""
MODEL_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/meta.llama3-1-8b-instruct-v1:0"
TOPICS = ["battery", "lighthouse", "orchard", "volcano", "river", "telescope", "bakery", "glacier", "harbor", "violin"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--questions", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--real", action="store_true", help="generate with the embedded SmolLM2")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kb-rag-bench-"))
    server = start_server(tmp, config=None if args.real else FAKE_CONFIG)
    try:
        bucket = tmp / "data" / "blobs" / "bench"
        bucket.mkdir(parents=True)
        for n in range(args.documents):
            topic = TOPICS[n % len(TOPICS)]
            (bucket / f"doc-{n:04d}.txt").write_text(
                f"Note {n} about the {topic}: item {n} of the {topic} collection measures {n * 7 % 97} units "
                f"and was recorded in year {1900 + n % 120}. " * 3)
        agent = server.client("bedrock-agent", REGION)
        runtime = server.client("bedrock-agent-runtime", REGION)
        converse = server.client("bedrock-runtime", REGION)
        kb = agent.create_knowledge_base(
            name="bench", roleArn="arn:aws:iam::000000000000:role/kb",
            knowledgeBaseConfiguration={"type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                "embeddingModelArn": f"arn:aws:bedrock:{REGION}::foundation-model/amazon.titan-embed-text-v2:0"}},
        )["knowledgeBase"]["knowledgeBaseId"]
        while agent.get_knowledge_base(knowledgeBaseId=kb)["knowledgeBase"]["status"] != "ACTIVE":
            time.sleep(0.2)
        ds = agent.create_data_source(knowledgeBaseId=kb, name="bench", dataSourceConfiguration={
            "type": "S3", "s3Configuration": {"bucketArn": "arn:aws:s3:::bench"}})["dataSource"]["dataSourceId"]
        job = agent.start_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds)["ingestionJob"]["ingestionJobId"]
        started = time.perf_counter()
        while True:
            status = agent.get_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds, ingestionJobId=job)["ingestionJob"]
            if status["status"] in ("COMPLETE", "FAILED"):
                break
            time.sleep(0.2)
        ingest_s = time.perf_counter() - started
        inference = {"maxTokens": args.tokens, "temperature": 0}
        rag_ms: list[float] = []
        converse_ms: list[float] = []
        retrieve_ms: list[float] = []
        agree = 0
        for q in range(args.questions):
            topic = TOPICS[q % len(TOPICS)]
            question = f"How many units does item {q * 3} of the {topic} collection measure?"
            t0 = time.perf_counter()
            found = runtime.retrieve(knowledgeBaseId=kb, retrievalQuery={"text": question})["retrievalResults"]
            retrieve_ms.append((time.perf_counter() - t0) * 1000)
            template = f"[{uuid.uuid4().hex}] {rag.DEFAULT_TEMPLATE}"
            t0 = time.perf_counter()
            answered = runtime.retrieve_and_generate(input={"text": question}, retrieveAndGenerateConfiguration={
                "type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
                    "knowledgeBaseId": kb, "modelArn": MODEL_ARN,
                    "generationConfiguration": {"inferenceConfig": {"textInferenceConfig": inference},
                                                "promptTemplate": {"textPromptTemplate": template}}}})
            rag_ms.append((time.perf_counter() - t0) * 1000)
            other = f"[{uuid.uuid4().hex}] {rag.DEFAULT_TEMPLATE}"
            prompt = rag.render(other, question, [rag.Source(r["content"]["text"], {}) for r in found])
            t0 = time.perf_counter()
            direct = converse.converse(modelId=MODEL_ARN, system=[{"text": prompt.system}],
                                       messages=[{"role": "user", "content": [{"text": prompt.user}]}],
                                       inferenceConfig=inference)
            converse_ms.append((time.perf_counter() - t0) * 1000)
            direct_text = "".join(b.get("text", "") for b in direct["output"]["message"]["content"])
            agree += rag.answer(direct_text, [])[0] == answered["output"]["text"]
        overhead = [a - b for a, b in zip(rag_ms, converse_ms, strict=True)]
        print(json.dumps({
            "engine": "SmolLM2 (embedded)" if args.real else "fake",
            "documents": args.documents, "questions": args.questions, "tokens": args.tokens,
            "ingest_s": round(ingest_s, 2), "ingest_statistics": status["statistics"],
            "retrieve_ms": {"p50": round(statistics.median(retrieve_ms), 1),
                            "p95": round(_percentile(retrieve_ms, 0.95), 1)},
            "retrieve_and_generate_ms": {"p50": round(statistics.median(rag_ms), 1)},
            "converse_same_prompt_ms": {"p50": round(statistics.median(converse_ms), 1)},
            "overhead_ms": {"p50": round(statistics.median(overhead), 1),
                            "p95": round(_percentile(overhead, 0.95), 1)},
            "answers_identical": f"{agree}/{args.questions} (the nonces differ, so answers may too)",
        }, indent=2))
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
