"""Custom Model Import end to end: boto3's ``bedrock`` (import jobs, imported models), ``s3`` (the model files, on
the server's own S3 endpoint) and ``bedrock-runtime`` (InvokeModel in the three body formats, Converse) against a
live server. Real imports: the embedded SmolLM2 GGUF, and a tiny random-weight Llama saved by transformers, whose
conversion must give llama.cpp the same greedy tokens transformers gives."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.services.deployments import embedded_model_path
from tests.conftest import Server, start_server, stop_server
from tests.model_import_folders import break_config, tiny_llama

IDLE_S = 3
ROLE = "arn:aws:iam::123456789012:role/import"
BUCKET = "models"
CONFIG = f"imported_model_idle_s = {IDLE_S}\nthreads = 1\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("import"), config=CONFIG)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def bedrock(srv: Server) -> Any:
    return srv.client("bedrock")


@pytest.fixture(scope="module")
def runtime(srv: Server) -> Any:
    return srv.client("bedrock-runtime")


@pytest.fixture(scope="module")
def s3(srv: Server) -> Any:
    client = srv.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def upload(s3: Any, folder: Path, prefix: str) -> str:
    for path in sorted(folder.iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}/"


def import_job(bedrock: Any, name: str, uri: str, **extra: Any) -> str:
    arn: str = bedrock.create_model_import_job(
        jobName=name, importedModelName=name, roleArn=ROLE,
        modelDataSource={"s3DataSource": {"s3Uri": uri}}, **extra,
    )["jobArn"]
    return arn


def finished(bedrock: Any, arn: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = bedrock.get_model_import_job(jobIdentifier=arn)
        if job["status"] != "InProgress":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {arn} still InProgress")


def when_ready(call: Callable[[], Any], timeout: float = 60) -> Any:
    """Call until the imported model is loaded (retrying ModelNotReadyException, as the SDKs do)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ClientError as error:
            if error.response["Error"]["Code"] != "ModelNotReadyException" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def smol(bedrock: Any, s3: Any) -> dict[str, Any]:
    """The embedded GGUF, imported (beyond Bedrock: a .gguf file)."""
    s3.put_object(Bucket=BUCKET, Key="smol/SmolLM2.gguf", Body=embedded_model_path().read_bytes())
    job = finished(bedrock, import_job(bedrock, "smol", f"s3://{BUCKET}/smol/",
                                       jobTags=[{"key": "team", "value": "a"}],
                                       importedModelTags=[{"key": "team", "value": "b"}]))
    assert job["status"] == "Completed", job
    model: dict[str, Any] = bedrock.get_imported_model(modelIdentifier=job["importedModelArn"])
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A tiny Hugging Face Llama folder (needs torch and transformers: the ``train`` extra the test set-up installs;
    the GGUF tests run without them)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny") / "model"
    return folder, tiny_llama(folder, shards=True)


def test_gguf_import_is_an_imported_model(bedrock: Any, smol: dict[str, Any]) -> None:
    assert smol["modelArn"].startswith("arn:aws:bedrock:us-west-2:")
    assert ":imported-model/" in smol["modelArn"] and smol["modelName"] == "smol"
    assert smol["instructSupported"] is True and smol["modelArchitecture"] == "LLaMA"
    assert smol["customModelUnits"] == {"customModelUnitsPerModelCopy": 1, "customModelUnitsVersion": "v1.0"}
    assert smol["modelDataSource"] == {"s3DataSource": {"s3Uri": f"s3://{BUCKET}/smol/"}}
    tags = bedrock.list_tags_for_resource(resourceARN=smol["modelArn"])["tags"]
    assert tags == [{"key": "team", "value": "b"}]
    assert bedrock.list_tags_for_resource(resourceARN=smol["jobArn"])["tags"] == [{"key": "team", "value": "a"}]
    listed = bedrock.list_imported_models(nameContains="smo")["modelSummaries"]
    assert [m["modelArn"] for m in listed] == [smol["modelArn"]]
    assert bedrock.get_imported_model(modelIdentifier="smol")["modelArn"] == smol["modelArn"]


def test_cold_model_is_not_ready_then_answers_every_body_format(runtime: Any, smol: dict[str, Any]) -> None:
    arn = smol["modelArn"]
    native = json.dumps({"prompt": "The capital of France is", "max_gen_len": 8, "temperature": 0}).encode()
    with pytest.raises(ClientError) as cold:
        runtime.invoke_model(modelId=arn, body=native)
    assert cold.value.response["Error"]["Code"] == "ModelNotReadyException"
    assert cold.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429

    answer = json.loads(when_ready(lambda: runtime.invoke_model(modelId=arn, body=native))["body"].read())
    assert answer["generation"] and answer["generation_token_count"] == 8 and answer["stop_reason"] == "length"

    completion = json.loads(runtime.invoke_model(modelId=arn, body=json.dumps({
        "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}))["body"].read())
    assert completion["object"] == "text_completion" and completion["model"] == arn
    assert completion["choices"][0]["text"] == answer["generation"]
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 8

    chat = json.loads(runtime.invoke_model(modelId=arn, body=json.dumps({
        "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "temperature": 0}))["body"].read())
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["choices"][0]["message"]["content"]
    assert chat["usage"]["completion_tokens"] >= 1

    conversed = runtime.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "Say hello."}]}],
                                 inferenceConfig={"maxTokens": 16, "temperature": 0})
    # Converse renders the same chat template as the chat-completion body: the same greedy answer.
    assert conversed["output"]["message"]["content"][0]["text"] == chat["choices"][0]["message"]["content"]

    stream = runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({
        "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}))
    pieces = [json.loads(event["chunk"]["bytes"]) for event in stream["body"]]
    assert "".join(p["choices"][0]["text"] for p in pieces) == answer["generation"]
    assert pieces[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 8

    chat_stream = runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({
        "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "temperature": 0}))
    chunks = [json.loads(event["chunk"]["bytes"]) for event in chat_stream["body"]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == chat["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "amazon-bedrock-invocationMetrics" in chunks[-1]

    with pytest.raises(ClientError) as bad:
        runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": "x", "max_tokens": 0}))
    assert bad.value.response["Error"]["Code"] == "ValidationException"


def test_hf_folder_converts_to_the_same_greedy_tokens(bedrock: Any, runtime: Any, s3: Any,
                                                      tiny: tuple[Path, Any]) -> None:
    import torch
    from transformers import AutoTokenizer

    folder, model = tiny
    job = finished(bedrock, import_job(bedrock, "tiny-hf", upload(s3, folder, "tiny")))
    assert job["status"] == "Completed", job
    arn = job["importedModelArn"]
    prompt = "The quick brown fox jumps over the lazy dog and then"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
    expected, margins = [], []
    with torch.no_grad():  # transformers' greedy path in float32, and how sure each step was
        for _ in range(16):
            logits = model(torch.tensor([ids + expected])).logits[0, -1]
            top = torch.topk(logits, 2).values
            expected.append(int(logits.argmax()))
            margins.append(float(top[0] - top[1]))
    # llama.cpp runs f16 weights and a Q8_0 KV cache: compare the steps up to the first one transformers was not
    # sure of (a logit margin under 1, which that rounding can flip), at least 6 for the test to say anything.
    sure = next((i for i, margin in enumerate(margins) if margin < 1.0), len(margins))
    assert sure >= 6, margins
    answer = json.loads(when_ready(lambda: runtime.invoke_model(modelId=arn, body=json.dumps({
        "prompt": prompt, "max_gen_len": 16, "temperature": 0})))["body"].read())
    assert answer["prompt_token_count"] == len(ids)
    assert answer["generation"].startswith(tokenizer.decode(expected[:sure]))
    described = bedrock.get_imported_model(modelIdentifier=arn)
    assert described["instructSupported"] is True  # the chat template came with tokenizer_config / .jinja


@pytest.mark.parametrize(("name", "change", "words"), [
    ("not-llama", {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "not supported"),
    ("bad-shapes", {"hidden_size": 96}, "config.json implies"),
])
def test_bad_folder_fails_the_job_with_a_message(bedrock: Any, s3: Any, tiny: tuple[Path, Any], tmp_path: Path,
                                                 name: str, change: dict[str, Any], words: str) -> None:
    folder, _ = tiny
    broken = tmp_path / name
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    break_config(broken, **change)
    job = finished(bedrock, import_job(bedrock, name, upload(s3, broken, name)))
    assert job["status"] == "Failed" and words in job["failureMessage"], job
    assert "importedModelArn" not in job
    with pytest.raises(ClientError) as missing:
        bedrock.get_imported_model(modelIdentifier=name)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_missing_weights_and_missing_prefix_fail(bedrock: Any, s3: Any, tiny: tuple[Path, Any]) -> None:
    folder, _ = tiny
    for path in folder.iterdir():
        if not path.name.endswith(".safetensors"):
            s3.put_object(Bucket=BUCKET, Key=f"noweights/{path.name}", Body=path.read_bytes())
    job = finished(bedrock, import_job(bedrock, "noweights", f"s3://{BUCKET}/noweights/"))
    assert job["status"] == "Failed" and "safetensors" in job["failureMessage"]
    job = finished(bedrock, import_job(bedrock, "nothing", f"s3://{BUCKET}/nothing-here/"))
    assert job["status"] == "Failed" and "holds no model files" in job["failureMessage"]


def test_bad_requests_are_validation_and_conflict_errors(bedrock: Any, smol: dict[str, Any]) -> None:
    def code(**params: Any) -> str:
        with pytest.raises(ClientError) as error:
            bedrock.create_model_import_job(**{"jobName": "j", "importedModelName": "m", "roleArn": ROLE,
                                               "modelDataSource": {"s3DataSource": {"s3Uri": "s3://models/x/"}},
                                               **params})
        return str(error.value.response["Error"]["Code"])

    assert code(modelDataSource={"s3DataSource": {"s3Uri": "http://not-s3"}}) == "ValidationException"
    assert code(jobName="bad name!") == "ValidationException"
    assert code(roleArn="not-a-role") == "ValidationException"
    assert code(jobName="smol") == "ConflictException"  # job names are unique
    assert code(importedModelName="smol") == "ConflictException"  # so are imported model names
    with pytest.raises(ClientError) as missing:
        bedrock.get_model_import_job(jobIdentifier="no-such-job")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_list_jobs_filters_sorts_and_pages(bedrock: Any, smol: dict[str, Any]) -> None:
    for name in ("page-a", "page-b", "page-c"):
        finished(bedrock, import_job(bedrock, name, f"s3://{BUCKET}/empty-{name}/"))
    names = [j["jobName"] for j in bedrock.list_model_import_jobs(nameContains="page-",
                                                                   sortOrder="Ascending")["modelImportJobSummaries"]]
    assert names == ["page-a", "page-b", "page-c"]
    first = bedrock.list_model_import_jobs(nameContains="page-", maxResults=2)
    assert [j["jobName"] for j in first["modelImportJobSummaries"]] == ["page-c", "page-b"]
    rest = bedrock.list_model_import_jobs(nameContains="page-", maxResults=2, nextToken=first["nextToken"])
    assert [j["jobName"] for j in rest["modelImportJobSummaries"]] == ["page-a"] and "nextToken" not in rest
    completed = bedrock.list_model_import_jobs(statusEquals="Completed")["modelImportJobSummaries"]
    assert "smol" in {j["jobName"] for j in completed} and "page-a" not in {j["jobName"] for j in completed}
    paginated = [j for page in bedrock.get_paginator("list_model_import_jobs").paginate(
        nameContains="page-", PaginationConfig={"PageSize": 1}) for j in page["modelImportJobSummaries"]]
    assert len(paginated) == 3


def usage_of(srv: Server, arn: str) -> dict[str, Any]:
    with urllib.request.urlopen(srv.url + "/llamarock/usage?by=model", timeout=30) as response:
        rows = {row["modelId"]: row for row in json.loads(response.read())["rows"]}
    return rows.get(arn, {"costUsd": 0.0, "invocations": 0})


def test_scales_to_zero_when_idle_and_meters_custom_model_units(runtime: Any, srv: Server,
                                                                 smol: dict[str, Any]) -> None:
    arn = smol["modelArn"]
    body = json.dumps({"prompt": "Hi", "max_gen_len": 2})
    when_ready(lambda: runtime.invoke_model(modelId=arn, body=body))
    runtime.invoke_model(modelId=arn, body=body)  # the same copy, the same 5-minute window
    before = usage_of(srv, arn)
    time.sleep(IDLE_S + 3)
    with pytest.raises(ClientError) as cold:
        runtime.invoke_model(modelId=arn, body=body)
    assert cold.value.response["Error"]["Code"] == "ModelNotReadyException"
    when_ready(lambda: runtime.invoke_model(modelId=arn, body=body))
    after = usage_of(srv, arn)
    # The copy loaded again opens a new window: 1 CMU × $0.0785 a minute × 5 minutes; invocations cost nothing.
    assert after["costUsd"] - before["costUsd"] == pytest.approx(5 * 0.0785)
    assert after["invocations"] > before["invocations"]


def test_imported_model_runs_a_batch_job(srv: Server, bedrock: Any, s3: Any, smol: dict[str, Any]) -> None:
    lines = [{"recordId": f"r{i}", "modelInput": {"prompt": f"Count to {i}", "max_gen_len": 4}} for i in range(3)]
    s3.put_object(Bucket=BUCKET, Key="batch/in.jsonl", Body="\n".join(json.dumps(line) for line in lines).encode())
    arn = bedrock.create_model_invocation_job(
        jobName="imported-batch", modelId=smol["modelName"], roleArn=ROLE,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{BUCKET}/batch/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{BUCKET}/batch-out/"}},
    )["jobArn"]
    deadline = time.monotonic() + 120
    while (job := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] not in ("Completed", "Failed",
                                                                                           "PartiallyCompleted"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "Completed", job


def test_delete_imported_model(bedrock: Any, runtime: Any, smol: dict[str, Any]) -> None:
    job = finished(bedrock, import_job(bedrock, "todelete", f"s3://{BUCKET}/smol/SmolLM2.gguf"))  # the object's URI
    arn = job["importedModelArn"]
    bedrock.delete_imported_model(modelIdentifier=arn)
    with pytest.raises(ClientError) as gone:
        bedrock.get_imported_model(modelIdentifier=arn)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as invoked:
        runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": "Hi"}))
    assert invoked.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as again:
        bedrock.delete_imported_model(modelIdentifier=arn)
    assert again.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_job_cut_off_by_a_crash_runs_again_at_start_up(tmp_path: Path, tiny: tuple[Path, Any]) -> None:
    folder, _ = tiny
    first = start_server(tmp_path, config='engine = "fake"\n')
    try:
        s3, bedrock = first.client("s3"), first.client("bedrock")
        s3.create_bucket(Bucket=BUCKET)
        arn = import_job(bedrock, "crash", upload(s3, folder, "crash"))
    finally:
        first.process.kill()  # kill -9 while the job converts
        first.process.wait()
    second = start_server(tmp_path, config='engine = "fake"\n')
    try:
        job = finished(second.client("bedrock"), arn)
        assert job["status"] == "Completed", job
        assert not list((tmp_path / "data" / "imported-models").glob("*.part"))
        model = second.client("bedrock").get_imported_model(modelIdentifier="crash")
        assert model["modelArn"] == job["importedModelArn"]
    finally:
        stop_server(second)


def test_f32_and_q8_0_conversions_follow_transformers(tiny: tuple[Path, Any], tmp_path: Path) -> None:
    """The converter alone (no server), at the two other storage types, in llama.cpp's own generate loop."""
    import torch
    from llama_cpp import Llama

    from llamarock.modelfiles.hf_to_gguf import convert

    folder, model = tiny
    ids = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 284, 965]
    expected, margins = [], []
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids + expected])).logits[0, -1]
            top = torch.topk(logits, 2).values
            expected.append(int(logits.argmax()))
            margins.append(float(top[0] - top[1]))
    for out, margin in (("f32", 0.2), ("q8_0", 1.0)):  # f32 differs from transformers only by llama.cpp's f16 KV
        path = tmp_path / f"tiny-{out}.gguf"
        convert(folder, path, out)  # type: ignore[arg-type]
        sure = next((i for i, m in enumerate(margins) if m < margin), len(margins))
        assert sure >= 6, margins
        llama = Llama(str(path), n_ctx=256, n_threads=1, verbose=False)
        got: list[int] = []
        for token in llama.generate(ids, temp=0.0, top_k=1, reset=True):
            got.append(token)
            if len(got) == sure:
                break
        assert got == expected[:sure], out
        llama.close()
