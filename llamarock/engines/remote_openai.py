"""``engine = "openai"``: replicas of an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama, llama-server's
``/v1``, llama-cpp-python's server).

* A prompt llamarock rendered (Llama weights: ``chat_format`` llama3 or llama2) goes to ``/v1/completions`` as token
  ids when the replica tokenizes (``/tokenize``: vLLM, SGLang, llama-server), else as text with
  ``add_special_tokens: false`` (the rendered prompt already starts with its BOS), so that no special token is added.
* Messages (weights in another chat format, and vision requests: the engine then reports ``chat_format`` other, so
  that llamarock hands it messages) go to ``/v1/chat/completions``, each ``<|image|>`` replaced by the image as a
  data URL; an answer's prefilled start is the last, assistant, message with ``continue_final_message``.
* Streams ask for ``stream_options.include_usage``: the last event's ``usage.completion_tokens`` corrects the token
  count (servers that send several tokens per event).
* Exact prompt counts: the replica's ``/tokenize`` (its own tokenizer), or, when it has none, a one-token completion's
  ``usage.prompt_tokens``.

A resumption continues from the text already delivered (the prompt's tokens plus the delivered text tokenized, or the
text appended; for chat, an assistant message continued): exact for greedy decoding whenever the delivered text
tokenizes back to the same tokens, which is the rule for text a model generated.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any

from llamarock.engines.remote import Piece, Prompt, RemoteEngine, ReplicaBusy, ReplicaFailure, sampling_body, sse_events
from llamarock.engines.router import Replica
from llamarock.errors import EngineError
from llamarock.types import GenerationRequest

IMAGE_TOKEN = "<|image|>"
FINISH = {"length": "length", "stop": "stop", "eos": "stop", "tool_calls": "stop", "content_filter": "stop"}


def image_data_url(data: bytes) -> str:
    """A data URL for an image's bytes (png, jpeg, gif or webp, as the Bedrock layer checked)."""
    if data.startswith(b"\x89PNG"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    elif data[:4] == b"GIF8":
        mime = "image/gif"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        mime = "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The request's messages for ``/v1/chat/completions``, images in place of their placeholders."""
    images = iter(request.images)
    out: list[dict[str, Any]] = []
    for message in request.messages or ():
        if IMAGE_TOKEN not in message.content:
            out.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        for index, text in enumerate(message.content.split(IMAGE_TOKEN)):
            if index:
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(next(images))}})
            if text:
                parts.append({"type": "text", "text": text})
        out.append({"role": message.role, "content": parts})
    if request.assistant_prefix:
        out.append({"role": "assistant", "content": request.assistant_prefix})
    return out


class OpenAIEngine(RemoteEngine):
    """Replicas of an OpenAI-compatible server; see the module docstring."""

    dialect = "openai"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model = self.config.model
        self._tokenize: bool | None = None
        self._bos: int | None = None
        self._apply_template = False  # the replica renders messages itself (llama-server's /apply-template)

    async def _probe(self, replica: Replica) -> dict[str, Any]:
        listing = await self.call(replica, "GET", "/v1/models")
        models = listing.get("data") or []
        if not models:
            raise ReplicaFailure("/v1/models lists no model")
        wanted = self._model or str(models[0].get("id"))
        entry = next((m for m in models if m.get("id") == wanted), None)
        if entry is None:
            raise EngineError(f"replica {replica.url} does not serve model {wanted!r}; it serves "
                              + ", ".join(str(m.get("id")) for m in models))
        self._model = wanted
        meta = entry.get("meta") or {}
        window = entry.get("max_model_len") or meta.get("n_ctx") or entry.get("context_length")
        modalities = (entry.get("architecture") or {}).get("input_modalities") or []
        caps: dict[str, Any] = {"model": wanted, "context_length": window, "images": "image" in modalities,
                                "tools": "server", "tokenizer": "usage"}
        try:  # llama-server also answers /props: its chat template and slot window
            props = await self.call(replica, "GET", "/props")
            caps["chat_template"] = props.get("chat_template")
            self._apply_template = True
            caps["context_length"] = (props.get("default_generation_settings") or {}).get("n_ctx") or window
            caps["images"] = caps["images"] or bool((props.get("modalities") or {}).get("vision"))
        except (ReplicaFailure, ReplicaBusy, ValueError):
            pass
        try:
            found = await self.call(replica, "POST", "/tokenize",
                                    {"model": wanted, "prompt": "", "add_special_tokens": True, "content": "",
                                     "add_special": True})
            if isinstance(found.get("tokens"), list):
                caps["tokenizer"] = "/tokenize"
                self._tokenize = True
                self._bos = found["tokens"][0] if len(found["tokens"]) == 1 else None
        except (ReplicaFailure, ReplicaBusy, ValueError):
            self._tokenize = self._tokenize or False
        return caps

    def _info_from(self, probes: Any) -> Any:
        info = super()._info_from(probes)
        if info.supports_images and info.chat_format in ("llama3", "llama2"):
            # Images travel only in chat messages: let llamarock hand over messages, the server's template renders.
            import dataclasses
            info = dataclasses.replace(info, chat_format="other")
        return info

    async def _health(self, replica: Replica) -> bool:
        url = replica.url.rstrip("/")
        response = await self.client.get(url + "/health", headers=self.headers(replica),
                                         timeout=self.config.policy.health_timeout_s)
        if response.status_code == 404:
            response = await self.client.get(url + "/v1/models", headers=self.headers(replica),
                                             timeout=self.config.policy.health_timeout_s)
        return response.status_code == 200

    async def _tokens(self, text: str) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": True, "content": text,
                "add_special": True, "parse_special": True}
        tokens = list((await self.call_any("/tokenize", body))["tokens"])
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return tokens

    async def _prepare(self, request: GenerationRequest) -> Prompt:
        if request.prompt is not None:
            if self._tokenize:
                tokens = await self._tokens(request.prompt)
                return Prompt(count=len(tokens), tokens=tokens)
            count = await self._usage_count("/v1/completions", {"prompt": request.prompt,
                                                                "add_special_tokens": False})
            return Prompt(count=count, text=request.prompt)
        if self._apply_template and self._tokenize and not request.images:
            plain = [{"role": m.role, "content": m.content} for m in request.messages or ()]
            text = (await self.call_any("/apply-template", {"messages": plain}))["prompt"] + request.assistant_prefix
            tokens = await self._tokens(text)
            return Prompt(count=len(tokens), tokens=tokens)
        messages = chat_messages(request)
        body: dict[str, Any] = {"messages": messages}
        if request.assistant_prefix:
            body.update(add_generation_prompt=False, continue_final_message=True)
        if self._tokenize and not request.images:
            try:
                found = await self.call_any("/tokenize", {"model": self._model, **body})
                if "count" in found:  # vLLM's and SGLang's take messages; others ignore them
                    return Prompt(count=int(found["count"]), messages=messages)
            except EngineError:
                pass  # a tokenizer without chat support (llama-server's takes no messages): ask for usage
        return Prompt(count=await self._usage_count("/v1/chat/completions", body), messages=messages)

    async def _usage_count(self, path: str, body: dict[str, Any]) -> int:
        """The replica's prompt count of a request: one generated token, ``usage.prompt_tokens``."""
        answer = await self.call_any(path, {"model": self._model, **body, "max_tokens": 1, "temperature": 0})
        return int((answer.get("usage") or {}).get("prompt_tokens") or 0)

    async def _stream(self, replica: Replica, request: GenerationRequest, prompt: Prompt, done_tokens: list[int],
                      done_text: str, max_tokens: int) -> AsyncGenerator[Piece, None]:
        body: dict[str, Any] = {"model": self._model, "max_tokens": max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, **sampling_body(request)}
        if request.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": request.json_schema}}
        if prompt.messages is not None:
            path = "/v1/chat/completions"
            messages = list(prompt.messages)
            prefix = request.assistant_prefix + done_text
            if prefix:
                if request.assistant_prefix:
                    messages = messages[:-1]
                messages.append({"role": "assistant", "content": prefix})
                body.update(add_generation_prompt=False, continue_final_message=True)
            body["messages"] = messages
        else:
            path = "/v1/completions"
            if prompt.tokens is not None:
                extra = await self._tokens_of_text(done_text) if done_text else []
                body["prompt"] = prompt.tokens + extra
            else:
                body["prompt"] = (prompt.text or "") + done_text
                body["add_special_tokens"] = False
        final: Piece | None = None  # the finishing event, held until the usage event that may follow it
        async with self.open_stream(replica, path, body) as response:
            async for event in sse_events(response):
                usage = event.get("usage") or {}
                if final is not None:
                    if usage:
                        final.usage_completion = usage.get("completion_tokens")
                        final.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                        break
                    continue
                choices = event.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason")
                if not finish:
                    if text:
                        yield Piece(text=str(text), count=1)
                    continue
                final = Piece(text=str(text), count=1 if text else 0,
                              stop_reason=FINISH.get(str(finish), "stop"))  # type: ignore[arg-type]
                if usage:
                    final.usage_completion = usage.get("completion_tokens")
                    final.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                    break
        if final is not None:
            yield final

    async def _tokens_of_text(self, text: str) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": False, "content": text,
                "add_special": False, "parse_special": False}
        return list((await self.call_any("/tokenize", body))["tokens"])
