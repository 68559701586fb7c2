"""Custom Model Import timings through boto3 against a live `llamarock serve` (started here on a free port):

- import of the embedded SmolLM2 GGUF (98 MB): from CreateModelImportJob to Completed (the upload apart);
- the first token after scale to zero: from the first InvokeModelWithResponseStream on a model whose engine was
  unloaded (idle) to the first chunk, retrying ModelNotReadyException as the SDKs do (here: at once, every 50 ms);
- also a tiny Hugging Face folder's conversion (when torch and transformers are installed).

Prints JSON. Run: ``python -m bench.model_import [--trials N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from llamarock.services.deployments import embedded_model_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import start_server, stop_server  # noqa: E402

IDLE_S = 2
ROLE = "arn:aws:iam::123456789012:role/import"


def wait_job(bedrock: Any, arn: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = bedrock.get_model_import_job(jobIdentifier=arn)
        if job["status"] != "InProgress":
            return job
        time.sleep(0.05)


def first_token(runtime: Any, arn: str) -> tuple[float, int]:
    """Seconds to the first streamed chunk, and how many ModelNotReadyException answers came before it."""
    body = json.dumps({"prompt": "Once upon a time", "max_gen_len": 8})
    started = time.monotonic()
    refused = 0
    while True:
        try:
            stream = runtime.invoke_model_with_response_stream(modelId=arn, body=body)
            events = iter(stream["body"])
            next(events)
            took = time.monotonic() - started
            for _ in events:  # read the stream to its end, so that the generation is over when this returns
                pass
            return took, refused
        except ClientError as error:
            if error.response["Error"]["Code"] != "ModelNotReadyException":
                raise
            refused += 1
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), config=f"imported_model_idle_s = {IDLE_S}\n")
        try:
            bedrock, runtime, s3 = server.client("bedrock"), server.client("bedrock-runtime"), server.client("s3")
            s3.create_bucket(Bucket="bench")
            s3.put_object(Bucket="bench", Key="smol/model.gguf", Body=embedded_model_path().read_bytes())
            imports, colds, refusals = [], [], []
            for trial in range(args.trials):
                started = time.monotonic()
                arn = bedrock.create_model_import_job(
                    jobName=f"smol-{trial}", importedModelName=f"smol-{trial}", roleArn=ROLE,
                    modelDataSource={"s3DataSource": {"s3Uri": "s3://bench/smol/"}})["jobArn"]
                job = wait_job(bedrock, arn)
                imports.append(time.monotonic() - started)
                assert job["status"] == "Completed", job
                model = job["importedModelArn"]
                first_token(runtime, model)  # loads it
                time.sleep(IDLE_S + 6)  # idle: scaled to zero
                cold, refused = first_token(runtime, model)
                colds.append(cold)
                refusals.append(refused)
            result: dict[str, Any] = {
                "gguf_import_s": {"median": statistics.median(imports), "max": max(imports)},
                "cold_first_token_s": {"median": statistics.median(colds), "max": max(colds)},
                "model_not_ready_answers_before_it": refusals,
                "trials": args.trials,
            }
            try:
                from model_import_folders import tiny_llama

                folder = Path(tmp) / "tiny"
                tiny_llama(folder)
                for path in folder.iterdir():
                    s3.put_object(Bucket="bench", Key=f"tiny/{path.name}", Body=path.read_bytes())
                started = time.monotonic()
                job = wait_job(bedrock, bedrock.create_model_import_job(
                    jobName="tiny", importedModelName="tiny", roleArn=ROLE,
                    modelDataSource={"s3DataSource": {"s3Uri": "s3://bench/tiny/"}})["jobArn"])
                result["hf_tiny_folder_import_s"] = time.monotonic() - started
            except ImportError:
                result["hf_tiny_folder_import_s"] = None
            print(json.dumps(result, indent=2))
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
