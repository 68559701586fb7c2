"""OpenAI Chat Completions, as Bedrock serves it on ``/openai/v1/chat/completions``: the request translated into a
Converse request, Converse's answer and stream events translated back, the model list, and errors in OpenAI's shape.

Pure: no I/O. The route (``routes/openai.py``) runs the Converse request this module builds through the same use case
as Converse (``services/invocation.py``), so an OpenAI request and the Converse request it stands for render the
same prompt and get the same answer and the same token counts. What the OpenAI API has and Converse has not is
either mapped (``seed``, ``metadata``, ``tool_choice: "none"``, ``response_format: json_object``) or refused here,
with OpenAI's own wording and the ``param`` it concerns (docs/openai.md lists both).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from llamarock.bedrock import catalog
from llamarock.bedrock.regions import RegionMap
from llamarock.errors import BedrockError, ResourceNotFoundException, ValidationException

# Request members: translated, accepted and ignored (they change nothing a Llama model does), or refused unless they
# hold their default value. Anything else is refused as OpenAI refuses it ("Unrecognized request argument").
TRANSLATED = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n",
    "stream", "stream_options", "tools", "tool_choice", "response_format", "metadata",
})
IGNORED = frozenset({
    "user", "store", "parallel_tool_calls", "service_tier", "prompt_cache_key", "safety_identifier", "modalities",
    "reasoning_effort", "verbosity",
})
DEFAULTS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "functions": (None,),
    "function_call": (None,),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
}

MAX_STOP = 4
MAX_METADATA = 16
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,(.*)$", re.DOTALL)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ValidationException:
    """A 400 that names the request member it concerns (OpenAI's ``param``)."""
    return ValidationException(message, openai_param=param, openai_code=code)


@dataclass(frozen=True)
class ChatCompletionRequest:
    """A checked Chat Completions request: the model it names, the Converse request it stands for, how to answer."""

    model: str
    converse: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None


# --------------------------------------------------------------------------------------------------- the request


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Check a Chat Completions body and translate it into the Converse request it stands for."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise invalid("The request body nests too deeply to parse. Flatten it, and try again.") from None
    except ValueError:
        raise invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
        ) from None
    if not isinstance(document, dict):
        raise invalid("The request body must be a JSON object.")
    try:
        json.dumps(document, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise invalid("The request body contains a string that is not valid Unicode (an unpaired surrogate).") \
            from None
    for key, value in document.items():
        if key in TRANSLATED or key in IGNORED:
            continue
        if key in DEFAULTS:
            if not any(type(value) is type(default) and value == default for default in DEFAULTS[key]):
                raise invalid(_unsupported(key), key)
            continue
        raise invalid(f"Unrecognized request argument supplied: {key}", key)
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")
    n = document.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid(f"n must be 1 (got {json.dumps(n)}): llamarock returns one choice per request, as Bedrock "
                      "does. Send n separate requests for several completions.", "n")
    stream = _optional_bool(document, "stream") or False
    options = document.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                          "stream_options")
        if not isinstance(options, dict):
            raise invalid("stream_options must be an object.", "stream_options")
        include_usage = _optional_bool(options, "include_usage", "stream_options.include_usage") or False
    converse: dict[str, Any] = {}
    system, messages = _messages(document.get("messages"))
    converse["messages"] = messages
    if system:
        converse["system"] = system
    inference = _inference_config(document)
    if inference:
        converse["inferenceConfig"] = inference
    tool_config = _tool_config(document.get("tools"), document.get("tool_choice"), messages)
    if tool_config is not None:
        converse["toolConfig"] = tool_config
    output = _output_config(document.get("response_format"))
    if output is not None:
        converse["outputConfig"] = output
    metadata = _metadata(document.get("metadata"))
    if metadata:
        converse["requestMetadata"] = metadata
    seed = document.get("seed")
    if seed is not None and not _is_int(seed):
        raise invalid(f"seed must be an integer (got {json.dumps(seed)}).", "seed")
    return ChatCompletionRequest(model, converse, stream, include_usage, seed % 2**32 if seed is not None else None)


def _unsupported(key: str) -> str:
    reasons = {
        "frequency_penalty": "the Llama models take no frequency penalty (Bedrock's native body has none)",
        "presence_penalty": "the Llama models take no presence penalty (Bedrock's native body has none)",
        "logprobs": "log probabilities are not returned",
        "top_logprobs": "log probabilities are not returned",
        "logit_bias": "logit bias is not supported",
        "functions": "use tools instead of the deprecated functions",
        "function_call": "use tool_choice instead of the deprecated function_call",
        "audio": "the Llama models produce text only",
        "prediction": "predicted outputs are not supported",
        "web_search_options": "web search is not supported",
    }
    return f"{key} is not supported: {reasons[key]}. Remove it, or send its default value."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional_bool(document: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    value = document.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"{param or key} must be a boolean (got {json.dumps(value)}).", param or key)
    return value


def _text_parts(content: Any, where: str, allowed: tuple[str, ...] = ("text",)) -> list[str]:
    """The texts of a message's content: a string, or an array of text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or an array of content parts.", where)
    texts = []
    for position, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise invalid(
                f"Invalid value for {where}[{position}].type: expected one of {', '.join(allowed)}, got "
                f"{json.dumps(kind)}.", f"{where}[{position}].type",
            )
        text = part.get("text" if kind == "text" else "refusal")
        if not isinstance(text, str):
            raise invalid(f"{where}[{position}].{kind} must be a string.", f"{where}[{position}].{kind}")
        texts.append(text)
    return texts


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise invalid(f"{where}.image_url.url must be a string.", f"{where}.image_url.url")
    found = _DATA_URL.match(url)
    if found is None:
        raise invalid(
            f"{where}.image_url.url must be a data URL (data:image/png;base64,...; png, jpeg, gif or webp): "
            "llamarock fetches nothing from the network, so send the image's bytes inline.",
            f"{where}.image_url.url", "invalid_image_url",
        )
    try:
        data = base64.b64decode(found[2], validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.image_url.url is not valid base64 data.", f"{where}.image_url.url",
                      "invalid_image_url") from None
    fmt = "jpeg" if found[1] == "jpg" else found[1]
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or an array of content parts.", where)
    blocks = []
    for position, part in enumerate(content):
        at = f"{where}[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"{at}.text must be a string.", f"{at}.text")
            blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind in ("input_audio", "file"):
            raise invalid(f"{at} is a {kind} part: the Llama models take text and (Llama 3.2 11B and 90B) images "
                          "only.", f"{at}.type")
        else:
            raise invalid(f"Invalid value for {at}.type: expected one of text, image_url, got {json.dumps(kind)}.",
                          f"{at}.type")
    return blocks


def _arguments(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise invalid(f"{where} must be a function tool call: {{\"id\", \"type\": \"function\", \"function\"}}.",
                      where)
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise invalid(f"{where}.function.name must be a string.", f"{where}.function.name")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise invalid(f"{where}.id must be a non-empty string.", f"{where}.id")
    raw = function.get("arguments", "{}")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        raise invalid(f"{where}.function.arguments is not valid JSON.", f"{where}.function.arguments") from None
    if not raw:
        arguments = {}
    if not isinstance(arguments, dict):
        raise invalid(f"{where}.function.arguments must be a JSON object.", f"{where}.function.arguments")
    return {"toolUse": {"toolUseId": call["id"], "name": function["name"], "input": arguments}}


def _messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks and Converse messages: consecutive user-side messages (user, tool) are one Converse user
    message, consecutive assistant messages one assistant message, system and developer messages the system."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty array of messages.", "messages")
    system: list[dict[str, Any]] = []
    converse: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if converse and converse[-1]["role"] == role:
            converse[-1]["content"].extend(blocks)
        else:
            converse.append({"role": role, "content": blocks})

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role is None or not isinstance(message, dict):
            raise invalid(f"{where} must be an object with a role.", f"{where}.role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _text_parts(content, f"{where}.content") if text)
        elif role == "user":
            add("user", _user_blocks(content, f"{where}.content"))
        elif role == "assistant":
            texts = [] if content is None else _text_parts(content, f"{where}.content", ("text", "refusal"))
            blocks: list[dict[str, Any]] = [{"text": text} for text in texts if text]
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise invalid(f"{where}.tool_calls must be an array.", f"{where}.tool_calls")
            blocks.extend(_arguments(call, f"{where}.tool_calls[{position}]") for position, call in enumerate(calls))
            add("assistant", blocks or [{"text": ""}])
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                raise invalid(f"{where}.tool_call_id must be the id of the tool call it answers.",
                              f"{where}.tool_call_id")
            text = "".join(_text_parts(content, f"{where}.content"))
            add("user", [{"toolResult": {"toolUseId": tool_call_id, "content": [{"text": text}]}}])
        else:
            raise invalid(
                f"Invalid value for {where}.role: expected one of system, developer, user, assistant, tool, got "
                f"{json.dumps(role)}.", f"{where}.role",
            )
    if not converse:
        raise invalid("messages must contain at least one user message.", "messages")
    return system, converse


def _inference_config(document: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("max_completion_tokens", "max_tokens"):
        value = document.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise invalid(f"Invalid {key}: {json.dumps(value)}. It must be an integer of at least 1.", key)
        config.setdefault("maxTokens", value)
    for key, name, top in (("temperature", "temperature", 2), ("top_p", "topP", 1)):
        value = document.get(key)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= top:
            raise invalid(f"Invalid {key}: {json.dumps(value)}. It must be a number from 0 to {top}.", key)
        config[name] = float(value)
    stop = document.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise invalid("stop must be a string or an array of strings.", "stop")
        if len(stops) > MAX_STOP:
            raise invalid(f"stop holds {len(stops)} sequences; at most {MAX_STOP} are allowed.", "stop")
        if any(not s for s in stops):
            raise invalid("stop must not contain empty strings.", "stop")
        if stops:
            config["stopSequences"] = stops
    return config


def _history_uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any("toolUse" in block or "toolResult" in block for m in messages for block in m["content"])


def _tool_config(tools: Any, choice: Any, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    if tools is None or tools == []:
        if choice is not None and choice != "none":
            raise invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                          "tool_choice")
        if _history_uses_tools(messages):
            raise invalid("messages hold tool calls or tool results, so tools must be given too: the tool "
                          "definitions are part of the prompt that renders them (as Converse's toolConfig).", "tools")
        return None
    if not isinstance(tools, list):
        raise invalid("tools must be an array of function tools.", "tools")
    specs = []
    for position, tool in enumerate(tools):
        where = f"tools[{position}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise invalid(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}: only function tools "
                          "are supported.", f"{where}.type")
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise invalid(f"Invalid {where}.function.name: {json.dumps(name)}. It must match ^[a-zA-Z0-9_-]{{1,64}}$.",
                          f"{where}.function.name")
        spec: dict[str, Any] = {"name": name}
        description = function.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise invalid(f"{where}.function.description must be a string.", f"{where}.function.description")
            if description:
                spec["description"] = description
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise invalid(f"{where}.function.parameters must be a JSON schema object.", f"{where}.function.parameters")
        spec["inputSchema"] = {"json": parameters}
        specs.append({"toolSpec": spec})
    if choice is None or choice == "auto":
        converse_choice: dict[str, Any] = {"auto": {}}
    elif choice == "required":
        converse_choice = {"any": {}}
    elif choice == "none":
        # Converse has no "none": leave the tools out, unless the conversation already holds tool calls (Converse
        # needs the tools to render them); then the tools stay, in auto mode (docs/openai.md).
        if not _history_uses_tools(messages):
            return None
        converse_choice = {"auto": {}}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        converse_choice = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise invalid(
            "Invalid value for 'tool_choice': expected \"none\", \"auto\", \"required\" or "
            "{\"type\": \"function\", \"function\": {\"name\": ...}}.", "tool_choice",
        )
    return {"tools": specs, "toolChoice": converse_choice}


def _output_config(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
        structure: dict[str, Any] = {"name": "json_object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid("response_format.json_schema must be an object with a name and a schema.",
                          "response_format.json_schema")
        name = spec.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise invalid(f"Invalid response_format.json_schema.name: {json.dumps(name)}. It must match "
                          "^[a-zA-Z0-9_-]{1,64}$.", "response_format.json_schema.name")
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema must be a JSON schema object.",
                          "response_format.json_schema.schema")
        structure = {"name": name}
        if isinstance(spec.get("description"), str) and spec["description"]:
            structure["description"] = spec["description"]
    else:
        raise invalid(f"Invalid value for response_format.type: expected one of text, json_object, json_schema, got "
                      f"{json.dumps(kind)}.", "response_format.type")
    structure["schema"] = json.dumps(schema)
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": structure}}}


def _metadata(metadata: Any) -> dict[str, str]:
    """OpenAI's ``metadata`` becomes Converse's ``requestMetadata`` (kept in invocation logs)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid("metadata must be an object of string values.", "metadata")
    if len(metadata) > MAX_METADATA:
        raise invalid(f"metadata holds {len(metadata)} pairs; at most {MAX_METADATA} are allowed.", "metadata")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64 or len(value) > 256:
            raise invalid("metadata keys must have 1 to 64 characters and values at most 256.", "metadata")
    return dict(metadata)


# -------------------------------------------------------------------------------------------------- the answers


def completion_id(request_id: str) -> str:
    """The completion's id: the request id, so that it points at the invocation's log and audit lines."""
    return "chatcmpl-" + request_id.replace("-", "")


def openai_usage(converse_usage: dict[str, int]) -> dict[str, Any]:
    """Converse usage in OpenAI's words: OpenAI's ``prompt_tokens`` count the cached prompt tokens too."""
    cached = converse_usage.get("cacheReadInputTokens", 0)
    prompt = converse_usage["inputTokens"] + cached
    completion = converse_usage["outputTokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def _tool_call(use: dict[str, Any]) -> dict[str, Any]:
    return {"id": use["toolUseId"], "type": "function",
            "function": {"name": use["name"], "arguments": json.dumps(use["input"], ensure_ascii=False)}}


def completion(converse: dict[str, Any], model: str, identifier: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` of a Converse response body."""
    content = converse["output"]["message"]["content"]
    text = "".join(block["text"] for block in content if "text" in block)
    calls = [_tool_call(block["toolUse"]) for block in content if "toolUse" in block]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": identifier,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(converse["stopReason"])}],
        "usage": openai_usage(converse["usage"]),
        "system_fingerprint": None,
    }


class ChunkStream:
    """ConverseStream events in, ``chat.completion.chunk`` objects out (the route frames them as server-sent
    events): the role first, then text and tool-call deltas as they come, the finish reason, and with
    ``include_usage`` a last chunk with the usage and no choices."""

    def __init__(self, model: str, identifier: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.identifier = identifier
        self.created = created
        self.include_usage = include_usage
        self.tool_calls: dict[int, int] = {}  # Converse content block index -> OpenAI tool call index

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.identifier,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def feed(self, event_type: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if event_type == "messageStart":
            return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        if event_type == "contentBlockStart":
            use = payload["start"].get("toolUse")
            if use is None:
                return []
            index = self.tool_calls.setdefault(payload["contentBlockIndex"], len(self.tool_calls))
            call = {"index": index, "id": use["toolUseId"], "type": "function",
                    "function": {"name": use["name"], "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if event_type == "contentBlockDelta":
            delta = payload["delta"]
            if "text" in delta:
                return [self._chunk({"content": delta["text"]})] if delta["text"] else []
            if "toolUse" in delta:
                index = self.tool_calls.get(payload["contentBlockIndex"], 0)
                return [self._chunk({"tool_calls": [{"index": index,
                                                     "function": {"arguments": delta["toolUse"]["input"]}}]})]
            return []
        if event_type == "messageStop":
            return [self._chunk({}, finish_reason(payload["stopReason"]))]
        if event_type == "metadata" and self.include_usage:
            chunk = self._chunk(None)
            chunk["usage"] = openai_usage(payload["usage"])
            return [chunk]
        return []


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or ``data: [DONE]``) and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


DONE = sse("[DONE]")


# -------------------------------------------------------------------------------------------------- models


def _created(model: catalog.CatalogModel) -> int:
    """The model's ``created``: when Bedrock first offered it (its lifecycle's start)."""
    released = model.dates.start
    return int(released.timestamp()) if released is not None else 0


def model_list(regions: RegionMap, region: str, served: Callable[[str], bool]) -> dict[str, Any]:
    """``GET /openai/v1/models``: the ids a request signed for ``region`` may send as ``model``: the model ids
    invocable on demand there, and the cross-region inference profile ids of its geography (those a deployment of
    this server serves)."""
    data: list[dict[str, Any]] = []
    for model in catalog.MODELS:
        if not served(model.model_id):
            continue
        where = regions.of(model)
        ids: Iterable[str] = []
        if where.on_demand_in(region):
            ids = [model.model_id]
        geo = where.profile_from(region)
        if geo is not None:
            ids = [*ids, f"{geo}.{model.model_id}"]
        data.extend({"id": i, "object": "model", "created": _created(model), "owned_by": "meta"} for i in ids)
    return {"object": "list", "data": data}


def model_not_found(model: str, why: str = "") -> ResourceNotFoundException:
    return ResourceNotFoundException(
        f"The model `{model}` does not exist or you do not have access to it. {why + ' ' if why else ''}"
        "GET /openai/v1/models lists the model ids this server serves (Bedrock model ids and inference profile ids).",
        openai_param="model", openai_code="model_not_found",
    )


# -------------------------------------------------------------------------------------------------- errors

# Who-are-you failures are 401 for OpenAI clients (AuthenticationError), not the 403 or 400 AWS sends.
_AUTHENTICATION = frozenset({
    "UnrecognizedClientException", "MissingAuthenticationTokenException", "InvalidSignatureException",
    "IncompleteSignatureException",
})
_CODES = {
    "UnrecognizedClientException": "invalid_api_key",
    "MissingAuthenticationTokenException": "missing_api_key",
    "ThrottlingException": "rate_limit_exceeded",
    "UnknownOperationException": "unknown_url",
}


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_status(error: BedrockError, status: int) -> int:
    """The HTTP status an OpenAI client gets for an error Bedrock would answer with ``status``."""
    return 401 if error.code in _AUTHENTICATION else status


def render_error(error: BedrockError, status: int, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the OpenAI error for a Bedrock error whose AWS status is ``status``."""
    status = error_status(error, status)
    headers = {"Content-Type": "application/json", "x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.code}
    return status, headers, json.dumps(error_body(error, status), ensure_ascii=False).encode()


def error_body(error: BedrockError, status: int) -> dict[str, Any]:
    """OpenAI's error object; ``status`` is :func:`error_status`'s."""
    return {"error": {
        "message": error.message,
        "type": error_type(status),
        "param": error.extra.get("openai_param"),
        "code": error.extra.get("openai_code") or _CODES.get(error.code, error.code),
    }}
