"""``engine = "llama-server"``: replicas of llama.cpp's server, in its native dialect.

The prompt llamarock rendered (or, for weights in a non-Llama chat format, the replica's own ``/apply-template`` of
the messages) is tokenized by the replica (``/tokenize``, special tokens parsed, BOS added once as the in-process
engine does) and sent to ``/completion`` as token ids, with ``cache_prompt`` (the replica's slot keeps the prefix)
and ``return_tokens`` (each event carries its token ids, so a resumption sends exactly the tokens already
delivered). Capabilities come from ``/props`` (context per slot, chat template, vision, slots); ``/health`` is the
health check; ``/slots`` is read by ``bench/router.py`` for the replicas' own prompt counters.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from llamarock.engines.remote import Piece, Prompt, RemoteEngine, sampling_body, sse_events
from llamarock.engines.router import Replica
from llamarock.errors import EngineError
from llamarock.types import GenerationRequest

STOP_REASONS = {"limit": "length", "eos": "stop", "word": "stop"}


class LlamaServerEngine(RemoteEngine):
    """Replicas of llama.cpp's ``llama-server`` (``/completion``, ``/tokenize``, ``/props``, ``/slots``)."""

    dialect = "llama-server"
    close_after_stream = True  # llama-server closes the connection after a stream; asking first keeps the pool clean

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bos: int | None = None

    async def _probe(self, replica: Replica) -> dict[str, Any]:
        props = await self.call(replica, "GET", "/props")
        settings = props.get("default_generation_settings") or {}
        caps = props.get("chat_template_caps") or {}
        if isinstance(caps, str):  # some builds send the caps as a Python-looking string
            caps = {"supports_tools": "'supports_tools': True" in caps}
        bos = props.get("bos_token")
        if bos and self._bos is None:
            tokens = (await self.call(replica, "POST", "/tokenize",
                                      {"content": bos, "add_special": False, "parse_special": True}))["tokens"]
            self._bos = tokens[0] if len(tokens) == 1 else None
        return {
            "model": props.get("model_alias") or props.get("model_path") or "",
            "context_length": settings.get("n_ctx") or props.get("n_ctx"),
            "chat_template": props.get("chat_template"),
            "images": bool((props.get("modalities") or {}).get("vision")),
            "tools": "template" if caps.get("supports_tools") else "prompt",
            "tokenizer": "/tokenize",
            "slots": props.get("total_slots"),
        }

    async def _health(self, replica: Replica) -> bool:
        response = await self.client.get(replica.url.rstrip("/") + "/health", headers=self.headers(replica),
                                         timeout=self.config.policy.health_timeout_s)
        return response.status_code == 200

    async def _prepare(self, request: GenerationRequest) -> Prompt:
        if request.images:
            raise EngineError(f"deployment {self.name}: the llama-server dialect sends no images; serve vision "
                              "models with engine = \"openai\" (chat with data-URL images)")
        if request.prompt is not None:
            text = request.prompt
        else:
            messages = [{"role": m.role, "content": m.content} for m in request.messages or ()]
            text = (await self.call_any("/apply-template", {"messages": messages}))["prompt"]
            text += request.assistant_prefix
        tokens = list((await self.call_any("/tokenize", {"content": text, "add_special": True,
                                                        "parse_special": True}))["tokens"])
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens = tokens[1:]
        return Prompt(count=len(tokens), tokens=tokens)

    async def _stream(self, replica: Replica, request: GenerationRequest, prompt: Prompt, done_tokens: list[int],
                      done_text: str, max_tokens: int) -> AsyncGenerator[Piece, None]:
        assert prompt.tokens is not None
        body = {
            "prompt": prompt.tokens + done_tokens, "n_predict": max_tokens, "stream": True, "return_tokens": True,
            "cache_prompt": True, "top_k": 0, "min_p": 0.0, **sampling_body(request),
        }
        if request.json_schema is not None:
            body["json_schema"] = request.json_schema
        async with self.open_stream(replica, "/completion", body) as response:
            async for event in sse_events(response):
                tokens = [int(t) for t in event.get("tokens") or ()]
                stop = STOP_REASONS.get(str(event.get("stop_type"))) if event.get("stop") else None
                if event.get("stop") and stop is None:
                    stop = "stop"
                timings = event.get("timings") or {}
                cached = timings.get("cache_n") if stop else None
                yield Piece(text=str(event.get("content") or ""), tokens=tokens, count=len(tokens),
                            stop_reason=stop,  # type: ignore[arg-type]
                            cached_tokens=int(cached) if cached is not None else None)
                if stop:
                    return
