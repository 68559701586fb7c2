"""The custom model deployments store: CreateCustomModelDeployment's on-demand endpoints for custom models.

A deployment names one custom model (``model_arn``); invoking the deployment's ARN runs that model. UpdateCustomModel
Deployment points it at another custom model (``update_*`` record the last update). All times are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store
from llamarock.storage.provisioned import utc

Status = Literal["Creating", "Active", "Failed"]


class CustomModelDeploymentRow(Base):
    __tablename__ = "custom_model_deployments"

    deployment_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    model_arn: Mapped[str] = mapped_column(String(1011), index=True)
    status: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_model_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True)
    update_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    client_token: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)


@dataclass(frozen=True)
class CustomModelDeployment:
    """A custom model deployment as stored."""

    deployment_id: str
    arn: str
    region: str
    name: str
    model_arn: str
    status: Status
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    failure_message: str | None = None
    update_model_arn: str | None = None
    update_status: str | None = None
    client_token: str | None = None


def _deployment(row: CustomModelDeploymentRow) -> CustomModelDeployment:
    return CustomModelDeployment(
        row.deployment_id, row.arn, row.region, row.name, row.model_arn, row.status,  # type: ignore[arg-type]
        utc(row.created_at), utc(row.updated_at), row.description, row.failure_message, row.update_model_arn,
        row.update_status, row.client_token,
    )


class CustomModelDeploymentStore(Store):
    """Custom model deployments in the metadata database."""

    def insert(self, deployment: CustomModelDeployment) -> None:
        with self.db.session(write=True) as session:
            session.add(CustomModelDeploymentRow(**deployment.__dict__))

    def find(self, region: str, identifier: str) -> CustomModelDeployment | None:
        """A deployment of ``region`` by ARN or name."""
        with self.db.session() as session:
            for column in (CustomModelDeploymentRow.arn, CustomModelDeploymentRow.name):
                row = session.execute(select(CustomModelDeploymentRow).where(
                    CustomModelDeploymentRow.region == region, column == identifier)).scalars().first()
                if row is not None:
                    return _deployment(row)
        return None

    def all(self, region: str) -> list[CustomModelDeployment]:
        """Every deployment of ``region``, oldest first; callers filter, sort and page."""
        with self.db.session() as session:
            query = select(CustomModelDeploymentRow).where(CustomModelDeploymentRow.region == region).order_by(
                CustomModelDeploymentRow.created_at)
            return [_deployment(row) for row in session.execute(query).scalars()]

    def update(self, deployment: CustomModelDeployment, **changes: Any) -> CustomModelDeployment:
        updated = replace(deployment, **changes)
        with self.db.session(write=True) as session:
            row = session.get(CustomModelDeploymentRow, deployment.deployment_id)
            if row is None:
                raise KeyError(deployment.deployment_id)
            for key, value in changes.items():
                setattr(row, key, value)
        return updated

    def delete(self, deployment_id: str) -> bool:
        with self.db.session(write=True) as session:
            row = session.get(CustomModelDeploymentRow, deployment_id)
            if row is None:
                return False
            session.delete(row)
            return True
