"""Model access records: the foundation-model agreements accepted (CreateFoundationModelAgreement) and the use case
submitted for model access (PutUseCaseForModelAccess). A self-hosted server needs neither to serve a model; they
are kept so that clients which file them read back what they filed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store


class AgreementRow(Base):
    __tablename__ = "model_agreements"

    model_id: Mapped[str] = mapped_column(String(140), primary_key=True)
    offer_token: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UseCaseRow(Base):
    __tablename__ = "model_access_use_case"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    form_data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelAccessStore(Store):
    """Agreements by model id, and the account's one use-case form."""

    def agreement(self, model_id: str) -> str | None:
        """The offer token of the model's agreement, or None."""
        with self.db.session() as session:
            row = session.get(AgreementRow, model_id)
            return row.offer_token if row is not None else None

    def agree(self, model_id: str, offer_token: str, at: datetime) -> None:
        with self.db.session(write=True) as session:
            row = session.get(AgreementRow, model_id)
            if row is None:
                session.add(AgreementRow(model_id=model_id, offer_token=offer_token, created_at=at))
            else:
                row.offer_token, row.created_at = offer_token, at

    def disagree(self, model_id: str) -> bool:
        """Delete the model's agreement; whether there was one."""
        with self.db.session(write=True) as session:
            row = session.get(AgreementRow, model_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def use_case(self) -> bytes | None:
        with self.db.session() as session:
            row = session.execute(select(UseCaseRow).where(UseCaseRow.id == 1)).scalars().first()
            return row.form_data if row is not None else None

    def put_use_case(self, form_data: bytes, at: datetime) -> None:
        with self.db.session(write=True) as session:
            row = session.get(UseCaseRow, 1)
            if row is None:
                session.add(UseCaseRow(id=1, form_data=form_data, updated_at=at))
            else:
                row.form_data, row.updated_at = form_data, at
