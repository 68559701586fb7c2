"""LangChain (langchain-aws) against the real-model server, on the InvokeModel path it uses for Meta models.

``BedrockLLM`` and ``ChatBedrock`` build the Llama 3 prompt themselves, send the native body (``max_gen_len`` is passed
through ``model_kwargs`` as is), read ``generation`` from the body and the token usage from the
``X-Amzn-Bedrock-*-Token-Count`` headers (or from ``amazon-bedrock-invocationMetrics`` in the last stream chunk).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.config import Config
from conftest import DUMMY_CREDENTIALS, Server
from langchain_aws import BedrockLLM, ChatBedrock
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage

MODEL_ID = "meta.llama3-1-8b-instruct-v1:0"
MODEL_KWARGS = {"max_gen_len": 32}


@pytest.fixture
def connection(server: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Constructor arguments that point langchain-aws at `server` with dummy credentials, and nothing else.

    Any AWS_* variable and the local AWS config/credential files are masked so no developer profile leaks into the
    clients langchain-aws creates (it also builds a control-plane ``bedrock`` client from the same settings).
    """
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return {
        "endpoint_url": server.url,
        "region_name": "us-west-2",
        "aws_access_key_id": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "config": Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=300),
    }


def chat_messages() -> list[BaseMessage]:
    return [
        SystemMessage("You are a helpful assistant. Answer in one short sentence."),
        HumanMessage("What is the capital of France?"),
    ]


def test_llm_invoke(connection: dict[str, Any]) -> None:
    llm = BedrockLLM(model_id=MODEL_ID, model_kwargs=MODEL_KWARGS, **connection)
    text = llm.invoke("The three primary colors are")
    assert isinstance(text, str)
    assert text.strip()


def test_llm_stream(connection: dict[str, Any]) -> None:
    llm = BedrockLLM(model_id=MODEL_ID, model_kwargs=MODEL_KWARGS, **connection)
    pieces = list(llm.stream("Count from one to twenty: one, two, three,"))
    assert all(isinstance(piece, str) for piece in pieces)
    non_empty = [piece for piece in pieces if piece]
    assert len(non_empty) >= 3, pieces
    assert "".join(pieces).strip()


def test_chat_invoke(connection: dict[str, Any]) -> None:
    chat = ChatBedrock(model_id=MODEL_ID, model_kwargs=MODEL_KWARGS, **connection)
    message = chat.invoke(chat_messages())
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str)
    assert message.content.strip()
    # Read from the X-Amzn-Bedrock-Input-Token-Count / -Output-Token-Count response headers.
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 0
    assert 0 < usage["output_tokens"] <= MODEL_KWARGS["max_gen_len"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["stop_reason"] in ("stop", "length")


def test_chat_stream(connection: dict[str, Any]) -> None:
    chat = ChatBedrock(model_id=MODEL_ID, model_kwargs=MODEL_KWARGS, **connection)
    chunks = list(chat.stream(chat_messages()))
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    texts = [chunk.content for chunk in chunks if chunk.content]
    assert len(texts) >= 2, chunks
    assert all(isinstance(text, str) for text in texts)
    assert "".join(texts).strip()  # type: ignore[arg-type]
    # The last generation chunk carries the invocation metrics (langchain keeps them in response_metadata).
    metrics = [
        chunk.response_metadata["amazon-bedrock-invocationMetrics"]
        for chunk in chunks
        if "amazon-bedrock-invocationMetrics" in chunk.response_metadata
    ]
    assert len(metrics) == 1, chunks
    assert metrics[0]["inputTokenCount"] > 0
    assert 0 < metrics[0]["outputTokenCount"] <= MODEL_KWARGS["max_gen_len"]
