"""GGUF embedding models on llama.cpp (llama-cpp-python's ``Llama(..., embedding=True)``).

The weights' own pooling (from the GGUF metadata of an embedding model such as nomic-embed or bge) is used unless
``pooling`` names one (``mean``, ``cls``, ``last``): that also turns a plain decoder GGUF into a (crude) sentence
encoder. Inputs longer than ``max_tokens`` (default 512, at most the weights' trained context) are truncated.
llama.cpp runs in one worker thread per embedder, off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llamarock.engines.embedding import Embedder, Embeddings
from llamarock.errors import DeploymentConfigError, EngineError

POOLING = {"model": None, "none": None, "mean": 1, "cls": 2, "last": 3}  # llama.cpp's LLAMA_POOLING_TYPE_*


class LlamaCppEmbedder(Embedder):
    """A GGUF embedding model on llama.cpp."""

    def __init__(self, model_path: Path, *, name: str | None = None, threads: int = 1, max_tokens: int | None = None,
                 pooling: str = "model") -> None:
        if pooling not in POOLING:
            raise DeploymentConfigError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLING)}")
        self._path = model_path
        self.name = name or model_path.stem
        self._threads = threads
        self.max_tokens = max_tokens or 512
        self.dimensions = ()
        self._pooling = pooling
        self._llm: Any = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{self.name}")
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._llm is not None

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)

    def _ensure_loaded(self) -> Any:
        if self._closed:
            raise EngineError(f"embedder {self.name} is closed")
        with self._lock:
            if self._llm is not None:
                return self._llm
            if not self._path.is_file():
                raise DeploymentConfigError(f"GGUF file not found: {self._path}")
            from llama_cpp import Llama, llama_model_n_ctx_train

            kwargs: dict[str, Any] = {
                "model_path": str(self._path), "embedding": True, "n_threads": self._threads,
                "n_threads_batch": self._threads, "verbose": False,
                # One sequence of up to max_tokens per decode: the window, the batch and the micro-batch alike.
                "n_ctx": self.max_tokens, "n_batch": self.max_tokens, "n_ubatch": self.max_tokens,
            }
            pooling = POOLING[self._pooling]
            if pooling is not None:
                kwargs["pooling_type"] = pooling
            try:
                llm = Llama(**kwargs)
            except (ValueError, RuntimeError, OSError) as exc:
                raise DeploymentConfigError(f"cannot load the GGUF embedding model {self._path}: {exc}") from exc
            trained = int(llama_model_n_ctx_train(llm.model))
            if trained < self.max_tokens:
                llm.close()
                raise DeploymentConfigError(
                    f"{self._path} was trained on {trained} tokens; set max_tokens to {trained} or less"
                )
            self.max_tokens = int(llm.n_batch)
            self.dimensions = (int(llm.n_embd()),)
            self._llm = llm
            return llm

    def _tokens(self, llm: Any, text: str) -> int:
        return min(len(llm.tokenize(text.encode("utf-8"))), self.max_tokens)

    def count_tokens(self, text: str) -> int:
        return self._tokens(self._ensure_loaded(), text)

    def fit(self, text: str, *, keep: Literal["start", "end"] = "start") -> tuple[str, int]:
        llm = self._ensure_loaded()
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=False)
        specials = len(llm.tokenize(b""))
        room = self.max_tokens - specials
        if len(tokens) <= room:
            return text, len(tokens) + specials
        kept = tokens[:room] if keep == "start" else tokens[len(tokens) - room:]
        return llm.detokenize(kept).decode("utf-8", errors="ignore"), len(tokens) + specials

    async def embed(self, texts: Sequence[str], *, normalize: bool = True,
                    dimensions: int | None = None) -> Embeddings:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        texts = list(texts)
        if not texts:
            return Embeddings([], [])
        if self._closed:
            raise EngineError(f"embedder {self.name} is closed")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._embed_sync, texts, normalize, dimensions
        )

    def _embed_sync(self, texts: list[str], normalize: bool, dimensions: int | None) -> Embeddings:
        llm = self._ensure_loaded()
        if dimensions is not None and (dimensions,) != self.dimensions:
            raise ValueError(f"{self.name} gives {self.dimensions[0]} dimensions, not {dimensions}")
        counts = [self._tokens(llm, t) for t in texts]
        try:
            raw = llm.embed(texts, normalize=False, truncate=True)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"embedder {self.name} failed: {exc}") from exc
        if raw and raw[0] and isinstance(raw[0][0], list):  # pooling "none": one vector per token
            raise EngineError(
                f"the GGUF model of {self.name} gives one vector per token (no pooling); set pooling to mean, cls or "
                "last for its deployment"
            )
        array = np.asarray(raw, dtype=np.float32)
        if normalize:
            array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
        return Embeddings(array.tolist(), counts)

    async def close(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
