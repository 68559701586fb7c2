"""Tiny random-weight vision Llamas (Llama 3.2 Vision, Llama 4) for tests and CI: a Hugging Face folder the
transformers engine serves.

:func:`make_tiny` builds, in about a second on a CPU and without downloading anything, a model of the real
architecture with a few hundred thousand parameters: its tokenizer is a byte-level BPE trained on the spot on a few
sentences (every UTF-8 text still encodes, a byte at a time where no merge applies) with the family's special tokens;
its chat template is the family's; its image processor is the family's, at a small tile size (Llama 4's processor
files are written directly: building the processor needs torchvision). The cross-attention
gates, which a freshly initialised Llama 3.2 Vision keeps closed (tanh(0) = 0, so images would change nothing), are
opened, so that with greedy decoding two different images give two different answers. The answers are noise (the
weights are random) made only of printable ASCII, and always run to their token limit (no end-of-turn token is ever
generated: its generation config suppresses it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAMILIES = ("llama3.2-vision", "llama4")
# The catalog ids each family's tiny model is served for.
CATALOG_IDS = {
    "llama3.2-vision": ("meta.llama3-2-11b-instruct-v1:0", "meta.llama3-2-90b-instruct-v1:0"),
    "llama4": ("meta.llama4-scout-17b-instruct-v1:0", "meta.llama4-maverick-17b-instruct-v1:0"),
}
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. What do you see in this image? Describe it in detail. "
    "A red square, a blue circle and a green triangle on a white background. Hello, how are you today? "
    "Answer the question about the picture in one short sentence, please."
)
_LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
    "<|python_tag|>", "<|finetune_right_pad_id|>",
)
# Llama 3 headers; an image part of a message becomes <|image|> where it stands (Meta puts it first).
_MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}{%- elif part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModel:
    """What :func:`make_tiny` built: the folder, its family and architecture, and its size."""

    family: str
    directory: Path
    architecture: str
    parameters: int
    bytes_on_disk: int


def _tokenizer(specials: tuple[str, ...], image_token: str, vocab_size: int) -> tuple[object, int]:
    """A byte-level BPE trained on :data:`_CORPUS`, the special tokens first, the image token last (its id is the
    text model's vocabulary size, as in Meta's checkpoints); and that vocabulary size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer)
    text_vocab = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([AddedToken(image_token, special=True, normalized=False)])
    return tokenizer, text_vocab


def _mllama(directory: Path, seed: int) -> tuple[str, int]:
    import torch

    hf: Any = importlib.import_module("transformers")  # untyped calls, seen as Any
    pil_processor: Any = importlib.import_module("transformers.models.mllama.image_processing_pil_mllama")
    MllamaConfig, MllamaForConditionalGeneration = hf.MllamaConfig, hf.MllamaForConditionalGeneration
    MllamaProcessor, PreTrainedTokenizerFast = hf.MllamaProcessor, hf.PreTrainedTokenizerFast
    MllamaImageProcessorPil = pil_processor.MllamaImageProcessorPil

    tokenizer, vocab = _tokenizer(_LLAMA3_SPECIALS, "<|image|>", 384)
    ids = {token: tokenizer.token_to_id(token) for token in _LLAMA3_SPECIALS}  # type: ignore[attr-defined]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    config = MllamaConfig(
        vision_config={
            "hidden_size": 32, "num_hidden_layers": 2, "num_global_layers": 1, "attention_heads": 2,
            "intermediate_size": 64, "vision_output_dim": 64, "image_size": 28, "patch_size": 14,
            "max_num_tiles": 4, "intermediate_layers_indices": [0],
        },
        text_config={
            "vocab_size": vocab, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "cross_attention_layers": [1],
            "bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_id": [ids["<|eot_id|>"], ids["<|eom_id|>"], ids["<|end_of_text|>"]],
            "pad_token_id": ids["<|finetune_right_pad_id|>"], "max_position_embeddings": 8192,
        },
        image_token_index=vocab,
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                parameter.fill_(1.0)  # open: tanh(1) ~ 0.76 of the image's contribution reaches the text
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 28, "width": 28},
                                                                        max_image_tiles=4),
                                tokenizer=fast, chat_template=_MLLAMA_TEMPLATE)
    # Its answers stay printable text: tokens that decode to anything but printable ASCII (lone bytes of UTF-8
    # sequences, control characters) and the special tokens, end of turn included, are never generated, so every
    # answer runs to its token limit.
    model.generation_config.suppress_tokens = [
        i for i in range(vocab) if not (text := fast.decode([i])) or not (text.isascii() and text.isprintable())
        or i in ids.values()
    ]
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return "MllamaForConditionalGeneration", sum(p.numel() for p in model.parameters())


_LLAMA4_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|eom|>",
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", "<|image_start|>", "<|image_end|>", "<|image|>",
    "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
)
# Llama 4 headers; an image part becomes <|image|>, which the processor expands into the image's tokens.
_LLAMA4_TEMPLATE = _MLLAMA_TEMPLATE.replace("<|start_header_id|>", "<|header_start|>").replace(
    "<|end_header_id|>", "<|header_end|>").replace("<|eot_id|>", "<|eot|>")


def _llama4(directory: Path, seed: int) -> tuple[str, int]:
    import json

    import torch

    hf: Any = importlib.import_module("transformers")
    tokenizer, _ = _tokenizer(_LLAMA4_SPECIALS[:-1], _LLAMA4_SPECIALS[-1], 384)
    vocab = tokenizer.get_vocab_size()  # type: ignore[attr-defined]
    ids = {token: tokenizer.token_to_id(token) for token in _LLAMA4_SPECIALS}  # type: ignore[attr-defined]
    fast = hf.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                      eos_token="<|eot|>", pad_token="<|finetune_right_pad|>")
    fast.chat_template = _LLAMA4_TEMPLATE
    config = hf.Llama4Config(
        vision_config={
            "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
            "vision_output_dim": 64, "image_size": 28, "patch_size": 14, "pixel_shuffle_ratio": 0.5,
            "projector_input_dim": 64, "projector_output_dim": 64,
        },
        text_config={
            "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "intermediate_size_mlp": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "num_local_experts": 2, "num_experts_per_tok": 1, "max_position_embeddings": 8192,
            "attention_chunk_size": 8192, "bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_id": [ids["<|eot|>"], ids["<|eom|>"], ids["<|end_of_text|>"]],
            "pad_token_id": ids["<|finetune_right_pad|>"],
        },
        boi_token_index=ids["<|image_start|>"], eoi_token_index=ids["<|image_end|>"],
        image_token_index=ids["<|patch|>"],
    )
    torch.manual_seed(seed)
    model = hf.Llama4ForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = [
        i for i in range(vocab) if not (text := fast.decode([i])) or not (text.isascii() and text.isprintable())
        or i in ids.values()
    ]
    model.save_pretrained(str(directory))
    fast.save_pretrained(str(directory))
    # The processor's files as transformers writes them (it needs torchvision to build the processor itself).
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Llama4ImageProcessor", "processor_class": "Llama4Processor",
        "size": {"height": 28, "width": 28}, "max_patches": 4, "resize_to_max_canvas": False,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_resize": True, "do_rescale": True,
        "do_normalize": True, "do_convert_rgb": True, "rescale_factor": 1 / 255, "resample": 2,
    }, indent=2))
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": "Llama4Processor", "patch_size": 14, "pixel_shuffle_ratio": 0.5,
    }, indent=2))
    return "Llama4ForConditionalGeneration", sum(p.numel() for p in model.parameters())


def make_tiny(family: str, directory: Path, seed: int = 0) -> TinyModel:
    """Build the tiny model of ``family`` (one of :data:`FAMILIES`) in ``directory`` (created; must be empty)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty; give a new or empty folder")
    importlib.import_module("transformers").utils.logging.disable_progress_bar()
    architecture, parameters = (_llama4 if family == "llama4" else _mllama)(directory, seed)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return TinyModel(family, directory, architecture, parameters, size)
