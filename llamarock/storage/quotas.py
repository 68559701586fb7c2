"""Quota buckets shared by every server on one metadata database (``shared_quotas``): the token buckets of
``auth/quotas.py`` as rows, each change one conditional ``UPDATE`` so that gateways admitting at the same moment can
never together take more than a bucket holds (PostgreSQL re-checks the condition on the locked row; SQLite writes one
at a time). Times are seconds since the epoch, from the servers' clocks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, String, Table, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store


class QuotaBucketRow(Base):
    __tablename__ = "quota_buckets"

    principal: Mapped[str] = mapped_column(String(256), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    per_minute: Mapped[int] = mapped_column(Integer, primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    last_used: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class BucketKey:
    principal: str
    model: str
    kind: str
    per_minute: int


@dataclass(frozen=True)
class BucketState:
    key: BucketKey
    used: int
    last_used: float


TABLE: Table = QuotaBucketRow.__table__  # type: ignore[assignment]


class QuotaBucketStore(Store):
    """Token buckets in the metadata database; a bucket holds ``per_minute`` tokens when full and refills
    continuously."""

    def _bounds(self) -> tuple[Any, Any]:
        if self.db.engine.dialect.name == "sqlite":
            return func.min, func.max  # SQLite's scalar min()/max() of several arguments
        return func.least, func.greatest

    def _where(self, key: BucketKey) -> Any:
        return and_(TABLE.c.principal == key.principal, TABLE.c.model == key.model, TABLE.c.kind == key.kind,
                    TABLE.c.per_minute == key.per_minute)

    def _refilled(self, key: BucketKey, now: float) -> Any:
        least, greatest = self._bounds()
        return least(float(key.per_minute),
                     TABLE.c.tokens + greatest(0.0, now - TABLE.c.updated) * (key.per_minute / 60.0))

    def take(self, key: BucketKey, amount: float, now: float) -> bool:
        """Take ``amount`` if the bucket holds it (or, for more than a minute's allowance, if it is full)."""
        need = min(amount, float(key.per_minute))
        refilled = self._refilled(key, now)
        with self.db.session(write=True) as session:
            for _ in range(2):
                taken = session.execute(update(TABLE).where(self._where(key), refilled >= need).values(
                    tokens=refilled - amount, updated=now, last_used=now))
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    return True
                if session.execute(select(TABLE.c.tokens).where(self._where(key))).first() is not None:
                    return False
                dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
                made = session.execute(dialect.insert(TABLE).values(
                    principal=key.principal, model=key.model, kind=key.kind, per_minute=key.per_minute,
                    tokens=float(key.per_minute) - amount, updated=now, last_used=now,
                ).on_conflict_do_nothing().returning(TABLE.c.kind))
                if made.first() is not None:  # (rowcount is not reliable here: -1 on PostgreSQL)
                    return True
                # Another server made the bucket meanwhile: take from it as it is now.
        return False

    def give_back(self, key: BucketKey, amount: float, now: float) -> None:
        """Return ``amount`` (negative: charge it; the bucket may go into debt), never above a full bucket."""
        least, _ = self._bounds()
        refilled = self._refilled(key, now)
        with self.db.session(write=True) as session:
            session.execute(update(TABLE).where(self._where(key)).values(
                tokens=least(float(key.per_minute), refilled + amount), updated=now))

    def states(self, now: float) -> list[BucketState]:
        """Every bucket: what it has used of its minute (taken and not yet refilled) and when it was last used."""
        with self.db.session() as session:
            rows = session.execute(select(TABLE)).all()
        states = []
        for row in rows:
            key = BucketKey(row.principal, row.model, row.kind, row.per_minute)
            tokens = min(float(row.per_minute), row.tokens + max(0.0, now - row.updated) * row.per_minute / 60.0)
            states.append(BucketState(key, max(0, math.ceil(row.per_minute - tokens)), row.last_used))
        return states
