"""Text helpers shared by the embedding-based policies: sentences, segments of a few sentences, cosine similarity."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split after . ! ? ; and at line breaks), blank ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def segments(text: str, size: int = 240) -> list[str]:
    """Consecutive sentences joined into segments of about ``size`` characters (a long sentence stays whole), so
    that a topic or a harm stated in one place is judged in its own words, not diluted by the whole text."""
    found: list[str] = []
    current = ""
    for sentence in sentences(text):
        if current and len(current) + 1 + len(sentence) > size:
            found.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        found.append(current)
    return found


def matrix(vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Vectors as the rows of a matrix of unit rows (the embedder normalises them; this makes sure)."""
    rows = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit: np.ndarray = rows / norms
    return unit
