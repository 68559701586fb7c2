"""The metadata database's migrations (llamarock/storage/migrations) on real SQLite and PostgreSQL: a new database
gets exactly the tables in code, an older pre-migration database is brought up to date without losing rows, and
processes opening one database together migrate it once."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from llamarock.storage.db import MIGRATIONS, Database, alembic_config
from llamarock.storage.schema import metadata
from llamarock.storage.tags import TagStore


def head() -> str:
    with create_engine("sqlite://").connect() as connection:
        revision = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
    assert revision is not None
    return revision


def assert_at_head_and_matching(database: Database) -> None:
    with database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head()
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                       metadata())
    assert differences == [], (
        "the tables in code and the migrations differ: write a revision with "
        f"`python -m llamarock.storage.migrations \"what changed\"` ({MIGRATIONS}): {differences}"
    )


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def test_a_new_sqlite_database_gets_exactly_the_tables_in_code(tmp_path: Path) -> None:
    database = Database.at(tmp_path)
    assert_at_head_and_matching(database)
    database.close()
    again = Database.at(tmp_path)
    assert_at_head_and_matching(again)  # opening it again changes nothing
    again.close()


def test_a_new_postgresql_database_gets_exactly_the_tables_in_code(pg_url: str) -> None:
    database = Database(pg_url)
    assert_at_head_and_matching(database)
    tags = TagStore(database)
    tags.put("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc", [("team", "a")])
    assert tags.tags("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc") == (("team", "a"),)
    database.close()


def test_a_database_from_before_migrations_is_brought_up_to_date_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "llamarock.db"
    engine = create_engine(f"sqlite:///{path}")
    old = [table for name, table in metadata().tables.items() if name != "custom_models"]
    metadata().create_all(engine, tables=old)  # an older llamarock: one table fewer, one nullable column fewer
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_provisioned_models_deleted_at"))
        connection.execute(text("ALTER TABLE provisioned_models DROP COLUMN deleted_at"))
        connection.execute(text("INSERT INTO resource_tags (arn, key, value) "
                                "VALUES ('arn:aws:bedrock:us-east-1:123456789012:x/y', 'k', 'v')"))
    engine.dispose()
    database = Database(f"sqlite:///{path}")
    assert_at_head_and_matching(database)
    assert TagStore(database).tags("arn:aws:bedrock:us-east-1:123456789012:x/y") == (("k", "v"),)
    columns = {c["name"] for c in inspect(database.engine).get_columns("provisioned_models")}
    assert "deleted_at" in columns
    database.close()


def test_processes_opening_a_new_database_together_migrate_it_once(tmp_path: Path) -> None:
    opener = ("import sys; from llamarock.storage.db import Database; "
              "Database(sys.argv[1]).engine.connect().close()")
    url = f"sqlite:///{tmp_path / 'llamarock.db'}"
    processes = [subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], errors
    database = Database(url)
    assert_at_head_and_matching(database)
    database.close()
