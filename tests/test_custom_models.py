"""Custom models served as LoRA adapters: a real peft adapter over the embedded SmolLM2, converted to a GGUF LoRA,
checked token for token against transformers + peft, hot-loaded by a running server through CreateCustomModel, and
invoked by its ARN, a Provisioned Throughput and a custom model deployment; batching and the prefix cache per
adapter."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.engines.decode_loop import LlamaCppConfig
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.modelfiles.lora_gguf import AdapterFormatError, convert_peft, read_base
from llamarock.services.deployments import embedded_model_path
from llamarock.settings import Settings
from llamarock.types import Adapter, GenerationChunk, GenerationRequest, SamplingParams
from tests.conftest import Server, start_server, stop_server

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

PROMPT = "The capital of France is"
CHECKED_TOKENS = 10
BASE = "meta.llama3-1-8b-instruct-v1:0"  # served by the embedded deployment
ACCOUNT = Settings.model_fields["account_id"].default  # the account the servers answer as
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Adapters:
    first: Path  # peft folders
    second: Path
    first_gguf: Path  # their GGUF LoRAs
    second_gguf: Path
    expected_tokens: list[int]  # transformers + peft's greedy tokens after PROMPT with the first adapter
    prompt_tokens: list[int]


def _engine(**kwargs: Any) -> LlamaCppEngine:
    engine = LlamaCppEngine("lora", LlamaCppConfig(model_path=embedded_model_path(), threads=2, **kwargs))
    asyncio.run(engine.load())
    return engine


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    """Two rank-8 LoRAs on every projection of the embedded model (random weights, fixed seeds, large enough to
    change its answers), and what transformers + peft generate greedily with the first."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapters")
    path = embedded_model_path()
    engine = _engine(slots=1)
    prompt_tokens = engine._tokens_of(PROMPT)
    asyncio.run(engine.close())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    lora.eval()

    def randomise(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in lora.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)

    randomise(1)
    with torch.no_grad():
        generated = lora.generate(torch.tensor([prompt_tokens]), max_new_tokens=CHECKED_TOKENS, do_sample=False)
    expected = generated[0, len(prompt_tokens):].tolist()
    lora.save_pretrained(folder / "first", save_embedding_layers=False)
    randomise(2)
    lora.save_pretrained(folder / "second", save_embedding_layers=False)
    base = read_base(path)
    convert_peft(folder / "first", base, folder / "first.gguf")
    convert_peft(folder / "second", base, folder / "second.gguf")
    return Adapters(folder / "first", folder / "second", folder / "first.gguf", folder / "second.gguf", expected,
                    prompt_tokens)


def _request(prompt: str, adapter: Adapter | None, max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest(sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens), prompt=prompt,
                             adapter=adapter)


async def _collect(engine: LlamaCppEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


# ------------------------------------------------------------------------------------------------ conversion


def test_llama_cpp_with_the_converted_lora_generates_what_transformers_and_peft_do(adapters: Adapters) -> None:
    engine = _engine(slots=2)
    try:
        lora = Adapter("first", str(adapters.first_gguf))
        with_lora = _text(asyncio.run(_collect(engine, _request(PROMPT, lora, CHECKED_TOKENS))))
        base = _text(asyncio.run(_collect(engine, _request(PROMPT, None, CHECKED_TOKENS))))
        expected = b"".join(engine._loop._piece(token) for token in adapters.expected_tokens).decode()  # type: ignore[union-attr]
    finally:
        asyncio.run(engine.close())
    # The query and key projections' B rows were permuted into llama.cpp's rotary layout: without that the
    # attention of every layer would differ and so would the tokens.
    assert with_lora == expected
    assert base != with_lora


def test_a_malformed_adapter_is_refused_naming_the_problem(adapters: Adapters, tmp_path: Path) -> None:
    base = read_base(embedded_model_path())
    (tmp_path / "dora").mkdir()
    config = json.loads((adapters.first / "adapter_config.json").read_text())
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterFormatError, match="DoRA"):
        convert_peft(tmp_path / "dora", base, tmp_path / "out.gguf")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=r"adapter_model\.safetensors"):
        convert_peft(tmp_path / "none", base, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


# ------------------------------------------------------------------------------------------------ engine


def test_mixed_adapters_in_one_batch_give_each_request_its_own_answer(adapters: Adapters) -> None:
    first = Adapter("first", str(adapters.first_gguf))
    second = Adapter("second", str(adapters.second_gguf))
    prompts = ["Once upon a time, a small robot", "Water boils at a temperature of", "The quick brown fox"]
    mix = [(prompts[i % 3], (None, first, second)[i % 3 if i < 6 else (i + 1) % 3]) for i in range(8)]

    def run(requests: list[tuple[str, Adapter | None]]) -> list[str]:
        engine = _engine(slots=9)

        async def go() -> list[list[GenerationChunk]]:
            return list(await asyncio.gather(*(_collect(engine, _request(p, a)) for p, a in requests)))

        try:
            return [_text(chunks) for chunks in asyncio.run(go())]
        finally:
            asyncio.run(engine.close())

    alone = run([(PROMPT, first)])[0]
    together = run([(PROMPT, first), *mix])
    assert together[0] == alone
    by_adapter = {(p, a.key if a else None): text for (p, a), text in zip(mix, together[1:], strict=True)}
    for prompt in prompts:  # each adapter answers differently from the base model and from the other adapter
        answers = [by_adapter.get((prompt, key)) for key in (None, "first", "second")]
        present = [a for a in answers if a is not None]
        assert len(set(present)) == len(present)


def test_the_prefix_cache_is_kept_per_adapter(adapters: Adapters) -> None:
    engine = _engine(slots=2)
    first = Adapter("first", str(adapters.first_gguf))
    prompt = "You are a careful assistant who answers in one sentence. " * 20 + "What is rain?"
    try:
        base = asyncio.run(_collect(engine, _request(prompt, None, 4)))
        lora_once = asyncio.run(_collect(engine, _request(prompt, first, 4)))
        lora_again = asyncio.run(_collect(engine, _request(prompt, first, 4)))
        base_again = asyncio.run(_collect(engine, _request(prompt, None, 4)))
    finally:
        asyncio.run(engine.close())
    assert base[0].cached_tokens == 0
    assert lora_once[0].cached_tokens == 0  # the base model's KV of the same prompt is not the adapter's
    assert (lora_again[0].cached_tokens or 0) > 100
    assert (base_again[0].cached_tokens or 0) > 100
    assert _text(lora_again) == _text(lora_once) and _text(base_again) == _text(base)


# ------------------------------------------------------------------------------------------------ a live server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("lora-server"), "--provisioning-seconds", "0")
    yield server
    stop_server(server)


def _upload(server: Server, bucket: str, prefix: str, files: list[Path]) -> str:
    s3 = server.client("s3")
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    for path in files:
        s3.put_object(Bucket=bucket, Key=f"{prefix}{path.name}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def _peft_files(folder: Path) -> list[Path]:
    return [folder / "adapter_config.json", folder / "adapter_model.safetensors"]


def _converse(server: Server, model_id: str) -> str:
    response = server.client().converse(
        modelId=model_id, messages=[{"role": "user", "content": [{"text": "Name a colour."}]}],
        inferenceConfig={"maxTokens": 16, "temperature": 0.0},
    )
    return str(response["output"]["message"]["content"][0]["text"])


def _opening(text: str) -> str:
    """An answer's first words: which adapter answered. (A repeat of a prompt reuses its cached prefix, and its
    greedy continuation may part from the first answer at a near tie several tokens in, so whole answers are not
    compared across calls.)"""
    return text[:15]


def _create(server: Server, name: str, uri: str, base: str | None = BASE) -> str:
    tags = [{"key": "llamarock:baseModel", "value": base}] if base else []
    return str(server.client("bedrock").create_custom_model(
        modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}}, modelTags=tags)["modelArn"])


def test_a_custom_model_is_served_without_restart_by_arn_pt_and_deployment(live: Server, adapters: Adapters) -> None:
    bedrock = live.client("bedrock")
    base = _converse(live, BASE)
    arn = _create(live, "first-lora", _upload(live, "adapters", "first/", _peft_files(adapters.first)))
    assert arn.startswith("arn:aws:bedrock:us-west-2:") and f":custom-model/{BASE}/" in arn
    by_arn = _opening(_converse(live, arn))
    assert by_arn != _opening(base)
    assert _opening(_converse(live, "first-lora")) == by_arn  # by name too

    pt = bedrock.create_provisioned_model_throughput(provisionedModelName="first-pt", modelId=arn, modelUnits=1)
    pt_arn = pt["provisionedModelArn"]
    deadline = time.monotonic() + 60
    while (shown := bedrock.get_provisioned_model_throughput(provisionedModelId=pt_arn))["status"] != "InService":
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert shown["modelArn"] == arn and shown["foundationModelArn"].endswith(f"foundation-model/{BASE}")
    assert _opening(_converse(live, pt_arn)) == by_arn

    deployment_arn = bedrock.create_custom_model_deployment(modelDeploymentName="first-dep", modelArn=arn)[
        "customModelDeploymentArn"]
    got = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)
    assert got["status"] == "Active" and got["modelArn"] == arn
    assert _opening(_converse(live, deployment_arn)) == by_arn
    listed = bedrock.list_custom_model_deployments()["modelDeploymentSummaries"]
    assert [d["customModelDeploymentArn"] for d in listed] == [deployment_arn]

    # A second adapter, uploaded as a GGUF LoRA; the deployment moves to it.
    second = _create(live, "second-lora", _upload(live, "adapters", "second/", [adapters.second_gguf]))
    second_answer = _opening(_converse(live, second))
    assert second_answer not in (_opening(base), by_arn)
    bedrock.update_custom_model_deployment(customModelDeploymentIdentifier="first-dep", modelArn=second)
    assert _opening(_converse(live, deployment_arn)) == second_answer
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)
    with pytest.raises(ClientError) as gone:
        _converse(live, deployment_arn)
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    bedrock.delete_provisioned_model_throughput(provisionedModelId=pt_arn)


def test_custom_model_errors_are_bedrocks(live: Server, adapters: Adapters, tmp_path: Path) -> None:
    bedrock = live.client("bedrock")
    unknown = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:custom-model/{BASE}/abcdefghijkl"
    with pytest.raises(ClientError) as invalid:
        _converse(live, unknown)
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    assert "The provided model identifier is invalid." in invalid.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        bedrock.create_provisioned_model_throughput(provisionedModelName="nope", modelId=unknown, modelUnits=1)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"

    config = json.loads((adapters.first / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))
    uri = _upload(live, "broken", "bias/", [tmp_path / "adapter_config.json", adapters.first /
                                            "adapter_model.safetensors"])
    with pytest.raises(ClientError) as malformed:
        _create(live, "bias-lora", uri)
    assert malformed.value.response["Error"]["Code"] == "ValidationException"
    assert "bias" in malformed.value.response["Error"]["Message"]
    uri = _upload(live, "broken", "weights-only/", [adapters.first / "adapter_model.safetensors"])
    with pytest.raises(ClientError) as no_config:
        _create(live, "weights-lora", uri)
    assert "adapter_config.json" in no_config.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as no_base:
        _create(live, "baseless-lora", _upload(live, "adapters", "first/", _peft_files(adapters.first)), base=None)
    assert no_base.value.response["Error"]["Code"] == "ValidationException"
    assert "llamarock:baseModel" in no_base.value.response["Error"]["Message"]


def test_on_demand_custom_model_in_bedrock_mode(adapters: Adapters, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--compat", "bedrock", "--provisioning-seconds", "0")
    try:
        arn = _create(server, "compat-lora", _upload(server, "adapters", "first/", [adapters.first_gguf]))
        with pytest.raises(ClientError) as refused:
            _converse(server, arn)
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert "custom-model" in refused.value.response["Error"]["Message"]  # the runtime pattern refuses it
        deployment = server.client("bedrock").create_custom_model_deployment(
            modelDeploymentName="compat-dep", modelArn=arn)["customModelDeploymentArn"]
        assert _converse(server, deployment)
    finally:
        stop_server(server)


def test_a_batch_job_runs_on_a_custom_model(live: Server) -> None:
    # The custom model the first test made (a LoRA over the embedded model), by its ARN, as Bedrock's batch allows.
    bedrock, s3 = live.client("bedrock"), live.client("s3")
    [model] = bedrock.list_custom_models(nameContains="first-lora")["modelSummaries"]
    record = {"messages": [{"role": "user", "content": [{"text": "Name a colour."}]}],
              "inferenceConfig": {"maxTokens": 16, "temperature": 0.0}}
    s3.put_object(Bucket="adapters", Key="batch/input.jsonl", Body=json.dumps(
        {"recordId": "R1", "modelInput": record}).encode() + b"\n")
    job = bedrock.create_model_invocation_job(
        jobName="lora-batch", roleArn="arn:aws:iam::123456789012:role/batch", modelId=model["modelArn"],
        modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://adapters/batch/input.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://adapters/batch/out/"}},
    )["jobArn"]
    deadline = time.monotonic() + 120
    while (status := bedrock.get_model_invocation_job(jobIdentifier=job)["status"]) not in (
            "Completed", "PartiallyCompleted", "Failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    out = s3.get_object(Bucket="adapters", Key=f"batch/out/{job.rsplit('/', 1)[-1]}/input.jsonl.out")
    [line] = [json.loads(text) for text in out["Body"].read().decode().splitlines()]
    assert status == "Completed", line
    answer = line["modelOutput"]["output"]["message"]["content"][0]["text"]
    assert _opening(answer) == _opening(_converse(live, model["modelArn"]))
    assert _opening(answer) != _opening(_converse(live, BASE))
