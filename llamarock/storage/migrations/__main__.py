"""``python -m llamarock.storage.migrations "message"``: write a new revision from the tables' difference."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from llamarock.storage.db import MIGRATIONS, alembic_config


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'head.db'}")
        with engine.begin() as connection:
            config = alembic_config(connection)
            command.upgrade(config, "head")
            number = len(list((MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))) + 1
            command.revision(config, message=sys.argv[1], autogenerate=True, rev_id=f"{number:04d}")
        engine.dispose()


if __name__ == "__main__":
    main()
