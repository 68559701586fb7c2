"""``serve --compat bedrock`` refuses what Bedrock refuses for Meta models; the default ``extended`` mode serves it.

Each test runs the same request against both modes (a fake-engine server each) and is named in
``llamarock/bedrock/compat.py``'s DIFFERENCES, from which docs/compat.md is generated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from botocore.exceptions import ClientError

from llamarock.bedrock import compat
from tests.conftest import FAKE_CONFIG, Server, start_server, stop_server
from tests.test_converse import FAKE_MODEL, WEATHER, error_of, stream_events, user


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The fake deployments of ``fake_server``, served with ``--compat bedrock``."""
    srv = start_server(tmp_path_factory.mktemp("strict"), "--compat", "bedrock", config=FAKE_CONFIG)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def strict(strict_server: Server) -> Any:
    return strict_server.client()


def test_every_difference_names_a_test_here() -> None:
    names = {name for name in globals() if name.startswith("test_")}
    for row in compat.DIFFERENCES:
        path, _, test = row.test.partition("::")
        assert path == "tests/test_compat.py" and test in names, row


@pytest.mark.parametrize("choice", [{"any": {}}, {"tool": {"name": "get_weather"}}])
def test_tool_choice(fake_runtime: Any, strict: Any, choice: dict[str, Any]) -> None:
    kwargs = {"modelId": FAKE_MODEL, "messages": [user("Weather in Paris?")],
              "toolConfig": {"tools": [WEATHER], "toolChoice": choice}}
    assert fake_runtime.converse(**kwargs)["stopReason"] == "tool_use"
    field = f"toolConfig.toolChoice.{next(iter(choice))}"
    assert error_of(strict.converse, **kwargs) == (
        "ValidationException", 400, f"This model doesn't support the {field} field. Remove {field} and try again.")
    auto = {**kwargs, "toolConfig": {"tools": [WEATHER], "toolChoice": {"auto": {}}}}
    assert strict.converse(**auto)["output"]["message"]["role"] == "assistant"


def test_streaming_tool_use(fake_runtime: Any, strict: Any) -> None:
    kwargs = {"modelId": FAKE_MODEL, "messages": [user("Weather in Paris?")], "toolConfig": {"tools": [WEATHER]}}
    assert stream_events(fake_runtime, **kwargs)[-1][0] == "metadata"
    assert error_of(strict.converse_stream, **kwargs) == (
        "ValidationException", 400, "This model doesn't support tool use in streaming mode.")
    assert strict.converse(**kwargs)["output"]["message"]["role"] == "assistant"


def test_structured_output(fake_runtime: Any, strict: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    kwargs = {"modelId": FAKE_MODEL, "messages": [user("Invent a name.")], "outputConfig": {"textFormat": {
        "type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema)}}}}}
    assert "name" in json.loads(fake_runtime.converse(**kwargs)["output"]["message"]["content"][0]["text"])
    code, status, message = error_of(strict.converse, **kwargs)
    assert (code, status) == ("ValidationException", 400)
    assert message == ("This model doesn't support the outputConfig.textFormat field. Remove outputConfig.textFormat "
                       "and try again.")


def test_cache_counts(strict: Any) -> None:
    cache = {"cachePoint": {"type": "default"}}
    request = {"modelId": FAKE_MODEL, "system": [{"text": "A long shared system prompt. " * 20}, cache],
               "messages": [user("Hello")]}
    for _ in range(2):
        usage = strict.converse(**request)["usage"]
        assert "cacheReadInputTokens" not in usage and "cacheWriteInputTokens" not in usage
        counted = strict.count_tokens(modelId=FAKE_MODEL, input={"converse": {
            "system": request["system"], "messages": request["messages"]}})["inputTokens"]
        assert usage["inputTokens"] == counted
    response = strict.invoke_model(modelId=FAKE_MODEL, body=json.dumps({"prompt": "Hello " * 30}))
    response["body"].read()
    assert "x-amzn-bedrock-cache-read-input-token-count" not in response["ResponseMetadata"]["HTTPHeaders"]


@pytest.mark.parametrize("tier", ["priority", "flex", "reserved"])
def test_service_tier(fake_runtime: Any, strict: Any, tier: str) -> None:
    kwargs = {"modelId": FAKE_MODEL, "messages": [user("hi")], "serviceTier": {"type": tier}}
    assert fake_runtime.converse(**kwargs)["output"]["message"]["role"] == "assistant"
    expected = ("ValidationException", 400,
                f"The service tier {tier} isn't supported for this model. Retry with the default service tier.")
    assert error_of(strict.converse, **kwargs) == expected
    assert error_of(strict.invoke_model, modelId=FAKE_MODEL, body=json.dumps({"prompt": "hi"}),
                    serviceTier=tier) == expected
    default = {**kwargs, "serviceTier": {"type": "default"}}
    assert strict.converse(**default)["output"]["message"]["role"] == "assistant"


@pytest.mark.parametrize("model_id", ["meta.llama3-2-1b-instruct-v1:0", "meta.llama3-3-70b-instruct-v1:0"])
def test_profile_only_models(fake_runtime: Any, strict: Any, model_id: str) -> None:
    assert fake_runtime.converse(modelId=model_id, messages=[user("hi")])["stopReason"]  # us-west-2 on demand
    code, status, message = error_of(strict.converse, modelId=model_id, messages=[user("hi")])
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith(f"Invocation of model ID {model_id} with on-demand throughput isn\u2019t supported. "
                              "Retry your request with the ID or ARN of an inference profile that contains this "
                              "model.")
    assert strict.converse(modelId="us." + model_id, messages=[user("hi")])["stopReason"]


def test_openai_chat_completions(fake_server: Server, strict_server: Server) -> None:
    def sdk(srv: Server) -> openai.OpenAI:
        return openai.OpenAI(base_url=srv.url + "/openai/v1", api_key="anything", max_retries=0, timeout=60)

    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with sdk(fake_server) as extended, sdk(strict_server) as bedrock:
        assert FAKE_MODEL in {m.id for m in extended.models.list()}
        assert extended.chat.completions.create(model=FAKE_MODEL, messages=messages).choices[0].message.content
        assert not [m.id for m in bedrock.models.list() if m.id.removeprefix("us.").startswith("meta.")]
        with pytest.raises(openai.NotFoundError) as info:
            bedrock.chat.completions.create(model=FAKE_MODEL, messages=messages)
        assert "--compat bedrock" in str(info.value) and info.value.code == "model_not_found"


def test_end_of_life(fake_runtime: Any, strict: Any, strict_server: Server) -> None:
    ended = "meta.llama2-13b-chat-v1"
    assert fake_runtime.converse(modelId=ended, messages=[user("hi")])["output"]["message"]["role"] == "assistant"
    assert error_of(strict.converse, modelId=ended, messages=[user("hi")]) == (
        "ResourceNotFoundException", 404,
        "This model version has reached the end of its life. Please refer to the AWS documentation for more details.")
    listed = {s["modelId"] for s in strict_server.client("bedrock").list_foundation_models()["modelSummaries"]}
    assert ended not in listed and FAKE_MODEL in listed


SMALL_CACHE_CONFIG = """
[[deployments]]
name = "embedded-small-cache"
models = ["*"]
prefix_cache_tokens = 200
"""


def test_cache_points(tmp_path_factory: pytest.TempPathFactory, strict: Any) -> None:
    cache = {"cachePoint": {"type": "default"}}

    def manual(kind: str) -> str:
        return f"{kind} manual. " + " ".join(f"{kind} {n} opens at {n * 7} kPa." for n in range(1, 6))

    def ask(client: Any, kind: str, question: str, mark: bool) -> dict[str, Any]:
        system = [{"text": manual(kind)}, *([cache] if mark else [])]
        return client.converse(modelId=FAKE_MODEL, system=system, messages=[user(question)],  # type: ignore[no-any-return]
                               inferenceConfig={"maxTokens": 4, "temperature": 0})["usage"]

    # Bedrock accepts cachePoint blocks for Llama and ignores them.
    assert "cacheReadInputTokens" not in ask(strict, "Valve", "When does valve 3 open?", True)

    # Extended: a marked prefix (the system prompt) outlives newer unrelated requests in a prefix cache with room
    # for two or three of them; an unmarked one is pushed out.
    srv = start_server(tmp_path_factory.mktemp("small-cache"), config=SMALL_CACHE_CONFIG)
    try:
        client = srv.client()
        ask(client, "Valve", "When does valve 3 open?", True)
        ask(client, "Pump", "When does pump 3 open?", False)
        for n in (100, 200, 300):
            client.converse(modelId=FAKE_MODEL, system=[{"text": "Answer with numbers only."}],
                            messages=[user(f"Count on from {n}: " + ", ".join(str(n + i) for i in range(12)))],
                            inferenceConfig={"maxTokens": 4})
        marked = ask(client, "Valve", "Which valve opens at 35 kPa?", True)
        unmarked = ask(client, "Pump", "Which pump opens at 35 kPa?", False)
    finally:
        stop_server(srv)
    assert marked["cacheReadInputTokens"] >= marked["inputTokens"] + marked["cacheReadInputTokens"] - 20
    assert unmarked["cacheReadInputTokens"] < 10


def test_knowledge_base_storage(fake_server: Server, strict_server: Server) -> None:
    configuration = {"type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
        "embeddingModelArn": "arn:aws:bedrock:us-west-2::foundation-model/amazon.titan-embed-text-v2:0"}}
    created = fake_server.client("bedrock-agent").create_knowledge_base(
        name="compat-kb", roleArn="arn:aws:iam::000000000000:role/kb", knowledgeBaseConfiguration=configuration)
    assert created["knowledgeBase"]["status"] == "CREATING"
    assert "storageConfiguration" not in created["knowledgeBase"]
    strict_agent = strict_server.client("bedrock-agent")
    with pytest.raises(ClientError) as error:
        strict_agent.create_knowledge_base(name="compat-kb", roleArn="arn:aws:iam::000000000000:role/kb",
                                           knowledgeBaseConfiguration=configuration)
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert "storageConfiguration is required" in error.value.response["Error"]["Message"]
    storage = {"type": "OPENSEARCH_SERVERLESS", "opensearchServerlessConfiguration": {
        "collectionArn": "arn:aws:aoss:us-west-2:000000000000:collection/abc", "vectorIndexName": "kb",
        "fieldMapping": {"vectorField": "v", "textField": "t", "metadataField": "m"}}}
    accepted = strict_agent.create_knowledge_base(name="compat-kb", roleArn="arn:aws:iam::000000000000:role/kb",
                                                  knowledgeBaseConfiguration=configuration,
                                                  storageConfiguration=storage)
    assert accepted["knowledgeBase"]["storageConfiguration"] == storage


def test_guardrail_tool_checks(fake_server: Server, strict_server: Server) -> None:
    """A denied word in a tool result: the guardrail blocks it in extended mode, and passes it, as Bedrock does,
    with --compat bedrock."""
    messages = [user("Look it up"),
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather",
                                                               "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t1",
                                                             "content": [{"text": "kumquat weather"}]}}]}]
    reasons = []
    for srv in (fake_server, strict_server):
        made = srv.client("bedrock").create_guardrail(
            name="tools", blockedInputMessaging="blocked", blockedOutputsMessaging="blocked",
            wordPolicyConfig={"wordsConfig": [{"text": "kumquat"}]})
        reasons.append(srv.client().converse(
            modelId=FAKE_MODEL, messages=messages, toolConfig={"tools": [WEATHER]},
            guardrailConfig={"guardrailIdentifier": made["guardrailId"], "guardrailVersion": "DRAFT"},
        )["stopReason"])
    assert reasons[0] == "guardrail_intervened" and reasons[1] != "guardrail_intervened"


def test_custom_model_on_demand(fake_runtime: Any, strict: Any) -> None:
    # A custom model's ARN is a custom-model lookup on demand beyond Bedrock (here: none such, so the lookup's
    # answer); in bedrock mode Converse's modelId pattern refuses it before any lookup, as Bedrock does (serving a
    # real custom model both ways: tests/test_custom_models.py::test_on_demand_custom_model_in_bedrock_mode).
    arn = "arn:aws:bedrock:us-west-2:000000000000:custom-model/meta.llama3-2-1b-instruct-v1:0/abcdefghijkl"
    kwargs = {"modelId": arn, "messages": [user("Hi")]}
    assert "No custom model" in error_of(fake_runtime.converse, **kwargs)[2]
    assert "failed to satisfy constraint: Member must satisfy regular expression pattern" in error_of(
        strict.converse, **kwargs)[2]
