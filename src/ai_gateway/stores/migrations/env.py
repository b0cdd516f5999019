"""Alembic environment: always handed an open connection by `ai_gateway.stores.migrate` (no alembic.ini,
no URL here, so a DSN with a password is never read from or written to a file)."""

from __future__ import annotations

from alembic import context

__all__ = ["run_migrations"]


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    # Batch mode lets later migrations alter SQLite tables (it cannot ALTER most things in place).
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file inside a migration; a plain import (tooling walking the package) does nothing.
if hasattr(context, "config"):
    run_migrations()
