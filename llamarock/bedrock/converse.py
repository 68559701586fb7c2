"""Converse: Bedrock's message-based request, checked with Bedrock's rules, turned into chat turns; and the
response and stream events built back from what the model produced.

Input params come from ``codec.shapes.parse_json_body`` (shape-valid, blobs decoded); this module adds the rules that
the service model cannot express (alternation, per-model features, limits) in Bedrock's own words.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from llamarock.bedrock import documents
from llamarock.bedrock import images as image_rules
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.native import check_native_fields
from llamarock.bedrock.prompts import render_llama2, render_llama3
from llamarock.bedrock.schema_limits import check_enforced_schema
from llamarock.bedrock.tools import (
    ToolCall,
    ToolSpec,
    call_schema,
    render_tool_call,
    render_tool_result,
    tools_system_prompt,
)
from llamarock.errors import ValidationException
from llamarock.types import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, CacheMark, ChatMessage

START_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)
ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between "
    "user and assistant roles and try again."
)
TOOL_CONFIG_REQUIRED = "The toolConfig field must be defined when using toolUse and toolResult content blocks."


@dataclass(frozen=True)
class Turn:
    """One message reduced to what the prompt needs."""

    role: Literal["user", "assistant"]
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[str, ...] = ()
    cache_at: tuple[int, ...] = ()  # cachePoint blocks: offsets into ``text`` where the cached prefix ends (-1: the
    # whole message)


@dataclass(frozen=True)
class ChatRequest:
    """A checked Converse request."""

    system: str
    turns: tuple[Turn, ...]
    system_cache_at: tuple[int, ...] = ()  # cachePoint blocks in system: offsets into ``system``
    tools_cached: bool = False  # a cachePoint block in toolConfig.tools
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: Literal["auto", "any", "tool"] | None = None
    tool_name: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    stop_sequences: tuple[str, ...] = ()
    output_schema: dict[str, Any] | None = None
    images: tuple[bytes, ...] = ()
    latency: str | None = None
    service_tier: str | None = None  # serviceTier.type (shape-checked), echoed; None: default
    request_metadata: dict[str, str] = field(default_factory=dict)
    response_field_paths: tuple[str, ...] = ()

    @property
    def forced_tools(self) -> tuple[ToolSpec, ...]:
        """The tools the answer must call (``any``/``tool`` choice), else ()."""
        if self.tool_choice == "tool":
            return tuple(t for t in self.tools if t.name == self.tool_name)
        if self.tool_choice == "any":
            return self.tools
        return ()


def _system_text(blocks: list[dict[str, Any]]) -> tuple[str, tuple[int, ...]]:
    """System text: text and guardContent text blocks (a guardContent block is plain text when no guardrail runs, as
    on Bedrock); and where its cachePoint blocks fall in it."""
    texts: list[str] = []
    marks: list[int] = []
    for position, block in enumerate(blocks):
        if "text" in block:
            texts.append(block["text"])
        elif "guardContent" in block:
            texts.append(_guard_text(block["guardContent"], f"system.{position}"))
        elif "cachePoint" in block:
            marks.append(len("\n".join(t for t in texts if t)))
    return "\n".join(t for t in texts if t), tuple(marks)


def _guard_text(guard: dict[str, Any], where: str) -> str:
    """The text of a guardContent block (plain text when no guardrail runs, as on Bedrock); its image form is
    refused: llamarock's guardrails check text only."""
    if "text" in guard:
        return str(guard["text"].get("text", ""))
    raise ValidationException(
        f"The guardContent block at {where} holds an image; llamarock's guardrails check text only, so image "
        "guardContent can't be evaluated. Send the image as an image block, or the content as guardContent text."
    )


# Content blocks Bedrock defines that no Llama model takes.
_UNSUPPORTED_BLOCKS = ("video", "audio", "reasoningContent", "citationsContent", "searchResult")


def _unsupported_block(block: dict[str, Any], where: str, model: CatalogModel) -> None:
    """Refuse, in Bedrock's words, a content block the model cannot take (rather than drop it silently)."""
    kind = next((k for k in block if k in _UNSUPPORTED_BLOCKS), None)
    if kind is None:
        return
    raise ValidationException(
        f"This model doesn't support the {kind} content block that you provided at {where}. {model.model_id} takes "
        f"text{', image' if model.supports_images else ''}, document, tool and guardContent blocks; remove the "
        f"{kind} block and try again."
    )


def _tool_specs(tool_config: dict[str, Any] | None, model: CatalogModel) -> tuple[ToolSpec, ...]:
    if not tool_config:
        return ()
    if not model.tool_use:
        raise ValidationException(
            f"This model doesn't support tool use. {model.model_id} ({model.name}) has no tool calling; use Llama 3.1, "
            "3.2 11B/90B or 3.3, or remove toolConfig."
        )
    specs = []
    for position, tool in enumerate(tool_config.get("tools", [])):
        if "systemTool" in tool:
            raise ValidationException(
                f"This model doesn't support the system tool at toolConfig.tools.{position}. {model.model_id} calls "
                "only the tools you define with toolSpec; remove the systemTool and try again."
            )
        spec = tool.get("toolSpec")
        if spec is None:  # a cachePoint: the tools' prompt is cached with the system prompt (chat_messages)
            continue
        schema = (spec.get("inputSchema") or {}).get("json") or {"type": "object"}
        if not isinstance(schema, dict):
            raise ValidationException(f"The inputSchema of tool {spec['name']} must be a JSON object schema.")
        specs.append(ToolSpec(spec["name"], spec.get("description", ""), schema))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationException(f"The toolConfig field contains duplicate tool names: {', '.join(duplicates)}.")
    if not specs:
        raise ValidationException("The toolConfig field must contain at least one toolSpec.")
    return tuple(specs)


def _tool_choice(tool_config: dict[str, Any] | None, tools: tuple[ToolSpec, ...]) -> tuple[Any, str | None]:
    if not tool_config or not tools:
        return None, None
    choice = tool_config.get("toolChoice") or {"auto": {}}
    if "tool" in choice:
        name = choice["tool"]["name"]
        if name not in {t.name for t in tools}:
            raise ValidationException(
                f"The tool {name} named in toolChoice is not defined in toolConfig.tools. Define it or choose another."
            )
        return "tool", name
    if "any" in choice:
        return "any", None
    return "auto", None


def _output_schema(output_config: dict[str, Any] | None) -> dict[str, Any] | None:
    text_format = (output_config or {}).get("textFormat")
    if not text_format:
        return None
    if text_format.get("type") != "json_schema":
        raise ValidationException(f"The outputConfig.textFormat type {text_format.get('type')} is not supported.")
    raw = ((text_format.get("structure") or {}).get("jsonSchema") or {}).get("schema")
    if raw is None:
        raise ValidationException("outputConfig.textFormat.structure.jsonSchema.schema is required for json_schema.")
    try:
        schema = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationException(
            f"outputConfig.textFormat.structure.jsonSchema.schema is not valid JSON: {exc}"
        ) from exc
    except RecursionError:
        raise ValidationException(
            "outputConfig.textFormat.structure.jsonSchema.schema can't be enforced: it nests too deeply to parse. "
            "Flatten the schema, and try again."
        ) from None
    if not isinstance(schema, dict):
        raise ValidationException("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON object.")
    check_enforced_schema(schema, "The outputConfig.textFormat.structure.jsonSchema.schema")
    return schema


def _response_field_paths(paths: list[str] | tuple[()]) -> tuple[str, ...]:
    """``additionalModelResponseFieldPaths``: each a non-empty, well-formed JSON Pointer (RFC 6901), as Bedrock
    requires; a valid pointer to a field the response lacks is ignored."""
    for position, path in enumerate(paths):
        malformed = not path.startswith("/") or any(
            path[i] == "~" and path[i + 1: i + 2] not in ("0", "1") for i in range(len(path)))
        if malformed:
            raise ValidationException(
                f"The JSON Pointer {path!r} at additionalModelResponseFieldPaths.{position} is not valid: a JSON "
                "Pointer (RFC 6901) starts with '/' and escapes '~' as '~0' and '/' as '~1', e.g. /stop_sequence."
            )
    return tuple(paths)


def _check_forced_tools(choice: str | None, forced: tuple[ToolSpec, ...]) -> None:
    """Tools the answer must call (toolChoice any/tool) have their input schemas enforced: bound them first."""
    for tool in forced:
        check_enforced_schema(tool.input_schema, f"The inputSchema of tool {tool.name} (toolChoice {choice})")
    if len(forced) > 1:
        check_enforced_schema(call_schema(forced), f"The {len(forced)} tools of toolChoice any, taken together,")


def _user_turn(index: int, content: list[dict[str, Any]], model: CatalogModel, images: list[bytes],
               document_names: list[str], has_tools: bool) -> Turn:
    texts: list[str] = []
    docs: list[str] = []
    results: list[str] = []
    marks: list[tuple[int, int]] = []  # (documents, texts) before each cachePoint block
    for position, block in enumerate(content):
        where = f"messages.{index}.content.{position}"
        if "text" in block:
            if not block["text"].strip():
                raise ValidationException(
                    f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, and "
                    "try again."
                )
            texts.append(block["text"])
        elif "image" in block:
            if not model.supports_images:
                raise ValidationException(
                    f"This model doesn't support the image content block that you provided at {where}. "
                    f"{model.model_id} is text-only; use Llama 3.2 11B or 90B Vision, or a Llama 4 model."
                )
            data = block["image"].get("source", {}).get("bytes")
            if data is None:
                raise ValidationException(f"The image at {where} must carry its bytes; s3Location is not supported.")
            images.append(image_rules.check_image(data, f"{where}.image.source.bytes", block["image"]["format"]).data)
            texts.append(image_rules.IMAGE_TOKEN)
        elif "document" in block:
            doc = block["document"]
            document_names.append(doc["name"])
            documents.check_document_names(document_names)
            source = doc.get("source", {})
            if "bytes" in source:
                text = documents.document_text(doc.get("format", "txt"), doc["name"], source["bytes"])
            elif "text" in source:
                text = source["text"]
            else:
                raise ValidationException(f"The document at {where} must carry bytes or text; s3Location is not "
                                          "supported.")
            docs.append(documents.render_document(doc["name"], doc.get("format", "txt"), text))
        elif "toolResult" in block:
            if not has_tools:
                raise ValidationException(TOOL_CONFIG_REQUIRED)
            result = block["toolResult"]
            for part, item in enumerate(result.get("content") or []):
                _unsupported_block(item, f"{where}.toolResult.content.{part}", model)
            results.append(render_tool_result(result.get("content", []), result.get("status")))
        elif "toolUse" in block:
            raise ValidationException(
                f"The toolUse block at {where} is in a user message; toolUse blocks belong in assistant messages."
            )
        elif "guardContent" in block:
            texts.append(_guard_text(block["guardContent"], where))
        elif "cachePoint" in block:
            marks.append((len(docs), len(texts)))
        else:
            _unsupported_block(block, where, model)
    if docs and not any(t != image_rules.IMAGE_TOKEN for t in texts):
        raise ValidationException(
            f"The message at messages.{index} contains a document but no text block. Add a text block with your "
            "question about the document and try again."
        )
    # Documents go first in the turn's text, so a cachePoint keeps the longest start of that text made only of
    # what came before it.
    cache_at = tuple(len(_join([*docs, *texts[:t]] if d == len(docs) else docs[:d])) for d, t in marks)
    return Turn("user", _join([*docs, *texts]), tool_results=tuple(results), cache_at=cache_at)


def _join(parts: list[str]) -> str:
    """A user turn's parts, a blank line between them, except that an image's ``<|image|>`` is joined to the part
    after it (the text it illustrates), as Meta's template writes it."""
    out = ""
    for index, part in enumerate(parts):
        glued = index == 0 or parts[index - 1] == image_rules.IMAGE_TOKEN
        out += part if glued else "\n\n" + part
    return out


def _assistant_turn(index: int, content: list[dict[str, Any]], model: CatalogModel, has_tools: bool) -> Turn:
    texts: list[str] = []
    calls: list[ToolCall] = []
    marks: list[int] = []
    for position, block in enumerate(content):
        where = f"messages.{index}.content.{position}"
        if "text" in block:
            texts.append(block["text"])
        elif "cachePoint" in block:
            marks.append(len("".join(texts)) if not calls else -1)
        elif "toolUse" in block:
            if not has_tools:
                raise ValidationException(TOOL_CONFIG_REQUIRED)
            use = block["toolUse"]
            calls.append(ToolCall(use["toolUseId"], use["name"], use.get("input") or {}))
        elif "image" in block or "document" in block or "toolResult" in block:
            kind = next(k for k in ("image", "document", "toolResult") if k in block)
            raise ValidationException(
                f"The {kind} block at {where} is in an assistant message; {kind} blocks are allowed only in user "
                "messages."
            )
        elif "guardContent" in block:
            texts.append(_guard_text(block["guardContent"], where))
        else:
            _unsupported_block(block, where, model)
    return Turn("assistant", "".join(texts), tool_calls=tuple(calls), cache_at=tuple(marks))


def parse_chat_request(params: dict[str, Any], model: CatalogModel, *, allow_missing_inference: bool = False
                       ) -> ChatRequest:
    """Check a shape-valid Converse/ConverseStream (or CountTokens converse) body against Bedrock's rules."""
    messages = params.get("messages") or []
    if not messages or messages[0]["role"] != "user":
        raise ValidationException(START_WITH_USER)
    for previous, current in itertools.pairwise(messages):
        if previous["role"] == current["role"]:
            raise ValidationException(ALTERNATE)
    tool_config = params.get("toolConfig")
    tools = _tool_specs(tool_config, model)
    choice, tool_name = _tool_choice(tool_config, tools)
    images: list[bytes] = []
    document_names: list[str] = []
    turns = []
    for index, message in enumerate(messages):
        content = message.get("content") or []
        if not content:
            raise ValidationException(
                f"The content field in the Message object at messages.{index} is empty. Add a ContentBlock object to "
                "the content field and try again."
            )
        if message["role"] == "user":
            turns.append(_user_turn(index, content, model, images, document_names, bool(tools)))
        else:
            turns.append(_assistant_turn(index, content, model, bool(tools)))
    image_rules.check_count(model, len(images))
    extra: dict[str, Any] = params.get("additionalModelRequestFields") or {}
    if not isinstance(extra, dict):
        raise ValidationException("additionalModelRequestFields must be a JSON object.")
    check_native_fields(extra)  # types and ranges as in a native body: {"temperature": "hot"} is a 400, not a 500
    inference: dict[str, Any] = params.get("inferenceConfig") or {}
    def setting(key: str, native_key: str, default: float) -> Any:
        return inference[key] if key in inference else extra.get(native_key, default)

    max_tokens = int(setting("maxTokens", "max_gen_len", DEFAULT_MAX_TOKENS))
    if max_tokens > model.max_output_tokens:
        limit = model.max_output_tokens
        raise ValidationException(
            f"The maximum tokens you requested exceeds the model limit of {limit}. Try again with a maximum tokens "
            f"value that is lower than {limit}."
        )
    stops = tuple(inference.get("stopSequences") or ())
    if any(not s for s in stops):
        raise ValidationException("stopSequences must not contain empty strings.")
    system, system_cache_at = _system_text(params.get("system") or [])
    chat = ChatRequest(
        system=system,
        turns=tuple(turns),
        system_cache_at=system_cache_at,
        tools_cached=any("cachePoint" in tool for tool in (tool_config or {}).get("tools", [])),
        tools=tools,
        tool_choice=choice,
        tool_name=tool_name,
        max_tokens=max_tokens,
        temperature=float(setting("temperature", "temperature", DEFAULT_TEMPERATURE)),
        top_p=float(setting("topP", "top_p", DEFAULT_TOP_P)),
        stop_sequences=stops,
        output_schema=_output_schema(params.get("outputConfig")),
        images=tuple(images),
        latency=(params.get("performanceConfig") or {}).get("latency"),
        service_tier=(params.get("serviceTier") or {}).get("type"),
        request_metadata=dict(params.get("requestMetadata") or {}),
        response_field_paths=_response_field_paths(params.get("additionalModelResponseFieldPaths") or ()),
    )
    _check_forced_tools(choice, chat.forced_tools)
    return chat


MAX_CACHE_MARKS = 4  # cachePoint blocks honoured per request (Bedrock's limit of cache checkpoints); later ones pass


def chat_messages(chat: ChatRequest) -> tuple[tuple[ChatMessage, ...], str, tuple[CacheMark, ...]]:
    """The conversation as chat messages, plus the prefilled start of the answer (a final assistant turn), plus
    where the request's cachePoint blocks ask the prefix cache to keep a copy (at most ``MAX_CACHE_MARKS``; one in
    the prefilled answer is passed over)."""
    system = chat.system
    marks: list[CacheMark] = [CacheMark(0, at) for at in chat.system_cache_at] if system else []
    if chat.tools:
        system = "\n\n".join(p for p in (system, tools_system_prompt(chat.tools)) if p)
        if chat.tools_cached:
            marks.append(CacheMark(0, len(system)))
    if chat.output_schema is not None:
        system = "\n\n".join(
            p for p in (system, "Answer with one JSON document that matches this JSON schema:\n"
                        + json.dumps(chat.output_schema)) if p
        )
    messages: list[ChatMessage] = [ChatMessage("system", system)] if system else []
    turns = list(chat.turns)
    prefix = ""
    if turns and turns[-1].role == "assistant":
        prefix = turns.pop().text
    for turn in turns:
        if turn.role == "user":
            messages.extend(ChatMessage("tool", result) for result in turn.tool_results)
            if turn.text:
                messages.append(ChatMessage("user", turn.text))
        else:
            parts = [turn.text] if turn.text else []
            parts.extend(render_tool_call(call) for call in turn.tool_calls)
            messages.append(ChatMessage("assistant", "\n".join(parts)))
        if messages:
            marks.extend(CacheMark(len(messages) - 1, at if turn.text and 0 <= at < len(turn.text) else None)
                         for at in turn.cache_at)
    whole = [CacheMark(m.message, None if m.chars is not None and m.chars >= len(messages[m.message].content)
                       else m.chars) for m in marks if m.message is not None and messages]
    return tuple(messages), prefix, tuple(dict.fromkeys(whole))[:MAX_CACHE_MARKS]


def render_for(prompt_format: str, messages: tuple[ChatMessage, ...], prefix: str) -> str:
    """The messages in a Llama prompt format (for weights that use it natively)."""
    if prompt_format == "llama2":
        return render_llama2(messages) + (" " + prefix if prefix else "")
    return render_llama3(messages) + prefix


def prompt_marks(prompt_format: str, messages: tuple[ChatMessage, ...], prompt: str,
                 marks: tuple[CacheMark, ...]) -> tuple[CacheMark, ...]:
    """``marks`` on ``messages`` as offsets into ``prompt``, their rendering in a Llama format: where the rendering
    of the conversation cut at each mark stops agreeing with the whole."""
    found = []
    for mark in marks:
        if mark.message is None:
            found.append(mark)
            continue
        cut = list(messages[: mark.message + 1])
        if mark.chars is not None:
            cut[-1] = dataclasses.replace(cut[-1], content=cut[-1].content[: mark.chars])
        text = render_for(prompt_format, tuple(cut), "")
        shared = next((i for i, (a, b) in enumerate(zip(text, prompt, strict=False)) if a != b),
                      min(len(text), len(prompt)))
        found.append(CacheMark(None, shared))
    return tuple(found)


def usage(prompt_tokens: int, output_tokens: int, cache_read: int | None = None) -> dict[str, int]:
    """Converse usage as Bedrock counts it with prompt caching: ``inputTokens`` are the prompt tokens that were
    computed, ``cacheReadInputTokens`` those reused from the cache, and ``totalTokens`` counts both."""
    cached = cache_read or 0
    body = {
        "inputTokens": prompt_tokens - cached,
        "outputTokens": output_tokens,
        "totalTokens": prompt_tokens + output_tokens,
    }
    if cache_read is not None:
        body["cacheReadInputTokens"] = cache_read
    return body


def response_fields(chat: ChatRequest, stop_sequence: str | None) -> dict[str, Any] | None:
    """``additionalModelResponseFields`` for the paths the request asked for (``/stop_sequence`` is known)."""
    if not chat.response_field_paths:
        return None
    available = {"/stop_sequence": ("stop_sequence", stop_sequence)}
    fields = dict(available[p] for p in chat.response_field_paths if p in available)
    return fields


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"toolUse": {"toolUseId": call.tool_use_id, "name": call.name, "input": call.input}}


def converse_response(
    chat: ChatRequest, text: str, calls: list[ToolCall], stop_reason: str, usage_body: dict[str, int],
    latency_ms: int, stop_sequence: str | None,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"text": text}] if text or not calls else []
    content.extend(tool_use_block(call) for call in calls)
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage_body,
        "metrics": {"latencyMs": latency_ms},
    }
    fields = response_fields(chat, stop_sequence)
    if fields is not None:
        body["additionalModelResponseFields"] = fields
    if chat.latency is not None:
        body["performanceConfig"] = {"latency": chat.latency}
    if chat.service_tier is not None:
        body["serviceTier"] = {"type": chat.service_tier}
    return body
