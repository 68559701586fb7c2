"""The embedded embedder (all-MiniLM-L6-v2 on onnxruntime): numerics against an independent numpy forward pass,
similarity, normalisation, batching, truncation and token counts, in fp32 and in int8 (the default)."""

from __future__ import annotations

import asyncio
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from llamarock.engines.embedding import Embedder, OnnxBertEmbedder, embedded_default, minilm_zip_path


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    e = OnnxBertEmbedder(minilm_zip_path(), threads=2, cache_dir=None, quantize="none")  # built: no cached copy
    yield e
    asyncio.run(e.close())


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8(int8_cache: Path) -> Iterator[Embedder]:
    e = OnnxBertEmbedder(minilm_zip_path(), threads=2, cache_dir=int8_cache)  # int8 is the default
    yield e
    asyncio.run(e.close())


def embed(e: Embedder, texts: list[str], normalize: bool = True) -> tuple[np.ndarray, list[int]]:
    result = asyncio.run(e.embed(texts, normalize=normalize))
    return np.array(result.vectors), result.token_counts


def numpy_bert(texts: list[str]) -> np.ndarray:
    """A straightforward numpy forward pass of BertModel + mean pooling, one text at a time (no padding)."""
    with zipfile.ZipFile(minilm_zip_path()) as archive:
        w = load_safetensors(archive.read("model.safetensors"))
        config = json.loads(archive.read("config.json"))
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    heads, eps = config["num_attention_heads"], config["layer_norm_eps"]

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    from math import erf, sqrt
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    out = []
    for text in texts:
        ids = np.array(tokenizer.encode(text).ids)
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            split = [dense(x, p + f"attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                     for m in ("query", "key", "value")]
            q, k, v = split
            s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
            a = np.exp(s - s.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, -1)
            x = ln(dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = gelu(dense(x, p + "intermediate.dense"))
            x = ln(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
        out.append(x.mean(0))
    return np.array(out)


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
]


def test_matches_a_numpy_forward_pass(embedder: Embedder) -> None:
    texts = [*SENTENCES[:3], "word " * 300]  # the last one is truncated at 256 tokens
    got, _ = embed(embedder, texts, normalize=False)
    want = numpy_bert(texts)
    assert got.shape == want.shape == (4, 384)
    assert np.abs(got - want).max() < 1e-4
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99999


def test_similar_sentences_are_closer_than_unrelated(embedder: Embedder) -> None:
    v, _ = embed(embedder, SENTENCES)
    sim = v @ v.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4  # eating food / eating bread vs carrying a baby
    assert sim[3, 6] > sim[3, 4] + 0.3  # riding a horse / riding a white horse vs playing violin
    assert sim[7, 8] > sim[7, 5] + 0.3  # monkey drums / gorilla costume drums vs men pushing carts


def test_normalisation(embedder: Embedder) -> None:
    normalized, _ = embed(embedder, SENTENCES[:3])
    raw, _ = embed(embedder, SENTENCES[:3], normalize=False)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalized, atol=1e-6)


def test_batch_equals_single(embedder: Embedder) -> None:
    texts = [*SENTENCES, "short", "a much longer sentence " * 20, ""]
    batch, counts = embed(embedder, texts)
    singles = [embed(embedder, [t]) for t in texts]
    for i, (vector, count) in enumerate(singles):
        assert np.abs(batch[i] - vector[0]).max() < 1e-5, texts[i]
        assert counts[i] == count[0]


def test_token_counts_and_truncation(embedder: Embedder) -> None:
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimensions == (384,)
    assert embedder.max_tokens == 256
    _, counts = embed(embedder, ["hello world", "", "word " * 1000])
    assert counts == [4, 2, 256]  # [CLS] hello world [SEP]; [CLS] [SEP]; truncated
    assert [embedder.count_tokens(t) for t in ["hello world", "", "word " * 1000]] == counts
    long_a, _ = embed(embedder, ["word " * 254 + "apple"])
    long_b, _ = embed(embedder, ["word " * 254 + "zebra " * 50])  # differs only past the 256th token
    assert np.abs(long_a - long_b).max() < 1e-6


def test_many_texts_in_small_batches() -> None:
    e = OnnxBertEmbedder(minilm_zip_path(), max_batch=3, max_batch_tokens=64, quantize="none")
    try:
        texts = [f"sentence number {i} " * (1 + i % 7) for i in range(20)]
        small, _ = embed(e, texts)
    finally:
        asyncio.run(e.close())
    e2 = embedded_default(quantize="none")
    try:
        big, _ = embed(e2, texts)
    finally:
        asyncio.run(e2.close())
    assert np.abs(small - big).max() < 1e-5


def test_concurrent_calls_and_empty_input(embedder: Embedder) -> None:
    async def many() -> list[list[list[float]]]:
        results = await asyncio.gather(*(embedder.embed([s]) for s in SENTENCES))
        return [r.vectors for r in results]

    together = asyncio.run(many())
    alone, _ = embed(embedder, SENTENCES)
    assert np.abs(np.array([v[0] for v in together]) - alone).max() < 1e-5
    assert asyncio.run(embedder.embed([])).vectors == []
    with pytest.raises(TypeError):
        asyncio.run(embedder.embed("not a list"))  # type: ignore[arg-type]


def test_fit_cuts_at_the_window_from_either_end(embedder: Embedder) -> None:
    text = "alpha " + "word " * 300 + "omega"
    head, total = embedder.fit(text, keep="start")
    tail, same_total = embedder.fit(text, keep="end")
    assert total == same_total == 304  # [CLS] alpha word x300 omega [SEP]
    assert head.startswith("alpha") and "omega" not in head and embedder.count_tokens(head) == 256
    assert tail.endswith("omega") and "alpha" not in tail and embedder.count_tokens(tail) == 256
    assert embedder.fit("short text") == ("short text", 4)


def test_dimensions_other_than_its_own_are_refused(embedder: Embedder) -> None:
    assert len(asyncio.run(embedder.embed(["x"], dimensions=384)).vectors[0]) == 384
    with pytest.raises(ValueError, match="gives 384 dimensions, not 256"):
        asyncio.run(embedder.embed(["x"], dimensions=256))


def test_remote_token_counts_are_shared_out_exactly() -> None:
    from llamarock.engines.embedding_remote import _share

    assert _share(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(_share(97, [5, 17, 2, 40])) == 97
    assert _share(None, [2, 3]) == [2, 3]


def test_the_built_graph_is_cached(tmp_path: Path, embedder: Embedder) -> None:
    texts = SENTENCES[:4]
    want, _ = embed(embedder, texts)
    first = OnnxBertEmbedder(minilm_zip_path(), cache_dir=tmp_path, quantize="none")
    try:
        built, _ = embed(first, texts)
    finally:
        asyncio.run(first.close())
    (graph,) = tmp_path.glob("all-MiniLM-L6-v2-*.onnx")
    stamp = graph.stat().st_mtime_ns
    second = OnnxBertEmbedder(minilm_zip_path(), cache_dir=tmp_path, quantize="none")
    try:
        cached, _ = embed(second, texts)
    finally:
        asyncio.run(second.close())
    assert graph.stat().st_mtime_ns == stamp  # read, not rebuilt
    assert np.abs(built - want).max() < 1e-6 and np.abs(cached - want).max() < 1e-6
    unwritable = tmp_path / "file"
    unwritable.write_text("not a folder")
    # falls back to a temporary file
    third = OnnxBertEmbedder(minilm_zip_path(), cache_dir=unwritable / "cache", quantize="none")
    try:
        fallback, _ = embed(third, texts)
    finally:
        asyncio.run(third.close())
    assert np.abs(fallback - want).max() < 1e-6


# -- int8 -------------------------------------------------------------------------------------------------------------


def test_int8_is_close_to_fp32_and_keeps_its_neighbours(embedder: Embedder, int8: Embedder) -> None:
    texts = [*SENTENCES, "word " * 300, "Can I get advice on which stocks to buy for my retirement savings?"]
    want, want_counts = embed(embedder, texts)
    got, counts = embed(int8, texts)
    assert got.shape == want.shape == (len(texts), 384)
    assert counts == want_counts  # the same tokenizer and window
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cos = (got * want).sum(axis=1)
    assert cos.min() > 0.98, cos
    assert not np.allclose(got, want, atol=1e-4)  # it is not the fp32 graph under another name
    # Similarities move by a few hundredths at most, and the clear pairs stay each other's nearest.
    sim_got, sim_want = got[:9] @ got[:9].T, want[:9] @ want[:9].T
    assert np.abs(sim_got - sim_want).max() < 0.05
    np.fill_diagonal(sim_got, -1)
    for i, j in ((0, 1), (3, 6), (7, 8)):  # eating food / bread, riding a horse / a white horse, drums / drums
        assert sim_got[i].argmax() == j and sim_got[j].argmax() == i


def test_int8_vectors_do_not_depend_on_the_batch(int8: Embedder) -> None:
    texts = [*SENTENCES, "short", "a much longer sentence " * 20, ""]
    batch, counts = embed(int8, texts)
    for i, text in enumerate(texts):
        alone, count = embed(int8, [text])
        assert np.abs(batch[i] - alone[0]).max() < 1e-6, text
        assert counts[i] == count[0]
    reordered, _ = embed(int8, texts[::-1])
    assert np.abs(reordered[::-1] - batch).max() < 1e-6


def test_the_int8_graph_is_quantized_and_cached(int8: Embedder, int8_cache: Path) -> None:
    import onnx

    embed(int8, ["load it"])
    (graph,) = int8_cache.glob("all-MiniLM-L6-v2-*-int8.onnx")
    ops = {node.op_type for node in onnx.load(str(graph), load_external_data=False).graph.node}
    assert {"QAttention", "DynamicQuantizeLinear"} & ops and "Attention" not in ops, ops
    # fp32 is about 91 MB; the matrices shrink to a quarter, the word-embedding table (47 MB) stays fp32
    assert graph.stat().st_size < 65_000_000
    again = OnnxBertEmbedder(minilm_zip_path(), cache_dir=int8_cache)
    stamp = graph.stat().st_mtime_ns
    try:
        first, _ = embed(int8, SENTENCES[:3])
        second, _ = embed(again, SENTENCES[:3])
    finally:
        asyncio.run(again.close())
    assert graph.stat().st_mtime_ns == stamp  # read, not rebuilt
    assert np.abs(first - second).max() < 1e-6
    assert OnnxBertEmbedder(minilm_zip_path(), cache_dir=int8_cache, quantize="none")._cached_graph() != graph


def test_quantize_is_a_setting() -> None:
    from pydantic import ValidationError

    from llamarock.services.embeddings import build_embedder
    from llamarock.settings import EmbeddingDeploymentSettings, Settings

    with pytest.raises(ValueError, match="quantize must be one of int8, none"):
        OnnxBertEmbedder(minilm_zip_path(), quantize="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="quantize"):
        EmbeddingDeploymentSettings(name="e", quantize="fp16")  # type: ignore[arg-type]
    settings = Settings()
    default, _ = build_embedder(EmbeddingDeploymentSettings(name="e"), settings)
    fp32, _ = build_embedder(EmbeddingDeploymentSettings(name="e", quantize="none"), settings)
    assert isinstance(default, OnnxBertEmbedder) and default.quantize == "int8"
    assert isinstance(fp32, OnnxBertEmbedder) and fp32.quantize == "none"
