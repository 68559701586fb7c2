"""The continuous-batching decode loop of one llama.cpp model (llama-cpp-python's low-level bindings).

One thread owns the model, its context and one ``llama_batch``. Each step builds a single batch holding the next
token of every decoding sequence plus chunks of waiting prompts (chunked prefill), runs one ``llama_decode``, and
samples each sequence that produced logits with its own sampler chain (temperature, top-p, seed, grammar). New
requests are admitted between steps and finished ones retired; nothing is locked for a whole request.

The KV cache is one unified pool (``kv_unified``) shared by all sequences, so a request may use up to the model's
window however many others run. Admission reserves ``prompt + max_tokens`` cells per request (counting shared
prefixes once per sequence, which overestimates and so never runs out mid-generation). Finished sequences keep
their KV as a prefix cache: a new prompt that starts like a cached or running sequence copies that prefix
(``llama_memory_seq_cp``, which only tags the cells) instead of recomputing it. Cached sequences are evicted,
least recently used first, when their cells or sequence ids are needed.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from llamarock.errors import EngineError, EngineOverloadedError, EngineTimeoutError
from llamarock.types import GenerationChunk, SamplingParams, StopReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    """Sizes of one decode loop."""

    window: int
    kv_cells: int
    max_parallel: int
    max_queue: int
    queue_timeout_s: float
    prefill_chunk: int
    threads: int
    cache_slots: int = 16
    n_batch: int = 512
    priority_slots: int = 1


@dataclass
class Job:
    """A request handed to the loop; ``emit`` is called from the loop thread."""

    tokens: list[int]
    sampling: SamplingParams
    emit: Callable[[GenerationChunk | BaseException], None]
    grammar: str | None = None
    priority: int = 0
    submitted: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Sequence:
    job: Job
    seq_id: int
    sampler: Any
    budget: int
    reserved: int
    cached_tokens: int
    kv_tokens: list[int]
    prefilled: int
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    last_token: int | None = None
    generated: int = 0
    pending: int = 0
    first: bool = True


@dataclass
class _Cached:
    seq_id: int
    kv_tokens: list[int]
    used: float
    prompt: int  # prompt length of the request that left it: a repeat of that prompt reuses prompt - 1 tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class DecodeLoop:
    """Owns a loaded llama.cpp model and decodes every admitted request together."""

    def __init__(self, model: Any, config: LoopConfig, name: str) -> None:
        self.model = model
        self.config = config
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.kv_cells
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_batch
        params.n_seq_max = config.max_parallel + config.priority_slots + config.cache_slots
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        params.kv_unified = True
        params.no_perf = True
        # Batch invariance: flash attention skips the cells of other sequences instead of summing their zeros, and
        # with a quantized KV cache ggml always takes its one-row-at-a-time attention kernel (its tiled and
        # split-KV kernels, chosen by batch shape, add in another order). So a sequence computes the same numbers
        # alone as among others. Q8_0 also halves the KV cache's memory.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.type_k = llama_cpp.GGML_TYPE_Q8_0
        params.type_v = llama_cpp.GGML_TYPE_Q8_0
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context (not enough memory for the KV cache?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self.free_ids = list(range(params.n_seq_max))
        self.waiting: deque[Job] = deque()
        self.active: list[_Sequence] = []
        self.cache: list[_Cached] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.generated_tokens = 0
        self.prefix_hits = 0
        self.thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------------------------------------- public side

    def submit(self, job: Job) -> None:
        """Queue a request behind those of its priority or higher; EngineOverloadedError when the queue is full.

        Prioritised requests (latency-optimized, provisioned) have a queue of the same size of their own, so that
        standard traffic filling its queue never turns them away.
        """
        with self.lock:
            peers = sum(1 for waiting in self.waiting if (waiting.priority > 0) == (job.priority > 0))
            if peers >= self.config.max_queue:
                raise EngineOverloadedError(f"the request queue is full ({self.config.max_queue} waiting)")
            position = len(self.waiting)
            while position > 0 and self.waiting[position - 1].priority < job.priority:
                position -= 1
            self.waiting.insert(position, job)
            self.lock.notify()

    def wake(self) -> None:
        with self.lock:
            self.lock.notify()

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "running": len(self.active),
                "queued": len(self.waiting),
                "kv_reserved": self._reserved(),
                "kv_cells": self.config.kv_cells,
                "prefix_cached_sequences": len(self.cache),
                "prefix_hits": self.prefix_hits,
            }

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=30)
        for sequence in self.active:
            llama_cpp.llama_sampler_free(sequence.sampler)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    # ------------------------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and not self.active and not self.waiting:
                    self.lock.wait()
                if self.stopping:
                    return
                self._drop_cancelled()
                self._expire_waiting()
                self._admit()
            if not self.active:
                with self.lock:
                    if not self.stopping and self.waiting:
                        self.lock.wait(timeout=0.05)
                continue
            try:
                self._step()
            except Exception as exc:
                log.exception("decode step failed")
                for sequence in list(self.active):
                    self._retire(sequence, keep=False)
                    sequence.job.emit(exc)

    def _reserved(self) -> int:
        return sum(s.reserved for s in self.active) + sum(len(c.kv_tokens) for c in self.cache)

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self.active if s.job.cancelled.is_set()]:
            self._retire(sequence, keep=False)
        if any(job.cancelled.is_set() for job in self.waiting):
            self.waiting = deque(job for job in self.waiting if not job.cancelled.is_set())

    def _expire_waiting(self) -> None:
        deadline = time.monotonic() - self.config.queue_timeout_s
        expired = [job for job in self.waiting if job.submitted < deadline]
        for job in expired:
            self.waiting.remove(job)
            job.emit(EngineTimeoutError(f"waited more than {self.config.queue_timeout_s:g} s for the model"))

    def _evict_one(self, spare: _Cached | None = None) -> bool:
        """Drop the least recently used cached prefix (never ``spare``); False when there is none to drop."""
        candidates = [c for c in self.cache if c is not spare]
        if not candidates:
            return False
        self._drop_cached(min(candidates, key=lambda c: c.used))
        return True

    def _drop_cached(self, entry: _Cached) -> None:
        self.cache.remove(entry)
        llama_cpp.llama_memory_seq_rm(self.memory, entry.seq_id, -1, -1)
        self.free_ids.append(entry.seq_id)

    def _admit(self) -> None:
        # Prioritised requests may also take the priority slots, so they start at once even when standard
        # requests fill every regular slot.
        while self.waiting:
            job = self.waiting[0]
            limit = self.config.max_parallel + (self.config.priority_slots if job.priority > 0 else 0)
            if len(self.active) >= limit:
                return
            prompt = len(job.tokens)
            budget = min(job.sampling.max_tokens, self.config.window - prompt)
            reserve = prompt + budget
            if reserve > self.config.kv_cells:
                budget = self.config.kv_cells - prompt
                reserve = self.config.kv_cells
            while self._reserved() + reserve > self.config.kv_cells and self._evict_one():
                pass
            if self._reserved() + reserve > self.config.kv_cells:
                return
            if not self.free_ids and not self._evict_one():
                return
            self.waiting.popleft()
            try:
                self.active.append(self._start(job, budget, reserve))
            except Exception as exc:
                job.emit(exc)

    def _sampler(self, sampling: SamplingParams, grammar: str | None) -> Any:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar is not None:
            sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not sampler:
                llama_cpp.llama_sampler_free(chain)
                raise EngineError("llama.cpp rejected the grammar for this request's JSON schema")
            llama_cpp.llama_sampler_chain_add(chain, sampler)
        if sampling.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if 0.0 < sampling.top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
            seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _start(self, job: Job, budget: int, reserve: int) -> _Sequence:
        """Give a job a sequence id, sharing the longest cached or running prefix of its prompt."""
        limit = len(job.tokens) - 1  # the last prompt token is always decoded, for its logits
        best: _Cached | _Sequence | None = None
        best_len = 0
        candidates: list[_Cached | _Sequence] = [*self.cache, *self.active]
        for candidate in candidates:
            length = min(_common_prefix(candidate.kv_tokens, job.tokens), limit)
            if length > best_len:
                best, best_len = candidate, length
        sampler = self._sampler(job.sampling, job.grammar)
        # A cached prefix that holds more than the part shared (another prompt that only starts the same way) is
        # copied, so that it stays cached for the request that repeats it; one shared whole is taken over.
        keep_cached = isinstance(best, _Cached) and best_len < len(best.kv_tokens) and (
            bool(self.free_ids) or self._evict_one(spare=best)
        )
        if isinstance(best, _Cached) and keep_cached:
            best.used = time.monotonic()
        if isinstance(best, _Cached) and not keep_cached:
            self.cache.remove(best)
            seq_id = best.seq_id
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, best_len, -1)
        else:
            seq_id = self.free_ids.pop()
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
            if best is not None:
                llama_cpp.llama_memory_seq_cp(self.memory, best.seq_id, seq_id, 0, best_len)
        if best_len:
            self.prefix_hits += 1
        return _Sequence(job, seq_id, sampler, budget, reserve, best_len, job.tokens[:best_len], best_len)

    def _retire(self, sequence: _Sequence, *, keep: bool) -> None:
        """Remove a sequence from the running set; keep its KV as prefix cache or free it."""
        self.active.remove(sequence)
        llama_cpp.llama_sampler_free(sequence.sampler)
        if keep and sequence.kv_tokens and self.config.cache_slots > 0:
            # Cached entries whose prompt this sequence holds too are redundant: a repeat would reuse as much here.
            for entry in [c for c in self.cache if _common_prefix(c.kv_tokens, sequence.kv_tokens) >= c.prompt - 1]:
                self._drop_cached(entry)
            # The newest prefix is the likeliest to be asked for again: a full cache drops its least recent one.
            while len(self.cache) >= self.config.cache_slots and self._evict_one():
                pass
            self.cache.append(
                _Cached(sequence.seq_id, sequence.kv_tokens, time.monotonic(), len(sequence.job.tokens))
            )
            return
        llama_cpp.llama_memory_seq_rm(self.memory, sequence.seq_id, -1, -1)
        self.free_ids.append(sequence.seq_id)

    def _step(self) -> None:
        """One llama_decode over every running sequence, then one sampled token for each that has logits."""
        batch = self.batch
        plan: list[tuple[_Sequence, list[int]]] = []
        outputs: list[tuple[_Sequence, int]] = []
        n = 0
        decoding = [s for s in self.active if s.last_token is not None]
        for sequence in decoding:
            self._put(n, sequence.last_token or 0, len(sequence.kv_tokens), sequence.seq_id, True)
            plan.append((sequence, [sequence.last_token or 0]))
            outputs.append((sequence, n))
            n += 1
        room = self.config.n_batch - n
        if decoding:
            room = min(room, self.config.prefill_chunk)
        for sequence in self.active:
            if sequence.last_token is not None or room <= 0:
                continue
            chunk = sequence.job.tokens[sequence.prefilled: sequence.prefilled + room]
            for offset, token in enumerate(chunk):
                last = sequence.prefilled + offset == len(sequence.job.tokens) - 1
                self._put(n, token, sequence.prefilled + offset, sequence.seq_id, last)
                if last:
                    outputs.append((sequence, n))
                n += 1
            plan.append((sequence, chunk))
            room -= len(chunk)
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status == 1 and self._evict_one():
            return  # no free KV slot: a cached prefix was dropped; the same step is rebuilt next time
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status}")
        for sequence, tokens in plan:
            sequence.kv_tokens.extend(tokens)
            if sequence.last_token is None:
                sequence.prefilled += len(tokens)
        for sequence, index in outputs:
            token = llama_cpp.llama_sampler_sample(sequence.sampler, self.ctx, index)
            self._advance(sequence, token)

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    def _advance(self, sequence: _Sequence, token: int) -> None:
        job = sequence.job
        if job.cancelled.is_set():
            return
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            self._finish(sequence, "stop")
            return
        sequence.generated += 1
        sequence.pending += 1
        self.generated_tokens += 1
        sequence.last_token = token
        text = sequence.decoder.decode(self._piece(token))
        if text:
            job.emit(self._chunk(sequence, text, None))
        if sequence.generated >= sequence.budget:
            self._finish(sequence, "length")

    def _chunk(self, sequence: _Sequence, text: str, stop: StopReason | None) -> GenerationChunk:
        first = sequence.first
        chunk = GenerationChunk(
            text,
            sequence.pending,
            len(sequence.job.tokens) if first else None,
            stop_reason=stop,
            cached_tokens=sequence.cached_tokens if first else None,
        )
        sequence.first = False
        sequence.pending = 0
        return chunk

    def _finish(self, sequence: _Sequence, stop: StopReason) -> None:
        tail = sequence.decoder.decode(b"", final=True)
        sequence.job.emit(self._chunk(sequence, tail, stop))
        with self.lock:
            self._retire(sequence, keep=True)
