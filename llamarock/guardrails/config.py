"""A guardrail's policies: CreateGuardrail/UpdateGuardrail's ``*PolicyConfig`` members checked with Bedrock's rules
and normalised to GetGuardrail's ``*Policy`` members (defaults filled in), which is what is stored and evaluated.

The codec has already checked the members against botocore's shapes (types, enums, lengths, list sizes); this
module adds what Bedrock checks beyond the shapes: at least one policy, each type, name or word once, regexes that
compile, PROMPT_ATTACK filtering input only, grounding thresholds below 1, the STANDARD tier's cross-region
configuration.
"""

from __future__ import annotations

from typing import Any

import re2

from llamarock.errors import ValidationException
from llamarock.guardrails.pii import compile_regex

# Request member -> GetGuardrail member, for each policy.
POLICIES = {
    "topicPolicyConfig": "topicPolicy",
    "contentPolicyConfig": "contentPolicy",
    "wordPolicyConfig": "wordPolicy",
    "sensitiveInformationPolicyConfig": "sensitiveInformationPolicy",
    "contextualGroundingPolicyConfig": "contextualGroundingPolicy",
}
DEFAULT_MODALITIES = ["TEXT"]
MAX_GROUNDING_THRESHOLD = 0.99


def _directions(item: dict[str, Any], default_action: str) -> dict[str, Any]:
    """The per-direction members every policy entry has, with Bedrock's defaults (act, and be enabled, both ways)."""
    return {
        "inputAction": item.get("inputAction", default_action),
        "outputAction": item.get("outputAction", default_action),
        "inputEnabled": item.get("inputEnabled", True),
        "outputEnabled": item.get("outputEnabled", True),
    }


def _once(values: list[str], what: str, member: str) -> None:
    seen: set[str] = set()
    for value in values:
        key = value.casefold()
        if key in seen:
            raise ValidationException(
                f"The {what} {value!r} appears more than once in {member}. Give each {what} once."
            )
        seen.add(key)


def _tier(config: dict[str, Any], member: str, cross_region: bool) -> dict[str, Any]:
    tier = config.get("tierConfig")
    if tier is None:
        return {}
    if tier["tierName"] == "STANDARD" and not cross_region:
        raise ValidationException(
            f"{member}.tierConfig.tierName STANDARD needs crossRegionConfig (a guardrail profile); set "
            "crossRegionConfig.guardrailProfileIdentifier or use the CLASSIC tier."
        )
    return {"tier": {"tierName": tier["tierName"]}}


def _topics(config: dict[str, Any], cross_region: bool) -> dict[str, Any]:
    topics = config["topicsConfig"]
    _once([t["name"] for t in topics], "topic name", "topicPolicyConfig.topicsConfig")
    shown = [{
        "name": t["name"], "definition": t["definition"], "examples": list(t.get("examples") or []),
        "type": t["type"], **_directions(t, "BLOCK"),
    } for t in topics]
    return {"topics": shown, **_tier(config, "topicPolicyConfig", cross_region)}


def _content(config: dict[str, Any], cross_region: bool) -> dict[str, Any]:
    filters = config["filtersConfig"]
    _once([f["type"] for f in filters], "content filter type", "contentPolicyConfig.filtersConfig")
    shown = []
    for f in filters:
        if f["type"] == "PROMPT_ATTACK" and f["outputStrength"] != "NONE":
            raise ValidationException(
                "The PROMPT_ATTACK content filter applies to input only: set its outputStrength to NONE."
            )
        shown.append({
            "type": f["type"], "inputStrength": f["inputStrength"], "outputStrength": f["outputStrength"],
            "inputModalities": list(f.get("inputModalities") or DEFAULT_MODALITIES),
            "outputModalities": list(f.get("outputModalities") or DEFAULT_MODALITIES),
            **_directions(f, "BLOCK"),
        })
    return {"filters": shown, **_tier(config, "contentPolicyConfig", cross_region)}


def _words(config: dict[str, Any]) -> dict[str, Any]:
    words = config.get("wordsConfig") or []
    managed = config.get("managedWordListsConfig") or []
    if not words and not managed:
        raise ValidationException(
            "wordPolicyConfig needs wordsConfig (custom words or phrases), managedWordListsConfig (PROFANITY), or "
            "both; leave wordPolicyConfig out for no word filter."
        )
    for index, word in enumerate(words, start=1):
        if not word["text"].strip():
            raise ValidationException(
                f"wordPolicyConfig.wordsConfig.{index}.text is blank; give a word or phrase to filter."
            )
    _once([w["text"].strip() for w in words], "word", "wordPolicyConfig.wordsConfig")
    _once([m["type"] for m in managed], "managed word list", "wordPolicyConfig.managedWordListsConfig")
    shown: dict[str, Any] = {}
    if words:
        shown["words"] = [{"text": w["text"], **_directions(w, "BLOCK")} for w in words]
    if managed:
        shown["managedWordLists"] = [{"type": m["type"], **_directions(m, "BLOCK")} for m in managed]
    return shown


def _sensitive(config: dict[str, Any]) -> dict[str, Any]:
    entities = config.get("piiEntitiesConfig") or []
    regexes = config.get("regexesConfig") or []
    if not entities and not regexes:
        raise ValidationException(
            "sensitiveInformationPolicyConfig needs piiEntitiesConfig (PII entity types), regexesConfig (custom "
            "regular expressions), or both; leave it out for no sensitive information filter."
        )
    _once([e["type"] for e in entities], "PII entity type", "sensitiveInformationPolicyConfig.piiEntitiesConfig")
    _once([r["name"] for r in regexes], "regex name", "sensitiveInformationPolicyConfig.regexesConfig")
    for r in regexes:
        try:
            compile_regex(r["pattern"])
        except re2.error as error:
            reason = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
            raise ValidationException(
                f"The pattern of regex {r['name']!r} in sensitiveInformationPolicyConfig.regexesConfig is not a valid "
                f"regular expression for llamarock, which matches with RE2 ({reason}): fix the pattern; lookarounds "
                "and backreferences are not supported."
            ) from None
    shown: dict[str, Any] = {}
    if entities:
        shown["piiEntities"] = [{"type": e["type"], "action": e["action"], **_directions(e, e["action"])}
                                for e in entities]
    if regexes:
        shown["regexes"] = [{
            "name": r["name"], **({"description": r["description"]} if r.get("description") else {}),
            "pattern": r["pattern"], "action": r["action"], **_directions(r, r["action"]),
        } for r in regexes]
    return shown


def _grounding(config: dict[str, Any]) -> dict[str, Any]:
    filters = config["filtersConfig"]
    _once([f["type"] for f in filters], "contextual grounding filter type",
          "contextualGroundingPolicyConfig.filtersConfig")
    for f in filters:
        if not 0 <= f["threshold"] <= MAX_GROUNDING_THRESHOLD:
            raise ValidationException(
                f"The {f['type']} filter's threshold {f['threshold']} is out of range: give a threshold from 0 to "
                f"{MAX_GROUNDING_THRESHOLD} in contextualGroundingPolicyConfig.filtersConfig."
            )
    return {"filters": [{"type": f["type"], "threshold": f["threshold"], "action": f.get("action", "BLOCK"),
                         "enabled": f.get("enabled", True)} for f in filters]}


def policies(params: dict[str, Any]) -> dict[str, Any]:
    """GetGuardrail's policy members for a CreateGuardrail/UpdateGuardrail request, checked as Bedrock checks them."""
    if params.get("automatedReasoningPolicyConfig") is not None:
        raise ValidationException(
            "automatedReasoningPolicyConfig is not supported by llamarock (it has no automated reasoning policies); "
            "remove it."
        )
    if not any(params.get(member) is not None for member in POLICIES):
        raise ValidationException(
            "A guardrail needs at least one policy: give topicPolicyConfig, contentPolicyConfig, wordPolicyConfig, "
            "sensitiveInformationPolicyConfig or contextualGroundingPolicyConfig."
        )
    cross_region = params.get("crossRegionConfig") is not None
    shown: dict[str, Any] = {}
    if params.get("topicPolicyConfig") is not None:
        shown["topicPolicy"] = _topics(params["topicPolicyConfig"], cross_region)
    if params.get("contentPolicyConfig") is not None:
        shown["contentPolicy"] = _content(params["contentPolicyConfig"], cross_region)
    if params.get("wordPolicyConfig") is not None:
        shown["wordPolicy"] = _words(params["wordPolicyConfig"])
    if params.get("sensitiveInformationPolicyConfig") is not None:
        shown["sensitiveInformationPolicy"] = _sensitive(params["sensitiveInformationPolicyConfig"])
    if params.get("contextualGroundingPolicyConfig") is not None:
        shown["contextualGroundingPolicy"] = _grounding(params["contextualGroundingPolicyConfig"])
    return shown
