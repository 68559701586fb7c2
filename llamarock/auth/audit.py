"""The audit log: one JSON line per request under ``<data_dir>/logs/audit.jsonl``, rotated by size.

A record names who (principal ARN, access key id, how they authenticated), what (action, resource), the decision, the
status and the request id. It never holds secrets, signatures, tokens or prompt text: callers pass only the fields
below, and ``write`` drops anything else.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FIELDS = (
    "time", "requestId", "principal", "accessKeyId", "authType", "sourceIp", "userAgent", "region", "operation",
    "action", "resource", "decision", "status", "errorCode", "inputTokens", "outputTokens", "latencyMs",
)


class AuditLog:
    """Appends records; the file is opened per record, so the CLI, several workers and log rotation can share it
    and nothing stays open when an app is dropped without its shutdown running."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups

    def write(self, **record: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({k: record[k] for k in FIELDS if record.get(k) is not None}, ensure_ascii=False)
        if not self.path.exists():
            self.path.touch(mode=0o600)  # who called what, from where: for the operator's eyes only
        handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=self._max_bytes, backupCount=self._backups, encoding="utf-8"
        )
        try:
            handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))
        finally:
            handler.close()
