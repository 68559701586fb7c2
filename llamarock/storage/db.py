"""The metadata database: one SQLAlchemy engine per process, SQLite under the data dir unless configured.

The CLI and a running server open the same database, so what one writes the other sees on its next query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every llamarock table."""


def database_url(data_dir: Path, configured: str | None) -> str:
    """The configured URL, or SQLite at ``<data_dir>/llamarock.db``."""
    return configured or f"sqlite:///{data_dir / 'llamarock.db'}"


def open_engine(url: str) -> Engine:
    """An engine with the tables created; SQLite waits for the other process's write lock instead of failing."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


class Store:
    """Base of the stores on the metadata database: the SQLAlchemy engine is opened at first use.

    Each process (a server, a CLI command) opens its own; ``close`` disposes of its connections.
    """

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self._url = database_url(data_dir, url)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_engine(self._url)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
