"""Token counts read from a relayed runtime response as it passes by: Bedrock's token-count headers, a JSON body's
``usage``, or an event stream's last events (the InvokeModel stream's ``amazon-bedrock-invocationMetrics``,
ConverseStream's ``metadata``).

Only a relay needs this (forwarding to a ``region_servers`` peer): an answer produced here states its counts itself.
The counts are kept in the invocation record's terms (docs/observability.md): ``input_tokens`` the prompt tokens
computed, ``cache_read_tokens`` those read from the prefix cache. InvokeModel's header and stream metrics state the
whole prompt, so the cache reads they also state are taken off; Converse's ``usage`` already splits them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llamarock.codec.eventstream import CONTENT_TYPE, Decoder, decode_chunk

# A JSON body larger than this is not kept for its ``usage`` (the counts are then unknown).
SNIFF_LIMIT = 4_000_000


@dataclass
class ResponseUsage:
    """Feed :meth:`start` the response headers and :meth:`body` each piece of the body; read :meth:`total`.

    ``error_code`` is set when a stream carried an exception frame (its error code, e.g. ``ModelStreamErrorException``).
    Never raises: a body it cannot parse leaves the counts unknown.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    error_code: str | None = None
    _json: bytearray | None = None
    _events: Decoder | None = None
    _broken: bool = False

    def start(self, headers: dict[str, str]) -> None:
        found = {k.lower(): v for k, v in headers.items()}
        raw_in = found.get("x-amzn-bedrock-input-token-count")
        raw_out = found.get("x-amzn-bedrock-output-token-count")
        raw_cached = found.get("x-amzn-bedrock-cache-read-input-token-count")
        if raw_in is not None and raw_out is not None and raw_in.isdigit() and raw_out.isdigit():
            cached = int(raw_cached) if raw_cached is not None and raw_cached.isdigit() else None
            self._whole_prompt(int(raw_in), int(raw_out), cached)
        content_type = found.get("content-type", "")
        if content_type.startswith(CONTENT_TYPE):
            self._events = Decoder()
        elif content_type.startswith("application/json") and self.input_tokens is None:
            self._json = bytearray()

    def body(self, chunk: bytes) -> None:
        if self._broken or not chunk:
            return
        try:
            if self._events is not None:
                for headers, payload in self._events.feed(chunk):
                    self._event(headers, payload)
            elif self._json is not None and len(self._json) + len(chunk) <= SNIFF_LIMIT:
                self._json.extend(chunk)
        except (ValueError, KeyError, TypeError, AttributeError):
            self._broken = True

    def _event(self, headers: dict[str, Any], payload: bytes) -> None:
        event_type = headers.get(":event-type")
        if headers.get(":message-type") == "exception":
            member = str(headers.get(":exception-type") or "internalServerException")
            self.error_code = member[:1].upper() + member[1:]
        elif event_type == "metadata":
            self._converse_usage(json.loads(payload).get("usage") or {})
        elif event_type == "chunk":
            metrics = decode_chunk(payload).get("amazon-bedrock-invocationMetrics")
            if metrics:
                self._whole_prompt(metrics["inputTokenCount"], metrics["outputTokenCount"],
                                   metrics.get("cacheReadInputTokenCount"))

    def _whole_prompt(self, prompt: Any, output: Any, cached: Any) -> None:
        """InvokeModel's counts: the whole prompt, of which ``cached`` tokens were read from the cache."""
        cached = cached if isinstance(cached, int) else None
        self.input_tokens = prompt - (cached or 0) if isinstance(prompt, int) else None
        self.output_tokens, self.cache_read_tokens = output, cached

    def _converse_usage(self, usage: Any) -> None:
        self.input_tokens, self.output_tokens = usage.get("inputTokens"), usage.get("outputTokens")
        cached = usage.get("cacheReadInputTokens")
        self.cache_read_tokens = cached if isinstance(cached, int) else None

    def total(self) -> int | None:
        """Input plus output tokens, or None when the response did not say."""
        if self._json and self.input_tokens is None:
            try:
                self._converse_usage(json.loads(self._json).get("usage") or {})
            except (ValueError, AttributeError):
                return None
        if isinstance(self.input_tokens, int) and isinstance(self.output_tokens, int):
            return self.input_tokens + self.output_tokens
        return None
