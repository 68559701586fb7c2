"""A peft LoRA adapter folder → llama.cpp's GGUF LoRA format, checked against the base model's GGUF.

What llama.cpp reads (``llama_adapter_lora_init``): a GGUF whose ``general.type`` is ``adapter``,
``general.architecture`` the base model's, ``adapter.type`` ``lora`` and ``adapter.lora.alpha`` a float; for every
adapted weight ``W`` of the base model (``blk.3.attn_q.weight``) a pair ``<W>.lora_a`` / ``<W>.lora_b``. In ggml's
dimension order ``lora_a`` is ``[n_in, rank]`` and ``lora_b`` ``[rank, n_out]`` — as numpy arrays, peft's own
``lora_A`` ``(rank, n_in)`` and ``lora_B`` ``(n_out, rank)`` unchanged. llama.cpp adds
``scale × alpha / rank × B·A·x`` to ``W·x`` (``scale`` is the per-request multiplier), which is peft's
``lora_alpha / r`` scaling.

Three things differ from peft's file and are done here: names (Hugging Face → GGUF, ``llama_layout.gguf_name``), the
rows of the query and key projections' ``B`` (llama.cpp's rotary layout: ``llama_layout.to_gguf_rows``, by the base
GGUF's own head counts), and scalings llama.cpp cannot express with one alpha (``alpha_pattern``, rsLoRA's
``alpha / sqrt(r)``), which are folded into ``B``. Anything llama.cpp cannot apply (DoRA, biases, whole modules to
save, embedding LoRA, a module the base GGUF lacks or shapes it does not have) is refused with
:class:`AdapterFormatError` saying what and why, before any file is written.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from llamarock.modelfiles.llama_layout import gguf_name, heads_of, to_gguf_rows

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."
_LORA_TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[A-Za-z0-9_]+)?\.weight$")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
# peft options that change what the adapter computes in ways llama.cpp's LoRA cannot: each is refused by name.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora) adapters",
    "modules_to_save": "adapters that save whole modules (modules_to_save)",
    "layer_replication": "adapters with layer_replication",
    "target_parameters": "adapters on parameters (target_parameters)",
    "trainable_token_indices": "adapters that train token embeddings (trainable_token_indices)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "fan_in_fan_out": "fan_in_fan_out adapters (transposed weights)",
    "lora_bias": "adapters with a LoRA bias (lora_bias)",
}


class AdapterFormatError(Exception):
    """The adapter cannot be served over this base model; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class BaseModel:
    """What a LoRA must agree with in the base model's GGUF: architecture, head counts, block count and the shape of
    every tensor (ggml order: ``[n_in, n_out]`` for a projection)."""

    architecture: str
    n_head: int
    n_head_kv: int
    blocks: int
    tensors: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class LoraSummary:
    """What a converted (or checked) GGUF LoRA holds."""

    path: Path
    rank: int
    alpha: float
    modules: int
    base_model: str  # what the adapter says it was trained on (peft's base_model_name_or_path), or ""


def read_base(path: Path) -> BaseModel:
    """The architecture, head counts and tensor shapes of a GGUF model (metadata only; the weights are not read)."""
    reader = gguf.GGUFReader(path)

    def field(key: str) -> Any:
        found = reader.get_field(key)
        return found.contents() if found is not None else None

    architecture = str(field(gguf.Keys.General.ARCHITECTURE) or "")
    n_head = field(gguf.Keys.Attention.HEAD_COUNT.format(arch=architecture))
    n_head_kv = field(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=architecture)) or n_head
    blocks = field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=architecture))
    if architecture != "llama" or not n_head or not blocks:
        raise AdapterFormatError(
            f"the base model's weights are a {architecture or 'unknown'} GGUF; LoRA adapters are served over Llama "
            "architecture GGUF weights only"
        )
    tensors = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    return BaseModel(architecture, int(n_head), int(n_head_kv), int(blocks), tensors)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """A peft adapter folder's ``adapter_config.json``, checked for what llama.cpp can apply."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise AdapterFormatError(f"the adapter folder has no {CONFIG_FILE} (save the adapter with peft's "
                                 "save_pretrained, which writes it next to adapter_model.safetensors)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{CONFIG_FILE} must be a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{CONFIG_FILE} has peft_type {config.get('peft_type')!r}; only LORA adapters "
                                 "can be served")
    for option, what in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise AdapterFormatError(f"{what} cannot be applied by llama.cpp; train a plain LoRA ({option} off)")
    if config.get("bias", "none") != "none":
        raise AdapterFormatError(f"{CONFIG_FILE} has bias {config['bias']!r}; llama.cpp applies LoRA weights only, "
                                 "so train with bias='none'")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise AdapterFormatError(f"{CONFIG_FILE} needs a positive number {key}; it has {value!r}")
    return config


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    """peft's per-module override (``rank_pattern``/``alpha_pattern``: a key matches a module name's tail)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


def read_safetensors(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    """Every tensor of a safetensors file as float32 (bf16 included, which numpy has no type for)."""
    try:
        data = path.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8: 8 + length])
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{path.name} is not a readable safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    body = memoryview(data)[8 + length:]
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = spec["dtype"], [int(n) for n in spec["shape"]], spec["data_offsets"]
            raw = body[int(start): int(end)]
            if dtype == "BF16":
                array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype in _SAFETENSORS_DTYPES:
                array = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
            else:
                raise AdapterFormatError(f"{path.name}: tensor {name} is {dtype}; LoRA weights must be F32, F16 or "
                                         "BF16")
            tensors[name] = array.astype(np.float32).reshape(shape)
        except AdapterFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFormatError(f"{path.name}: tensor {name} is malformed ({exc})") from None
    return tensors


def convert_peft(folder: Path, base: BaseModel, out: Path) -> LoraSummary:
    """Convert the peft adapter in ``folder`` to a GGUF LoRA at ``out`` for the base model ``base``."""
    config = read_adapter_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        legacy = " (adapter_model.bin, a pickle, is not read: save with safe_serialization)" if (
            folder / "adapter_model.bin").is_file() else ""
        raise AdapterFormatError(f"the adapter folder has no {WEIGHTS_FILE}{legacy}")
    pairs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for name, array in read_safetensors(weights).items():
        match = _LORA_TENSOR.match(name.removeprefix(_PEFT_PREFIX))
        if match is None:
            kind = "an embedding LoRA" if "lora_embedding" in name else "not a LoRA A/B weight"
            raise AdapterFormatError(f"{WEIGHTS_FILE} holds {name}, {kind}; llama.cpp applies LoRA A/B weights of "
                                     "linear projections only")
        pairs.setdefault(match["module"], {})[match["which"]] = array
    if not pairs:
        raise AdapterFormatError(f"{WEIGHTS_FILE} holds no LoRA weights")
    alpha = float(config["lora_alpha"])
    rslora = bool(config.get("use_rslora"))
    alpha_pattern = config.get("alpha_pattern") or {}
    writer = gguf.GGUFWriter(out, base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    ranks = set()
    for module in sorted(pairs):
        pair = pairs[module]
        if set(pair) != {"A", "B"}:
            raise AdapterFormatError(f"{WEIGHTS_FILE} has lora_{'B' if 'A' in pair else 'A'} of {module} without "
                                     f"its lora_{'A' if 'A' in pair else 'B'}")
        a, b = pair["A"], pair["B"]
        target = gguf_name(f"{module}.weight", base.blocks)
        if target is None or target not in base.tensors:
            raise AdapterFormatError(
                f"the adapter adapts {module}, which the base model's weights do not have"
                + (" (its output projection is tied to the token embeddings)" if module.endswith("lm_head") else "")
                + "; was it trained on another base model?"
            )
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterFormatError(f"{module}: lora_A {a.shape} and lora_B {b.shape} are not a LoRA pair "
                                     "(lora_A is rank × inputs, lora_B outputs × rank)")
        shape = base.tensors[target]
        if len(shape) != 2 or (a.shape[1], b.shape[0]) != shape:
            raise AdapterFormatError(
                f"{module}: the adapter maps {a.shape[1]} inputs to {b.shape[0]} outputs, but the base model's "
                f"{target} maps {shape[0]} to {shape[-1]}; the adapter was trained on another base model"
            )
        rank = a.shape[0]
        ranks.add(rank)
        heads = heads_of(module, base.n_head, base.n_head_kv)
        if heads is not None:
            if b.shape[0] % (2 * heads):
                raise AdapterFormatError(f"{module}: {b.shape[0]} outputs do not split into the base model's {heads} "
                                         "heads")
            b = to_gguf_rows(b, heads)
        module_alpha = _pattern_value(alpha_pattern, module, alpha)
        wanted = module_alpha / (math.sqrt(rank) if rslora else rank)
        applied = alpha / rank  # what llama.cpp will multiply by
        if not math.isclose(wanted, applied, rel_tol=1e-9):
            b = b * np.float32(wanted / applied)
        writer.add_tensor(f"{target}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{target}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return LoraSummary(out, max(ranks), alpha, len(pairs), str(config.get("base_model_name_or_path") or ""))


def check_lora_gguf(path: Path, base: BaseModel) -> LoraSummary:
    """Check that a GGUF LoRA file fits ``base`` as llama.cpp will (type, architecture, tensor pairs and shapes)."""
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the gguf package raises several kinds for a file that is not GGUF
        raise AdapterFormatError(f"{path.name} is not a GGUF file: {exc}") from None

    def field(key: str) -> Any:
        found = reader.get_field(key)
        return found.contents() if found is not None else None

    if field(gguf.Keys.General.TYPE) != "adapter" or field(gguf.Keys.Adapter.TYPE) != "lora":
        raise AdapterFormatError(f"{path.name} is a GGUF but not a LoRA adapter (general.type must be 'adapter' and "
                                 "adapter.type 'lora'; llama.cpp's convert_lora_to_gguf.py writes one)")
    if field(gguf.Keys.General.ARCHITECTURE) != base.architecture:
        raise AdapterFormatError(f"{path.name} is a LoRA for {field(gguf.Keys.General.ARCHITECTURE)!r} weights; the "
                                 f"base model is {base.architecture!r}")
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    ranks = set()
    pairs = 0
    for name, a_shape in shapes.items():
        if name.endswith("_norm.weight"):
            continue
        target, _, which = name.rpartition(".")
        if which not in ("lora_a", "lora_b"):
            raise AdapterFormatError(f"{path.name} holds {name}, which is neither a lora_a nor a lora_b tensor")
        if which == "lora_b":
            continue
        b_shape = shapes.get(f"{target}.lora_b")
        base_shape = base.tensors.get(target)
        if b_shape is None:
            raise AdapterFormatError(f"{path.name} has {name} without {target}.lora_b")
        if base_shape is None:
            raise AdapterFormatError(f"{path.name} adapts {target}, which the base model does not have")
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != b_shape[0] or (
                a_shape[0], b_shape[1]) != base_shape[:2]:
            raise AdapterFormatError(f"{path.name}: {target}'s LoRA tensors {a_shape} and {b_shape} do not fit the "
                                     f"base model's {base_shape}")
        ranks.add(a_shape[1])
        pairs += 1
    if not ranks:
        raise AdapterFormatError(f"{path.name} holds no LoRA tensor pairs")
    alpha = field(gguf.Keys.Adapter.LORA_ALPHA)
    return LoraSummary(path, max(ranks), float(alpha or 0.0), pairs, "")
