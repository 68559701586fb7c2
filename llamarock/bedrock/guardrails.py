"""Guardrails as the runtime operations name them, pure: Converse's ``guardrailConfig``, InvokeModel's guardrail
headers and body member, what of a request a guardrail checks, and the shapes a guardrail's verdict takes in the
answer (Converse's ``trace.guardrail``, the native body's ``amazon-bedrock-guardrailAction`` and
``amazon-bedrock-trace``).

The checking itself is ApplyGuardrail's (``services/guardrail_runtime.py`` runs it); this module only says what goes
in and how the verdict comes back out. A verdict here is ApplyGuardrail's output body as botocore's model has it
(``action``, ``outputs``, ``assessments``, ``usage``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from llamarock.errors import ValidationException

Trace = Literal["enabled", "disabled", "enabled_full"]
StreamMode = Literal["sync", "async"]

INTERVENED = "GUARDRAIL_INTERVENED"
STOP_REASON = "guardrail_intervened"
# The body member of InvokeModel that configures input tags and stream processing (Bedrock's name).
NATIVE_CONFIG = "amazon-bedrock-guardrailConfig"
NATIVE_ACTION = "amazon-bedrock-guardrailAction"
NATIVE_TRACE = "amazon-bedrock-trace"
_TAG = "amazon-bedrock-guardrails-guardContent_"


@dataclass(frozen=True)
class GuardrailRequest:
    """The guardrail a runtime request names, and how it wants it run."""

    identifier: str
    version: str
    trace: Trace = "disabled"
    stream_mode: StreamMode = "sync"
    tag_suffix: str | None = None  # InvokeModel input tags: only tagged text is checked

    @property
    def guardrail_id(self) -> str:
        """The id the trace is keyed by (the last part of an ARN)."""
        return self.identifier.rsplit("/", 1)[-1]

    @property
    def output_scope(self) -> str:
        """ApplyGuardrail's outputScope for this trace setting: every policy's result for ``enabled_full``."""
        return "FULL" if self.trace == "enabled_full" else "INTERVENTIONS"


def _named(identifier: str | None, version: str | None, where: str) -> tuple[str, str]:
    if not identifier:
        raise ValidationException(
            f"{where} names no guardrailIdentifier. Give the guardrail's id or ARN with its guardrailVersion "
            "(a version number or DRAFT), or leave the guardrail out."
        )
    if not version:
        raise ValidationException(
            f"{where} names guardrail {identifier} but no guardrailVersion. Give a version number or DRAFT."
        )
    return identifier, version


def converse_config(params: dict[str, Any]) -> GuardrailRequest | None:
    """Converse's ``guardrailConfig`` (shape-valid), or None when the request names none."""
    config = params.get("guardrailConfig")
    if config is None:
        return None
    identifier, version = _named(config.get("guardrailIdentifier"), config.get("guardrailVersion"), "guardrailConfig")
    return GuardrailRequest(identifier, version, config.get("trace") or "disabled",
                            config.get("streamProcessingMode") or "sync")


def invoke_config(headers: dict[str, Any], document: Any) -> GuardrailRequest | None:
    """InvokeModel's guardrail headers (shape-valid) and the body's ``amazon-bedrock-guardrailConfig``."""
    identifier, version = headers.get("guardrailIdentifier"), headers.get("guardrailVersion")
    config = document.get(NATIVE_CONFIG) if isinstance(document, dict) else None
    if identifier is None and version is None:
        if config is not None:
            raise ValidationException(
                f"The request body has {NATIVE_CONFIG} but names no guardrail. Send the "
                "X-Amzn-Bedrock-GuardrailIdentifier and X-Amzn-Bedrock-GuardrailVersion headers, or remove "
                f"{NATIVE_CONFIG}."
            )
        return None
    identifier, version = _named(identifier, version, "The X-Amzn-Bedrock-GuardrailIdentifier header")
    trace = (headers.get("trace") or "DISABLED").lower()
    suffix, mode = None, "sync"
    if config is not None:
        if not isinstance(config, dict) or set(config) - {"tagSuffix", "streamProcessingMode"}:
            raise ValidationException(
                f"{NATIVE_CONFIG} must be an object with tagSuffix (a string) and/or streamProcessingMode "
                "(SYNCHRONOUS or ASYNCHRONOUS)."
            )
        suffix = config.get("tagSuffix")
        if suffix is not None and (not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,20}", suffix)):
            raise ValidationException(
                f"{NATIVE_CONFIG}.tagSuffix must be 1 to 20 letters, digits or underscores."
            )
        processing = config.get("streamProcessingMode", "SYNCHRONOUS")
        if processing not in ("SYNCHRONOUS", "ASYNCHRONOUS"):
            raise ValidationException(
                f"{NATIVE_CONFIG}.streamProcessingMode must be SYNCHRONOUS or ASYNCHRONOUS, not {processing!r}."
            )
        mode = "async" if processing == "ASYNCHRONOUS" else "sync"
    return GuardrailRequest(identifier, version, trace, mode, suffix)  # type: ignore[arg-type]


def strip_native_config(body: bytes) -> bytes:
    """The InvokeModel body without ``amazon-bedrock-guardrailConfig`` (the model's schema does not know it)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(document, dict) or NATIVE_CONFIG not in document:
        return body
    document.pop(NATIVE_CONFIG)
    return json.dumps(document).encode()


def tagged_prompt(prompt: str, suffix: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The prompt the model gets (input tags removed) and the content the guardrail checks: the tagged spans when
    the request has a tag suffix and tags, else the whole prompt."""
    if suffix is None:
        return prompt, [text_block(prompt)]
    opening, closing = f"<{_TAG}{suffix}>", f"</{_TAG}{suffix}>"
    spans = re.findall(re.escape(opening) + "(.*?)" + re.escape(closing), prompt, flags=re.DOTALL)
    cleaned = prompt.replace(opening, "").replace(closing, "")
    if not spans:
        return cleaned, [text_block(cleaned)]
    return cleaned, [text_block(span) for span in spans]


def text_block(text: str, qualifiers: list[str] | None = None) -> dict[str, Any]:
    """One ApplyGuardrail content block of text."""
    block: dict[str, Any] = {"text": text}
    if qualifiers:
        block["qualifiers"] = list(qualifiers)
    return {"text": block}


def _guard_block(guard: dict[str, Any]) -> dict[str, Any] | None:
    text = guard.get("text")
    if text is None:
        return None
    return text_block(text.get("text", ""), text.get("qualifiers"))


def _tool_result_text(result: dict[str, Any]) -> str:
    parts = []
    for item in result.get("content") or []:
        if "text" in item:
            parts.append(item["text"])
        elif "json" in item:
            parts.append(json.dumps(item["json"]))
    return "\n".join(p for p in parts if p)


def converse_input(params: dict[str, Any], beyond: bool = True) -> list[dict[str, Any]]:
    """What a guardrail checks of a Converse request, as ApplyGuardrail content.

    As on Bedrock: when the messages hold ``guardContent`` blocks, only those (with their qualifiers) are checked;
    otherwise the text of every user message. The system prompt is checked only through its guardContent blocks.
    ``beyond`` (not in ``--compat bedrock``): tool results (their text and JSON) and tool specs (name, description,
    input schema) are checked too, which Bedrock does not do.
    """
    content: list[dict[str, Any]] = []
    for block in params.get("system") or []:
        if "guardContent" in block:
            guarded = _guard_block(block["guardContent"])
            if guarded is not None:
                content.append(guarded)
    messages = params.get("messages") or []
    guarded_only = any("guardContent" in block for message in messages for block in message.get("content") or [])
    for message in messages:
        for block in message.get("content") or []:
            if "guardContent" in block:
                guarded = _guard_block(block["guardContent"])
                if guarded is not None:
                    content.append(guarded)
            elif message.get("role") == "user" and not guarded_only and "text" in block:
                content.append(text_block(block["text"]))
            elif beyond and "toolResult" in block:
                text = _tool_result_text(block["toolResult"])
                if text:
                    content.append(text_block(text))
    if beyond:
        for tool in (params.get("toolConfig") or {}).get("tools") or []:
            spec = tool.get("toolSpec")
            if spec is not None:
                schema = (spec.get("inputSchema") or {}).get("json")
                described = "\n".join(p for p in (spec.get("name", ""), spec.get("description", ""),
                                                  json.dumps(schema) if schema is not None else "") if p)
                content.append(text_block(described))
    return content


def intervened(verdict: dict[str, Any] | None) -> bool:
    return verdict is not None and verdict.get("action") == INTERVENED


def blocks(verdict: dict[str, Any] | None) -> bool:
    """Whether an intervention blocks (any policy's action BLOCKED), rather than only masking."""
    if not intervened(verdict):
        return False
    assert verdict is not None
    return any(_blocked(assessment) for assessment in verdict.get("assessments") or [])


def _blocked(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("action") == "BLOCKED" or any(_blocked(v) for v in value.values())
    if isinstance(value, list):
        return any(_blocked(v) for v in value)
    return False


def output_text(verdict: dict[str, Any]) -> str:
    """The text an intervention puts in place of the checked text: the blocked messaging, or the masked text."""
    return "".join(output.get("text", "") for output in verdict.get("outputs") or [])


def merged_assessment(verdict: dict[str, Any]) -> dict[str, Any]:
    """ApplyGuardrail's assessments as the one assessment a trace holds per check."""
    merged: dict[str, Any] = {}
    for assessment in verdict.get("assessments") or []:
        for key, value in assessment.items():
            if key in merged and isinstance(value, dict) and isinstance(merged[key], dict):
                for member, items in value.items():
                    if isinstance(items, list):
                        merged[key].setdefault(member, []).extend(items)
                    else:
                        merged[key][member] = items
            else:
                merged[key] = value
    return merged


@dataclass
class GuardTrace:
    """The verdicts of one runtime call: its input check and its output checks."""

    request: GuardrailRequest
    input: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None
    model_output: list[str] | None = None  # what the model wrote, when an output check intervened

    @property
    def intervened(self) -> bool:
        return intervened(self.input) or any(intervened(v) for v in self.outputs or [])

    def intervened_on(self) -> tuple[str, ...]:
        """Where the guardrail intervened: INPUT, OUTPUT."""
        found = ("INPUT",) if intervened(self.input) else ()
        return found + (("OUTPUT",) if any(intervened(v) for v in self.outputs or []) else ())

    def action_reason(self) -> str | None:
        for verdict in [self.input, *(self.outputs or [])]:
            if intervened(verdict):
                assert verdict is not None
                default = "Guardrail blocked." if blocks(verdict) else "Guardrail masked."
                return str(verdict.get("actionReason") or default)
        return None

    def converse(self) -> dict[str, Any] | None:
        """Converse's ``trace`` (``ConverseTrace``/``ConverseStreamTrace``), None when the request asked for none."""
        if self.request.trace == "disabled":
            return None
        key = self.request.guardrail_id
        guardrail: dict[str, Any] = {}
        if self.model_output:
            guardrail["modelOutput"] = list(self.model_output)
        if self.input is not None:
            guardrail["inputAssessment"] = {key: merged_assessment(self.input)}
        if self.outputs:
            guardrail["outputAssessments"] = {key: [merged_assessment(v) for v in self.outputs]}
        reason = self.action_reason()
        if reason is not None:
            guardrail["actionReason"] = reason
        return {"guardrail": guardrail}

    def native(self) -> dict[str, Any]:
        """The native body's guardrail members: the action, and the trace when the request asked for it."""
        members: dict[str, Any] = {NATIVE_ACTION: "INTERVENED" if self.intervened else "NONE"}
        if self.request.trace != "disabled":
            key = self.request.guardrail_id
            guardrail: dict[str, Any] = {}
            if self.input is not None:
                guardrail["input"] = {key: merged_assessment(self.input)}
            if self.outputs:
                guardrail["outputs"] = [{key: merged_assessment(v)} for v in self.outputs]
            members[NATIVE_TRACE] = {"guardrail": guardrail}
        return members


def check_guardrail(identifier: str | None, version: str | None) -> None:
    """Refuse a guardrail on the knowledge-base operations (Retrieve, RetrieveAndGenerate), which do not run one yet:
    a caller must never believe output was checked when it was not."""
    if identifier is None:
        return
    named = f"{identifier} (version {version})" if version else identifier
    raise ValidationException(
        f"The guardrail {named} can't be applied here: llamarock runs guardrails on Converse, ConverseStream, "
        "InvokeModel, InvokeModelWithResponseStream and ApplyGuardrail, not yet on knowledge-base retrieval and "
        "generation. Remove the guardrailConfiguration, or check the answer with ApplyGuardrail."
    )
