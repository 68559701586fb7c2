"""One guardrail version's policies run over ApplyGuardrail's content, answered in Bedrock's words.

:class:`Evaluator` is built once per guardrail version from GetGuardrail's policy members (``config.policies``) and
keeps what is costly to make: compiled word lists and regexes, the embedded topics. :meth:`Evaluator.apply` takes
the ``source`` (INPUT or OUTPUT), ApplyGuardrail's ``content`` blocks and ``outputScope`` and returns ApplyGuardrail's
output members (``usage``, ``action``, ``actionReason``, ``outputs``, ``assessments``, ``guardrailCoverage``).

Which text is checked: text blocks without qualifiers and those qualified ``guard_content``; blocks qualified
``grounding_source`` or ``query`` are the references of the contextual grounding policy only (on OUTPUT). Each
policy entry acts in a direction when it is enabled for it (``inputEnabled``/``outputEnabled``), with that
direction's action: BLOCK (the whole content is replaced by the blocked message), ANONYMIZE (sensitive information
only: each match becomes ``{TYPE}`` or ``{regex name}``) or NONE (detect only: reported, nothing changes).
With ``outputScope`` FULL, every entry evaluated is reported, detected or not; with INTERVENTIONS (the default) only
what was detected.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from llamarock.errors import ValidationException
from llamarock.guardrails import Embed, content, grounding, pii, words
from llamarock.guardrails.topics import Background, TopicMatcher, embed_segments

Source = Literal["INPUT", "OUTPUT"]
TEXT_UNIT = 1000  # characters per policy unit, as Bedrock bills them


class Shared:
    """What every guardrail of one embedding model can share, embedded once: the content classifier's statements and
    the neutral requests topics are centred on. One per embedding model (the service keeps one); vectors of two
    models must never meet."""

    def __init__(self) -> None:
        self.classifier = content.ContentClassifier()
        self.background = Background()


@dataclass
class _Findings:
    blocked: bool = False
    masked: bool = False
    detected: bool = False
    spans: list[tuple[int, int, int, str]] = field(default_factory=list)  # block index, start, end, replacement

    def act(self, action: str, detected: bool = True) -> str:
        """The assessment action of an entry that was detected with ``action`` (BLOCK, ANONYMIZE, NONE)."""
        if not detected:
            return "NONE"
        self.detected = True
        if action == "BLOCK":
            self.blocked = True
            return "BLOCKED"
        if action == "ANONYMIZE":
            self.masked = True
            return "ANONYMIZED"
        return "NONE"


def _direction(source: Source) -> str:
    return "input" if source == "INPUT" else "output"


def _active(entry: dict[str, Any], source: Source) -> str | None:
    """The entry's action in this direction, or None when it is disabled there."""
    way = _direction(source)
    if not entry.get(f"{way}Enabled", True):
        return None
    action: str = entry.get(f"{way}Action") or entry.get("action") or "BLOCK"
    return action


@dataclass(frozen=True)
class Block:
    text: str
    qualifiers: tuple[str, ...]

    @property
    def guarded(self) -> bool:
        return not self.qualifiers or "guard_content" in self.qualifiers


def blocks(content_blocks: list[dict[str, Any]]) -> list[Block]:
    """ApplyGuardrail's ``content``, checked: text blocks only."""
    found = []
    for index, item in enumerate(content_blocks, start=1):
        if "image" in item:
            raise ValidationException(
                f"content.{index} is an image block; llamarock's guardrails evaluate text only. Send the text, or "
                "remove the image block."
            )
        text = item.get("text")
        if text is None:
            raise ValidationException(f"content.{index} must have a text member (a GuardrailTextBlock).")
        found.append(Block(text["text"], tuple(text.get("qualifiers") or ())))
    return found


class Evaluator:
    """The policies of one guardrail version, ready to run."""

    def __init__(self, policies: dict[str, Any], shared: Shared | None = None) -> None:
        self.policies = policies
        self.shared = shared or Shared()
        word_policy = policies.get("wordPolicy") or {}
        self.words = word_policy.get("words") or []
        self.custom = words.WordList(w["text"] for w in self.words)
        self.managed = word_policy.get("managedWordLists") or []
        sensitive = policies.get("sensitiveInformationPolicy") or {}
        self.entities = sensitive.get("piiEntities") or []
        self.regexes = [(r, pii.CustomRegex(r["name"], pii.compile_regex(r["pattern"])))
                        for r in sensitive.get("regexes") or []]
        topic_policy = policies.get("topicPolicy") or {}
        self.topics = topic_policy.get("topics") or []
        self.topic_matcher = TopicMatcher(self.topics, background=self.shared.background) if self.topics else None
        self.filters = (policies.get("contentPolicy") or {}).get("filters") or []
        self.grounding = (policies.get("contextualGroundingPolicy") or {}).get("filters") or []

    @property
    def needs_embeddings(self) -> bool:
        return bool(self.topics or self.filters or self.grounding)

    async def apply(self, source: Source, content_blocks: list[dict[str, Any]], output_scope: str,
                    blocked_message: str, embed: Embed | None) -> dict[str, Any]:
        """ApplyGuardrail's output members for ``content_blocks`` (``blocked_message``: the guardrail's
        blockedInputMessaging or blockedOutputsMessaging, as ``source`` says)."""
        started = time.perf_counter()
        checked = blocks(content_blocks)
        full = output_scope == "FULL"
        guarded = [(i, b) for i, b in enumerate(checked) if b.guarded]
        text = "\n".join(b.text for _, b in guarded)
        units = math.ceil(len(text) / TEXT_UNIT) if text else 0
        findings = _Findings()
        assessment: dict[str, Any] = {}
        usage = {"topicPolicyUnits": 0, "contentPolicyUnits": 0, "wordPolicyUnits": 0,
                 "sensitiveInformationPolicyUnits": 0, "sensitiveInformationPolicyFreeUnits": 0,
                 "contextualGroundingPolicyUnits": 0}

        # The text is embedded (in the embedder's thread) while words and PII are matched (in another), so a
        # guardrail with both kinds of policy costs about the longer of the two, and the event loop is never held.
        embedding: asyncio.Future[np.ndarray] | None = None
        if (self.topics or self.filters) and text:
            if embed is None:
                raise ValidationException("This guardrail's denied topics and content filters need an embedding "
                                          "model, and none is served.")
            embedding = asyncio.ensure_future(embed_segments(text, embed))
        try:
            if self.words or self.managed:
                usage["wordPolicyUnits"] = units
            if self.entities or self.regexes:
                usage["sensitiveInformationPolicyUnits" if self.entities
                      else "sensitiveInformationPolicyFreeUnits"] = units
            if self.words or self.managed or self.entities or self.regexes:
                word_policy, sensitive_policy = await asyncio.to_thread(self._matched, guarded, source, findings,
                                                                        full)
                if word_policy is not None:
                    assessment["wordPolicy"] = word_policy
                if sensitive_policy is not None:
                    assessment["sensitiveInformationPolicy"] = sensitive_policy
            segment_vectors = await embedding if embedding is not None else None
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        if self.topic_matcher is not None and segment_vectors is not None and embed is not None:
            usage["topicPolicyUnits"] = units
            reported = await self._topics(text, segment_vectors, source, findings, full, embed)
            if reported is not None:
                assessment["topicPolicy"] = reported
        if self.filters and segment_vectors is not None and embed is not None:
            usage["contentPolicyUnits"] = units
            reported = await self._content(segment_vectors, source, findings, full, embed)
            if reported is not None:
                assessment["contentPolicy"] = reported
        if self.grounding and source == "OUTPUT" and text:
            grounding_source = "\n".join(b.text for b in checked if "grounding_source" in b.qualifiers)
            query = "\n".join(b.text for b in checked if "query" in b.qualifiers)
            if grounding_source or query:
                if embed is None:
                    raise ValidationException("This guardrail's contextual grounding policy needs an embedding "
                                              "model, and none is served.")
                usage["contextualGroundingPolicyUnits"] = math.ceil(
                    (len(text) + len(grounding_source) + len(query)) / TEXT_UNIT)
                reported = await self._grounding(text, grounding_source or None, query or None, findings, embed,
                                                 full)
                if reported is not None:
                    assessment["contextualGroundingPolicy"] = reported

        if findings.blocked:
            action, reason = "GUARDRAIL_INTERVENED", "Guardrail blocked."
            outputs = [{"text": blocked_message}]
        elif findings.masked:
            action, reason = "GUARDRAIL_INTERVENED", "Guardrail masked."
            outputs = [{"text": self._masked(checked, index, findings)} for index, _ in guarded]
        else:
            action, reason = "NONE", "No action."
            outputs = [{"text": b.text} for _, b in guarded] if full else []
        guarded_chars = sum(len(b.text) for _, b in guarded)
        coverage = {"textCharacters": {"guarded": guarded_chars, "total": sum(len(b.text) for b in checked)}}
        assessment["invocationMetrics"] = {
            "guardrailProcessingLatency": round((time.perf_counter() - started) * 1000),
            "usage": usage,
            "guardrailCoverage": coverage,
        }
        return {"usage": usage, "action": action, "actionReason": reason, "outputs": outputs,
                "assessments": [assessment], "guardrailCoverage": coverage}

    # ------------------------------------------------------------------------------------------------ policies

    def _matched(self, guarded: list[tuple[int, Block]], source: Source, findings: _Findings,
                 full: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The word and sensitive information assessments (pattern matching only: run in a worker thread)."""
        word_policy = self._words(guarded, source, findings, full) if self.words or self.managed else None
        sensitive = self._sensitive(guarded, source, findings, full) if self.entities or self.regexes else None
        return word_policy, sensitive

    def _words(self, guarded: list[tuple[int, Block]], source: Source, findings: _Findings,
               full: bool) -> dict[str, Any] | None:
        custom: list[dict[str, Any]] = []
        actions = {" ".join(w["text"].split()).casefold(): _active(w, source) for w in self.words}
        for _, block in guarded:
            for match in self.custom.find(block.text):
                action = actions.get(" ".join(match.key.split()).casefold())
                if action is not None:
                    custom.append({"match": match.key, "action": findings.act(action), "detected": True})
        managed: list[dict[str, Any]] = []
        for entry in self.managed:
            action = _active(entry, source)
            if action is None:
                continue
            for _, block in guarded:
                for match in words.profanity().find(block.text):
                    managed.append({"match": match.text, "type": entry["type"], "action": findings.act(action),
                                    "detected": True})
        if not custom and not managed and not full:
            return None
        return {"customWords": custom, "managedWordLists": managed}

    def _sensitive(self, guarded: list[tuple[int, Block]], source: Source, findings: _Findings,
                   full: bool) -> dict[str, Any] | None:
        actions = {e["type"]: a for e in self.entities if (a := _active(e, source)) is not None}
        found_entities: list[dict[str, Any]] = []
        found_regexes: list[dict[str, Any]] = []
        for index, block in guarded:
            entities = pii.find(block.text, actions) if actions else []
            for entity in entities:
                action = findings.act(actions[entity.type])
                found_entities.append({"match": entity.text, "type": entity.type, "action": action,
                                       "detected": True})
                if action == "ANONYMIZED":
                    findings.spans.append((index, entity.start, entity.end, "{" + entity.type + "}"))
            for entry, regex in self.regexes:
                regex_action = _active(entry, source)
                if regex_action is None:
                    continue
                for entity in regex.find(block.text):
                    action = findings.act(regex_action)
                    found_regexes.append({"name": entry["name"], "match": entity.text, "regex": entry["pattern"],
                                          "action": action, "detected": True})
                    if action == "ANONYMIZED":
                        findings.spans.append((index, entity.start, entity.end, "{" + entry["name"] + "}"))
        if not found_entities and not found_regexes and not full:
            return None
        return {"piiEntities": found_entities, "regexes": found_regexes}

    async def _topics(self, text: str, segment_vectors: np.ndarray, source: Source, findings: _Findings, full: bool,
                      embed: Embed) -> dict[str, Any] | None:
        assert self.topic_matcher is not None
        reported = []
        for topic, score in zip(self.topics, await self.topic_matcher.scores(text, embed, segment_vectors),
                                strict=True):
            action = _active(topic, source)
            if action is None:
                continue
            detected = score.score >= self.topic_matcher.threshold
            if detected or full:
                reported.append({"name": topic["name"], "type": topic.get("type", "DENY"),
                                 "action": findings.act(action, detected), "detected": detected})
        return {"topics": reported} if reported else None

    async def _content(self, segment_vectors: np.ndarray, source: Source, findings: _Findings, full: bool,
                       embed: Embed) -> dict[str, Any] | None:
        confidences = await self.shared.classifier.confidences(segment_vectors, embed)
        way = _direction(source)
        reported = []
        for entry in self.filters:
            action = _active(entry, source)
            strength = entry.get(f"{way}Strength", "NONE")
            if action is None or strength == "NONE":
                continue
            found, _ = confidences[entry["type"]]
            detected = content.blocks(strength, found)
            if detected or full:
                reported.append({"type": entry["type"], "confidence": found, "filterStrength": strength,
                                 "action": findings.act(action, detected), "detected": detected})
        return {"filters": reported} if reported else None

    async def _grounding(self, text: str, source: str | None, query: str | None, findings: _Findings,
                         embed: Embed, full: bool) -> dict[str, Any] | None:
        scores = await grounding.scores(text, source, query, embed)
        reported = []
        for entry in self.grounding:
            if not entry.get("enabled", True) or entry["type"] not in scores:
                continue
            score = round(scores[entry["type"]], 2)
            detected = score < entry["threshold"]
            if detected or full:
                reported.append({"type": entry["type"], "threshold": entry["threshold"], "score": score,
                                 "action": findings.act(entry.get("action", "BLOCK"), detected),
                                 "detected": detected})
        return {"filters": reported} if reported else None

    @staticmethod
    def _masked(checked: list[Block], index: int, findings: _Findings) -> str:
        text = checked[index].text
        spans = sorted((s for s in findings.spans if s[0] == index), key=lambda s: s[1])
        pieces, at = [], 0
        for _, start, end, replacement in spans:
            if start < at:
                continue  # an entity inside a regex match already masked (or the reverse)
            pieces.append(text[at:start])
            pieces.append(replacement)
            at = end
        pieces.append(text[at:])
        return "".join(pieces)
