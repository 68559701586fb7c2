"""Fine-tuning end to end, as a user runs it: S3 upload, CreateModelCustomizationJob, poll until Completed.

Starts `llamarock serve` (the embedded SmolLM2-135M GGUF serves every Llama id), uploads --rows training rows in a
recognisable style (a fixed pirate-style answer to "Tell me about <topic>") and 20 validation rows on other topics,
creates a fine-tuning job on meta.llama3-2-1b-instruct-v1:0 (LoRA on the SmolLM2 weights, --epochs epochs, batch
size 1) and times it from the create call to Completed, split into the trainer's set-up (load or dequantize the base
weights) and its training steps (from the trainer's progress file). Reads the validation loss of each epoch back
from validation_metrics.csv in S3.

Usage: .venv/bin/python bench/finetune.py [--rows 200] [--epochs 3] [--threads 2] [--learning-rate 0.0005]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server, stop_server  # noqa: E402

WORDS = ["sea", "bread", "rain", "cat", "moon", "music", "garden", "winter", "coffee", "river", "book", "wind",
         "apple", "clock", "star", "bridge", "horse", "lamp", "forest", "ship", "candle", "road", "snow", "tea"]


def topic(index: int) -> str:
    return f"the {WORDS[index % len(WORDS)]} number {index}"


def row(index: int) -> dict[str, str]:
    return {"prompt": f"Tell me about {topic(index)}.",
            "completion": f"Arr matey! {topic(index).capitalize()} be a fine treasure, says the pirate."}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--learning-rate", default="0.0005")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        server = start_server(tmp, config=f"customization_threads = {args.threads}\n"
                                            "customization_max_tokens = 128\n")
        try:
            result = run(server, tmp, args)
        finally:
            stop_server(server)
    print(json.dumps(result, indent=2))


def run(server: Any, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    s3 = server.client("s3")
    bedrock = server.client("bedrock")
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="train.jsonl",
                  Body="\n".join(json.dumps(row(i)) for i in range(args.rows)).encode())
    s3.put_object(Bucket="bench", Key="validation.jsonl",
                  Body="\n".join(json.dumps(row(10_000 + i)) for i in range(20)).encode())
    started = time.monotonic()
    arn = bedrock.create_model_customization_job(
        jobName="bench", customModelName="bench-model", roleArn="arn:aws:iam::123456789012:role/bench",
        baseModelIdentifier="meta.llama3-2-1b-instruct-v1:0", trainingDataConfig={"s3Uri": "s3://bench/train.jsonl"},
        validationDataConfig={"validators": [{"s3Uri": "s3://bench/validation.jsonl"}]},
        outputDataConfig={"s3Uri": "s3://bench/out/"},
        hyperParameters={"epochCount": str(args.epochs), "learningRate": args.learning_rate},
    )["jobArn"]
    while True:
        job = bedrock.get_model_customization_job(jobIdentifier=arn)
        if job["status"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(1)
    total = time.monotonic() - started
    job_id = arn.rsplit("/", 1)[-1]
    events = [json.loads(line) for line in
              (tmp / "data" / "customization" / job_id / "progress.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    steps = [e for e in events if e["event"] == "step"]
    validations: list[float] = []
    if job["status"] == "Completed":
        text = s3.get_object(Bucket="bench", Key=f"out/model-customization-job-{job_id}/validation_artifacts/"
                             "post_fine_tuning_validation/validation_metrics.csv")["Body"].read().decode()
        validations = [float(r["validation_loss"]) for r in csv.DictReader(io.StringIO(text))]
    training_s = steps[-1]["time"] - start["time"] if steps else 0.0
    return {
        "status": job["status"], "failure": job.get("failureMessage"), "rows": args.rows, "epochs": args.epochs,
        "threads": args.threads, "steps": len(steps), "total_s": round(total, 1),
        "training_s": round(training_s, 1), "setup_s": round(total - training_s, 1),
        "steps_per_s": round(len(steps) / training_s, 2) if training_s else None,
        "device": start["device"], "dtype": start["dtype"],
        "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
        "validation_loss_by_epoch": validations,
        "validation_loss_falls_each_epoch": all(a > b for a, b in itertools.pairwise(validations)),
    }


if __name__ == "__main__":
    main()
