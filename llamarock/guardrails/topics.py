"""Denied topics, matched semantically: a text is on a topic when one of its segments is close, in the embedding
space, to the topic's definition or to one of its examples.

Each topic is embedded once per guardrail version (its ``name: definition``, its definition and each example); each
text is split into segments of a few sentences, embedded in one batch, and scored by its best cosine similarity to
each topic. Before comparing, every vector is centred on the mean of ``NEUTRAL`` (everyday requests on no topic in
particular) and normalised again: what all requests share (being a question, asking for help) then counts for
nothing, and what the topic is about counts for more. ``THRESHOLD`` was chosen on half of the labelled set of
``bench/guardrails.py`` (all-MiniLM-L6-v2); the other half measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llamarock.guardrails import Embed
from llamarock.guardrails.text import matrix, segments

THRESHOLD = 0.38
NEUTRAL = (
    "Can you help me with something?", "I have a question about my account.", "What do you think about this?",
    "Please explain how this works.", "Tell me more about it.", "Is this a good idea?", "What should I do next?",
    "How do I fix this problem?", "I need some advice.", "Thanks for your help!", "Where can I find the settings?",
    "Could you write a short summary of this text?", "What time is it in Tokyo?", "My order has not arrived yet.",
    "Give me a few ideas for the weekend.", "How long does it take to learn to cook?",
    "What is the difference between these two options?", "I would like to change my plan.",
    "Please check the status of my request.", "Which one would you recommend?",
)


class Background:
    """The mean vector of ``NEUTRAL`` for one embedding model, embedded at first use."""

    def __init__(self) -> None:
        self._mean: np.ndarray | None = None

    async def mean(self, embed: Embed) -> np.ndarray:
        if self._mean is None:
            self._mean = matrix(await embed(list(NEUTRAL))).mean(axis=0)
        return self._mean


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Vectors moved by ``-mean`` and normalised again."""
    if vectors.shape[0] == 0:
        return vectors
    return matrix(vectors - mean)


@dataclass(frozen=True)
class TopicScore:
    name: str
    score: float


class TopicMatcher:
    """The denied topics of one guardrail version (GetGuardrail's ``topicPolicy.topics``)."""

    def __init__(self, topics: list[dict[str, Any]], threshold: float = THRESHOLD,
                 background: Background | None = None) -> None:
        self.topics = topics
        self.threshold = threshold
        self.background = background or Background()
        self._prototypes: np.ndarray | None = None
        self._owner: np.ndarray | None = None

    async def _load(self, embed: Embed) -> tuple[np.ndarray, np.ndarray]:
        if self._prototypes is None or self._owner is None:
            texts: list[str] = []
            owner: list[int] = []
            for index, topic in enumerate(self.topics):
                for text in (f"{topic['name']}: {topic['definition']}", topic["definition"],
                             *topic.get("examples", ())):
                    texts.append(text)
                    owner.append(index)
            self._prototypes = centred(matrix(await embed(texts)), await self.background.mean(embed))
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
        mean = await self.background.mean(embed)
        best = (centred(segment_vectors, mean) @ prototypes.T).max(axis=0)
        return [TopicScore(topic["name"], float(best[owner == index].max()))
                for index, topic in enumerate(self.topics)]


async def embed_segments(text: str, embed: Embed) -> np.ndarray:
    """The segments of ``text``, embedded in one batch (shared by the topic and content policies)."""
    parts = segments(text)
    if not parts:
        return np.zeros((0, 1), dtype=np.float32)
    return matrix(await embed(parts))
