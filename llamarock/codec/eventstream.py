"""``application/vnd.amazon.eventstream`` frame encoder (botocore only decodes; tests decode with it).

Layout (big-endian): total length, headers length, prelude CRC32, headers, payload, message CRC32. Bedrock uses
string headers only (type 7).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

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
