"""Contextual grounding and relevance: how far a model's answer is supported by the grounding source, and how far
it answers the query, as scores from 0 to 1 checked against each filter's threshold (below it: ungrounded or
irrelevant).

GROUNDING: every sentence of the answer is compared with every segment of the source; the answer's score is the
mean of its sentences' best similarities (a sentence the source does not support pulls it down). RELEVANCE: the
similarity of the whole answer to the query. Similarities are cosines of the embedding model's vectors, clipped to
0..1.
"""

from __future__ import annotations

import numpy as np

from llamarock.guardrails import Embed
from llamarock.guardrails.text import matrix, segments, sentences


async def scores(answer: str, source: str | None, query: str | None, embed: Embed) -> dict[str, float]:
    """``GROUNDING`` (when there is a source) and ``RELEVANCE`` (when there is a query) scores of ``answer``."""
    claims = sentences(answer) or [answer]
    evidence = segments(source) if source else []
    texts = [*claims, *evidence, *([query] if query else []), answer]
    vectors = matrix(await embed(texts))
    claim_vectors = vectors[:len(claims)]
    found: dict[str, float] = {}
    if evidence:
        evidence_vectors = vectors[len(claims):len(claims) + len(evidence)]
        best = (claim_vectors @ evidence_vectors.T).max(axis=1)
        found["GROUNDING"] = float(np.clip(best, 0.0, 1.0).mean())
    if query:
        query_vector = vectors[len(claims) + len(evidence)]
        found["RELEVANCE"] = float(np.clip(vectors[-1] @ query_vector, 0.0, 1.0))
    return found
