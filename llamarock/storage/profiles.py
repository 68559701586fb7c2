"""The application inference profile store (CreateInferenceProfile and friends).

An application inference profile copies its models from a foundation model or a system-defined inference profile
(``source_arn``) and routes invocations to them; it lives in one region. Deleting one removes its row (usage
records keep its ARN). All times are UTC.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, Store


class ProfileRow(Base):
    __tablename__ = "application_inference_profiles"

    profile_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_id: Mapped[str] = mapped_column(String(256))
    source_arn: Mapped[str] = mapped_column(String(2048))
    models: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class ApplicationProfile:
    """One application inference profile. ``model_id`` is the catalog model it serves, ``source_arn`` what it was
    copied from (a foundation-model ARN or a system-defined inference profile's ARN), ``models`` the foundation-model
    ARNs of its destination regions."""

    profile_id: str
    arn: str
    region: str
    name: str
    description: str | None
    model_id: str
    source_arn: str
    models: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    client_token: str | None
    request_digest: str


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _profile(row: ProfileRow) -> ApplicationProfile:
    return ApplicationProfile(
        row.profile_id, row.arn, row.region, row.name, row.description, row.model_id, row.source_arn,
        tuple(json.loads(row.models)), _utc(row.created_at), _utc(row.updated_at), row.client_token,
        row.request_digest,
    )


class ProfileStore(Store):
    """Application inference profiles in the metadata database. ``lock`` serialises check-then-write sequences
    (a unique name, an idempotency token) within the process."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def insert(self, profile: ApplicationProfile) -> None:
        with self.db.session(write=True) as session:
            session.add(ProfileRow(
                profile_id=profile.profile_id, arn=profile.arn, region=profile.region, name=profile.name,
                description=profile.description, model_id=profile.model_id, source_arn=profile.source_arn,
                models=json.dumps(list(profile.models)), created_at=profile.created_at,
                updated_at=profile.updated_at, client_token=profile.client_token,
                request_digest=profile.request_digest,
            ))

    def all(self) -> list[ApplicationProfile]:
        """Every profile, oldest first."""
        with self.db.session() as session:
            rows = session.execute(select(ProfileRow).order_by(ProfileRow.created_at, ProfileRow.profile_id))
            return [_profile(row) for row in rows.scalars()]

    def find_token(self, region: str, token: str) -> ApplicationProfile | None:
        with self.db.session() as session:
            row = session.execute(select(ProfileRow).where(
                ProfileRow.region == region, ProfileRow.client_token == token
            )).scalars().first()
            return _profile(row) if row is not None else None

    def name_taken(self, region: str, name: str) -> bool:
        with self.db.session() as session:
            return session.execute(select(ProfileRow.profile_id).where(
                ProfileRow.region == region, ProfileRow.name == name
            )).scalars().first() is not None

    def delete(self, profile_id: str) -> None:
        with self.db.session(write=True) as session:
            row = session.get(ProfileRow, profile_id)
            if row is not None:
                session.delete(row)
