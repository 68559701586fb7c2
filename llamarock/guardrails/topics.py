"""Denied topics, matched semantically: a text is on a topic when one of its segments is close, in the embedding
space, to the topic's definition or to one of its examples.

Each topic is embedded once per guardrail version (its ``name: definition`` and each example); each text is split
into segments of a few sentences, embedded in one batch, and scored by its best cosine similarity to each topic.
``THRESHOLD`` was chosen on the labelled set of ``bench/guardrails.py`` (all-MiniLM-L6-v2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llamarock.guardrails import Embed
from llamarock.guardrails.text import matrix, segments

THRESHOLD = 0.5


@dataclass(frozen=True)
class TopicScore:
    name: str
    score: float


class TopicMatcher:
    """The denied topics of one guardrail version (GetGuardrail's ``topicPolicy.topics``)."""

    def __init__(self, topics: list[dict[str, Any]], threshold: float = THRESHOLD) -> None:
        self.topics = topics
        self.threshold = threshold
        self._prototypes: np.ndarray | None = None
        self._owner: np.ndarray | None = None

    async def _load(self, embed: Embed) -> tuple[np.ndarray, np.ndarray]:
        if self._prototypes is None or self._owner is None:
            texts: list[str] = []
            owner: list[int] = []
            for index, topic in enumerate(self.topics):
                for text in (f"{topic['name']}: {topic['definition']}", *topic.get("examples", ())):
                    texts.append(text)
                    owner.append(index)
            self._prototypes = matrix(await embed(texts))
            self._owner = np.asarray(owner)
        return self._prototypes, self._owner

    async def scores(self, text: str, embed: Embed, segment_vectors: np.ndarray | None = None) -> list[TopicScore]:
        """Each topic's best similarity to any segment of ``text`` (``segment_vectors``: the segments already
        embedded, as :func:`segment_vectors` gives them)."""
        prototypes, owner = await self._load(embed)
        if segment_vectors is None:
            segment_vectors = await embed_segments(text, embed)
        if segment_vectors.shape[0] == 0:
            return [TopicScore(t["name"], 0.0) for t in self.topics]
        best = (segment_vectors @ prototypes.T).max(axis=0)
        return [TopicScore(topic["name"], float(best[owner == index].max()))
                for index, topic in enumerate(self.topics)]


async def embed_segments(text: str, embed: Embed) -> np.ndarray:
    """The segments of ``text``, embedded in one batch (shared by the topic and content policies)."""
    parts = segments(text)
    if not parts:
        return np.zeros((0, 1), dtype=np.float32)
    return matrix(await embed(parts))
