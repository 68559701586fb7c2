"""Converse clients from three frameworks against the real-model server, with only the endpoint changed.

What each framework does for Meta Llama models (checked in the installed versions):

- langchain-aws ``ChatBedrockConverse`` infers ``supports_tool_choice_values=("auto",)`` for Llama 3.1/3.3 (as
  Bedrock documents), so ``bind_tools(tool_choice=<name>|"any")`` raises ValueError, and
  ``with_structured_output(Model)`` (method ``function_calling``) binds the tool with ``auto``: the model may answer
  in text and the result is then None. What works: ``with_structured_output(Model, method="json_schema")`` (Converse
  ``outputConfig``, enforced here), or declaring ``supports_tool_choice_values=("auto", "any", "tool")``, after which
  named/any tool choice and the default structured output are forced calls, enforced by constrained decoding. It also
  turns streaming off whenever tools are bound for Meta models, unless ``disable_streaming=False``.
- litellm ``bedrock/converse/...`` refuses ``tool_choice`` for Llama (UnsupportedParamsError) unless
  ``allowed_openai_params=["tool_choice"]``; tools without a choice go out as ``auto``.
- llama-index ``BedrockConverse`` sends ``toolChoice.any`` for ``tool_required=True`` and for ``structured_predict``.
"""

import json
import os
from typing import Any, Literal

import jsonschema
import pytest
from conftest import DUMMY_CREDENTIALS, Server
from pydantic import BaseModel, Field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its cost map at import

import litellm
from langchain_aws import ChatBedrockConverse
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.bedrock_converse import BedrockConverse

MODEL = "meta.llama3-1-8b-instruct-v1:0"
REGION = "us-west-2"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials in the environment, and no developer AWS profile or setting leaking in."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for key, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


class Person(BaseModel):
    """A person."""

    name: str = Field(min_length=1, max_length=24, description="The person's first name")
    age: int = Field(description="Age in years")


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather for a city."""
    return json.dumps({"city": city, "temperature": 21 if unit == "celsius" else 70, "sky": "sunny"})


WEATHER_SCHEMA = convert_to_openai_tool(get_weather)["function"]["parameters"]


def question() -> list[BaseMessage]:
    return [SystemMessage("Answer in one short sentence."), HumanMessage("What is the capital of France?")]


# ------------------------------------------------------------------------------------- langchain-aws (Converse API)


def chat_model(server: Server, **kwargs: Any) -> ChatBedrockConverse:
    return ChatBedrockConverse(model=MODEL, endpoint_url=server.url, region_name=REGION, **{"max_tokens": 32, **kwargs})


def test_langchain_invoke(server: Server, aws_env: None) -> None:
    message = chat_model(server).invoke(question())
    assert isinstance(message, AIMessage) and message.text.strip()
    assert message.response_metadata["stopReason"] in ("end_turn", "max_tokens")
    usage = message.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 32
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_langchain_stream(server: Server, aws_env: None) -> None:
    chunks = list(chat_model(server).stream(question()))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert sum(1 for chunk in chunks if chunk.text) > 1  # really streamed, not one piece
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.text.strip()
    assert whole.response_metadata["stopReason"] in ("end_turn", "max_tokens")
    assert whole.usage_metadata is not None and whole.usage_metadata["input_tokens"] > 0


def test_langchain_infers_auto_only_tool_choice_for_llama(server: Server, aws_env: None) -> None:
    """Pinned third-party behaviour the module docstring relies on (no request is sent)."""
    model = chat_model(server)
    assert tuple(model.supports_tool_choice_values or ()) == ("auto",)
    for choice in ("get_weather", "any"):
        with pytest.raises(ValueError, match="does not currently support tool_choice"):
            model.bind_tools([get_weather], tool_choice=choice)


def test_langchain_structured_output_json_schema(server: Server, aws_env: None) -> None:
    structured = chat_model(server, max_tokens=64).with_structured_output(Person, method="json_schema")
    person = structured.invoke("Invent a person.")
    assert isinstance(person, Person) and person.name


def test_langchain_structured_output_by_forced_tool(server: Server, aws_env: None) -> None:
    model = chat_model(server, max_tokens=64, supports_tool_choice_values=("auto", "any", "tool"))
    result = model.with_structured_output(Person, include_raw=True).invoke("Invent a person.")
    assert result["parsing_error"] is None
    assert isinstance(result["parsed"], Person)
    assert result["raw"].response_metadata["stopReason"] == "tool_use"


@pytest.mark.parametrize("choice", ["get_weather", "any"])
def test_langchain_forced_tool_call_and_round_trip(server: Server, aws_env: None, choice: str) -> None:
    model = chat_model(server, max_tokens=64, supports_tool_choice_values=("auto", "any", "tool"))
    history: list[BaseMessage] = [HumanMessage("What's the weather in Paris?")]
    called = model.bind_tools([get_weather], tool_choice=choice).invoke(history)
    assert isinstance(called, AIMessage) and called.response_metadata["stopReason"] == "tool_use"
    assert len(called.tool_calls) == 1 and not called.invalid_tool_calls
    tool_call = called.tool_calls[0]
    assert tool_call["name"] == "get_weather" and str(tool_call["id"]).startswith("tooluse_")
    jsonschema.validate(tool_call["args"], WEATHER_SCHEMA)
    tool_message = get_weather.invoke(tool_call)  # a ToolMessage carrying the call's id
    history += [called, tool_message]
    answer = model.bind_tools([get_weather]).invoke(history)
    # The 135M model may answer or call again: either is a well-formed turn.
    assert isinstance(answer, AIMessage)
    if answer.tool_calls:
        assert answer.response_metadata["stopReason"] == "tool_use"
        assert all(call["name"] == "get_weather" for call in answer.tool_calls)
    else:
        assert answer.text.strip() and answer.response_metadata["stopReason"] in ("end_turn", "max_tokens")
    assert answer.usage_metadata is not None
    assert called.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] > called.usage_metadata["input_tokens"]


def test_langchain_round_trip_with_auto_tool_choice(server: Server, aws_env: None) -> None:
    """The default model (auto only): a history with a call and its ToolMessage is accepted and answered."""
    model = chat_model(server).bind_tools([get_weather])
    call = {"name": "get_weather", "args": {"city": "Oslo", "unit": "celsius"}, "id": "tooluse_earlier0001",
            "type": "tool_call"}
    history = [HumanMessage("What's the weather in Oslo?"), AIMessage("", tool_calls=[call]), get_weather.invoke(call)]
    answer = model.invoke(history)
    assert isinstance(answer, AIMessage)
    assert answer.tool_calls or answer.text.strip()
    assert answer.response_metadata["stopReason"] in ("end_turn", "max_tokens", "tool_use")


def test_langchain_streamed_forced_tool_call(server: Server, aws_env: None) -> None:
    model = chat_model(server, max_tokens=64, supports_tool_choice_values=("auto", "any", "tool"),
                       disable_streaming=False)
    chunks = list(model.bind_tools([get_weather], tool_choice="get_weather").stream("Weather in Rome?"))
    assert sum(1 for chunk in chunks if chunk.tool_call_chunks) > 2  # input fragments, not one piece
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk) and len(whole.tool_calls) == 1 and not whole.invalid_tool_calls
    assert whole.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(whole.tool_calls[0]["args"], WEATHER_SCHEMA)


# ----------------------------------------------------------------------------------------------------------- litellm


LITELLM_MODEL = f"bedrock/converse/{MODEL}"
# Third-party warnings litellm triggers and we cannot avoid: its first completion lazily imports its GitHub Copilot
# module, whose ReadOnly TypedDicts make pydantic warn; its stream wrapper reads a pydantic attribute deprecated in
# pydantic 2.11.
LITELLM_READONLY = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* (is|are) using the `ReadOnly` qualifier:UserWarning"
)
LITELLM_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:Accessing the 'model_(computed_)?fields' attribute on the instance is deprecated:DeprecationWarning"
)


def litellm_warnings(test: Any) -> Any:
    return LITELLM_READONLY(LITELLM_DEPRECATED(test))


OPENAI_WEATHER = convert_to_openai_tool(get_weather)


def litellm_args(server: Server) -> dict[str, Any]:
    return {"model": LITELLM_MODEL, "aws_bedrock_runtime_endpoint": server.url, "aws_region_name": REGION,
            "max_tokens": 32, "num_retries": 0}


LITELLM_MESSAGES = [{"role": "system", "content": "Answer in one short sentence."},
                    {"role": "user", "content": "What is the capital of France?"}]


@litellm_warnings
def test_litellm_completion(server: Server, aws_env: None) -> None:
    response = litellm.completion(messages=LITELLM_MESSAGES, **litellm_args(server))
    choice = response.choices[0]
    assert choice.message.content.strip() and choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@litellm_warnings
def test_litellm_streaming(server: Server, aws_env: None) -> None:
    chunks = list(litellm.completion(messages=LITELLM_MESSAGES, stream=True, stream_options={"include_usage": True},
                                     **litellm_args(server)))
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces).strip()
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    usages = [chunk.usage for chunk in chunks if getattr(chunk, "usage", None)]
    assert usages and usages[-1].prompt_tokens > 0 and usages[-1].completion_tokens > 0


@litellm_warnings
@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_litellm_forced_tool_call(server: Server, aws_env: None, stream: bool) -> None:
    # litellm refuses tool_choice for Bedrock Llama unless the caller lets it through.
    response = litellm.completion(
        messages=[{"role": "user", "content": "What's the weather in Paris?"}], tools=[OPENAI_WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, allowed_openai_params=["tool_choice"],
        stream=stream, **{**litellm_args(server), "max_tokens": 64},
    )
    if stream:
        chunks = list(response)
        fragments = [call.function.arguments for chunk in chunks if chunk.choices
                     for call in chunk.choices[0].delta.tool_calls or [] if call.function.arguments]
        names = [call.function.name for chunk in chunks if chunk.choices
                 for call in chunk.choices[0].delta.tool_calls or [] if call.function.name]
        assert names == ["get_weather"] and len(fragments) > 1
        arguments = "".join(fragments)
    else:
        message = response.choices[0].message
        assert response.choices[0].finish_reason == "tool_calls" and len(message.tool_calls) == 1
        assert message.tool_calls[0].function.name == "get_weather"
        arguments = message.tool_calls[0].function.arguments
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)


@litellm_warnings
def test_litellm_tool_round_trip(server: Server, aws_env: None) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "tooluse_earlier0001", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "celsius"})}}]},
        {"role": "tool", "tool_call_id": "tooluse_earlier0001", "content": json.dumps({"temperature": -3})},
    ]
    response = litellm.completion(messages=messages, tools=[OPENAI_WEATHER], **litellm_args(server))
    message = response.choices[0].message
    assert message.tool_calls or message.content.strip()
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


# ------------------------------------------------------------------------------------------------------- llama-index


def llama_index_llm(server: Server, **kwargs: Any) -> BedrockConverse:
    return BedrockConverse(model=MODEL, endpoint_url=server.url, region_name=REGION,
                           **{"max_tokens": 32, "max_retries": 1, **kwargs})


LLAMA_INDEX_MESSAGES = [ChatMessage(role=MessageRole.SYSTEM, content="Answer in one short sentence."),
                        ChatMessage(role=MessageRole.USER, content="What is the capital of France?")]


def test_llama_index_chat(server: Server, aws_env: None) -> None:
    response = llama_index_llm(server).chat(LLAMA_INDEX_MESSAGES)
    assert response.message.role == MessageRole.ASSISTANT and (response.message.content or "").strip()
    assert response.raw["stopReason"] in ("end_turn", "max_tokens")
    assert response.additional_kwargs["prompt_tokens"] > 0
    assert 0 < response.additional_kwargs["completion_tokens"] <= 32


def test_llama_index_stream_chat(server: Server, aws_env: None) -> None:
    responses = list(llama_index_llm(server).stream_chat(LLAMA_INDEX_MESSAGES))
    assert sum(1 for response in responses if response.delta) > 1
    assert (responses[-1].message.content or "").strip()


def weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """Current weather for a city."""
    return json.dumps({"city": city, "temperature": 21, "unit": unit})


def test_llama_index_required_tool_and_round_trip(server: Server, aws_env: None) -> None:
    llm = llama_index_llm(server, max_tokens=64)
    function = FunctionTool.from_defaults(fn=weather, name="get_weather")
    question = ChatMessage(role=MessageRole.USER, content="What's the weather in Paris?")
    called = llm.chat_with_tools([function], chat_history=[question], tool_required=True)  # toolChoice any
    calls = llm.get_tool_calls_from_response(called, error_on_no_tool_call=True)
    assert len(calls) == 1 and calls[0].tool_name == "get_weather"
    jsonschema.validate(calls[0].tool_kwargs, function.metadata.get_parameters_dict())
    output = function.call(**calls[0].tool_kwargs)
    result = ChatMessage(role=MessageRole.TOOL, content=str(output),
                         additional_kwargs={"tool_call_id": calls[0].tool_id})
    answer = llm.chat_with_tools([function], chat_history=[question, called.message, result])
    assert answer.raw["stopReason"] in ("end_turn", "max_tokens", "tool_use")
    assert answer.message.content or llm.get_tool_calls_from_response(answer, error_on_no_tool_call=False)


def test_llama_index_structured_predict(server: Server, aws_env: None) -> None:
    person = llama_index_llm(server, max_tokens=64).structured_predict(
        Person, PromptTemplate("Invent a person called {name}."), name="Bob"
    )
    assert isinstance(person, Person) and person.name
