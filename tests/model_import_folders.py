"""Tiny Hugging Face Llama folders for the model-import tests and bench: random weights (transformers on torch, the
``train`` extra) and the embedded SmolLM2's tokenizer, saved as Hugging Face saves them (safetensors, config.json,
tokenizer.json, tokenizer_config.json, the chat template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamarock.services.deployments import embedded_model_path


def save_tokenizer(folder: Path) -> Any:
    """The embedded GGUF's tokenizer as a Hugging Face tokenizer folder (transformers reads the GGUF's vocabulary)."""
    from transformers import AutoTokenizer

    path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_llama(folder: Path, *, shards: bool = False, seed: int = 0, **config: Any) -> Any:
    """A random-weight LlamaForCausalLM with SmolLM2's vocabulary (GQA, rope theta and rms eps not the defaults; head
    dimension 32: llama.cpp's flash attention over a Q8_0 KV cache needs that much), and the tokenizer; returns the
    model (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    options: dict[str, Any] = {
        "vocab_size": 49152, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    }
    options.update(config)
    model = LlamaForCausalLM(LlamaConfig(**options)).eval()
    with torch.no_grad():  # weights large enough that the greedy path is not a tie of near-uniform logits
        for name, parameter in model.named_parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 1.0 if "embed_tokens" in name else 0.3)
    model.save_pretrained(str(folder), max_shard_size="2MB" if shards else "5GB")
    save_tokenizer(folder)
    return model


def break_config(folder: Path, **changes: Any) -> None:
    """Edit a saved folder's config.json (a bad folder for the failure tests)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
