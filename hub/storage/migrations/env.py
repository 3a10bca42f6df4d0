"""Alembic environment: runs on the connection hub.storage.migrate hands over (never an ini file)."""

from __future__ import annotations

from alembic import context

from hub.storage.schema import metadata

config = context.config


def _run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    # Revision 0002 migrates data in Python, which an SQL script cannot do.
    raise RuntimeError("gridtrace migrations run on a live database only: use `gridtrace hub migrate`")
_run_online()
