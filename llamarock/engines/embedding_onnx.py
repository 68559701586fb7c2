"""A BERT sentence encoder as an ONNX graph, built from its safetensors weights with the ``onnx`` helpers.

The graph is Hugging Face's ``BertModel`` forward pass in fp32, op for op (embeddings with absolute positions and
token type 0, post-norm encoder layers with exact erf GELU), followed by sentence-transformers' mean pooling over the
attention mask. Inputs: ``input_ids`` and ``attention_mask`` (int64, batch × length); output: ``embedding`` (float32,
batch × hidden), not normalised.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  # Gelu (20), LayerNormalization (17)
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def bert_mean_pooling_model(weights: dict[str, np.ndarray], config: dict[str, Any], *,
                            fused: bool = True) -> onnx.ModelProto:
    """The ONNX model of a BERT encoder with mean pooling, from ``weights`` (safetensors names of ``BertModel``, with
    or without a ``bert.`` prefix) and ``config`` (its ``config.json``).

    ``weights`` is emptied as its tensors are copied into the model, so that at most one copy of each is alive.
    """
    for key in [k for k in weights if k.startswith("bert.")]:
        weights[key.removeprefix("bert.")] = weights.pop(key)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported hidden_act {config.get('hidden_act')!r}: only 'gelu' (erf) is built")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are built")

    def w(name: str) -> np.ndarray:
        return weights.pop(name).astype(np.float32, copy=False)

    g = _Graph()
    ids, mask = "input_ids", "attention_mask"
    # Embeddings: word + position + token type 0 (folded into the position table), then LayerNorm.
    word = g.op("Gather", g.const("word_embeddings", w("embeddings.word_embeddings.weight")), ids)
    positions = w("embeddings.position_embeddings.weight") + w("embeddings.token_type_embeddings.weight")[0]
    length = g.op("Slice", g.op("Shape", ids), g.const("one", np.array([1], np.int64)),
                  g.const("two", np.array([2], np.int64)))
    pos = g.op("Slice", g.const("position_embeddings", positions), g.const("zero", np.array([0], np.int64)), length,
               "zero")
    x = g.op("LayerNormalization", g.op("Add", word, pos), g.const("emb_ln_w", w("embeddings.LayerNorm.weight")),
             g.const("emb_ln_b", w("embeddings.LayerNorm.bias")), axis=-1, epsilon=eps)

    mask_f = g.op("Cast", mask, to=TensorProto.FLOAT)
    if fused:
        # onnxruntime's fused kernels (com.microsoft): Attention (Q, K and V in one projection, the key padding mask,
        # softmax(QK^T/sqrt(d))V per head), SkipLayerNormalization (residual + bias + LayerNorm) and BiasGelu (bias +
        # erf GELU). The same arithmetic as the plain graph, in fewer passes over memory, and the shape
        # ``quantize_dynamic`` turns into QAttention and DynamicQuantizeMatMul.
        mask_i = g.op("Cast", mask, to=TensorProto.INT32)

        def matmul(inp: str, prefix: str) -> str:
            return g.op("MatMul", inp, g.const(f"{prefix}.wt", w(f"{prefix}.weight").T))

        for i in range(layers):
            p = f"encoder.layer.{i}"
            parts = [f"{p}.attention.self.{n}" for n in ("query", "key", "value")]
            qkv_w = np.concatenate([w(f"{n}.weight").T for n in parts], axis=1)
            qkv_b = np.concatenate([w(f"{n}.bias") for n in parts])
            context = g.op("Attention", x, g.const(f"{p}.qkv.wt", qkv_w), g.const(f"{p}.qkv.b", qkv_b), mask_i,
                           domain=MS_DOMAIN, num_heads=heads)
            out = matmul(context, f"{p}.attention.output.dense")
            x = g.op("SkipLayerNormalization", out, x,
                     g.const(f"{p}.ln1.w", w(f"{p}.attention.output.LayerNorm.weight")),
                     g.const(f"{p}.ln1.b", w(f"{p}.attention.output.LayerNorm.bias")),
                     g.const(f"{p}.out.b", w(f"{p}.attention.output.dense.bias")), domain=MS_DOMAIN, epsilon=eps)
            inner = g.op("BiasGelu", matmul(x, f"{p}.intermediate.dense"),
                         g.const(f"{p}.inter.b", w(f"{p}.intermediate.dense.bias")), domain=MS_DOMAIN)
            x = g.op("SkipLayerNormalization", matmul(inner, f"{p}.output.dense"), x,
                     g.const(f"{p}.ln2.w", w(f"{p}.output.LayerNorm.weight")),
                     g.const(f"{p}.ln2.b", w(f"{p}.output.LayerNorm.bias")),
                     g.const(f"{p}.ffn.b", w(f"{p}.output.dense.bias")), domain=MS_DOMAIN, epsilon=eps)
    else:
        x = _plain_layers(g, x, mask_f, w, layers, hidden, heads, eps)

    # Mean pooling over attended tokens (sentence-transformers' Pooling, mean mode).
    mask_3d = g.op("Unsqueeze", mask_f, g.const("axis_2", np.array([2], np.int64)))
    axis_1 = g.const("axis_1", np.array([1], np.int64))
    summed = g.op("ReduceSum", g.op("Mul", x, mask_3d), axis_1, keepdims=0)
    min_count = g.const("min_count", np.array(1e-9, np.float32))
    counts = g.op("Max", g.op("ReduceSum", mask_3d, axis_1, keepdims=0), min_count)
    g.nodes.append(helper.make_node("Div", [summed, counts], ["embedding"], name="embedding"))

    graph = helper.make_graph(
        g.nodes,
        "bert_mean_pooling",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="llamarock")
    model.ir_version = 9
    return model


def _plain_layers(g: _Graph, x: str, mask_f: str, w: Callable[[str], np.ndarray], layers: int, hidden: int, heads: int,
                  eps: float) -> str:
    """The encoder layers in standard ONNX ops, Hugging Face's ``BertLayer`` op for op."""
    head_dim = hidden // heads
    # Additive attention mask, batch × 1 × 1 × length: 0 where attended, a large negative number on padding.
    inverted = g.op("Sub", g.const("f_one", np.array(1.0, np.float32)), mask_f)
    bias = g.op("Unsqueeze", g.op("Mul", inverted, g.const("neg_large", np.array(-1e9, np.float32))),
                g.const("axes_1_2", np.array([1, 2], np.int64)))
    split_heads = g.const("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = g.const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))

    def linear(inp: str, prefix: str) -> str:
        weight = g.const(f"{prefix}.wt", w(f"{prefix}.weight").T)
        return g.op("Add", g.op("MatMul", inp, weight), g.const(f"{prefix}.b", w(f"{prefix}.bias")))

    def layer_norm(inp: str, prefix: str) -> str:
        return g.op("LayerNormalization", inp, g.const(f"{prefix}.w", w(f"{prefix}.weight")),
                    g.const(f"{prefix}.b", w(f"{prefix}.bias")), axis=-1, epsilon=eps)

    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", g.op("Reshape", linear(x, f"{p}.attention.self.query"), split_heads), perm=[0, 2, 1, 3])
        k = g.op("Transpose", g.op("Reshape", linear(x, f"{p}.attention.self.key"), split_heads), perm=[0, 2, 3, 1])
        v = g.op("Transpose", g.op("Reshape", linear(x, f"{p}.attention.self.value"), split_heads), perm=[0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merge_heads)
        attended = g.op("Add", linear(context, f"{p}.attention.output.dense"), x)
        x = layer_norm(attended, f"{p}.attention.output.LayerNorm")
        inner = g.op("Gelu", linear(x, f"{p}.intermediate.dense"))
        x = layer_norm(g.op("Add", linear(inner, f"{p}.output.dense"), x), f"{p}.output.LayerNorm")

    return x
