"""The guardrail store (CreateGuardrail and friends): one row per guardrail version, the working DRAFT and the
numbered versions CreateGuardrailVersion snapshots from it (immutable once made).

A row keeps the policies as GetGuardrail shows them (JSON), the blocked messages and the rest of the guardrail's
settings. Deleting a guardrail removes all its rows; deleting a version, that row. All times are UTC.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, Store

DRAFT = "DRAFT"


class GuardrailRow(Base):
    __tablename__ = "guardrails"

    guardrail_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    version: Mapped[str] = mapped_column(String(8), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), index=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(50), index=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    policies: Mapped[str] = mapped_column(Text)
    blocked_input: Mapped[str] = mapped_column(String(500))
    blocked_outputs: Mapped[str] = mapped_column(String(500))
    kms_key_id: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    cross_region: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    next_version: Mapped[int] = mapped_column(Integer, default=1)


@dataclass(frozen=True)
class Guardrail:
    """One version of a guardrail (``version`` DRAFT or a number). ``policies`` are GetGuardrail's policy members;
    ``next_version`` (DRAFT only) is the number CreateGuardrailVersion gives next; ``cross_region`` the guardrail
    profile its ``crossRegionConfig`` named."""

    guardrail_id: str
    version: str
    arn: str
    region: str
    name: str
    description: str | None
    policies: dict[str, Any]
    blocked_input: str
    blocked_outputs: str
    kms_key_id: str | None
    cross_region: str | None
    created_at: datetime
    updated_at: datetime
    client_token: str | None
    request_digest: str
    next_version: int = 1


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _guardrail(row: GuardrailRow) -> Guardrail:
    return Guardrail(
        row.guardrail_id, row.version, row.arn, row.region, row.name, row.description, json.loads(row.policies),
        row.blocked_input, row.blocked_outputs, row.kms_key_id, row.cross_region, _utc(row.created_at),
        _utc(row.updated_at), row.client_token, row.request_digest, row.next_version,
    )


def _row(guardrail: Guardrail) -> GuardrailRow:
    return GuardrailRow(
        guardrail_id=guardrail.guardrail_id, version=guardrail.version, arn=guardrail.arn, region=guardrail.region,
        name=guardrail.name, description=guardrail.description, policies=json.dumps(guardrail.policies),
        blocked_input=guardrail.blocked_input, blocked_outputs=guardrail.blocked_outputs,
        kms_key_id=guardrail.kms_key_id, cross_region=guardrail.cross_region, created_at=guardrail.created_at,
        updated_at=guardrail.updated_at, client_token=guardrail.client_token,
        request_digest=guardrail.request_digest, next_version=guardrail.next_version,
    )


class GuardrailStore(Store):
    """Guardrail versions in the metadata database. ``lock`` serialises check-then-write sequences (a unique name,
    an idempotency token, the next version number) within the process."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def insert(self, guardrail: Guardrail) -> None:
        with self.db.session(write=True) as session:
            session.add(_row(guardrail))

    def all(self) -> list[Guardrail]:
        """Every version of every guardrail, oldest first."""
        with self.db.session() as session:
            rows = session.execute(select(GuardrailRow).order_by(GuardrailRow.created_at, GuardrailRow.guardrail_id,
                                                                 GuardrailRow.version))
            return [_guardrail(row) for row in rows.scalars()]

    def find_token(self, region: str, token: str) -> Guardrail | None:
        """The guardrail a CreateGuardrail with this token made (its DRAFT)."""
        with self.db.session() as session:
            row = session.execute(select(GuardrailRow).where(
                GuardrailRow.region == region, GuardrailRow.client_token == token, GuardrailRow.version == DRAFT,
            )).scalars().first()
            return _guardrail(row) if row is not None else None

    def find_version_token(self, guardrail_id: str, token: str) -> Guardrail | None:
        """The version a CreateGuardrailVersion with this token made."""
        with self.db.session() as session:
            row = session.execute(select(GuardrailRow).where(
                GuardrailRow.guardrail_id == guardrail_id, GuardrailRow.client_token == token,
                GuardrailRow.version != DRAFT,
            )).scalars().first()
            return _guardrail(row) if row is not None else None

    def name_taken(self, region: str, name: str, other_than: str | None = None) -> bool:
        with self.db.session() as session:
            found = session.execute(select(GuardrailRow.guardrail_id).where(
                GuardrailRow.region == region, GuardrailRow.name == name, GuardrailRow.version == DRAFT,
            )).scalars().all()
            return any(guardrail_id != other_than for guardrail_id in found)

    def replace(self, guardrail: Guardrail) -> None:
        """Write a version over the stored one (UpdateGuardrail's DRAFT, the DRAFT's next version number)."""
        with self.db.session(write=True) as session:
            session.merge(_row(guardrail))

    def add_version(self, draft: Guardrail, version: Guardrail) -> None:
        """Write a new numbered version and the DRAFT that now counts it, in one transaction."""
        with self.db.session(write=True) as session:
            session.merge(_row(draft))
            session.add(_row(version))

    def delete(self, guardrail_id: str, version: str | None = None) -> None:
        """Remove one version, or (``version`` None) the whole guardrail."""
        with self.db.session(write=True) as session:
            query = delete(GuardrailRow).where(GuardrailRow.guardrail_id == guardrail_id)
            if version is not None:
                query = query.where(GuardrailRow.version == version)
            session.execute(query)
