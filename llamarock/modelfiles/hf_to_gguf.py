"""A Hugging Face Llama-architecture folder → one GGUF file llama.cpp loads (Custom Model Import's conversion).

What a folder must hold: ``config.json`` (``LlamaForCausalLM``), its weights as ``*.safetensors`` (one file or
shards, with or without ``model.safetensors.index.json``), and a byte-level BPE ``tokenizer.json`` (Llama 3's and
SmolLM's kind) with ``tokenizer_config.json`` (special tokens, ``chat_template``). What is written, in the GGUF keys
llama.cpp reads (learned from its ``convert_hf_to_gguf.py``, written here on the ``gguf`` package):

- ``llama.*``: context length, embedding and feed-forward sizes, blocks, heads and key/value heads (GQA), the RMS
  norm epsilon, the rotary base and dimension, and rope scaling (``linear`` as a factor; Llama 3.1's ``llama3`` as the
  per-frequency ``rope_freqs`` tensor llama.cpp multiplies the frequencies by);
- ``tokenizer.ggml.*``: model ``gpt2``, the pre-tokenizer llama.cpp must split text with (recognised from the
  ``pre_tokenizer`` of ``tokenizer.json``), every token in id order with its type (normal, control for special added
  tokens, user-defined for other added ones, unused padding up to ``vocab_size``), the merges, the special token ids
  and whether to add BOS/EOS (``gguf.SpecialVocab``), and the chat template;
- the tensors, renamed by ``gguf.TensorNameMap`` (``llama_layout``), the query and key projections' rows permuted to
  llama.cpp's rotary pairing, 1-D tensors (norms) as F32 and matrices as F16, F32 or Q8_0 (``gguf.quants``); a
  tied ``lm_head`` is not written (llama.cpp reuses the embeddings).

safetensors files are read by this module (the format is a JSON header and raw little-endian arrays) so that BF16
checkpoints need no torch. Tensors are converted one at a time and streamed to the file: memory holds one tensor.
Anything a folder lacks or gets wrong raises :class:`ConversionError` with a message saying what and how to fix it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import numpy.typing as npt

from llamarock.modelfiles.llama_layout import gguf_name, heads_of, to_gguf_rows

OutType = Literal["f16", "f32", "q8_0"]
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# Llama 3's split regex (its tokenizer.json pre_tokenizer); llama.cpp calls that pre-tokenizer "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
}


class ConversionError(Exception):
    """The folder cannot be converted; the message says why and what to change."""


@dataclass(frozen=True)
class LlamaParams:
    """The architecture of a Llama checkpoint, from its ``config.json``."""

    vocab_size: int
    hidden: int
    intermediate: int
    blocks: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    context_length: int
    tied: bool
    rope_scaling: dict[str, Any] | None
    name: str

    @property
    def parameters(self) -> int:
        """Parameter count (embeddings and, untied, the output matrix included)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        per_block = attention + mlp + 2 * self.hidden
        embeddings = self.vocab_size * self.hidden * (1 if self.tied else 2)
        return self.blocks * per_block + embeddings + self.hidden


@dataclass(frozen=True)
class TensorSource:
    """One tensor of a safetensors file: where its bytes are and what they are."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def load(self) -> npt.NDArray[np.float32]:
        with self.file.open("rb") as handle:
            handle.seek(self.start)
            raw = handle.read(self.end - self.start)
        array: npt.NDArray[Any] = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[self.dtype])
        if self.dtype == "BF16":  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        converted: npt.NDArray[np.float32] = array.astype(np.float32).reshape(self.shape)
        return converted


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"The model folder has no {path.name} ({what}). Upload it with the weights.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path.name} is not valid JSON: {error}.") from None
    if not isinstance(document, dict):
        raise ConversionError(f"{path.name} must be a JSON object.")
    return document


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConversionError(f"config.json: {key} must be a positive integer (it is {value!r}).")
    return value


def read_params(folder: Path) -> LlamaParams:
    """The architecture from ``config.json``; ConversionError when it is not a Llama."""
    config = _read_json(folder / "config.json", "the model's architecture")
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    llama = any(a in SUPPORTED_ARCHITECTURES for a in architectures) or (not architectures and model_type == "llama")
    if not llama:
        named = ", ".join(map(str, architectures)) or str(model_type)
        raise ConversionError(
            f"The model architecture {named} is not supported: config.json must name LlamaForCausalLM (model_type "
            "llama). Import a Llama-architecture checkpoint, or a .gguf file."
        )
    heads = _int(config, "num_attention_heads")
    hidden = _int(config, "hidden_size")
    kv_heads = _int(config, "num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise ConversionError(f"config.json: num_attention_heads ({heads}) must be a multiple of "
                              f"num_key_value_heads ({kv_heads}).")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or None
    theta = config.get("rope_theta")
    if isinstance(rope, dict):
        theta = rope.get("rope_theta", theta)
        kind = rope.get("rope_type", rope.get("type", "default"))
        rope = None if kind == "default" else {**rope, "rope_type": kind}
    eps = config.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ConversionError(f"config.json: rms_norm_eps must be a positive number (it is {eps!r}).")
    return LlamaParams(
        vocab_size=_int(config, "vocab_size"), hidden=hidden, intermediate=_int(config, "intermediate_size"),
        blocks=_int(config, "num_hidden_layers"), heads=heads, kv_heads=kv_heads, head_dim=int(head_dim),
        rms_eps=float(eps), rope_theta=float(theta if isinstance(theta, (int, float)) else 10000.0),
        context_length=_int(config, "max_position_embeddings", 4096),
        tied=bool(config.get("tie_word_embeddings", False)), rope_scaling=rope,
        name=str(config.get("_name_or_path") or folder.name),
    )


def _safetensors_header(path: Path) -> dict[str, TensorSource]:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path.name} is not a safetensors file (it is {len(head)} bytes long).")
            (size,) = struct.unpack("<Q", head)
            if size > 100_000_000:
                raise ConversionError(f"{path.name} is not a safetensors file (its header says {size} bytes).")
            header = json.loads(handle.read(size))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path.name} is not a safetensors file: its header is not JSON ({error}).") from None
    base = 8 + size
    length = path.stat().st_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = info.get("dtype"), tuple(info.get("shape", ())), info.get("data_offsets", (0, 0))
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConversionError(f"{path.name}: tensor {name} is {dtype}; only F32, F16 and BF16 weights can be "
                                  "imported.")
        start, end = base + int(offsets[0]), base + int(offsets[1])
        if end > length or end - start != math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize:
            raise ConversionError(f"{path.name}: tensor {name} runs past the end of the file or does not match its "
                                  "shape; the file is truncated or damaged. Upload it again.")
        tensors[name] = TensorSource(path, dtype, shape, start, end)
    return tensors


def read_tensors(folder: Path) -> dict[str, TensorSource]:
    """Every tensor of the folder's safetensors files (shards included)."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "the shard index").get("weight_map") or {}
        missing = sorted({str(f) for f in weight_map.values()} - {f.name for f in files})
        if missing:
            raise ConversionError(f"model.safetensors.index.json names shards that are not in the folder: "
                                  f"{', '.join(missing)}. Upload every shard.")
    if not files:
        raise ConversionError("The model folder has no .safetensors files. Save the weights with safetensors "
                              "(save_pretrained(..., safe_serialization=True)) and upload them.")
    tensors: dict[str, TensorSource] = {}
    for file in files:
        tensors.update(_safetensors_header(file))
    return tensors


def _expected_shapes(params: LlamaParams) -> dict[str, tuple[int, ...]]:
    h, d = params.hidden, params.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (params.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not params.tied:
        shapes["lm_head.weight"] = (params.vocab_size, h)
    for i in range(params.blocks):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (params.heads * d, h),
            p + "self_attn.k_proj.weight": (params.kv_heads * d, h),
            p + "self_attn.v_proj.weight": (params.kv_heads * d, h),
            p + "self_attn.o_proj.weight": (h, params.heads * d),
            p + "mlp.gate_proj.weight": (params.intermediate, h),
            p + "mlp.up_proj.weight": (params.intermediate, h),
            p + "mlp.down_proj.weight": (h, params.intermediate),
        })
    return shapes


def check_tensors(params: LlamaParams, tensors: dict[str, TensorSource]) -> list[tuple[str, str, TensorSource]]:
    """(HF name, GGUF name, source) of every tensor to write, in file order; ConversionError for a missing tensor,
    a shape config.json does not predict, or a tensor llama.cpp's Llama has no place for."""
    expected = _expected_shapes(params)
    missing = [name for name in expected if name not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConversionError(f"The weights lack tensors a Llama with this config.json has: {shown}. Upload every "
                              "safetensors shard of the checkpoint.")
    plan = []
    for name, source in tensors.items():
        if name.endswith("rotary_emb.inv_freq") or (params.tied and name == "lm_head.weight"):
            continue
        want = expected.get(name)
        if want is not None and source.shape != want:
            raise ConversionError(
                f"Tensor {name} has shape {list(source.shape)}, but config.json implies {list(want)}. The weights do "
                "not belong to this config.json."
            )
        target = gguf_name(name, params.blocks)
        if target is None:
            raise ConversionError(f"Tensor {name} has no place in llama.cpp's Llama architecture; the checkpoint is "
                                  "not a plain LlamaForCausalLM.")
        plan.append((name, target, source))
    return plan


# ----------------------------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    types: list[int]
    pre: str


def pre_tokenizer_of(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the way ``tokenizer.json`` splits text before BPE (``tokenizer.ggml.pre``)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern == LLAMA3_SPLIT:
            return "llama-bpe"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise ConversionError(
        f"The tokenizer's pre_tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp is known to "
        "split text like: import a checkpoint with Llama 3's, SmolLM's or GPT-2's byte-level BPE tokenizer, or a "
        ".gguf file."
    )


def read_vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    tokenizer = _read_json(folder / "tokenizer.json", "the tokenizer")
    model = tokenizer.get("model") or {}
    decoder = tokenizer.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        raise ConversionError(
            f"tokenizer.json holds a {model.get('type')} tokenizer{fallback} (decoder {decoder.get('type')})"
            "; only byte-level BPE tokenizers (Llama 3, SmolLM) can be imported from a folder. Convert the checkpoint "
            "to GGUF yourself and import the .gguf file."
        )
    pre = pre_tokenizer_of(tokenizer)
    by_id: dict[int, tuple[str, int]] = {i: (text, int(gguf.TokenType.NORMAL)) for text, i in model["vocab"].items()}
    for added in tokenizer.get("added_tokens") or []:
        kind = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
        by_id[int(added["id"])] = (added["content"], kind)
    top = max(by_id) + 1 if by_id else 0
    if top > vocab_size:
        raise ConversionError(f"tokenizer.json has token ids up to {top - 1}, but config.json's vocab_size is "
                              f"{vocab_size}. The tokenizer does not belong to these weights.")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", int(gguf.TokenType.UNUSED)))
        tokens.append(text)
        types.append(kind)
    return Vocabulary(tokens, types, pre)


def _chat_template(folder: Path) -> str | None:
    config = folder / "tokenizer_config.json"
    if not config.exists():
        raise ConversionError("The model folder has no tokenizer_config.json (the special tokens and the "
                              "chat_template). Upload the tokenizer files with the weights.")
    template = _read_json(config, "the tokenizer's configuration").get("chat_template")
    if template is None and (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return template if isinstance(template, str) else None


# ----------------------------------------------------------------------------------------------------- writing


def llama3_rope_factors(params: LlamaParams) -> npt.NDArray[np.float32]:
    """Llama 3.1's per-frequency rope factors (``rope_freqs``), from its rope_scaling parameters."""
    scaling = params.rope_scaling or {}
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (params.rope_theta ** (np.arange(0, params.head_dim, 2, dtype=np.float64) / params.head_dim))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _kind(shape: tuple[int, ...], out: OutType) -> gguf.GGMLQuantizationType:
    """How a tensor is stored: 1-D tensors (norms) as F32; matrices as asked (Q8_0 only where rows fill its blocks)."""
    if len(shape) == 1 or out == "f32":
        return gguf.GGMLQuantizationType.F32
    if out == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _info(shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape as GGUFWriter.add_tensor_info takes it, numpy dtype, bytes) of a tensor stored as ``kind``."""
    if kind == gguf.GGMLQuantizationType.Q8_0:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)
    dtype = np.dtype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _encode(array: npt.NDArray[np.float32], kind: gguf.GGMLQuantizationType) -> npt.NDArray[Any]:
    if kind == gguf.GGMLQuantizationType.Q8_0:
        return gguf.quants.quantize(array, kind)
    return np.ascontiguousarray(array, dtype=np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)


def _file_type(out: OutType) -> int:
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out]


def _converted(params: LlamaParams, plan: list[tuple[str, str, TensorSource]],
               out: OutType) -> Iterator[npt.NDArray[Any]]:
    for hf_name, _, source in plan:
        array = source.load()
        heads = heads_of(hf_name, params.heads, params.kv_heads)
        if heads is not None:
            array = to_gguf_rows(array, heads)
        yield _encode(array, _kind(source.shape, out))


def convert(folder: Path, output: Path, out: OutType = "f16",
            progress: Callable[[int, int], None] | None = None) -> LlamaParams:
    """Convert ``folder`` into the GGUF file ``output`` (written to ``output`` + ``.part`` and renamed at the end,
    so a crash never leaves a file that looks whole). ``progress(done, total)`` hears each tensor written."""
    params = read_params(folder)
    if params.rope_scaling is not None and params.rope_scaling["rope_type"] not in ("linear", "llama3"):
        raise ConversionError(f"config.json: rope scaling {params.rope_scaling['rope_type']!r} is not supported; "
                              "only linear and llama3 rope scaling can be imported.")
    vocabulary = read_vocabulary(folder, params.vocab_size)
    template = _chat_template(folder)
    plan = check_tensors(params, read_tensors(folder))

    partial = output.with_name(output.name + ".part")
    writer = gguf.GGUFWriter(partial, "llama")
    try:
        writer.add_name(params.name)
        writer.add_context_length(params.context_length)
        writer.add_embedding_length(params.hidden)
        writer.add_block_count(params.blocks)
        writer.add_feed_forward_length(params.intermediate)
        writer.add_head_count(params.heads)
        writer.add_head_count_kv(params.kv_heads)
        writer.add_layer_norm_rms_eps(params.rms_eps)
        writer.add_rope_freq_base(params.rope_theta)
        writer.add_rope_dimension_count(params.head_dim)
        if params.head_dim != params.hidden // params.heads:
            writer.add_key_length(params.head_dim)
            writer.add_value_length(params.head_dim)
        writer.add_vocab_size(params.vocab_size)
        writer.add_file_type(_file_type(out))
        rope_freqs = None
        if params.rope_scaling is not None and params.rope_scaling["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(params.rope_scaling.get("factor", 1.0)))
        elif params.rope_scaling is not None:
            rope_freqs = llama3_rope_factors(params)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocabulary.pre)
        writer.add_token_list(vocabulary.tokens)
        writer.add_token_types(vocabulary.types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=params.vocab_size)
        special.chat_template = template
        if not special.merges:
            raise ConversionError("tokenizer.json has no BPE merges; the tokenizer cannot be used.")
        special.add_to_gguf(writer, quiet=True)

        infos: list[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType]] = []
        if rope_freqs is not None:
            infos.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs.shape,
                          gguf.GGMLQuantizationType.F32))
        infos += [(name, source.shape, _kind(source.shape, out)) for _, name, source in plan]
        for name, shape, kind in infos:
            writer.add_tensor_info(name, *_info(shape, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total = len(infos)
        done = 0
        if rope_freqs is not None:
            writer.write_tensor_data(rope_freqs)
            done += 1
        for array in _converted(params, plan, out):
            writer.write_tensor_data(array)
            done += 1
            if progress is not None:
                progress(done, total)
        writer.close()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    return params


_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B", gguf.GGUFValueType.INT8: "<b", gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h", gguf.GGUFValueType.UINT32: "<I", gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f", gguf.GGUFValueType.BOOL: "<?", gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q", gguf.GGUFValueType.FLOAT64: "<d",
}


class _Header:
    """A GGUF file's header read in one pass (gguf.GGUFReader builds arrays of every token and merge first, which
    takes seconds for a 49K vocabulary; the facts need a few keys and the tensors' sizes)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise ConversionError("the GGUF file ends inside its header; it is truncated.")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        size = self.take("<Q")
        if size > 1 << 30:
            raise ConversionError("the GGUF header holds an impossible string length; the file is damaged.")
        return bytes(self.handle.read(size)).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == gguf.GGUFValueType.STRING:
            return self.string()
        if kind == gguf.GGUFValueType.ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item in _SCALARS:  # skipped: no fact is a numeric array
                self.handle.seek(count * struct.calcsize(_SCALARS[gguf.GGUFValueType(item)]), 1)
                return None
            for _ in range(count):
                self.value(item)
            return None
        try:
            return self.take(_SCALARS[gguf.GGUFValueType(kind)])
        except (ValueError, KeyError):
            raise ConversionError(f"the GGUF header has a value of unknown type {kind}.") from None


def gguf_facts(path: Path) -> dict[str, Any]:
    """What a GGUF file says of itself (architecture, sizes, chat template), checking that llama.cpp's Llama loader
    can take it; ConversionError otherwise."""
    fields: dict[str, Any] = {}
    parameters = 0
    try:
        with path.open("rb") as handle:
            header = _Header(handle)
            if handle.read(4) != b"GGUF":
                raise ConversionError(f"{path.name} is not a GGUF file (it does not start with GGUF).")
            version = header.take("<I")
            if version not in (2, 3):
                raise ConversionError(f"{path.name} is GGUF version {version}; llama.cpp reads versions 2 and 3.")
            tensors, keys = header.take("<Q"), header.take("<Q")
            for _ in range(keys):
                key = header.string()
                fields[key] = header.value(header.take("<I"))
            for _ in range(tensors):
                header.string()
                dims = [header.take("<Q") for _ in range(header.take("<I"))]
                header.take("<I")
                header.take("<Q")
                parameters += math.prod(dims)
    except (OSError, struct.error, ValueError) as error:
        raise ConversionError(f"{path.name} is not a GGUF file llama.cpp can read: {error}.") from None
    architecture = fields.get("general.architecture")
    if architecture != "llama":
        raise ConversionError(f"The GGUF file's architecture is {architecture!r}; only llama GGUF files can be "
                              "imported.")
    heads = int(fields.get("llama.attention.head_count") or 1)
    embedding = int(fields.get("llama.embedding_length") or 0)
    return {
        "architecture": architecture,
        "name": fields.get("general.name"),
        "context_length": int(fields.get("llama.context_length") or 4096),
        "blocks": int(fields.get("llama.block_count") or 0),
        "kv_heads": int(fields.get("llama.attention.head_count_kv") or heads),
        "head_dim": int(fields.get("llama.attention.key_length") or embedding // heads),
        "parameters": parameters,
        "chat_template": fields.get("tokenizer.chat_template"),
    }
