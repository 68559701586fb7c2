"""The provisioned-throughput store: provisioned models and the intervals they are billed for.

A provisioned model is kept after it is deleted (``deleted_at`` set), so that the cost it accrued stays reportable;
lookups and listings see only the live ones. Each billing row is one interval during which a provisioned model held
``units`` model units of one model: it opens when the model goes InService and closes when it is deleted or moves to
another model. All times are UTC.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import DateTime, Integer, String, Text, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from llamarock.storage.db import Base, Database, ListFilter, Store

Status = Literal["Creating", "InService", "Updating", "Failed"]


class ProvisionedModelRow(Base):
    __tablename__ = "provisioned_models"

    provisioned_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(256), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    model_id: Mapped[str] = mapped_column(String(256))
    model_arn: Mapped[str] = mapped_column(String(1011))
    desired_model_id: Mapped[str] = mapped_column(String(256))
    desired_model_arn: Mapped[str] = mapped_column(String(1011))
    foundation_model_arn: Mapped[str] = mapped_column(String(1011))
    units: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    commitment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    commitment_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    tags: Mapped[str] = mapped_column(Text, default="[]")
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)


class BillingRow(Base):
    __tablename__ = "provisioned_billing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provisioned_id: Mapped[str] = mapped_column(String(12), index=True)
    model_id: Mapped[str] = mapped_column(String(256))
    units: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class ProvisionedModel:
    """A provisioned model as stored. ``model_id`` is the catalog id serving it now; ``desired_*`` what an update
    moves it to (equal to the current model when no update is pending); ``ready_at`` when Creating/Updating ends."""

    provisioned_id: str
    arn: str
    region: str
    name: str
    model_id: str
    model_arn: str
    desired_model_id: str
    desired_model_arn: str
    foundation_model_arn: str
    units: int
    status: Status
    commitment: str | None
    commitment_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None
    failure_message: str | None
    client_token: str | None
    request_digest: str
    tags: tuple[tuple[str, str], ...]
    deleted_at: datetime | None = None


@dataclass(frozen=True)
class BillingInterval:
    """``units`` model units of ``model_id`` held from ``started_at`` until ``ended_at`` (None: still held)."""

    provisioned_id: str
    model_id: str
    units: int
    started_at: datetime
    ended_at: datetime | None


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return utc(value) if value is not None else None


def _model(row: ProvisionedModelRow) -> ProvisionedModel:
    tags = tuple((str(k), str(v)) for k, v in json.loads(row.tags or "[]"))
    return ProvisionedModel(
        row.provisioned_id, row.arn, row.region, row.name, row.model_id, row.model_arn, row.desired_model_id,
        row.desired_model_arn, row.foundation_model_arn, row.units, row.status,  # type: ignore[arg-type]
        row.commitment, _utc_or_none(row.commitment_expires_at), utc(row.created_at), utc(row.updated_at),
        _utc_or_none(row.ready_at), row.failure_message, row.client_token, row.request_digest, tags,
        _utc_or_none(row.deleted_at),
    )


def _copy(model: ProvisionedModel, row: ProvisionedModelRow) -> None:
    row.name, row.model_id, row.model_arn = model.name, model.model_id, model.model_arn
    row.desired_model_id, row.desired_model_arn = model.desired_model_id, model.desired_model_arn
    row.foundation_model_arn, row.units, row.status = model.foundation_model_arn, model.units, model.status
    row.updated_at, row.ready_at, row.failure_message = model.updated_at, model.ready_at, model.failure_message


class ProvisionedStore(Store):
    """Provisioned models and their billing in the metadata database. The engine is opened at first use.

    ``lock`` serialises check-then-write sequences (a unique name, an idempotency token) within the process.
    """

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.lock = threading.Lock()

    def insert(self, model: ProvisionedModel) -> None:
        with self.db.session(write=True) as session:
            session.add(ProvisionedModelRow(
                provisioned_id=model.provisioned_id, arn=model.arn, region=model.region, name=model.name,
                model_id=model.model_id, model_arn=model.model_arn, desired_model_id=model.desired_model_id,
                desired_model_arn=model.desired_model_arn, foundation_model_arn=model.foundation_model_arn,
                units=model.units, status=model.status, commitment=model.commitment,
                commitment_expires_at=model.commitment_expires_at, created_at=model.created_at,
                updated_at=model.updated_at, ready_at=model.ready_at, failure_message=model.failure_message,
                client_token=model.client_token, request_digest=model.request_digest,
                tags=json.dumps([list(t) for t in model.tags]),
            ))

    def get(self, provisioned_id: str) -> ProvisionedModel | None:
        """A live provisioned model by its 12-character id."""
        with self.db.session() as session:
            row = session.get(ProvisionedModelRow, provisioned_id)
            return _model(row) if row is not None and row.deleted_at is None else None

    def find(self, region: str, identifier: str) -> ProvisionedModel | None:
        """A live provisioned model of ``region`` by ARN, name or id (in that order)."""
        live = (ProvisionedModelRow.region == region) & ProvisionedModelRow.deleted_at.is_(None)
        with self.db.session() as session:
            for column in (ProvisionedModelRow.arn, ProvisionedModelRow.name, ProvisionedModelRow.provisioned_id):
                row = session.execute(select(ProvisionedModelRow).where(live, column == identifier)).scalars().first()
                if row is not None:
                    return _model(row)
        return None

    def find_token(self, region: str, token: str) -> ProvisionedModel | None:
        """The live provisioned model a create with this client request token made."""
        with self.db.session() as session:
            row = session.execute(select(ProvisionedModelRow).where(
                ProvisionedModelRow.region == region, ProvisionedModelRow.client_token == token,
                ProvisionedModelRow.deleted_at.is_(None),
            )).scalars().first()
            return _model(row) if row is not None else None

    def live(self) -> list[ProvisionedModel]:
        """Every live provisioned model, oldest first."""
        with self.db.session() as session:
            rows = session.execute(
                select(ProvisionedModelRow).where(ProvisionedModelRow.deleted_at.is_(None))
                .order_by(ProvisionedModelRow.created_at)
            ).scalars()
            return [_model(row) for row in rows]

    def page(self, query: ListFilter) -> tuple[list[ProvisionedModel], bool]:
        """One page of live provisioned models and whether more follow."""
        statement = select(ProvisionedModelRow).where(
            ProvisionedModelRow.region == query.region, ProvisionedModelRow.deleted_at.is_(None)
        )
        if query.status is not None:
            statement = statement.where(ProvisionedModelRow.status == query.status)
        if query.model_arn is not None:
            statement = statement.where(or_(
                ProvisionedModelRow.model_arn == query.model_arn,
                ProvisionedModelRow.foundation_model_arn == query.model_arn,
            ))
        if query.name_contains is not None:
            statement = statement.where(ProvisionedModelRow.name.contains(query.name_contains, autoescape=True))
        if query.created_after is not None:
            statement = statement.where(ProvisionedModelRow.created_at > query.created_after)
        if query.created_before is not None:
            statement = statement.where(ProvisionedModelRow.created_at < query.created_before)
        created = ProvisionedModelRow.created_at
        statement = statement.order_by(created.desc() if query.descending else created.asc(),
                                       ProvisionedModelRow.provisioned_id)
        with self.db.session() as session:
            rows = list(session.execute(statement.offset(query.offset).limit(query.limit + 1)).scalars())
            return [_model(row) for row in rows[: query.limit]], len(rows) > query.limit

    def name_taken(self, region: str, name: str, excluding: str | None = None) -> bool:
        with self.db.session() as session:
            row = session.execute(select(ProvisionedModelRow.provisioned_id).where(
                ProvisionedModelRow.region == region, ProvisionedModelRow.name == name,
                ProvisionedModelRow.deleted_at.is_(None),
            )).scalars().first()
            return row is not None and row != excluding

    def save(self, model: ProvisionedModel, *, bill_from: datetime | None = None) -> None:
        """Write a provisioned model's changed fields. With ``bill_from``, its open billing interval (if any) ends
        then and a new one starts for its (new) model and units: it went InService, or moved to another model."""
        with self.db.session(write=True) as session:
            row = session.get(ProvisionedModelRow, model.provisioned_id)
            if row is None:
                return
            _copy(model, row)
            if bill_from is not None:
                self._close_billing(session, model.provisioned_id, bill_from)
                session.add(BillingRow(provisioned_id=model.provisioned_id, model_id=model.model_id,
                                       units=model.units, started_at=bill_from))

    def delete(self, provisioned_id: str, at: datetime) -> None:
        """Mark a provisioned model deleted and end its billing."""
        with self.db.session(write=True) as session:
            row = session.get(ProvisionedModelRow, provisioned_id)
            if row is None:
                return
            row.deleted_at = at
            self._close_billing(session, provisioned_id, at)

    @staticmethod
    def _close_billing(session: Session, provisioned_id: str, at: datetime) -> None:
        for bill in session.execute(select(BillingRow).where(
            BillingRow.provisioned_id == provisioned_id, BillingRow.ended_at.is_(None)
        )).scalars():
            bill.ended_at = at

    def billing(self, start: datetime, end: datetime) -> list[BillingInterval]:
        """The billing intervals overlapping [start, end), of live and deleted provisioned models alike."""
        with self.db.session() as session:
            rows = session.execute(select(BillingRow).where(
                BillingRow.started_at < end, or_(BillingRow.ended_at.is_(None), BillingRow.ended_at > start)
            ).order_by(BillingRow.id)).scalars()
            return [
                BillingInterval(r.provisioned_id, r.model_id, r.units, utc(r.started_at), _utc_or_none(r.ended_at))
                for r in rows
            ]

    def names(self, provisioned_ids: set[str]) -> dict[str, tuple[str, str]]:
        """ARN and name of provisioned models by id, deleted ones included (for cost reports)."""
        if not provisioned_ids:
            return {}
        with self.db.session() as session:
            rows = session.execute(select(ProvisionedModelRow).where(
                ProvisionedModelRow.provisioned_id.in_(provisioned_ids)
            )).scalars()
            return {r.provisioned_id: (r.arn, r.name) for r in rows}
