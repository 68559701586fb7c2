"""Guardrail policies, evaluated locally: Bedrock's policy vocabulary and nothing else (no wire shapes, no storage).

``config``: a guardrail's policies as CreateGuardrail/UpdateGuardrail configure them, validated with Bedrock's rules,
and as GetGuardrail shows them. One module per policy evaluates text: ``words`` (custom words and the managed
PROFANITY list), ``pii`` (sensitive information: PII entity types and custom regexes), ``topics`` (denied topics,
matched semantically with an embedding function), ``content`` (HATE, INSULTS, SEXUAL, VIOLENCE, MISCONDUCT,
PROMPT_ATTACK), ``grounding`` (contextual grounding and relevance). ``evaluate`` runs them all over ApplyGuardrail's
content and gives the assessment in Bedrock's words. Embedding-based policies take an :data:`Embed` callback, so
this package never knows which model serves them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

Embed = Callable[[Sequence[str]], Awaitable[list[list[float]]]]
"""Texts -> L2-normalised vectors, in order (the services give the embedding model they serve)."""
