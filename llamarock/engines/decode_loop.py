"""The continuous-batching decode loop of one llama.cpp model (llama-cpp-python's low-level bindings).

One thread owns the model, its context and one ``llama_batch``. Each step builds a single batch holding the next
token of every decoding sequence plus chunks of waiting prompts (chunked prefill), runs one ``llama_decode``, and
samples each sequence that produced logits with its own sampler chain (temperature, top-p, seed, grammar). New
requests are admitted between steps and finished ones retired; nothing is locked for a whole request.

The KV cache is one unified pool (``kv_unified``) shared by all sequences, so a request may use up to the model's
window however many others run. Admission reserves ``prompt + max_tokens`` cells per request (counting shared
prefixes once per sequence, which overestimates and so never runs out mid-generation).

Prefix cache: a new prompt that starts like a running or cached sequence reuses that prefix's KV instead of
recomputing it. A finished sequence stays in the KV cache (its cells tagged with a sequence id of its own), where
a later prompt takes it over or copies its prefix (``llama_memory_seq_cp``, which only tags the cells), and is
copied to host memory at once (``llama_state_seq_get_data``). When the loop goes idle, or when its cells or
sequence id are needed, its cells are freed; a later prompt that starts the same way restores the host copy
(``llama_state_seq_set_data``). Two reasons for the host tier: every decode step's attention scans all cells up to
the highest one in use, masked or not, so cached prefixes left in the KV cache slow every step (8 sequences' step:
40.6 ms with 1,200 cells in use, 48.1 ms with 2,400; bench/decode_ceiling.py); and freeing cells while sequences
decode leaves holes that llama.cpp fills with later tokens out of position order, which changes the order
attention adds up and so the results (batching must stay invisible). So cells are only freed when nothing runs,
or when there is no other room. Host copies are dropped least recently used first beyond ``cache_tokens``.

Cache marks (Converse ``cachePoint`` blocks, as token positions on the ``Job``): when a sequence finishes, the prompt
up to each mark becomes an entry of its own (``llama_memory_seq_cp`` tags the cells it shares with the sequence), so
that a document or system prompt asked to be cached outlives the full conversations that contain it. Marked entries
leave the KV cache and host memory only after every unmarked one, and a request that reuses one copies it rather
than taking it over.

LoRA adapters (custom models): a job may carry a :class:`Lora`, loaded once per model by the engine. llama.cpp
applies the adapters set on the context to every token of a ``llama_decode``, so a step decodes each adapter's
sequences (and the base model's) in a ``llama_decode`` of their own, the context's adapter set just before it
(``llama_set_adapters_lora``, a no-op when unchanged). A sequence therefore computes the same numbers as when it runs
alone. Prefixes are cached per adapter: a prefix computed under one adapter is only ever reused by requests for the
same adapter (its key is part of every cache entry).
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from llamarock.errors import EmptyPromptError, EngineError, UnsupportedSchemaError
from llamarock.types import GenerationChunk, SamplingParams, StopReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaCppConfig:
    """Everything one llama.cpp deployment is told: its weights and the sizes of its decode loop.

    ``slots`` is how many sequences decode at once; the scheduler (``llamarock/scheduler.py``) admits at most that
    many requests to the engine (``max_parallel + priority_slots``) and owns queueing, deadlines and priorities, so
    the loop only waits for KV room and sequence ids. ``context_length`` is the window of one request (None: the
    model's trained context, at most 8192), ``kv_cells`` the unified KV pool shared by all (None: the window).
    """

    model_path: Path
    threads: int
    context_length: int | None = None
    chat_format: str = "auto"
    kv_cells: int | None = None
    slots: int = 9
    prefill_chunk: int = 256
    prefix_cache_tokens: int | None = None  # host-memory budget of the prefix cache; None: half of the KV cells
    cache_slots: int = 8  # finished sequences kept in the KV cache (the rest go to host memory)
    n_batch: int = 512
    background_chunk: int = 64  # prompt tokens of background work (negative priority) prefilled per step

    def cells(self, window: int) -> int:
        """The KV cells of a loop whose requests may use ``window`` tokens each."""
        return max(self.kv_cells or window, window)


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter loaded for this model (``llama_adapter_lora_init``): ``key`` names it (the custom model),
    ``handle`` is llama.cpp's pointer, ``scale`` the request's multiplier."""

    key: str
    handle: Any
    scale: float = 1.0

    @property
    def group(self) -> tuple[str, float]:
        return self.key, self.scale


@dataclass
class Job:
    """A request handed to the loop; ``emit`` is called from the loop thread."""

    tokens: list[int]
    sampling: SamplingParams
    emit: Callable[[GenerationChunk | BaseException], None]
    grammar: str | None = None
    priority: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    marks: tuple[int, ...] = ()  # token positions whose prefix stays cached on its own (cachePoint blocks)
    lora: Lora | None = None  # the adapter applied to this request (None: the base model)

    @property
    def lora_key(self) -> str | None:
        """What its KV was computed under: the adapter and its scale (None: the base model)."""
        return f"{self.lora.key}*{self.lora.scale}" if self.lora is not None else None


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
    kv_tokens: list[int]
    used: float
    prompt: int  # prompt length of the request that left it: a repeat of that prompt reuses prompt - 1 tokens
    seq_id: int | None = None  # in the KV cache under this sequence id, or
    state: Any = None  # in host memory: its KV as llama_state_seq_get_data wrote it (a ctypes byte array)
    marked: bool = False  # a prefix a cachePoint asked to keep: evicted only after the unmarked ones
    lora: str | None = None  # the key of the adapter its KV was computed under (None: the base model)

    def eviction_order(self) -> tuple[bool, float]:
        """Sort key: the first to leave (the KV cache, or host memory) sorts lowest."""
        return self.marked, self.used


HOST_ENTRIES = 64  # at most this many prefixes in host memory (each admission compares its prompt with every one)

# A cached prefix in host memory is restored whole and then cut to the part shared, so restoring copies every cell
# of it; that is worth it when the shared part is at least this fraction of the entry (copying a cell costs far less
# than computing one, so the bar is low: it only stops a long conversation being copied to reuse a chat template's
# first tokens).
RESTORE_MIN_SHARE = 1 / 32


# Grammar bounds, checked before llama.cpp parses a grammar (llama-cpp-python 0.3.36, embedded model; numbers from
# tests/adversarial/test_engine_inputs.py's measurements). llama.cpp's recursive-descent parser recurses once per
# nested group: it refuses more than 1,000 nested optionals (what a maxLength or maxItems of 1,001 becomes) and
# overflows an 8 MiB thread stack, killing the process, from about 18,600 nesting levels (a smaller stack: fewer).
# llama.cpp expands a grammar's own {m,n} itself ("a"{20000} is refused). Parsing a grammar within these
# bounds takes milliseconds (a megabyte: about 20 ms).
MAX_GRAMMAR_BYTES = 1 << 20
MAX_GRAMMAR_DEPTH = 1000
MAX_GRAMMAR_REPEAT = 1000
# A sampling step of a grammar-constrained sequence taking longer than this (a few milliseconds is usual) means an
# ambiguous grammar whose live alternatives multiply with every token: the request is stopped before the next,
# slower step holds up every other sequence.
GRAMMAR_STEP_LIMIT_S = 2.0

_GBNF_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"|\[(?:[^\]\\\n]|\\.)*\]|#[^\n]*')
_GBNF_PARENS = re.compile(r"[()]")
_GBNF_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def check_grammar(grammar: str) -> None:
    """Refuse a GBNF grammar that llama.cpp would crash on or take too long over (UnsupportedSchemaError)."""
    size = len(grammar.encode("utf-8", errors="replace"))
    if size > MAX_GRAMMAR_BYTES:
        raise UnsupportedSchemaError(
            f"its grammar is {size} bytes, more than the {MAX_GRAMMAR_BYTES} this engine compiles; use fewer "
            "properties, enum values and length or item bounds"
        )
    bare = _GBNF_QUOTED.sub("", grammar)  # parentheses and braces inside literals and character classes are text
    steps = (1 if paren == "(" else -1 for paren in _GBNF_PARENS.findall(bare))
    depth = max(itertools.accumulate(steps, initial=0))
    if depth > MAX_GRAMMAR_DEPTH:
        raise UnsupportedSchemaError(
            f"its grammar nests {depth} levels deep, more than the {MAX_GRAMMAR_DEPTH} llama.cpp can parse safely "
            f"(each unit of a maxLength, maxItems or {{m,n}} above its minimum is one level); lower those bounds to "
            f"{MAX_GRAMMAR_DEPTH} or less"
        )
    for match in _GBNF_REPEAT.finditer(bare):
        count = max(int(match.group(1)), int(match.group(2) or 0))
        if count > MAX_GRAMMAR_REPEAT:
            raise UnsupportedSchemaError(
                f"its grammar repeats a part {count} times, more than the {MAX_GRAMMAR_REPEAT} this engine compiles; "
                f"lower the bound to {MAX_GRAMMAR_REPEAT} or less"
            )


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def context_params(config: LlamaCppConfig, window: int) -> Any:
    """The llama.cpp context of a decode loop: one unified KV pool, flash attention, Q8_0 cache."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = config.cells(window)
    params.n_batch = config.n_batch
    params.n_ubatch = config.n_batch
    params.n_seq_max = config.slots + config.cache_slots
    params.n_threads = config.threads
    params.n_threads_batch = config.threads
    params.kv_unified = True
    params.no_perf = True
    # Batch invariance: flash attention skips the cells of other sequences instead of summing their zeros, and with a
    # quantized KV cache ggml always takes its one-row-at-a-time attention kernel (its tiled and split-KV kernels,
    # chosen by batch shape, add in another order). So a sequence computes the same numbers alone as among others.
    # Q8_0 also halves the KV cache's memory.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.type_k = llama_cpp.GGML_TYPE_Q8_0
    params.type_v = llama_cpp.GGML_TYPE_Q8_0
    return params


class DecodeLoop:
    """Owns a loaded llama.cpp model and decodes every admitted request together."""

    def __init__(self, model: Any, config: LlamaCppConfig, window: int, name: str) -> None:
        self.model = model
        self.config = config
        self.window = window
        self.kv_cells = config.cells(window)
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        params = context_params(config, window)
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create a context (not enough memory for the KV cache?)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self.free_ids = list(range(params.n_seq_max))
        self.waiting: deque[Job] = deque()
        self.active: list[_Sequence] = []
        self.cache: list[_Cached] = []
        self.cache_budget = self.kv_cells // 2 if config.prefix_cache_tokens is None else config.prefix_cache_tokens
        self.lock = threading.Condition()
        self.stopping = False
        self.generated_tokens = 0
        self.prefix_hits = 0
        self.lora_set: tuple[str, float] | None = None  # the adapter set on the context now (None: the base model)
        self.thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------------------------------------- public side

    def submit(self, job: Job) -> None:
        """Hand over a request admitted by the scheduler; it waits (behind those of its priority or higher) only
        for a sequence id and KV room."""
        with self.lock:
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
                "kv_cells": self.kv_cells,
                "prefix_cached_sequences": len(self.cache),
                "prefix_cached_tokens": self._cached_tokens(),
                "prefix_cached_in_kv": sum(1 for c in self.cache if c.seq_id is not None),
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
                if not self.active and not self.waiting:
                    self._offload_all()
                while not self.stopping and not self.active and not self.waiting:
                    self.lock.wait()
                if self.stopping:
                    return
                self._drop_cancelled()
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
        in_kv = sum(len(c.kv_tokens) for c in self.cache if c.seq_id is not None)
        return sum(s.reserved for s in self.active) + in_kv

    def _cached_tokens(self) -> int:
        return sum(len(c.kv_tokens) for c in self.cache)

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self.active if s.job.cancelled.is_set()]:
            self._retire(sequence, keep=False)
        if any(job.cancelled.is_set() for job in self.waiting):
            self.waiting = deque(job for job in self.waiting if not job.cancelled.is_set())

    def _evict_one(self, spare: _Cached | None = None) -> bool:
        """Free the cells and sequence id of the least recently used prefix in the KV cache (never ``spare``),
        keeping its host copy; False when there is none."""
        in_kv = [c for c in self.cache if c.seq_id is not None and c is not spare]
        if not in_kv:
            return False
        self._offload(min(in_kv, key=_Cached.eviction_order))
        return True

    def _snapshot(self, entry: _Cached, state: Any = None) -> None:
        """Give a cached prefix its host copy (``state``, or copied now), making room within the budget (least
        recent copies first)."""
        if entry.seq_id is None or entry.state is not None or len(entry.kv_tokens) > self.cache_budget:
            return
        state = state if state is not None else self._copy_state(entry.seq_id)
        if state is None:
            return
        hosted = [c for c in self.cache if c.state is not None]
        while hosted and (len(hosted) >= HOST_ENTRIES
                          or sum(len(c.kv_tokens) for c in hosted) + len(entry.kv_tokens) > self.cache_budget):
            oldest = min(hosted, key=_Cached.eviction_order)
            hosted.remove(oldest)
            oldest.state = None
            if oldest.seq_id is None:
                self.cache.remove(oldest)
        entry.state = state

    def _copy_state(self, seq_id: int) -> Any:
        """A sequence's KV as a byte array (llama_state_seq_get_data), or None if llama.cpp could not write it."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq_id)
        state = (ctypes.c_uint8 * size)()
        return state if llama_cpp.llama_state_seq_get_data(self.ctx, state, size, seq_id) == size else None

    def _offload(self, entry: _Cached) -> None:
        """Free a cached prefix's cells and sequence id, keeping its host copy (dropped when it has none)."""
        seq_id = entry.seq_id
        if seq_id is None:
            return
        self._snapshot(entry)
        entry.seq_id = None
        if entry.state is None:
            self.cache.remove(entry)
        self._release(seq_id)

    def _release(self, seq_id: int) -> None:
        """Free a sequence id and every cell it holds."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        self.free_ids.append(seq_id)

    def _offload_all(self) -> None:
        """Idle: free every cached prefix's cells, so that the next requests' attention spans only their own."""
        for entry in [c for c in self.cache if c.seq_id is not None]:
            self._offload(entry)

    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if not job.tokens:  # nothing to decode: it would hold a slot and never produce a token
                self.waiting.popleft()
                job.emit(EmptyPromptError())
                continue
            if len(self.active) >= self.config.slots:
                return
            prompt = len(job.tokens)
            budget = min(job.sampling.max_tokens, self.window - prompt)
            reserve = prompt + budget
            if reserve > self.kv_cells:
                budget = self.kv_cells - prompt
                reserve = self.kv_cells
            while self._reserved() + reserve > self.kv_cells and self._evict_one():
                pass
            if self._reserved() + reserve > self.kv_cells:
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
            try:
                check_grammar(grammar)
            except UnsupportedSchemaError:
                llama_cpp.llama_sampler_free(chain)
                raise
            sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not sampler:
                llama_cpp.llama_sampler_free(chain)
                raise UnsupportedSchemaError(
                    "llama.cpp could not parse the grammar made from it (the server log has llama.cpp's reason); "
                    "a pattern may use syntax llama.cpp does not support"
                )
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
        key = job.lora_key  # KV computed under another adapter (or none) is never shared
        candidates: list[_Cached | _Sequence] = [
            *(c for c in self.cache if c.lora == key), *(s for s in self.active if s.job.lora_key == key)]
        for candidate in candidates:
            length = min(common_prefix(candidate.kv_tokens, job.tokens), limit)
            in_host = isinstance(candidate, _Cached) and candidate.seq_id is None
            if in_host and length < RESTORE_MIN_SHARE * len(candidate.kv_tokens):
                continue
            if length > best_len:
                best, best_len = candidate, length
        sampler = self._sampler(job.sampling, job.grammar)
        if isinstance(best, _Cached):
            best.used = time.monotonic()
        if isinstance(best, _Cached) and best.seq_id is not None and (
            (best_len == len(best.kv_tokens) and not best.marked) or not (self.free_ids or self._evict_one(spare=best))
        ):
            # Shared whole (or no id to copy it to): the new sequence takes the cached one over. A marked prefix is
            # copied instead, so that it stays cached.
            self.cache.remove(best)
            seq_id = best.seq_id
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, best_len, -1)
        else:
            # A cached prefix that holds more than the part shared (another prompt that only starts the same way)
            # is copied, so that it stays cached for the request that repeats it.
            seq_id = self.free_ids.pop()
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
            source = best.seq_id if best is not None else None
            if source is not None:
                llama_cpp.llama_memory_seq_cp(self.memory, source, seq_id, 0, best_len)
            elif isinstance(best, _Cached):
                if self._restore(best, seq_id):
                    llama_cpp.llama_memory_seq_rm(self.memory, seq_id, best_len, -1)
                else:
                    best_len = 0
        if best_len:
            self.prefix_hits += 1
        return _Sequence(job, seq_id, sampler, budget, reserve, best_len, job.tokens[:best_len], best_len)

    def _restore(self, entry: _Cached, seq_id: int) -> bool:
        """Copy a prefix from host memory back into the KV cache as ``seq_id``; False (cells left free) when it does
        not fit."""
        if llama_cpp.llama_state_seq_set_data(self.ctx, entry.state, len(entry.state), seq_id):
            return True
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
        log.warning("could not restore a cached prefix of %d tokens; prefilling instead", len(entry.kv_tokens))
        return False

    def _retire(self, sequence: _Sequence, *, keep: bool) -> list[_Cached]:
        """Remove a sequence from the running set; keep its KV as prefix cache (the new entries: the sequence, then
        the prefixes its cache marks ask for) or free it."""
        self.active.remove(sequence)
        llama_cpp.llama_sampler_free(sequence.sampler)
        tokens = sequence.kv_tokens
        if keep and tokens and self.config.cache_slots > 0 and self.cache_budget > 0:
            # Cached entries whose prompt this sequence holds too are redundant: a repeat would reuse as much here
            # (not the marked ones: they are kept for when this sequence has left the cache).
            key = sequence.job.lora_key
            for entry in [c for c in self.cache if not c.marked and c.lora == key
                          and common_prefix(c.kv_tokens, tokens) >= c.prompt - 1]:
                self._drop_cached(entry)
            marked = self._keep_marks(sequence)
            # The newest prefix is the likeliest to be asked for again: a full cache moves its least recent one out.
            while self._in_kv() >= self.config.cache_slots and self._evict_one():
                pass
            entry = _Cached(tokens, time.monotonic(), len(sequence.job.tokens), seq_id=sequence.seq_id, lora=key)
            self.cache.append(entry)
            return [entry, *marked]
        self._release(sequence.seq_id)
        return []

    def _in_kv(self) -> int:
        return sum(1 for c in self.cache if c.seq_id is not None)

    def _keep_marks(self, sequence: _Sequence) -> list[_Cached]:
        """Cache the prompt up to each of the job's marks as a prefix of its own (new entries sharing the sequence's
        cells: ``llama_memory_seq_cp`` only tags them), or mark and refresh the entry that holds just that prefix."""
        kept = []
        now = time.monotonic()
        for position in sequence.job.marks:
            prefix = sequence.kv_tokens[:position]
            if len(prefix) != position or position > self.cache_budget:
                continue
            same = next((c for c in self.cache if c.kv_tokens == prefix and c.lora == sequence.job.lora_key), None)
            if same is not None:
                same.marked, same.used = True, now
                continue
            while self._in_kv() >= self.config.cache_slots and self._evict_one():
                pass
            if not self.free_ids and not self._evict_one():
                break
            seq_id = self.free_ids.pop()
            llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, sequence.seq_id, seq_id, 0, position)
            entry = _Cached(prefix, now, position, seq_id=seq_id, marked=True, lora=sequence.job.lora_key)
            self.cache.append(entry)
            kept.append(entry)
        return kept

    def _drop_cached(self, entry: _Cached) -> None:
        self.cache.remove(entry)
        if entry.seq_id is not None:
            self._release(entry.seq_id)

    def _step(self) -> None:
        """One llama_decode over every running sequence, then one sampled token for each that has logits.

        Prefill first: when sequences are decoding, the prompts admitted since the last step that fit whole in one
        prefill chunk get a llama_decode of their own just before, so a new request's first token comes after that
        short step rather than after a full batch step; the decode step that follows then prefills only what is
        left of the chunk budget, so running streams still wait at most one chunk's worth of prefill per token.

        Background work (a negative priority: flex-tier requests, batch job records) gives way: foreground prompts
        are prefilled first; a background prompt is prefilled only while no foreground prompt waits for its
        prefill, and at most ``background_chunk`` of its tokens per step, so that a foreground request arriving
        finds at most a small step in flight. Every running sequence still decodes a token each step.
        """
        stuck = [s for s in self.active if s.last_token is None and s.prefilled >= len(s.job.tokens)]
        for sequence in stuck:  # no prompt token left to decode and no token sampled: it could never progress
            self._abandon(sequence, EmptyPromptError())
        if not self.active:
            return
        groups: dict[tuple[str, float] | None, list[_Sequence]] = {}
        for sequence in self.active:
            lora = sequence.job.lora
            groups.setdefault(lora.group if lora is not None else None, []).append(sequence)
        # One adapter per llama_decode: each adapter's sequences step on their own. Changing the context's adapters
        # makes llama.cpp re-plan its compute graph's memory on the next decode (a few milliseconds), so the adapter
        # already set steps first: a step with n adapters changes them n - 1 times, not n.
        order = sorted(groups, key=lambda group: group != self.lora_set)
        foreground_waiting = any(s.last_token is None and s.job.priority >= 0 for s in self.active)
        for group in order:
            self._use_lora(groups[group][0].job.lora)
            if not self._step_group(groups[group], foreground_waiting):
                return

    def _use_lora(self, lora: Lora | None) -> None:
        """Set the adapter the next llama_decode applies (none: the base model); a no-op when it is already set."""
        group = lora.group if lora is not None else None
        if group == self.lora_set:
            return
        if lora is None:
            status = llama_cpp.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora.handle)
            scales = (ctypes.c_float * 1)(lora.scale)
            status = llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales)
        if status != 0:
            raise EngineError(f"llama.cpp could not apply the LoRA adapter {lora.key if lora else ''} (status "
                              f"{status})")
        self.lora_set = group

    def _step_group(self, group: list[_Sequence], foreground_waiting: bool) -> bool:
        """The step of sequences sharing one adapter; False when the step is to be built again.
        ``foreground_waiting``: some foreground prompt (of any group) still waits for its prefill."""
        room = self.config.n_batch
        pending = sorted((s for s in group if s.last_token is None), key=lambda s: -s.job.priority)
        if foreground_waiting:
            pending = [s for s in pending if s.job.priority >= 0]
        elif pending:
            room = self.config.background_chunk
        if any(s.last_token is not None for s in group):
            room = min(room, self.config.prefill_chunk)
            short: list[_Sequence] = []
            left = room
            for sequence in pending:
                rest = len(sequence.job.tokens) - sequence.prefilled
                if 0 < rest <= left:
                    short.append(sequence)
                    left -= rest
            if short:
                if not self._decode([], short, room - left):
                    return False
                room = left
        alive = {id(s) for s in self.active}  # a short prefill may have finished some (max_tokens 1)
        decoding = [s for s in group if s.last_token is not None and id(s) in alive]
        return self._decode(decoding, [s for s in pending if s.last_token is None and id(s) in alive], room)

    def _decode(self, decoding: list[_Sequence], prefilling: list[_Sequence], room: int) -> bool:
        """One llama_decode: the next token of each of ``decoding`` and up to ``room`` tokens of the prompts of
        ``prefilling``; samples every sequence that has logits. False when the step is to be built again."""
        batch = self.batch
        plan: list[tuple[_Sequence, list[int]]] = []
        outputs: list[tuple[_Sequence, int]] = []
        n = 0
        for sequence in decoding:
            self._put(n, sequence.last_token or 0, len(sequence.kv_tokens), sequence.seq_id, True)
            plan.append((sequence, [sequence.last_token or 0]))
            outputs.append((sequence, n))
            n += 1
        room = min(room, self.config.n_batch - n)
        for sequence in prefilling:
            if room <= 0:
                break
            chunk = sequence.job.tokens[sequence.prefilled: sequence.prefilled + room]
            for offset, token in enumerate(chunk):
                last = sequence.prefilled + offset == len(sequence.job.tokens) - 1
                self._put(n, token, sequence.prefilled + offset, sequence.seq_id, last)
                if last:
                    outputs.append((sequence, n))
                n += 1
            plan.append((sequence, chunk))
            room -= len(chunk)
        if n == 0:
            return True
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status == 1 and self._evict_one():
            return False  # no free KV slot: a cached prefix moved to host memory; the step is rebuilt next time
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status}")
        for sequence, tokens in plan:
            sequence.kv_tokens.extend(tokens)
            if sequence.last_token is None:
                sequence.prefilled += len(tokens)
        for sequence, index in outputs:
            started = time.perf_counter()
            token = llama_cpp.llama_sampler_sample(sequence.sampler, self.ctx, index)
            took = time.perf_counter() - started
            if sequence.job.grammar is not None and took > GRAMMAR_STEP_LIMIT_S and not sequence.job.cancelled.is_set():
                log.warning("stopped a request whose grammar took %.1f s for one token", took)
                self._abandon(sequence, UnsupportedSchemaError(
                    f"its grammar is too ambiguous: one token took {took:.1f} s to sample (more than "
                    f"{GRAMMAR_STEP_LIMIT_S:.0f} s); simplify its patterns (no repeated optional groups such as "
                    "(.?){20})"
                ))
                continue
            self._advance(sequence, token)
        return True

    def _abandon(self, sequence: _Sequence, error: EngineError) -> None:
        """Stop a running sequence with an error, freeing its sequence id and KV cells."""
        with self.lock:
            self._retire(sequence, keep=False)
        sequence.job.emit(error)

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
            entries = self._retire(sequence, keep=True)
        for entry in entries:
            if entry.seq_id is None or len(entry.kv_tokens) > self.cache_budget:
                continue
            # Copied to host memory now, so that leaving the KV cache later (idle, or room needed) only frees cells,
            # never a copy on a request's way in; copied outside the lock (a millisecond or more), which only this
            # thread's own bookkeeping could race with.
            state = self._copy_state(entry.seq_id)
            with self.lock:
                self._snapshot(entry, state)
