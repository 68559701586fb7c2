"""A remote OpenAI-compatible embeddings endpoint (``POST {url}/embeddings``): OpenAI, vLLM, llama.cpp's server,
Ollama, text-embeddings-inference and others that speak that protocol.

The request is ``{"model", "input": [texts], "encoding_format": "float"}`` plus ``"dimensions"`` when a size other
than the first of ``dimensions`` is asked for; the answer's ``data[i].embedding`` (by ``index``) are the vectors.
The protocol reports only the request's total ``usage.prompt_tokens``: it is shared out over the texts in
proportion to their estimated token counts (about four characters a token, the same estimate ``count_tokens``
gives, since the remote tokenizer is not at hand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np

from llamarock.engines.embedding import Embedder, Embeddings
from llamarock.errors import EngineError

CHARS_PER_TOKEN = 4


class RemoteEmbedder(Embedder):
    """Embeddings from a remote OpenAI-compatible ``/v1/embeddings`` endpoint (``url`` ends before ``/embeddings``,
    e.g. ``https://api.openai.com/v1``)."""

    def __init__(self, url: str, *, model: str, dimensions: Sequence[int], name: str | None = None,
                 api_key: str | None = None, max_tokens: int = 8192, timeout_s: float = 60.0,
                 max_batch: int = 64) -> None:
        if not dimensions:
            raise ValueError("a remote embedder needs the dimensions its model gives (the first is its default)")
        self._url = url.rstrip("/") + "/embeddings"
        self._model = model
        self.name = name or model
        self.dimensions = tuple(dimensions)
        self.max_tokens = max_tokens
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout_s
        self._max_batch = max_batch
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def count_tokens(self, text: str) -> int:
        return min(self.max_tokens, max(1, math.ceil(len(text) / CHARS_PER_TOKEN)))

    def fit(self, text: str, *, keep: Literal["start", "end"] = "start") -> tuple[str, int]:
        room = self.max_tokens * CHARS_PER_TOKEN
        total = max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
        if len(text) <= room:
            return text, total
        return (text[:room] if keep == "start" else text[len(text) - room:]), total

    def _truncate(self, text: str) -> str:
        """Cut a text to about ``max_tokens`` (by the same estimate), so that the remote never refuses its length."""
        return text[: self.max_tokens * CHARS_PER_TOKEN]

    async def embed(self, texts: Sequence[str], *, normalize: bool = True,
                    dimensions: int | None = None) -> Embeddings:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        texts = [self._truncate(t) for t in texts]
        if not texts:
            return Embeddings([], [])
        if self._closed:
            raise EngineError(f"embedder {self.name} is closed")
        if dimensions is not None and dimensions not in self.dimensions:
            raise ValueError(f"{self.name} gives {', '.join(map(str, self.dimensions))} dimensions, not {dimensions}")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers)
        vectors: list[list[float]] = []
        counts: list[int] = []
        for start in range(0, len(texts), self._max_batch):
            batch = texts[start:start + self._max_batch]
            got, used = await self._request(batch, dimensions)
            vectors.extend(got)
            counts.extend(_share(used, [self.count_tokens(t) for t in batch]))
        array = np.asarray(vectors, dtype=np.float32)
        if normalize:
            array /= np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
        return Embeddings(array.tolist(), counts)

    async def _request(self, batch: list[str], dimensions: int | None) -> tuple[list[list[float]], int | None]:
        assert self._client is not None
        payload: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": "float"}
        if dimensions is not None and dimensions != self.dimensions[0]:
            payload["dimensions"] = dimensions
        try:
            response = await self._client.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            raise EngineError(f"the embeddings endpoint {self._url} did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineError(
                f"the embeddings endpoint {self._url} answered {response.status_code}: {response.text[:300]}"
            )
        try:
            document = response.json()
            rows = sorted(document["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
            usage = document.get("usage") or {}
            used = usage.get("prompt_tokens")
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"the embeddings endpoint {self._url} sent an answer that is not the protocol's: "
                              f"{exc!r}") from exc
        if len(vectors) != len(batch) or any(len(v) != len(vectors[0]) for v in vectors):
            raise EngineError(f"the embeddings endpoint {self._url} sent {len(vectors)} vectors for {len(batch)} texts")
        return vectors, int(used) if isinstance(used, int) else None

    async def close(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _share(total: int | None, estimates: list[int]) -> list[int]:
    """``total`` tokens shared out in proportion to ``estimates`` (largest remainders), or the estimates when the
    endpoint reported no usage."""
    if total is None or total <= 0:
        return estimates
    weight = sum(estimates)
    exact = [total * e / weight for e in estimates]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
