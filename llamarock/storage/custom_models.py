"""The custom-model store: models made by a customization job (a LoRA adapter over a catalog base model) or by
CreateCustomModel, as the ``bedrock`` control plane lists them.

A custom model's weights are a LoRA adapter: ``adapter_dir`` is a Hugging Face/peft adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``) under the data dir; ``lora_gguf`` is the same adapter
converted to llama.cpp's GGUF LoRA format once something converted it (None until then). Everything Bedrock shows
of a custom model that the store need not query (hyperparameters, data configs, metrics, the job's output location)
is kept as JSON in ``details``. All times are UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store
from llamarock.storage.provisioned import utc

Status = Literal["Creating", "Active", "Failed"]


class CustomModelRow(Base):
    __tablename__ = "custom_models"

    model_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    base_model_id: Mapped[str] = mapped_column(String(256))
    base_model_arn: Mapped[str] = mapped_column(String(1011))
    customization_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    job_arn: Mapped[str | None] = mapped_column(String(1011), nullable=True, index=True)
    adapter_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    lora_gguf: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    client_token: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    details: Mapped[str] = mapped_column(Text, default="{}")


@dataclass(frozen=True)
class CustomModel:
    """A custom model as stored. ``model_id`` is the last part of its ARN
    (``arn:aws:bedrock:<region>:<account>:custom-model/<base model id>/<model_id>``); ``adapter_dir`` and
    ``lora_gguf`` are paths relative to the data dir."""

    model_id: str
    arn: str
    region: str
    name: str
    base_model_id: str
    base_model_arn: str
    customization_type: str
    status: Status
    created_at: datetime
    job_arn: str | None = None
    adapter_dir: str | None = None
    lora_gguf: str | None = None
    failure_message: str | None = None
    client_token: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _model(row: CustomModelRow) -> CustomModel:
    return CustomModel(
        row.model_id, row.arn, row.region, row.name, row.base_model_id, row.base_model_arn, row.customization_type,
        row.status, utc(row.created_at), row.job_arn, row.adapter_dir, row.lora_gguf,  # type: ignore[arg-type]
        row.failure_message, row.client_token, json.loads(row.details or "{}"),
    )


class CustomModelStore(Store):
    """Custom models in the metadata database."""

    def insert(self, model: CustomModel) -> None:
        with self.db.session(write=True) as session:
            session.add(CustomModelRow(
                model_id=model.model_id, arn=model.arn, region=model.region, name=model.name,
                base_model_id=model.base_model_id, base_model_arn=model.base_model_arn,
                customization_type=model.customization_type, status=model.status, job_arn=model.job_arn,
                adapter_dir=model.adapter_dir, lora_gguf=model.lora_gguf, failure_message=model.failure_message,
                created_at=model.created_at, client_token=model.client_token, details=json.dumps(model.details),
            ))

    def find(self, region: str, identifier: str) -> CustomModel | None:
        """A custom model of ``region`` by ARN, name or id (in that order)."""
        with self.db.session() as session:
            for column in (CustomModelRow.arn, CustomModelRow.name, CustomModelRow.model_id):
                row = session.execute(select(CustomModelRow).where(
                    CustomModelRow.region == region, column == identifier)).scalars().first()
                if row is not None:
                    return _model(row)
        return None

    def all(self, region: str | None = None) -> list[CustomModel]:
        """Every custom model (of ``region`` when given), oldest first; callers filter, sort and page."""
        with self.db.session() as session:
            query = select(CustomModelRow).order_by(CustomModelRow.created_at)
            if region is not None:
                query = query.where(CustomModelRow.region == region)
            return [_model(row) for row in session.execute(query).scalars()]

    def update(self, model: CustomModel, **changes: Any) -> CustomModel:
        """Store ``changes`` (any CustomModel fields but the id) and return the model as it is now."""
        updated = replace(model, **changes)
        with self.db.session(write=True) as session:
            row = session.get(CustomModelRow, model.model_id)
            if row is None:
                raise KeyError(model.model_id)
            for key, value in changes.items():
                setattr(row, key, json.dumps(value) if key == "details" else value)
        return updated

    def delete(self, model_id: str) -> bool:
        with self.db.session(write=True) as session:
            row = session.get(CustomModelRow, model_id)
            if row is None:
                return False
            session.delete(row)
            return True
