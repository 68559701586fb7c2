"""Chunking by Bedrock's ChunkingConfiguration: FIXED_SIZE, HIERARCHICAL, SEMANTIC, NONE, and the default.

``chunk(text, config, count_tokens)`` returns :class:`Chunk` s whose ``text`` is exactly ``source[start:end]``
(offsets in characters of the parsed text, for locations and citations). ``config`` is Bedrock's
``chunkingConfiguration`` as a dict; ``None`` is Bedrock's default, FIXED_SIZE with 300 tokens and 20% overlap.

- FIXED_SIZE ``{maxTokens, overlapPercentage}``: windows of at most ``maxTokens`` tokens, the next starting so that
  about ``overlapPercentage`` of a window's tokens repeat. A window ends at a paragraph end when one falls in its
  last half, else at a sentence end in its last quarter, so chunks rarely cut a sentence.
- HIERARCHICAL ``{levelConfigurations: [{maxTokens: parent}, {maxTokens: child}], overlapTokens}``: parent windows,
  each cut into child windows (``overlapTokens`` repeated between neighbours at both levels). Children are embedded
  and searched; a hit returns its parent (the store does that with ``parent_*``).
- SEMANTIC ``{maxTokens, bufferSize, breakpointPercentileThreshold}``: sentences; at each gap between two
  sentences, the text before it (the sentence and ``bufferSize`` before it) and after it (the sentence and
  ``bufferSize`` after it) are embedded, and a chunk ends at the gaps whose cosine distance is above the given
  percentile of all the gaps' distances (comparing the two sides of a gap, rather than Bedrock's overlapping
  centred groups, puts the break on the gap itself); chunks above ``maxTokens`` are cut into fixed windows.
  Needs the embedder: ``chunk(..., embed=sync_fn)`` or ``await achunk(..., embed=async_fn)``.
- NONE: the whole text is one chunk (leading and trailing whitespace left out).

Tokens are counted with the callable given (the embedder's tokenizer); special tokens it adds to every text
(``count_tokens("")``) are not counted. Words are the unit of every window, counted once each (cached).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CountTokens = Callable[[str], int]
SyncEmbed = Callable[[list[str]], Sequence[Sequence[float]]]
AsyncEmbed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]

DEFAULT_CONFIG: dict[str, Any] = {
    "chunkingStrategy": "FIXED_SIZE",
    "fixedSizeChunkingConfiguration": {"maxTokens": 300, "overlapPercentage": 20},
}
STRATEGIES = ("FIXED_SIZE", "HIERARCHICAL", "SEMANTIC", "NONE")
_UNIT = re.compile(r"\S{1,64}")
_PARAGRAPH_END = re.compile(r"[ \t\r\f\v]*\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?。！？][\"')\]]*$")
_SENTENCE = re.compile(r"\S.*?(?:[.!?。！？][\"')\]]*(?=\s|$)|\n\s*\n|$)", re.S)


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    end: int
    parent_index: int | None = None  # hierarchical: index into the parents list of the same call
    parent_start: int | None = None
    parent_end: int | None = None


class _Units:
    """The text's words (runs of at most 64 non-space characters) with their token counts."""

    def __init__(self, text: str, count_tokens: CountTokens, start: int = 0, end: int | None = None) -> None:
        self.spans = [(m.start(), m.end()) for m in _UNIT.finditer(text, start, len(text) if end is None else end)]
        base = count_tokens("")
        cache: dict[str, int] = {}
        self.tokens: list[int] = []
        for s, e in self.spans:
            word = text[s:e]
            n = cache.get(word)
            if n is None:
                n = cache[word] = max(1, count_tokens(word) - base)
            self.tokens.append(n)
        self.ends_paragraph = [_PARAGRAPH_END.match(text, e) is not None for s, e in self.spans]
        self.ends_sentence = [
            para or bool(_SENTENCE_END.search(text[s:e]))
            for (s, e), para in zip(self.spans, self.ends_paragraph, strict=True)
        ]


def _windows(units: _Units, lo: int, hi: int, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Windows [i, j) over units lo..hi of at most max_tokens tokens, overlap_tokens repeated between neighbours."""
    out: list[tuple[int, int]] = []
    i = lo
    while i < hi:
        total, j = 0, i
        while j < hi and (j == i or total + units.tokens[j] <= max_tokens):
            total += units.tokens[j]
            j += 1
        if (
            j < hi
        ):  # prefer to end at a paragraph end in the window's last half, else a sentence end in its last quarter
            size = j - i
            half, quarter = i + max(1, size // 2), i + max(1, size - size // 4)
            paragraph = next((k for k in range(j, half - 1, -1) if units.ends_paragraph[k - 1]), None)
            sentence = next((k for k in range(j, quarter - 1, -1) if units.ends_sentence[k - 1]), None)
            j = paragraph or sentence or j
        out.append((i, j))
        if j >= hi:
            break
        back, k = 0, j
        while k > i + 1 and back + units.tokens[k - 1] <= overlap_tokens:
            back += units.tokens[k - 1]
            k -= 1
        i = max(k, i + 1)
    return out


def _span(text: str, units: _Units, window: tuple[int, int]) -> tuple[int, int]:
    return units.spans[window[0]][0], units.spans[window[1] - 1][1]


def _int(config: Mapping[str, Any], name: str, low: int, high: int | None, where: str) -> int:
    value = config.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{where}.{name} must be an integer {bound}")
    return value


def default_config(window: int | None = None) -> dict[str, Any]:
    """Bedrock's default chunking (FIXED_SIZE, 300 tokens, 20% overlap), its size capped at ``window`` tokens (the
    embedding model's input limit) when one is given."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if window is not None:
        sub = config["fixedSizeChunkingConfiguration"]
        sub["maxTokens"] = max(1, min(sub["maxTokens"], window))
    return config


def validate(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The configuration, checked as botocore's bedrock-agent model bounds it; ValueError says what is wrong."""
    if config is None:
        return default_config()
    strategy = config.get("chunkingStrategy")
    if strategy not in STRATEGIES:
        raise ValueError(f"chunkingStrategy must be one of {', '.join(STRATEGIES)}")
    if strategy == "FIXED_SIZE":
        sub = config.get("fixedSizeChunkingConfiguration")
        if not isinstance(sub, Mapping):
            raise ValueError("FIXED_SIZE needs fixedSizeChunkingConfiguration {maxTokens, overlapPercentage}")
        _int(sub, "maxTokens", 1, 8192, "fixedSizeChunkingConfiguration")
        _int(sub, "overlapPercentage", 1, 99, "fixedSizeChunkingConfiguration")
    elif strategy == "HIERARCHICAL":
        sub = config.get("hierarchicalChunkingConfiguration")
        if not isinstance(sub, Mapping):
            raise ValueError(
                "HIERARCHICAL needs hierarchicalChunkingConfiguration {levelConfigurations, overlapTokens}"
            )
        levels = sub.get("levelConfigurations")
        if not isinstance(levels, list) or len(levels) != 2 or not all(isinstance(x, Mapping) for x in levels):
            raise ValueError("levelConfigurations must be 2 levels: [{maxTokens: parent}, {maxTokens: child}]")
        parent = _int(levels[0], "maxTokens", 1, 8192, "levelConfigurations[0]")
        child = _int(levels[1], "maxTokens", 1, 8192, "levelConfigurations[1]")
        if child > parent:
            raise ValueError(f"the child level's maxTokens ({child}) must not exceed the parent level's ({parent})")
        _int(sub, "overlapTokens", 1, None, "hierarchicalChunkingConfiguration")
    elif strategy == "SEMANTIC":
        sub = config.get("semanticChunkingConfiguration")
        if not isinstance(sub, Mapping):
            raise ValueError(
                "SEMANTIC needs semanticChunkingConfiguration {maxTokens, bufferSize, breakpointPercentileThreshold}"
            )
        _int(sub, "maxTokens", 1, 8192, "semanticChunkingConfiguration")
        _int(sub, "bufferSize", 0, 1, "semanticChunkingConfiguration")
        _int(sub, "breakpointPercentileThreshold", 50, 99, "semanticChunkingConfiguration")
    return dict(config)


def _fixed(text: str, count_tokens: CountTokens, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    units = _Units(text, count_tokens)
    out = []
    for window in _windows(units, 0, len(units.spans), max_tokens, overlap_tokens):
        s, e = _span(text, units, window)
        out.append(Chunk(text[s:e], s, e))
    return out


def _hierarchical(text: str, count_tokens: CountTokens, parent: int, child: int, overlap: int) -> list[Chunk]:
    units = _Units(text, count_tokens)
    out = []
    for p_index, p_window in enumerate(_windows(units, 0, len(units.spans), parent, min(overlap, parent - 1))):
        ps, pe = _span(text, units, p_window)
        for c_window in _windows(units, p_window[0], p_window[1], child, min(overlap, child - 1)):
            s, e = _span(text, units, c_window)
            out.append(Chunk(text[s:e], s, e, p_index, ps, pe))
    return out


def _none(text: str) -> list[Chunk]:
    stripped = text.strip()
    if not stripped:
        return []
    start = len(text) - len(text.lstrip())
    return [Chunk(stripped, start, start + len(stripped))]


@dataclass(frozen=True)
class _SemanticPlan:
    sentences: list[tuple[int, int]]
    groups: list[str]  # distinct texts to embed
    gaps: list[tuple[int, int]]  # per gap between sentence i and i+1: (left group, right group) indexes


def _semantic_plan(text: str, buffer: int) -> _SemanticPlan:
    """Sentences, and for each gap between two sentences the text on either side of it: the sentence before the
    gap with ``buffer`` sentences before it, and the sentence after with ``buffer`` after it."""
    sentences = []
    for m in _SENTENCE.finditer(text):
        s, e = m.start(), m.end()
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            sentences.append((s, e))
    index: dict[str, int] = {}

    def group(lo: int, hi: int) -> int:
        piece = text[sentences[lo][0] : sentences[hi][1]]
        return index.setdefault(piece, len(index))

    gaps = [
        (group(max(0, i - buffer), i), group(i + 1, min(len(sentences) - 1, i + 1 + buffer)))
        for i in range(len(sentences) - 1)
    ]
    return _SemanticPlan(sentences, list(index), gaps)


def _semantic_finish(
    text: str,
    plan: _SemanticPlan,
    vectors: Sequence[Sequence[float]],
    count_tokens: CountTokens,
    config: Mapping[str, Any],
) -> list[Chunk]:
    sentences = plan.sentences
    if not sentences:
        return []
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = matrix / np.where(norms == 0, 1.0, norms)
    left = [g[0] for g in plan.gaps]
    right = [g[1] for g in plan.gaps]
    distances = 1.0 - np.sum(matrix[left] * matrix[right], axis=1) if plan.gaps else np.zeros(0)
    breaks: set[int] = set()
    if distances.size:
        threshold = float(np.percentile(distances, config["breakpointPercentileThreshold"]))
        breaks = {i + 1 for i, d in enumerate(distances) if d > threshold}
    out: list[Chunk] = []
    start_sentence = 0
    for i in range(1, len(sentences) + 1):
        if i == len(sentences) or i in breaks:
            s, e = sentences[start_sentence][0], sentences[i - 1][1]
            units = _Units(text, count_tokens, s, e)
            if sum(units.tokens) <= config["maxTokens"]:
                out.append(Chunk(text[s:e], s, e))
            else:
                for window in _windows(units, 0, len(units.spans), config["maxTokens"], 0):
                    ws, we = _span(text, units, window)
                    out.append(Chunk(text[ws:we], ws, we))
            start_sentence = i
    return out


def chunk(
    text: str, config: Mapping[str, Any] | None, count_tokens: CountTokens, *, embed: SyncEmbed | None = None
) -> list[Chunk]:
    """The chunks of ``text`` by Bedrock's configuration (``None``: the default); SEMANTIC needs ``embed``."""
    cfg = validate(config)
    strategy = cfg["chunkingStrategy"]
    if strategy == "SEMANTIC":
        if embed is None:
            raise ValueError("SEMANTIC chunking needs the embedder (embed=...)")
        sub = cfg["semanticChunkingConfiguration"]
        plan = _semantic_plan(text, sub["bufferSize"])
        vectors = embed(plan.groups) if plan.groups else []
        return _semantic_finish(text, plan, vectors, count_tokens, sub)
    return _plain(text, cfg, count_tokens)


async def achunk(
    text: str, config: Mapping[str, Any] | None, count_tokens: CountTokens, *, embed: AsyncEmbed | None = None
) -> list[Chunk]:
    """:func:`chunk` with an async embedder (SEMANTIC only awaits it; the rest is synchronous and quick)."""
    cfg = validate(config)
    if cfg["chunkingStrategy"] == "SEMANTIC":
        if embed is None:
            raise ValueError("SEMANTIC chunking needs the embedder (embed=...)")
        sub = cfg["semanticChunkingConfiguration"]
        plan = _semantic_plan(text, sub["bufferSize"])
        vectors = await embed(plan.groups) if plan.groups else []
        return _semantic_finish(text, plan, vectors, count_tokens, sub)
    return _plain(text, cfg, count_tokens)


def _plain(text: str, cfg: Mapping[str, Any], count_tokens: CountTokens) -> list[Chunk]:
    strategy = cfg["chunkingStrategy"]
    if strategy == "NONE":
        return _none(text)
    if strategy == "FIXED_SIZE":
        sub = cfg["fixedSizeChunkingConfiguration"]
        max_tokens = sub["maxTokens"]
        overlap = min(max_tokens - 1, math.floor(max_tokens * sub["overlapPercentage"] / 100))
        return _fixed(text, count_tokens, max_tokens, overlap)
    sub = cfg["hierarchicalChunkingConfiguration"]
    levels = sub["levelConfigurations"]
    return _hierarchical(text, count_tokens, levels[0]["maxTokens"], levels[1]["maxTokens"], sub["overlapTokens"])


def parents(chunks: Sequence[Chunk], text: str) -> dict[int, tuple[int, int, str]]:
    """Hierarchical: parent index -> (start, end, text)."""
    out: dict[int, tuple[int, int, str]] = {}
    for c in chunks:
        if c.parent_index is not None and c.parent_start is not None and c.parent_end is not None:
            out[c.parent_index] = (c.parent_start, c.parent_end, text[c.parent_start : c.parent_end])
    return out
