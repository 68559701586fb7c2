"""The model invocation logging configuration (PutModelInvocationLoggingConfiguration) in the metadata database.

Bedrock keeps one configuration per account and region; llamarock answers as one account, so there is one row per
region. It survives restarts and is shared by every server using the same database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store


class LoggingConfigRow(Base):
    __tablename__ = "model_invocation_logging"

    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    config: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoggingConfigStore(Store):
    """Get, put and delete the ``loggingConfig`` of a region. The engine is opened at first use."""

    def all(self) -> dict[str, dict[str, Any]]:
        """Every region's configuration."""
        with self.db.session() as session:
            return {row.region: json.loads(row.config) for row in session.scalars(select(LoggingConfigRow))}

    def get(self, region: str) -> dict[str, Any] | None:
        with self.db.session() as session:
            row = session.get(LoggingConfigRow, region)
            return json.loads(row.config) if row is not None else None

    def put(self, region: str, config: dict[str, Any]) -> None:
        with self.db.session(write=True) as session:
            row = session.get(LoggingConfigRow, region)
            if row is None:
                session.add(LoggingConfigRow(region=region, config=json.dumps(config), updated_at=datetime.now(UTC)))
            else:
                row.config = json.dumps(config)
                row.updated_at = datetime.now(UTC)

    def delete(self, region: str) -> None:
        with self.db.session(write=True) as session:
            row = session.get(LoggingConfigRow, region)
            if row is not None:
                session.delete(row)

