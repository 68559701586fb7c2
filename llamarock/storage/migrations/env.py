"""Alembic's environment: run on the connection ``storage/db.py`` hands over (never from an alembic.ini)."""

from __future__ import annotations

from alembic import context

from llamarock.storage.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata(),
    render_as_batch=True,  # SQLite alters a table by copying it
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
