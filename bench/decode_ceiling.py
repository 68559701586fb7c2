"""How fast can any engine run bench/concurrency.py's workload on this machine? The compute ceiling, in-process.

Runs the same workload as bench/concurrency.py at one concurrency level (by default 16 greedy requests of 128
tokens, the same counting prompts, 8 at a time, same GGUF and threads) through an idealised continuous-batching
loop written straight on llama.cpp's batch API: no HTTP, no event loop, no queue, no per-request sampler chain (an
argmax over the logits), a finished request's place taken by the next prompt in the very next batch. What is left
is llama.cpp's own cost, so its tok/s bounds from above what llamarock, llama-server or anything else built on the
same ggml kernels can reach with this model and thread count.

It runs the loop for two KV cache layouts:
- ``streams``: one KV stream per slot (``kv_unified=false``, n_ctx split evenly), F16 cache: llama-server's
  defaults with ``-np 8``, where a token's attention only scans its own slot's cells;
- ``unified``: one pool for all sequences, Q8_0 cache, flash attention: llamarock's layout (a request may use the
  whole window), where each token's attention scans every used cell (other sequences' are masked).

each twice: cold (every prompt prefilled) and with every prompt cached (bench/concurrency.py's sweep at concurrency
8, where the earlier levels sent the same prompts); and, to show where the time goes, the cost of one decode step
of 8 sequences by KV cells in use.

Usage: .venv/bin/python bench/decode_ceiling.py [--threads 2] [--parallel 8] [--requests 16] [--tokens 128]
       [--llama-server-tok-s COLD,CACHED]  (llama-server's figures from bench/concurrency.py, to print ratios)
Prints one JSON object. Run by hand on a quiet machine; never a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import llama_cpp
import numpy as np
from concurrency import N_CTX, _prompt
from llama_cpp._logger import set_verbose

from llamarock.engines.decode_loop import LlamaCppConfig, context_params
from llamarock.services.deployments import embedded_model_path


def _context(model: Any, *, unified: bool, parallel: int, threads: int) -> Any:
    """llamarock's own decode-loop context (unified pool, Q8_0, flash attention) with ``parallel`` sequence ids;
    ``unified=False`` turns it into llama-server's defaults: a KV stream per slot, F16 cache."""
    config = LlamaCppConfig(model_path=embedded_model_path(), threads=threads, kv_cells=N_CTX, slots=parallel,
                            cache_slots=0)
    params = context_params(config, N_CTX)
    if not unified:
        params.kv_unified = False
        params.type_k = llama_cpp.GGML_TYPE_F16
        params.type_v = llama_cpp.GGML_TYPE_F16
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not create the context")
    return ctx


def _tokenize(vocab: Any, text: str) -> list[int]:
    data = text.encode()
    buffer = (llama_cpp.llama_token * (len(data) + 8))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, True)
    return list(buffer[:count])


class _Runner:
    def __init__(self, model: Any, ctx: Any) -> None:
        self.ctx = ctx
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(items)
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def argmax(self, index: int) -> int:
        logits = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.n_vocab,))))


def _workload(
    runner: _Runner, memory: Any, prompts: list[list[int]], parallel: int, tokens: int, *, warm: bool = False
) -> dict[str, Any]:
    """Continuous batching at its cheapest: tok/s of the whole request set, TTFT from each request's admission.

    ``warm``: prompts cost nothing (all but their last token are prefilled off the clock), as when every prompt is
    already in a prefix cache, which is the case at concurrency 8 in bench/concurrency.py's sweep (the levels
    before it sent the same prompts) for llama-server's slots and llamarock's prefix cache alike.
    """
    waiting = list(enumerate(prompts))
    free = list(range(parallel))
    active: dict[int, dict[str, Any]] = {}
    ttft: list[float] = []
    produced = 0
    paused = 0.0
    start = time.perf_counter()
    while waiting or active:
        per_seq: dict[int, list[tuple[int, int, int, bool]]] = {
            seq: [(state["last"], state["pos"], seq, True)] for seq, state in active.items()
        }
        while waiting and free:
            _, prompt = waiting.pop(0)
            seq = free.pop()
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
            begin = 0
            if warm:
                off_clock = time.perf_counter()
                runner.decode([(token, pos, seq, False) for pos, token in enumerate(prompt[:-1])])
                begin = len(prompt) - 1
                paused += time.perf_counter() - off_clock
            active[seq] = {"pos": len(prompt), "made": 0, "last": None, "first": True, "admitted": time.perf_counter()}
            per_seq[seq] = [(prompt[pos], pos, seq, pos == len(prompt) - 1) for pos in range(begin, len(prompt))]
        # Slots in id order, as llama-server batches them (a per-slot KV stream layout needs it to split evenly).
        items: list[tuple[int, int, int, bool]] = []
        outputs: list[tuple[int, int]] = []
        for seq in sorted(per_seq):
            items.extend(per_seq[seq])
            outputs.append((seq, len(items) - 1))
        runner.decode(items)
        now = time.perf_counter()
        for seq, index in outputs:
            state = active[seq]
            if state["last"] is not None:
                state["pos"] += 1
            if state["first"]:
                ttft.append(now - state["admitted"])
                state["first"] = False
            state["last"] = runner.argmax(index)
            state["made"] += 1
            produced += 1
            if state["made"] >= tokens:
                del active[seq]
                free.append(seq)
    elapsed = time.perf_counter() - start - paused
    return {
        "tokens": produced,
        "seconds": round(elapsed, 2),
        "tok_s": round(produced / elapsed, 1),
        # Warm, a wave's first requests wait for the later ones' off-clock prefill: their TTFT means nothing.
        "ttft_p50_ms": None if warm else round(statistics.median(ttft) * 1000, 1),
    }


def _step_costs(runner: _Runner, memory: Any, parallel: int, lengths: list[int]) -> list[dict[str, Any]]:
    """Median time of one decode step of ``parallel`` sequences, each holding ``length`` cells."""
    rows = []
    for length in lengths:
        llama_cpp.llama_memory_clear(memory, True)
        for seq in range(parallel):
            for begin in range(0, length, 256):
                end = min(length, begin + 256)
                runner.decode([(100 + (seq * 13 + k) % 500, k, seq, False) for k in range(begin, end)])
        times = []
        for step in range(10):
            began = time.perf_counter()
            runner.decode([(200, length + step, seq, True) for seq in range(parallel)])
            times.append(time.perf_counter() - began)
        rows.append({"cells_per_sequence": length, "cells_used": parallel * length,
                     "step_ms": round(statistics.median(times) * 1000, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--llama-server-tok-s", metavar="COLD,CACHED",
                        help="llama-server's aggregate tok/s at this concurrency from bench/concurrency.py: alone "
                        "(prompts cold) and in the sweep (prompts cached), to print the ceilings as multiples of it")
    args = parser.parse_args()

    llama_cpp.llama_backend_init()
    set_verbose(False)
    model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(),
                                                 llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    prompts = [_tokenize(vocab, _prompt(i)) for i in range(args.requests)]
    report: dict[str, Any] = {
        "model": embedded_model_path().name,
        "threads": args.threads,
        "parallel": args.parallel,
        "requests": args.requests,
        "tokens": args.tokens,
        "prompt_tokens": [len(p) for p in prompts[:2]],
        "layouts": {},
    }
    for name, unified in (("streams", False), ("unified", True)):
        ctx = _context(model, unified=unified, parallel=args.parallel, threads=args.threads)
        runner = _Runner(model, ctx)
        memory = llama_cpp.llama_get_memory(ctx)
        _workload(runner, memory, prompts[:2], args.parallel, 16)  # warm-up
        llama_cpp.llama_memory_clear(memory, True)
        result = _workload(runner, memory, prompts, args.parallel, args.tokens)
        llama_cpp.llama_memory_clear(memory, True)
        result["prompts_cached"] = _workload(runner, memory, prompts, args.parallel, args.tokens, warm=True)
        if args.llama_server_tok_s:
            cold, cached = (float(x) for x in args.llama_server_tok_s.split(","))
            result["x_llama_server"] = round(result["tok_s"] / cold, 3)
            result["prompts_cached"]["x_llama_server"] = round(result["prompts_cached"]["tok_s"] / cached, 3)
        result["step_8_sequences"] = _step_costs(runner, memory, args.parallel, [20, 60, 150, 300])
        report["layouts"][name] = result
        llama_cpp.llama_batch_free(runner.batch)
        llama_cpp.llama_free(ctx)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
