"""One contract every engine keeps, run on the fake engine, on llama.cpp with the real SmolLM2 model, and on the
remote engines (llama-server and OpenAI dialects) over two real llama-server replicas serving the same model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from llama_replicas import start_replicas, stop_replicas

from llamarock.engines.base import Engine
from llamarock.engines.decode_loop import LlamaCppConfig
from llamarock.engines.fake import FakeEngine
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.engines.remote import RemoteConfig
from llamarock.engines.remote_llamaserver import LlamaServerEngine
from llamarock.engines.remote_openai import OpenAIEngine
from llamarock.engines.router import Endpoint
from llamarock.errors import ContextOverflowError, EngineNotReadyError
from llamarock.services.deployments import embedded_model_path
from llamarock.types import ChatMessage, GenerationChunk, GenerationRequest, SamplingParams

REMOTE = {"llama-server": LlamaServerEngine, "openai": OpenAIEngine}
KINDS = ("fake", "llamacpp", *REMOTE)


@pytest.fixture(scope="module")
def replica_urls() -> Iterator[tuple[str, ...]]:
    """Two llama-server replicas (xllamacpp) for the remote engines, started once for the module."""
    replicas = start_replicas(2, slots=4, context=4096)
    yield tuple(r.url for r in replicas)
    stop_replicas(replicas)


def _make(kind: str, context_length: int | None = None, urls: tuple[str, ...] = ()) -> Engine:
    if kind in REMOTE:
        config = RemoteConfig(endpoints=tuple(Endpoint(url) for url in urls), context_length=context_length)
        return REMOTE[kind](kind, config)
    if kind == "fake":
        return FakeEngine("fake", context_length=context_length or 8192, reply=" ".join(["word"] * 40))
    return LlamaCppEngine("llamacpp", LlamaCppConfig(model_path=embedded_model_path(), threads=2,
                                                  context_length=context_length))


@pytest.fixture(scope="module", params=KINDS)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    urls = request.getfixturevalue("replica_urls") if request.param in REMOTE else ()
    eng = _make(request.param, urls=urls)
    asyncio.run(eng.load())
    yield eng
    asyncio.run(eng.close())


def _request(max_tokens: int = 8, temperature: float = 0.0, seed: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        sampling=SamplingParams(temperature=temperature, top_p=0.9, max_tokens=max_tokens, seed=seed),
        prompt="Once upon a time, in a small village by the sea, there lived",
    )


def _chat_request(max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest(
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        messages=(ChatMessage("system", "You are terse."), ChatMessage("user", "Name a color.")),
    )


async def _collect(engine: Engine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def test_first_chunk_counts_the_prompt_and_last_chunk_stops(engine: Engine) -> None:
    request = _request(max_tokens=5)
    chunks = asyncio.run(_collect(engine, request))
    assert chunks[0].prompt_tokens == asyncio.run(engine.count_tokens(request)) > 0
    assert all(c.prompt_tokens is None for c in chunks[1:])
    assert all(c.stop_reason is None for c in chunks[:-1])
    assert chunks[-1].stop_reason == "length"
    assert sum(c.token_count for c in chunks) == 5


def test_chat_messages_are_rendered_and_special_tokens_never_leak(engine: Engine) -> None:
    chunks = asyncio.run(_collect(engine, _chat_request()))
    text = "".join(c.text for c in chunks)
    assert text.strip()
    assert "<|" not in text and "|>" not in text
    assert chunks[-1].stop_reason in ("stop", "length")
    assert sum(c.token_count for c in chunks) <= 16


def test_prompt_longer_than_context_is_refused_before_any_chunk(replica_urls: tuple[str, ...]) -> None:
    for kind in KINDS:
        small = _make(kind, context_length=64, urls=replica_urls)
        asyncio.run(small.load())
        request = GenerationRequest(sampling=SamplingParams(max_tokens=4), prompt="word " * 200)
        with pytest.raises(ContextOverflowError) as info:
            asyncio.run(_collect(small, request))
        assert info.value.context_length == 64 and info.value.prompt_tokens > 64
        asyncio.run(small.close())


def test_generation_stops_at_the_context_end(replica_urls: tuple[str, ...]) -> None:
    for kind in KINDS:
        small = _make(kind, context_length=64, urls=replica_urls)
        asyncio.run(small.load())
        request = GenerationRequest(sampling=SamplingParams(max_tokens=500, temperature=0.0), prompt="word " * 50)
        chunks = asyncio.run(_collect(small, request))
        prompt_tokens = chunks[0].prompt_tokens or 0
        assert prompt_tokens + sum(c.token_count for c in chunks) <= 64
        asyncio.run(small.close())


def test_closing_early_stops_the_work(engine: Engine) -> None:
    async def run() -> None:
        before = engine.stats()["generated_tokens"]
        stream = engine.generate(_request(max_tokens=2000, temperature=1.0))
        await anext(stream)
        await stream.aclose()
        deadline = time.monotonic() + 10
        while engine.stats()["active"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.stats()["active"] == 0
        assert engine.stats()["generated_tokens"] - before < 100

    asyncio.run(run())


def test_concurrent_generations_all_finish(engine: Engine) -> None:
    async def run() -> list[list[GenerationChunk]]:
        return list(await asyncio.gather(*(_collect(engine, _request(max_tokens=6)) for _ in range(3))))

    results = asyncio.run(run())
    assert [sum(c.token_count for c in chunks) for chunks in results] == [6, 6, 6]
    assert len({"".join(c.text for c in chunks) for chunks in results}) == 1  # greedy: same prompt, same text


def test_same_seed_same_sample(engine: Engine) -> None:
    first = asyncio.run(_collect(engine, _request(max_tokens=12, temperature=1.0, seed=7)))
    second = asyncio.run(_collect(engine, _request(max_tokens=12, temperature=1.0, seed=7)))
    assert "".join(c.text for c in first) == "".join(c.text for c in second)


def test_generate_before_load_is_refused(replica_urls: tuple[str, ...]) -> None:
    for kind in KINDS:
        with pytest.raises(EngineNotReadyError):
            asyncio.run(_collect(_make(kind, urls=replica_urls), _request()))
