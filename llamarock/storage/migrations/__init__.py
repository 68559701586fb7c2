"""Alembic migrations of the metadata database (``storage/db.py:migrate`` runs them when a database is opened).

A change to a table is a new revision here: ``python -m llamarock.storage.migrations "what changed"`` writes one
from the difference between the tables in code and a database at the current head (review it before committing).
``tests/test_migrations.py`` fails while the two differ.
"""
