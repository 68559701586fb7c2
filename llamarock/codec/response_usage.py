"""Token counts read from a runtime response as it passes by: headers, a Converse JSON ``usage``, or a stream's
last events (the InvokeModel stream's ``amazon-bedrock-invocationMetrics``, ConverseStream's ``metadata``).

Used where a response is relayed rather than produced: the auth middleware settling token quotas, and forwarding to
a ``region_servers`` peer.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from botocore.eventstream import EventStreamBuffer

# A Converse body larger than this is not kept for its ``usage`` (the counts are then unknown).
SNIFF_LIMIT = 4_000_000


@dataclass
class ResponseUsage:
    """Feed :meth:`start` the response headers and :meth:`body` each piece of the body; read :meth:`total`.

    ``error_code`` is set when a stream carried an exception frame (its error code, e.g. ``ModelStreamErrorException``).
    Never raises: a body it cannot parse leaves the counts unknown.
    """

    operation: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    error_code: str | None = None
    _json: bytearray = field(default_factory=bytearray)
    _events: EventStreamBuffer | None = None
    _broken: bool = False

    def start(self, headers: list[tuple[bytes, bytes]]) -> None:
        found = {k.lower(): v for k, v in headers}
        raw_in = found.get(b"x-amzn-bedrock-input-token-count")
        raw_out = found.get(b"x-amzn-bedrock-output-token-count")
        if raw_in is not None and raw_out is not None and raw_in.isdigit() and raw_out.isdigit():
            self.input_tokens, self.output_tokens = int(raw_in), int(raw_out)
        if found.get(b"content-type", b"").startswith(b"application/vnd.amazon.eventstream"):
            self._events = EventStreamBuffer()

    def body(self, chunk: bytes) -> None:
        if self._broken or not chunk:
            return
        try:
            if self._events is not None:
                self._events.add_data(chunk)
                for message in self._events:
                    self._event(message.headers, message.payload)
            elif self.operation == "Converse" and len(self._json) + len(chunk) <= SNIFF_LIMIT:
                self._json.extend(chunk)
        except Exception:
            self._broken = True

    def _event(self, headers: dict[str, Any], payload: bytes) -> None:
        event_type = headers.get(":event-type")
        if headers.get(":message-type") == "exception":
            member = str(headers.get(":exception-type") or "internalServerException")
            self.error_code = member[:1].upper() + member[1:]
        elif event_type == "metadata":
            usage = json.loads(payload).get("usage") or {}
            self.input_tokens, self.output_tokens = usage.get("inputTokens"), usage.get("outputTokens")
        elif event_type == "chunk":
            inner = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
            metrics = inner.get("amazon-bedrock-invocationMetrics")
            if metrics:
                self.input_tokens, self.output_tokens = metrics["inputTokenCount"], metrics["outputTokenCount"]

    def total(self) -> int | None:
        """Input plus output tokens, or None when the response did not say."""
        if self._json and self.input_tokens is None:
            try:
                usage = json.loads(self._json).get("usage") or {}
                self.input_tokens, self.output_tokens = usage.get("inputTokens"), usage.get("outputTokens")
            except (ValueError, AttributeError):
                return None
        if isinstance(self.input_tokens, int) and isinstance(self.output_tokens, int):
            return self.input_tokens + self.output_tokens
        return None
