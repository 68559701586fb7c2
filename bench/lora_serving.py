"""Serving custom models as LoRA adapters on the embedded SmolLM2, in-process (the llama.cpp engine and its decode
loop, no HTTP).

1. The first request to a new custom model: its time to first token (the adapter loaded into the model on the way:
   ``llama_adapter_lora_init``, then the context's compute graph re-planned for it) against a request to an adapter
   already loaded, each on a prompt of its own (no prefix cache). Also the peft → GGUF LoRA conversion, which
   CreateCustomModel does once at creation (and the first request does for a model a customization job made).
2. Mixed traffic: ``--requests`` greedy requests of ``--tokens`` tokens at concurrency ``--parallel``, all on the
   base model, then spread round-robin over the base model and two adapters; aggregate generated tok/s of each,
   interleaved over ``--trials`` trials (median), and the ratio.

The adapters are rank-8 LoRAs on every projection (q, k, v, o, gate, up, down) with random weights, written as peft
folders with numpy (no torch needed) and converted with llamarock's converter.

Usage: .venv/bin/python bench/lora_serving.py [--threads 2] [--parallel 8] [--requests 16] [--tokens 64]
       [--trials 3]
Prints one JSON object. Run by hand; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from llamarock.engines.decode_loop import LlamaCppConfig
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.modelfiles.lora_gguf import convert_peft, read_base
from llamarock.services.deployments import embedded_model_path
from llamarock.types import Adapter, GenerationRequest, SamplingParams

PROJECTIONS = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192), "self_attn.v_proj": (576, 192),
               "self_attn.o_proj": (576, 576), "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536),
               "mlp.down_proj": (1536, 576)}  # SmolLM2-135M: (inputs, outputs)
TOPICS = ["the sea", "a mountain", "bread", "rain", "a library", "trains", "music", "a garden", "winter", "cities",
          "bees", "the moon", "chess", "rivers", "coffee", "lighthouses"]


def write_adapter(folder: Path, seed: int, rank: int = 8, blocks: int = 30) -> Path:
    """A peft adapter folder with random LoRA weights, as save_pretrained writes it."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for block in range(blocks):
        for module, (n_in, n_out) in PROJECTIONS.items():
            name = f"base_model.model.model.layers.{block}.{module}"
            tensors[f"{name}.lora_A.weight"] = (rng.standard_normal((rank, n_in)) * 0.05).astype(np.float32)
            tensors[f"{name}.lora_B.weight"] = (rng.standard_normal((n_out, rank)) * 0.05).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
        "target_modules": [m.rsplit(".", 1)[-1] for m in PROJECTIONS], "base_model_name_or_path": "",
    }))
    return folder


def request(prompt: str, adapter: Adapter | None, tokens: int) -> GenerationRequest:
    return GenerationRequest(sampling=SamplingParams(temperature=0.0, max_tokens=tokens), prompt=prompt,
                             adapter=adapter)


async def ttft(engine: LlamaCppEngine, prompt: str, adapter: Adapter | None) -> float:
    started = time.perf_counter()
    stream = engine.generate(request(prompt, adapter, 4))
    await anext(stream)
    first = time.perf_counter() - started
    async for _ in stream:
        pass
    return first


async def throughput(engine: LlamaCppEngine, adapters: list[Adapter | None], parallel: int, requests: int,
                     tokens: int, offset: int) -> float:
    """Generated tok/s of ``requests`` greedy requests, ``parallel`` at a time, round-robin over ``adapters``."""
    gate = asyncio.Semaphore(parallel)
    generated = 0

    async def one(index: int) -> None:
        nonlocal generated
        prompt = f"Write a long story about {TOPICS[(index + offset) % len(TOPICS)]}, number {index + offset}:"
        async with gate:
            async for chunk in engine.generate(request(prompt, adapters[index % len(adapters)], tokens)):
                generated += chunk.token_count

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return generated / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    base = read_base(embedded_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loras = []
        conversion = []
        for seed in range(4):
            peft_folder = write_adapter(folder / f"peft{seed}", seed)
            started = time.perf_counter()
            convert_peft(peft_folder, base, folder / f"lora{seed}.gguf")
            conversion.append(time.perf_counter() - started)
            loras.append(Adapter(f"custom-{seed}", str(folder / f"lora{seed}.gguf")))
        engine = LlamaCppEngine("bench", LlamaCppConfig(model_path=embedded_model_path(), threads=args.threads,
                                                        slots=args.parallel + 1))
        await engine.load()
        try:
            await ttft(engine, "Warm up the base model.", None)
            await ttft(engine, "Warm up the first adapter.", loras[0])
            cold, warm = [], []
            for trial, lora in enumerate(loras[1:]):  # each a new custom model, then the same one again
                cold.append(await ttft(engine, f"Tell me about {TOPICS[trial]}.", lora))
                warm.append(await ttft(engine, f"Tell me about {TOPICS[trial + 5]}.", lora))
            base_only, mixed = [], []
            for trial in range(args.trials):
                offset = trial * args.requests
                base_only.append(await throughput(engine, [None], args.parallel, args.requests, args.tokens, offset))
                mixed.append(await throughput(engine, [None, loras[0], loras[1]], args.parallel, args.requests,
                                              args.tokens, offset + 1000))
        finally:
            await engine.close()
    return {
        "threads": args.threads, "parallel": args.parallel, "requests": args.requests, "tokens": args.tokens,
        "load_average": os.getloadavg()[0],
        "conversion_s": [round(s, 3) for s in conversion],
        "first_request_ttft_s": [round(s, 3) for s in cold],
        "warm_adapter_ttft_s": [round(s, 3) for s in warm],
        "first_request_adds_s_median": round(statistics.median(c - w for c, w in zip(cold, warm, strict=True)), 3),
        "base_only_tok_s": [round(x, 1) for x in base_only],
        "mixed_base_and_2_adapters_tok_s": [round(x, 1) for x in mixed],
        "mixed_over_base_only_median": round(statistics.median(m / b for m, b in zip(mixed, base_only,
                                                                                     strict=True)), 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
