"""Process logging: text or one JSON object per line, and the access line written for every request.

``configure`` installs one stderr handler on the root logger; uvicorn is started without its own logging config, so
its lines go through the same handler. In JSON mode each line carries ``time``, ``level``, ``logger``,
``message`` and, where the log call knows them (``extra=``), the request fields in :data:`REQUEST_FIELDS`.
The access line (logger ``llamarock.access``) is written by the auth gate once a request is answered; the
unauthenticated probes ``/healthz`` and ``/metrics`` have none.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

REQUEST_FIELDS = (
    "request_id", "method", "path", "operation", "model", "principal", "status", "error_code", "latency_ms",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

access_log = logging.getLogger("llamarock.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; exceptions as one ``exception`` string, never extra lines."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str) -> None:
    """Replace the root logger's handlers with one stderr handler in ``log_format`` ('text' or 'json')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def printable(text: Any) -> Any:
    """Text with control characters escaped (``\\n``, ``\\x1b``...), so that a request's path can never write a
    line of its own into a text log."""
    if not isinstance(text, str) or text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def log_access(audit: dict[str, Any]) -> None:
    """The access line of one request, from the auth gate's audit record (camelCase keys)."""
    fields = {
        "request_id": audit.get("requestId"),
        "method": printable(audit.get("method")),
        "path": printable(audit.get("path")),
        "operation": audit.get("operation"),
        "model": audit.get("model"),
        "principal": audit.get("principal"),
        "status": audit.get("status"),
        "error_code": audit.get("errorCode"),
        "latency_ms": audit.get("latencyMs"),
    }
    summary = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in ("method", "path"))
    access_log.info("%s %s %s", fields["method"], fields["path"], summary, extra=fields)
