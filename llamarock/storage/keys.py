"""The key store: principals (an IAM-user-like name with a policy and quotas) and their credentials.

Each access key has an id and a secret (SigV4); the secret is stored encrypted with the data dir's key file, because
the server needs it to recompute signatures. A key may also carry a Bedrock API key (a bearer token), of which only
a SHA-256 digest is stored: it is compared, never recomputed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Database, Store
from llamarock.storage.secrets import SecretBox

PRINCIPAL_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
BEARER_PREFIX = "ABSK"


class PrincipalRow(Base):
    __tablename__ = "principals"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AccessKeyRow(Base):
    __tablename__ = "access_keys"

    access_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(ForeignKey("principals.name"), index=True)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    bearer_sha256: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="Active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class StoredPrincipal:
    """A principal as stored: ``policy`` is the policy document (None: full access), quotas None: the defaults."""

    name: str
    policy: dict[str, Any] | None
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True)
class CreatedKey:
    """What ``keys create`` hands out once; the secret and the bearer token are not shown again."""

    principal: str
    access_key_id: str
    secret_access_key: str
    bearer_token: str | None


@dataclass(frozen=True)
class KeyInfo:
    """One row of ``keys list``: never the secret."""

    access_key_id: str
    principal: str
    status: str
    bearer: bool
    created_at: str
    rpm: int | None
    tpm: int | None
    has_policy: bool


def bearer_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _principal(row: PrincipalRow) -> StoredPrincipal:
    return StoredPrincipal(row.name, json.loads(row.policy) if row.policy else None, row.rpm, row.tpm)


class KeyStore(Store):
    """Principals and keys in the metadata database. The engine is opened at first use."""

    def __init__(self, database: Database, data_dir: Path) -> None:
        super().__init__(database)
        self._box = SecretBox(data_dir)

    def create_key(
        self,
        principal: str,
        *,
        policy: dict[str, Any] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        bearer: bool = False,
    ) -> CreatedKey:
        """A new key for ``principal``, created if new; a policy or quota given replaces the principal's."""
        if not PRINCIPAL_NAME.match(principal):
            raise ValueError("a principal name is 1-64 characters of letters, digits and +=,.@_-")
        now = datetime.now(UTC)
        key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        token = None
        if bearer:
            token = BEARER_PREFIX + base64.b64encode(f"{key_id}:{secrets.token_urlsafe(32)}".encode()).decode()
        with self.db.session(write=True) as session:
            row = session.get(PrincipalRow, principal)
            if row is None:
                row = PrincipalRow(name=principal, created_at=now)
                session.add(row)
            if policy is not None:
                row.policy = json.dumps(policy)
            if rpm is not None:
                row.rpm = rpm
            if tpm is not None:
                row.tpm = tpm
            session.flush()
            session.add(AccessKeyRow(
                access_key_id=key_id,
                principal=principal,
                secret_ciphertext=self._box.encrypt(secret),
                bearer_sha256=bearer_digest(token) if token else None,
                status="Active",
                created_at=now,
            ))
        return CreatedKey(principal, key_id, secret, token)

    def list_keys(self) -> list[KeyInfo]:
        with self.db.session() as session:
            rows = session.execute(
                select(AccessKeyRow, PrincipalRow)
                .join(PrincipalRow, AccessKeyRow.principal == PrincipalRow.name)
                .order_by(AccessKeyRow.created_at)
            ).all()
            return [
                KeyInfo(key.access_key_id, key.principal, key.status, key.bearer_sha256 is not None,
                        key.created_at.isoformat(), principal.rpm, principal.tpm, principal.policy is not None)
                for key, principal in rows
            ]

    def revoke(self, access_key_id: str) -> bool:
        """Deactivate a key (and its bearer token) at once; False when there is no such key."""
        with self.db.session(write=True) as session:
            row = session.get(AccessKeyRow, access_key_id)
            if row is None:
                return False
            row.status = "Inactive"
            return True

    def find_access_key(self, access_key_id: str) -> tuple[StoredPrincipal, str] | None:
        """The principal and decrypted secret of an active key, or None."""
        with self.db.session() as session:
            row = session.get(AccessKeyRow, access_key_id)
            if row is None or row.status != "Active":
                return None
            principal = session.get(PrincipalRow, row.principal)
            if principal is None:
                return None
            return _principal(principal), self._box.decrypt(row.secret_ciphertext)

    def find_bearer(self, token: str) -> tuple[StoredPrincipal, str] | None:
        """The principal and access key id of an active bearer token, or None."""
        with self.db.session() as session:
            row = session.execute(
                select(AccessKeyRow).where(AccessKeyRow.bearer_sha256 == bearer_digest(token))
            ).scalar_one_or_none()
            if row is None or row.status != "Active":
                return None
            principal = session.get(PrincipalRow, row.principal)
            if principal is None:
                return None
            return _principal(principal), row.access_key_id
