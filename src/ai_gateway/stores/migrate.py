"""Bring a database to the newest schema with Alembic, configured in code (no alembic.ini at run time).

Several replicas may start at once against one database, so the upgrade runs under a lock: a
PostgreSQL advisory lock held by the migrating transaction, or an exclusive `flock` on a file next to a
SQLite database. The loser waits, then finds nothing left to do.

Alembic is imported on first use, after its logger is quietened: it logs a line per plugin on import
and per step on upgrade, which would bury the gateway's own start-up lines.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["current_revision", "head_revision", "upgrade"]

log = logging.getLogger("ai_gateway.stores")

# Any constant works; it only has to be the same in every replica (it spells "aigw").
_PG_LOCK_ID = 0x61696777


def _config() -> Config:
    noisy = logging.getLogger("alembic")
    if noisy.level == logging.NOTSET:
        noisy.setLevel(logging.WARNING)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "ai_gateway.stores:migrations")
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # the package ships at least one revision
    return head


def current_revision(connection: Connection) -> str | None:
    _config()
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:  # in-memory SQLite is one process by definition; PostgreSQL locks in SQL
        yield
        return
    with path.with_name(path.name + ".migrate-lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, sqlite_file: Path | None = None) -> tuple[str | None, str]:
    """Upgrade to head: (revision found under the lock, revision now in force). SQLAlchemy errors
    propagate to the caller."""
    config = _config()
    from alembic import command

    head = head_revision()
    with _file_lock(sqlite_file if engine.dialect.name == "sqlite" else None), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        before = current_revision(connection)
        if before != head:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            log.info("database schema upgraded from %s to %s", before or "empty", head)
    return before, head
