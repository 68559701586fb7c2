"""Encryption of stored secrets with a Fernet key kept outside the database (``<data_dir>/secret.key``, mode 0600).

A copy of the database alone does not reveal usable access-key secrets.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secret.key"


class SecretBoxError(Exception):
    """A stored secret cannot be decrypted: the key file does not belong to this database."""


def load_or_create_key(data_dir: Path) -> bytes:
    """Read the key file, creating it (atomically, 0600) when it does not exist yet."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


class SecretBox:
    """Encrypts and decrypts secrets with the data dir's key file (read when first needed)."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._fernet: Fernet | None = None

    def _get(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(load_or_create_key(self._data_dir))
        return self._fernet

    def encrypt(self, secret: str) -> bytes:
        return self._get().encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._get().decrypt(token).decode()
        except InvalidToken as error:
            raise SecretBoxError(
                f"a stored secret cannot be decrypted with {self._data_dir / KEY_FILE}; was the key file replaced?"
            ) from error
