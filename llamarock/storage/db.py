"""The metadata database: one SQLAlchemy engine per database and process, SQLite under the data dir unless
configured, and the one place ``sqlalchemy.exc`` becomes the error tree.

``create_app`` opens one :class:`Database` and hands it to every store (keys, usage, logging configuration,
provisioned models); each CLI command opens its own. What one process writes the others see on their next query.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy import exc as sql_errors
from sqlalchemy.orm import DeclarativeBase, Session

from llamarock.errors import InternalServerException, ServiceUnavailableException
from llamarock.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListFilter:
    """A List operation's filters, sort and page, as the stores apply them (ListProvisionedModelThroughputs,
    ListModelImportJobs, ListImportedModels, ListModelCustomizationJobs; ``model_arn`` only where the operation has
    that filter)."""

    region: str
    status: str | None = None
    model_arn: str | None = None
    name_contains: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    descending: bool = True
    offset: int = 0
    limit: int = 1000


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
            private(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    migrate(engine)
    return engine


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for the migrations in ``storage/migrations``, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema: Alembic's migrations (a new database gets every table from them).

    A database an older llamarock made before migrations existed (tables, no ``alembic_version``) is brought up to
    date as it was then (missing tables, nullable columns and indexes added) and stamped as at the newest revision.
    One process at a time (PostgreSQL: an advisory lock; SQLite: a lock file beside the database), so gateways or
    commands starting together migrate once.
    """
    with _migration_lock(engine):
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(746162)"))  # any fixed key
            inspector = inspect(connection)
            config = alembic_config(connection)
            legacy = bool(inspector.get_table_names()) and not inspector.has_table("alembic_version")
            if legacy:
                from llamarock.storage.schema import metadata

                metadata().create_all(connection)
                command.stamp(config, "head")
            else:
                command.upgrade(config, "head")
        if legacy:
            add_missing_columns(engine)
            with engine.begin() as connection:
                for table in Base.metadata.sorted_tables:
                    for index in table.indexes:
                        index.create(connection, checkfirst=True)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_missing_columns(engine: Engine) -> None:
    """Give tables an older llamarock created the nullable columns added since (``ALTER TABLE ... ADD COLUMN``;
    ``create_all`` only creates missing tables). Rows written before read NULL there."""
    inspector = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(
                        f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"
                    ))
            except sql_errors.DBAPIError:
                # Another process starting on the same database added it first.
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


def private(path: Path) -> None:
    """Make a data file readable by its owner only (the file is created so when it does not exist yet)."""
    if not path.exists():
        path.touch(mode=0o600)
    if path.is_file():
        path.chmod(0o600)


class Database:
    """One metadata database: its engine is opened at first use and shared by every store given this object."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        return cls(database_url(settings.data_dir, settings.database_url))

    @classmethod
    def at(cls, data_dir: Path) -> Database:
        """The default SQLite database of a data dir."""
        return cls(database_url(data_dir, None))

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with translated():
                self._engine = open_engine(self.url)
        return self._engine

    @contextlib.contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session (in a transaction that commits on success when ``write``), its database errors translated."""
        with translated(), Session(self.engine) as session:
            if write:
                with session.begin():
                    yield session
            else:
                yield session

    def close(self) -> None:
        """Dispose of the engine's connections (the next use opens them again)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """``sqlalchemy.exc`` as the error tree: an unreachable or locked database is ServiceUnavailableException
    (retryable), anything else a database error is InternalServerException (logged); nothing is half-written, since
    every write runs in one transaction."""
    try:
        yield
    except (sql_errors.OperationalError, sql_errors.InterfaceError, sql_errors.TimeoutError) as error:
        log.warning("metadata database unavailable: %s", error)
        raise ServiceUnavailableException(
            "The metadata database is unavailable right now (busy, locked or unreachable). Retry the request; if it "
            "keeps failing, check database_url and that the database server is running."
        ) from error
    except sql_errors.SQLAlchemyError as error:
        log.error("metadata database error: %s", error)
        raise InternalServerException(
            "The server could not read or write its metadata database. Nothing was changed; retry the request."
        ) from error


class Store:
    """Base of the stores on the metadata database."""

    def __init__(self, database: Database) -> None:
        self.db = database

    @property
    def engine(self) -> Engine:
        return self.db.engine
