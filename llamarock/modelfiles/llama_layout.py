"""Hugging Face Llama tensors ↔ GGUF tensors.

llama.cpp's rotary embedding pairs a head's dimensions as (0, 1), (2, 3), …; Hugging Face's Llama pairs them as
(0, d/2), (1, d/2 + 1), …. A converted checkpoint therefore stores the rows of the query and key projections
permuted per head. The same permutation applies to a LoRA adapter's ``B`` matrix of those projections (its rows are
the projection's output rows); its ``A`` matrix is unchanged. Names map through ``gguf.TensorNameMap``.
"""

from __future__ import annotations

import gguf
import numpy as np
import numpy.typing as npt

ROTARY_PERMUTED = ("self_attn.q_proj", "self_attn.k_proj")


def gguf_name(hf_name: str, blocks: int) -> str | None:
    """The GGUF name of a Hugging Face Llama tensor (``model.layers.3.self_attn.q_proj.weight`` →
    ``blk.3.attn_q.weight``), or None when llama.cpp has no such tensor."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    return names.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def heads_of(hf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads a tensor's rows are permuted by: ``n_head`` for the query projection, ``n_head_kv`` for the
    key projection, None for every other tensor."""
    if "self_attn.q_proj" in hf_name:
        return n_head
    if "self_attn.k_proj" in hf_name:
        return n_head_kv
    return None


def to_gguf_rows(rows: npt.NDArray[np.floating], heads: int) -> npt.NDArray[np.floating]:
    """Permute a query/key projection's rows (axis 0) from Hugging Face's rotary layout to llama.cpp's."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def from_gguf_rows(rows: npt.NDArray[np.floating], heads: int) -> npt.NDArray[np.floating]:
    """The inverse of :func:`to_gguf_rows`."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
