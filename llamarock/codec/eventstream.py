"""``application/vnd.amazon.eventstream``: the frame encoder (botocore only decodes), and the decoding a relay needs
(whole frames, and messages through botocore's own parser).

Layout (big-endian): total length, headers length, prelude CRC32, headers, payload, message CRC32. Bedrock uses
string headers only (type 7).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError

from llamarock.errors import BedrockError

CONTENT_TYPE = "application/vnd.amazon.eventstream"


def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("!B", len(n)) + n + b"\x07" + struct.pack("!H", len(v)) + v


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    header_bytes = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack("!II", 16 + len(header_bytes) + len(payload), len(header_bytes))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + header_bytes + payload
    return message + struct.pack("!I", zlib.crc32(message))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """An event message whose payload is the event shape as JSON."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, _json(payload))


def chunk_event(body: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream ``chunk``: the model-native JSON, base64-encoded in ``bytes``."""
    return event("chunk", {"bytes": base64.b64encode(_json(body)).decode()})


def exception_event(error: BedrockError) -> bytes:
    """An exception message; ``:exception-type`` is the union member name (lowerCamel error code)."""
    member = error.code[0].lower() + error.code[1:]
    headers = {":exception-type": member, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, _json(error.body()))


# An event-stream frame starts with its total length (4 bytes) and is at least prelude + CRCs long.
_MIN_FRAME = 16


def take_frames(pending: bytearray) -> Iterator[bytes]:
    """Take every complete frame off the front of ``pending`` (bytes that are not an event stream pass as they are).

    Relays forward whole frames only, so that a failure midway can still end the stream with an exception frame.
    """
    while len(pending) >= 4:
        total = int.from_bytes(pending[:4], "big")
        if total < _MIN_FRAME:
            total = len(pending)
        if len(pending) < total:
            return
        frame = bytes(pending[:total])
        del pending[:total]
        yield frame


class Decoder:
    """Decodes frames as they arrive (botocore's parser): ``feed`` bytes, get (headers, payload) messages."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        """The messages completed by ``data``; ValueError when the bytes are not a valid event stream."""
        self._buffer.add_data(data)
        try:
            return [(message.headers, message.payload) for message in self._buffer]
        except ParserError as error:
            raise ValueError(f"not a valid event stream: {error}") from error


def decode_chunk(payload: bytes) -> dict[str, Any]:
    """The model-native JSON body of an InvokeModelWithResponseStream ``chunk`` event's payload."""
    body = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
    if not isinstance(body, dict):
        raise ValueError("a chunk's bytes are not a JSON object")
    return body
