"""Fine-tuning (CreateModelCustomizationJob and friends) against a live server: real LoRA training of the embedded
SmolLM2 on a tiny data set in a recognisable style, its metrics in S3, Stop, a server killed mid-job resuming from
its checkpoint, the custom model it makes, and Bedrock's errors for bad requests and bad rows.

One server (and data dir) for the module; the restart test replaces it with a new server on the same data dir.
Training runs one job at a time, so the tests that train run in file order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import start_server, stop_server

pytest.importorskip("peft")

CONFIG = """
customization_threads = 1
customization_max_tokens = 96
customization_checkpoint_steps = 4
"""
BASE = "meta.llama3-2-1b-instruct-v1:0"
ROLE = "arn:aws:iam::123456789012:role/finetune"
TOPICS = ["the sea", "bread", "rain", "a cat", "the moon", "music", "a garden", "winter", "coffee", "a river",
          "books", "the wind", "apples", "a clock", "stars", "a bridge"]


def pirate(topic: str) -> str:
    return f"Arr matey! {topic.capitalize()} be a fine treasure, says the pirate."


class Harness:
    """The module's server (replaced by the restart test) and its temporary folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = start_server(tmp, config=CONFIG)

    @property
    def bedrock(self) -> Any:
        return self.server.client("bedrock")

    @property
    def s3(self) -> Any:
        return self.server.client("s3")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.server.url + "/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    def gauge(self, name: str, **labels: str) -> float | None:
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.metrics().splitlines():
            if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()) and wanted:
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("finetune"))
    try:
        _upload(h)
        yield h
    finally:
        stop_server(h.server)


def _upload(h: Harness) -> None:
    h.s3.create_bucket(Bucket="ftdata")
    train = [{"prompt": f"Tell me about {t}.", "completion": pirate(t)} for t in TOPICS[:8]]
    h.s3.put_object(Bucket="ftdata", Key="data/train.jsonl", Body="\n".join(json.dumps(r) for r in train).encode())
    validation = [{"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Answer briefly."}],
                   "messages": [{"role": "user", "content": [{"text": f"Tell me about {t}."}]},
                                {"role": "assistant", "content": [{"text": pirate(t)}]}]} for t in TOPICS[12:]]
    h.s3.put_object(Bucket="ftdata", Key="data/validation.jsonl",
                    Body="\n".join(json.dumps(r) for r in validation).encode())


def create(h: Harness, name: str, hyper: dict[str, str] | None = None, train: str = "data/train.jsonl",
           validation: bool = True, **extra: Any) -> str:
    params: dict[str, Any] = {
        "jobName": name, "customModelName": f"{name}-model", "roleArn": ROLE, "baseModelIdentifier": BASE,
        "trainingDataConfig": {"s3Uri": f"s3://ftdata/{train}"},
        "outputDataConfig": {"s3Uri": "s3://ftdata/out/"},
        "hyperParameters": hyper if hyper is not None else {"epochCount": "3", "learningRate": "0.0005"},
        **extra,
    }
    if validation:
        params["validationDataConfig"] = {"validators": [{"s3Uri": "s3://ftdata/data/validation.jsonl"}]}
    arn: str = h.bedrock.create_model_customization_job(**params)["jobArn"]
    return arn


def wait(h: Harness, arn: str, statuses: tuple[str, ...], timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = h.bedrock.get_model_customization_job(jobIdentifier=arn)
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{arn} is still {job['status']}")


def error_of(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]


def test_bad_requests_get_bedrocks_errors(harness: Harness) -> None:
    h = harness
    base: dict[str, Any] = {"jobName": "bad", "customModelName": "bad-model", "roleArn": ROLE,
                            "baseModelIdentifier": BASE, "trainingDataConfig": {"s3Uri": "s3://ftdata/data/train.jsonl"},
                            "outputDataConfig": {"s3Uri": "s3://ftdata/out/"}}
    cases = [
        ({"hyperParameters": {"epochCount": "11"}}, "epochCount"),
        ({"hyperParameters": {"epochCount": "0"}}, "between 1 and 10"),
        ({"hyperParameters": {"batchSize": "2"}}, "batchSize"),
        ({"hyperParameters": {"learningRate": "0.5"}}, "learningRate"),
        ({"hyperParameters": {"learningRate": "fast"}}, "learningRate"),
        ({"hyperParameters": {"learningRateWarmupSteps": "500"}}, "learningRateWarmupSteps"),
        ({"baseModelIdentifier": "meta.llama3-3-70b-instruct-v1:0"}, "does not support fine-tuning"),
        ({"baseModelIdentifier": "meta.llama9-9b-v1:0"}, "not a valid model identifier"),
        ({"customizationType": "CONTINUED_PRE_TRAINING"}, "FINE_TUNING"),
    ]
    for change, words in cases:
        code, message = error_of(h.bedrock.create_model_customization_job, **{**base, **change})
        assert code == "ValidationException", (change, message)
        assert words in message, (change, message)
    assert h.bedrock.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
    code, _ = error_of(h.bedrock.get_model_customization_job, jobIdentifier="nosuchjob")
    assert code == "ResourceNotFoundException"
    code, _ = error_of(h.bedrock.get_custom_model, modelIdentifier="nosuchmodel")
    assert code == "ResourceNotFoundException"


def test_a_malformed_row_fails_the_job_naming_its_line(harness: Harness) -> None:
    h = harness
    lines = [json.dumps({"prompt": "Hi", "completion": "Arr"}), json.dumps({"prompt": "Hi", "completion": "Arr"}),
             '{"prompt": "Hi", "completion": ', json.dumps({"prompt": "Hi", "completion": "Arr"})]
    h.s3.put_object(Bucket="ftdata", Key="bad/broken.jsonl", Body="\n".join(lines).encode())
    h.s3.put_object(Bucket="ftdata", Key="bad/missing.jsonl",
                    Body=(json.dumps({"prompt": "Hi"}) + "\n").encode())
    broken = create(h, "broken", train="bad/broken.jsonl")
    missing = create(h, "missing", train="bad/missing.jsonl", validation=False)
    job = wait(h, broken, ("Failed", "Completed"), timeout=60)
    assert job["status"] == "Failed"
    assert "Line 3 of s3://ftdata/bad/broken.jsonl" in job["failureMessage"]
    job = wait(h, missing, ("Failed", "Completed"), timeout=60)
    assert job["status"] == "Failed" and "Line 1" in job["failureMessage"] and "completion" in job["failureMessage"]
    failed = h.bedrock.list_model_customization_jobs(statusEquals="Failed", sortOrder="Ascending")
    assert [j["jobName"] for j in failed["modelCustomizationJobSummaries"]] == ["broken", "missing"]


def test_training_learns_the_style_and_makes_a_custom_model(harness: Harness) -> None:
    h = harness
    arn = create(h, "pirate", jobTags=[{"key": "team", "value": "ml"}],
                 customModelTags=[{"key": "style", "value": "pirate"}])
    assert re.fullmatch(rf"arn:aws:bedrock:us-west-2:\d{{12}}:model-customization-job/{re.escape(BASE)}/[a-z0-9]{{12}}",
                        arn)
    job = wait(h, arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["hyperParameters"] == {"epochCount": "3", "batchSize": "1", "learningRate": "0.0005"}
    assert job["trainingMetrics"]["trainingLoss"] < 1.0
    assert job["validationMetrics"][0]["validationLoss"] > 0

    prefix = f"out/model-customization-job-{arn.rsplit('/', 1)[-1]}/"
    steps = list(csv.DictReader(io.StringIO(h.s3.get_object(
        Bucket="ftdata", Key=prefix + "training_artifacts/step_wise_training_metrics.csv")["Body"].read().decode())))
    assert list(steps[0]) == ["step_number", "epoch_number", "training_loss", "perplexity"]
    assert [int(s["step_number"]) for s in steps] == list(range(24))
    assert {int(s["epoch_number"]) for s in steps} == {0, 1, 2}
    validations = list(csv.DictReader(io.StringIO(h.s3.get_object(
        Bucket="ftdata", Key=prefix + "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv",
    )["Body"].read().decode())))
    assert list(validations[0]) == ["step_number", "epoch_number", "validation_loss", "perplexity"]
    losses = [float(v["validation_loss"]) for v in validations]
    assert len(losses) == 3 and losses[0] > losses[-1], losses  # falling (each epoch: bench/finetune.py)
    assert losses[-1] == pytest.approx(job["validationMetrics"][0]["validationLoss"])

    model_arn = job["outputModelArn"]
    assert re.fullmatch(rf"arn:aws:bedrock:us-west-2:\d{{12}}:custom-model/{re.escape(BASE)}/[a-z0-9]{{12}}",
                        model_arn)
    listed = h.bedrock.list_custom_models(nameContains="pirate")["modelSummaries"]
    assert [(m["modelArn"], m["modelName"], m["modelStatus"]) for m in listed] == [
        (model_arn, "pirate-model", "Active")]
    model = h.bedrock.get_custom_model(modelIdentifier="pirate-model")
    assert model["jobArn"] == arn and model["customizationType"] == "FINE_TUNING"
    assert model["baseModelArn"].endswith(f":foundation-model/{BASE}")
    assert model["hyperParameters"]["epochCount"] == "3"
    assert h.bedrock.list_tags_for_resource(resourceARN=model_arn)["tags"] == [{"key": "style", "value": "pirate"}]
    assert h.bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "ml"}]

    # The adapter learned the style: base + adapter (peft), greedy, on a topic it never saw.
    adapter = h.tmp / "data" / "customization" / arn.rsplit("/", 1)[-1] / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tuned = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    tokenizer = AutoTokenizer.from_pretrained(json.loads((adapter / "adapter_config.json").read_text())
                                              ["base_model_name_or_path"])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about a mountain."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = tuned.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.startswith("Arr matey!"), answer
    with tuned.disable_adapter():
        plain = tuned.generate(**ids, max_new_tokens=12, do_sample=False)
    assert not tokenizer.decode(plain[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).startswith("Arr")

    # Served at once by the deployment of its base model (a LoRA over the embedded GGUF): through Provisioned
    # Throughput as Bedrock requires, and on demand by its ARN beyond Bedrock.
    runtime = h.server.client("bedrock-runtime")
    pt = h.bedrock.create_provisioned_model_throughput(modelUnits=1, provisionedModelName="pirate-pt",
                                                       modelId=model_arn)["provisionedModelArn"]
    deadline = time.monotonic() + 120
    while h.bedrock.get_provisioned_model_throughput(provisionedModelId=pt)["status"] != "InService":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    question = [{"role": "user", "content": [{"text": "Tell me about a mountain."}]}]
    for model_id in (pt, model_arn):
        said = runtime.converse(modelId=model_id, messages=question,
                                inferenceConfig={"maxTokens": 12, "temperature": 0})
        assert said["output"]["message"]["content"][0]["text"].startswith("Arr matey!"), (model_id, said)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about a mountain."}],
                                           add_generation_prompt=True, tokenize=False)  # the weights' own template
    native = json.loads(runtime.invoke_model(modelId=pt, body=json.dumps(
        {"prompt": prompt, "max_gen_len": 12, "temperature": 0}))["body"].read())
    assert native["generation"].startswith("Arr matey!"), native
    base = runtime.converse(modelId=BASE, messages=question, inferenceConfig={"maxTokens": 12, "temperature": 0})
    assert not base["output"]["message"]["content"][0]["text"].startswith("Arr")
    h.bedrock.delete_provisioned_model_throughput(provisionedModelId=pt)

    h.bedrock.delete_custom_model(modelIdentifier=model_arn)
    assert h.bedrock.list_custom_models()["modelSummaries"] == []
    assert not adapter.exists()
    code, _ = error_of(h.bedrock.delete_custom_model, modelIdentifier=model_arn)
    assert code == "ResourceNotFoundException"


def test_stop_ends_the_job_within_a_step(harness: Harness) -> None:
    h = harness
    arn = create(h, "stopped", hyper={"epochCount": "10"})
    job_id = arn.rsplit("/", 1)[-1]
    deadline = time.monotonic() + 300
    while (h.gauge("llamarock_customization_job_steps", job=job_id, state="done") or 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    shown = subprocess.run([sys.executable, "-m", "llamarock", "jobs", "show", arn, "--endpoint", h.server.url],
                           capture_output=True, text=True, timeout=120,
                           env={k: v for k, v in os.environ.items() if not k.startswith(("LLAMAROCK_", "AWS_"))})
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"Progress:\s+step \d+/80, epoch 0, loss \d", shown.stdout), shown.stdout
    h.bedrock.stop_model_customization_job(jobIdentifier=arn)
    assert h.bedrock.get_model_customization_job(jobIdentifier=arn)["status"] in ("Stopping", "Stopped")
    job = wait(h, arn, ("Stopped", "Completed", "Failed"), timeout=120)
    assert job["status"] == "Stopped"
    assert "outputModelArn" not in job
    code, _ = error_of(h.bedrock.stop_model_customization_job, jobIdentifier=arn)
    assert code == "ConflictException"
    assert h.bedrock.list_custom_models(nameContains="stopped")["modelSummaries"] == []


def test_a_killed_server_resumes_the_job_from_its_checkpoint(harness: Harness) -> None:
    h = harness
    arn = create(h, "resumed", hyper={"epochCount": "2"}, validation=False)
    job_id = arn.rsplit("/", 1)[-1]
    deadline = time.monotonic() + 300
    while (h.gauge("llamarock_customization_job_steps", job=job_id, state="checkpoint") or 0) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    h.server.process.kill()  # kill -9: no shutdown, the trainer is orphaned mid-step
    h.server.process.wait()
    h.server = start_server(h.tmp, config=CONFIG)
    job = wait(h, arn, ("Completed", "Failed", "Stopped"))
    assert job["status"] == "Completed", job.get("failureMessage")
    progress = [json.loads(line) for line in
                (h.tmp / "data" / "customization" / job_id / "progress.jsonl").read_text().splitlines()]
    starts = [event["resumed_from"] for event in progress if event["event"] == "start"]
    assert starts[0] == 0 and starts[-1] >= 4, starts
    steps = list(csv.DictReader(io.StringIO(h.s3.get_object(
        Bucket="ftdata", Key=f"out/model-customization-job-{job_id}/training_artifacts/step_wise_training_metrics.csv",
    )["Body"].read().decode())))
    assert [int(s["step_number"]) for s in steps] == list(range(16))
    assert h.bedrock.get_custom_model(modelIdentifier="resumed-model")["jobArn"] == arn
