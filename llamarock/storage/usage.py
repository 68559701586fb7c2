"""The usage table: one row per invocation (``usage_records``) and its requestMetadata entries (``usage_tags``).
The recorder and report that use them are ``observability/usage.py``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from llamarock.storage.db import Base


class UsageRow(Base):
    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    day: Mapped[str] = mapped_column(String(10), index=True)
    principal: Mapped[str] = mapped_column(String(256), index=True)
    model_id: Mapped[str | None] = mapped_column(String(256), index=True, nullable=True)
    model_identifier: Mapped[str] = mapped_column(String(2048))
    deployment: Mapped[str | None] = mapped_column(String(128), nullable=True)
    operation: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    counted: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_metadata: Mapped[str] = mapped_column(Text)
    region: Mapped[str] = mapped_column(String(32))
    performance_tier: Mapped[str | None] = mapped_column(String(16), nullable=True)
    service_tier: Mapped[str | None] = mapped_column(String(16), nullable=True)  # None: rows from before tiers
    provisioned_model_arn: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    cost_picousd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tags: Mapped[list[UsageTagRow]] = relationship(cascade="all, delete-orphan")


class UsageTagRow(Base):
    """One requestMetadata entry of a usage record, apart so that ``--by tag`` is a plain join on any database."""

    __tablename__ = "usage_tags"

    usage_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), index=True)
