"""Continuous batching on the real SmolLM2 model: invisible in results, cancellable, bounded, prefix-cached."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llamarock.engines import decode_loop
from llamarock.engines.decode_loop import LlamaCppConfig
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.services.deployments import embedded_model_path
from llamarock.types import CacheMark, GenerationChunk, GenerationRequest, SamplingParams

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, a small robot",
    "Water boils at a temperature of",
    "My favourite recipe for pancakes",
    "The history of the printing press",
    "In the year 2050, cities will",
    "A good night's sleep helps",
    "The quick brown fox",
]


def _engine(**kwargs: Any) -> LlamaCppEngine:
    engine = LlamaCppEngine("batch", LlamaCppConfig(model_path=embedded_model_path(), threads=2, **kwargs))
    asyncio.run(engine.load())
    return engine


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = _engine(slots=8)
    yield eng
    asyncio.run(eng.close())


def _request(prompt: str, max_tokens: int = 24, temperature: float = 0.0, seed: int | None = None) -> GenerationRequest:
    return GenerationRequest(
        sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed), prompt=prompt
    )


async def _collect(engine: LlamaCppEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def _text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def test_batching_is_invisible_in_results() -> None:
    # A fresh engine for each run, so that no prefix cache changes how the prompts are prefilled.
    def run(prompts: list[str]) -> list[str]:
        engine = _engine(slots=8)

        async def go() -> list[list[GenerationChunk]]:
            return list(await asyncio.gather(*(_collect(engine, _request(p, max_tokens=32)) for p in prompts)))

        try:
            return [_text(chunks) for chunks in asyncio.run(go())]
        finally:
            asyncio.run(engine.close())

    together = run(PROMPTS)
    for index in (0, 3, 6):
        assert run([PROMPTS[index]]) == [together[index]]


def test_seeded_sampling_is_the_same_in_a_batch() -> None:
    def run(concurrent: bool) -> str:
        engine = _engine(slots=8)

        async def go() -> str:
            seeded = _collect(engine, _request(PROMPTS[1], temperature=0.9, seed=11))
            if not concurrent:
                return _text(await seeded)
            others = (_collect(engine, _request(p, temperature=0.9)) for p in PROMPTS[2:6])
            return _text((await asyncio.gather(seeded, *others))[0])

        try:
            return asyncio.run(go())
        finally:
            asyncio.run(engine.close())

    assert run(concurrent=False) == run(concurrent=True)


def test_cancellation_frees_the_sequence_and_its_kv(engine: LlamaCppEngine) -> None:
    async def run() -> None:
        stream = engine.generate(_request(COUNTING, max_tokens=2000))
        await anext(stream)
        assert engine.stats()["running"] == 1
        reserved = engine.stats()["kv_reserved"]
        await stream.aclose()
        deadline = time.monotonic() + 10
        while engine.stats()["running"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.stats()["running"] == 0
        assert engine.stats()["kv_reserved"] < reserved - 1000

    asyncio.run(run())


def test_shared_prefix_is_reused_and_reported(engine: LlamaCppEngine) -> None:
    prefix = "You are a careful assistant. " * 40

    async def run() -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        first = await _collect(engine, _request(prefix + "Question one?", max_tokens=4))
        second = await _collect(engine, _request(prefix + "Question two?", max_tokens=4))
        return first, second

    first, second = asyncio.run(run())
    assert first[0].cached_tokens is not None and second[0].cached_tokens is not None
    prompt = second[0].prompt_tokens or 0
    assert second[0].cached_tokens >= prompt - 8
    assert first[0].cached_tokens < second[0].cached_tokens


def test_a_long_prefill_does_not_stall_a_running_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(slots=4, prefill_chunk=64)
    batch_sizes: list[int] = []
    original = decode_loop.llama_cpp.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        batch_sizes.append(int(batch.n_tokens))
        return int(original(ctx, batch))

    monkeypatch.setattr(decode_loop.llama_cpp, "llama_decode", recording)

    async def run() -> int:
        # Greedy counting goes on for hundreds of tokens, so the stream outlives the prefill.
        stream = engine.generate(_request(COUNTING, max_tokens=600))
        await anext(stream)
        long_prompt = "The committee discussed the budget in great detail. " * 120
        arrived = 0
        prefill = asyncio.ensure_future(_collect(engine, _request(long_prompt, max_tokens=1)))
        while not prefill.done():
            chunk = await anext(stream)
            arrived += chunk.token_count
        await stream.aclose()
        return arrived

    try:
        arrived = asyncio.run(run())
    finally:
        asyncio.run(engine.close())
    # The ~1,300-token prompt went in 64-token chunks, each step also advancing the running stream.
    assert max(batch_sizes) <= 1 + 64 + 1
    assert arrived >= 10


def test_a_new_short_prompt_is_prefilled_in_a_step_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(slots=4)
    steps: list[set[int]] = []
    original = decode_loop.llama_cpp.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        steps.append({int(batch.seq_id[i][0]) for i in range(int(batch.n_tokens))})
        return int(original(ctx, batch))

    monkeypatch.setattr(decode_loop.llama_cpp, "llama_decode", recording)

    async def run() -> None:
        stream = engine.generate(_request(COUNTING, max_tokens=600))
        await anext(stream)
        running = steps[-1]
        # Its first token comes after one short step with just its prompt, not after a full batch step.
        await _collect(engine, _request("The capital of France is", max_tokens=3))
        await stream.aclose()
        newcomer = next(i for i, ids in enumerate(steps) if not ids <= running)
        assert steps[newcomer] != running and not steps[newcomer] & running
        assert steps[newcomer + 1] >= running | steps[newcomer]  # then it decodes alongside the running stream

    try:
        asyncio.run(run())
    finally:
        asyncio.run(engine.close())


def test_background_work_prefills_in_small_steps_and_gives_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A negative priority (batch records, the flex tier) is background work: its prompt goes in at most
    ``background_chunk`` tokens a step, and a foreground prompt that arrives is prefilled in a step of its own."""
    engine = _engine(slots=4, background_chunk=32)
    steps: list[tuple[set[int], int]] = []
    original = decode_loop.llama_cpp.llama_decode

    def recording(ctx: Any, batch: Any) -> int:
        n = int(batch.n_tokens)
        steps.append(({int(batch.seq_id[i][0]) for i in range(n)}, n))
        return int(original(ctx, batch))

    monkeypatch.setattr(decode_loop.llama_cpp, "llama_decode", recording)
    long_prompt = "The committee discussed the budget in great detail. " * 60

    async def run() -> None:
        background = GenerationRequest(sampling=SamplingParams(temperature=0.0, max_tokens=2), prompt=long_prompt,
                                       priority=-2)
        pending = asyncio.ensure_future(_collect(engine, background))
        while not steps:
            await asyncio.sleep(0.001)
        first = await _collect(engine, _request("The capital of France is", max_tokens=2))
        assert _text(first)
        assert not pending.done()  # ~600 prompt tokens at 32 a step: still prefilling
        await pending

    try:
        asyncio.run(run())
    finally:
        asyncio.run(engine.close())
    background_id = next(iter(steps[0][0]))
    assert all(n <= 32 for ids, n in steps if ids == {background_id})
    foreground = next(i for i, (ids, _) in enumerate(steps) if ids != {background_id})
    assert background_id not in steps[foreground][0]  # its prompt went in alone


def _prioritised(prompt: str) -> GenerationRequest:
    return GenerationRequest(sampling=SamplingParams(temperature=0.0, max_tokens=4), prompt=prompt, priority=1)


def test_prioritised_requests_jump_the_queue() -> None:
    engine = _engine(slots=1)
    order: list[str] = []

    async def tracked(name: str, request: GenerationRequest) -> None:
        await _collect(engine, request)
        order.append(name)

    async def run() -> None:
        running = engine.generate(_request(COUNTING, max_tokens=2000))
        await anext(running)
        standard = asyncio.ensure_future(tracked("standard", _request(PROMPTS[1], max_tokens=4)))
        await asyncio.sleep(0.05)
        prioritised = asyncio.ensure_future(tracked("prioritised", _prioritised(PROMPTS[2])))
        await asyncio.sleep(0.05)
        await running.aclose()
        await asyncio.gather(standard, prioritised)

    try:
        asyncio.run(run())
    finally:
        asyncio.run(engine.close())
    assert order == ["prioritised", "standard"]


def test_a_prompt_that_only_starts_the_same_way_leaves_the_cached_prompt_cached() -> None:
    engine = _engine(slots=2)
    first = "Counting: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    other = "Counting: 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,"

    async def cached_tokens(prompt: str) -> tuple[int, int]:
        chunks = await _collect(engine, _request(prompt, max_tokens=8))
        return chunks[0].cached_tokens or 0, chunks[0].prompt_tokens or 0

    async def run() -> None:
        await cached_tokens(first)
        shared, _ = await cached_tokens(other)
        assert 0 < shared < 8  # only "Counting:" is shared
        # Serving the other prompt from a copy of the shared part kept the first prompt whole in the cache.
        reused, prompt_tokens = await cached_tokens(first)
        assert reused == prompt_tokens - 1
        again, prompt_tokens = await cached_tokens(other)
        assert again == prompt_tokens - 1
        assert engine.stats()["prefix_cached_sequences"] == 2

    try:
        asyncio.run(run())
    finally:
        asyncio.run(engine.close())


async def _until_idle(engine: LlamaCppEngine) -> None:
    deadline = time.monotonic() + 10
    while (engine.stats()["running"] or engine.stats()["prefix_cached_in_kv"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_an_idle_loop_moves_cached_prefixes_to_host_memory_and_restores_them_exactly() -> None:
    prefix = "Inventory list. " + " ".join(f"Box {n} holds {n * 3} marbles." for n in range(1, 40))
    cold_engine = _engine(slots=4)
    try:
        cold = _text(asyncio.run(_collect(cold_engine, _request(prefix + " Box 7 holds", max_tokens=24))))
    finally:
        asyncio.run(cold_engine.close())

    engine = _engine(slots=4)

    async def run() -> None:
        first = await _collect(engine, _request(prefix + " Box 2 holds", max_tokens=8))
        await _until_idle(engine)
        stats = engine.stats()
        # Nothing runs: the finished prompt left the KV cache (no cells reserved) but is still cached.
        assert stats["prefix_cached_in_kv"] == 0 and stats["kv_reserved"] == 0
        assert stats["prefix_cached_sequences"] == 1 and stats["prefix_cached_tokens"] > first[0].prompt_tokens
        again = await _collect(engine, _request(prefix + " Box 7 holds", max_tokens=24))
        assert again[0].cached_tokens is not None and again[0].cached_tokens >= (again[0].prompt_tokens or 0) - 8
        # The KV copied back is the KV computed, in the same cell order: the reply is the cold one.
        assert _text(again) == cold

    try:
        asyncio.run(run())
    finally:
        asyncio.run(engine.close())


def test_the_host_memory_budget_bounds_the_prefix_cache() -> None:
    prompts = [f"Counting from {n}: {n}, {n + 1}, {n + 2}, {n + 3}," for n in (10, 200, 3000)]

    async def fill(engine: LlamaCppEngine) -> None:
        for prompt in prompts:
            await _collect(engine, _request(prompt, max_tokens=8))
            await _until_idle(engine)

    small = _engine(slots=2, prefix_cache_tokens=40)
    off = _engine(slots=2, prefix_cache_tokens=0)
    try:
        asyncio.run(fill(small))
        # Each finished request holds ~25 tokens: a 40-token budget keeps only the newest.
        assert small.stats()["prefix_cached_sequences"] == 1
        assert 0 < small.stats()["prefix_cached_tokens"] <= 40
        newest = asyncio.run(_collect(small, _request(prompts[-1], max_tokens=4)))
        oldest = asyncio.run(_collect(small, _request(prompts[0], max_tokens=4)))
        assert newest[0].cached_tokens == (newest[0].prompt_tokens or 0) - 1
        assert (oldest[0].cached_tokens or 0) < 8
        asyncio.run(fill(off))
        assert off.stats()["prefix_cached_sequences"] == 0
    finally:
        asyncio.run(small.close())
        asyncio.run(off.close())


def test_a_cache_mark_keeps_its_prefix_after_newer_prompts_push_the_rest_out() -> None:
    """A cachePoint's prefix is its own cache entry, evicted only after entries nobody marked: with room for two
    or three finished requests, the marked document is still cached after unrelated prompts, the unmarked one is
    not."""
    document = "Reference manual. " + " ".join(f"Valve {n} opens at {n * 7} kPa." for n in range(1, 6))
    others = [f"Counting from {n}: " + ", ".join(str(n + i) for i in range(14)) for n in (100, 200, 300)]

    def marked(prompt: str) -> GenerationRequest:
        return dataclasses.replace(_request(prompt, max_tokens=4), cache_marks=(CacheMark(None, len(document)),))

    async def run(engine: LlamaCppEngine, mark: bool) -> tuple[int, int]:
        first = document + " Question: when does valve 3 open?"
        await _collect(engine, marked(first) if mark else _request(first, max_tokens=4))
        await _until_idle(engine)
        for prompt in others:
            await _collect(engine, _request(prompt, max_tokens=4))
            await _until_idle(engine)
        again = await _collect(engine, _request(document + " Question: which valve opens at 49 kPa?", max_tokens=4))
        return again[0].cached_tokens or 0, len(engine._tokens_of(document))

    with_mark = _engine(slots=2, cache_slots=1, prefix_cache_tokens=200)
    without = _engine(slots=2, cache_slots=1, prefix_cache_tokens=200)
    try:
        cached, document_tokens = asyncio.run(run(with_mark, True))
        assert document_tokens - 2 <= cached <= document_tokens + 2
        assert with_mark.stats()["prefix_cached_tokens"] <= 200
        uncached, _ = asyncio.run(run(without, False))
        assert uncached < 8
    finally:
        asyncio.run(with_mark.close())
        asyncio.run(without.close())
