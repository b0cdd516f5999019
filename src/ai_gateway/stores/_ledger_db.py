"""What the ledger sink (`ledger_sql.py`) and the reports (`reports.py`) share: the `ledger` table, an
engine of their own, the threads that run their blocking calls, and the one place SQLAlchemy's errors
become the gateway's.

Each user gets its own engine, pool and threads, apart from the key store's (`sql.py`): a slow report or
a ledger write stuck on a dead TCP connection must not hold the connection or the thread an auth-cache
miss is waiting for, nor the default executor the ledger spools through.

Time limits, so a stuck database ends in an error the caller can act on (the ledger spools) rather than
a thread blocked forever: `connect_timeout`, `tcp_user_timeout` and keepalives on every PostgreSQL
connection, and `SET LOCAL statement_timeout` per transaction (not the `options` startup parameter,
which PgBouncer refuses); SQLite waits at most `busy_timeout_s` for a lock.

Errors: an unreachable, locked, slow or misconfigured database (schema missing included) is
ServiceUnavailableError; a value the database refuses (DataError, IntegrityError, or a value the driver
cannot encode) is RowRefusedError, a ValueError, so the ledger isolates that row instead of spooling
everything behind it. The DSN and statement parameters never appear in either message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

from ai_gateway.errors import ServiceUnavailableError, scrub
from ai_gateway.stores.sql import engine_url, sqlite_file

__all__ = ["LEDGER", "RowRefusedError", "Worker", "ledger_engine", "mapped", "statement_timeout", "utc"]

log = logging.getLogger("ai_gateway.stores")

T = TypeVar("T")

# Mirrors migrations/versions/0002_ledger.py (a test compares the two with LEDGER_COLUMNS).
LEDGER = Table(
    "ledger",
    MetaData(),
    Column("request_id", String(128), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("status", String(32), nullable=False),
    Column("http_status", SmallInteger, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("tenant_id", String(128)),
    Column("key_id", String(128)),
    Column("route", String(256)),
    Column("provider", String(256)),
    Column("model", String(256)),
    Column("error_class", String(128)),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger),
    Column("cost_saved_nanos", BigInteger, nullable=False),
    Column("price_source", String(32)),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer),
    Column("cache_hit", Boolean, nullable=False),
    Column("usage_estimated", Boolean, nullable=False),
    Column("attempts", Text, nullable=False),
)

_CONNECT_TIMEOUT_S = 3
_TCP_USER_TIMEOUT_MS = 12_000


class RowRefusedError(ValueError):
    """The database refused a value; the database itself is fine."""


def utc(value: datetime) -> datetime:
    """Aware UTC. SQLite stores and returns the wall clock without an offset, so everything bound to or
    read from a query goes through here."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ledger_engine(url: str, *, connections: int, busy_timeout_s: float = 3.0) -> Engine:
    """An engine for the ledger table with at most `connections` pooled connections."""
    url = engine_url(url)
    if url.lower().startswith("sqlite"):
        args: dict[str, Any] = {"check_same_thread": False, "timeout": busy_timeout_s}
        if sqlite_file(url) is None:  # in-memory SQLite exists per connection: share the one
            return create_engine(url, hide_parameters=True, connect_args=args, poolclass=StaticPool)
        return create_engine(
            url, hide_parameters=True, connect_args=args, pool_size=connections, max_overflow=0
        )
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,  # connections broken by an outage are replaced, not handed out
        pool_size=connections,
        max_overflow=0,
        pool_timeout=_CONNECT_TIMEOUT_S,
        connect_args={
            "connect_timeout": _CONNECT_TIMEOUT_S,
            "tcp_user_timeout": _TCP_USER_TIMEOUT_MS,  # unacknowledged writes: the peer is gone
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        },
    )


def statement_timeout(conn: Connection, seconds: float) -> None:
    """Bound every statement of the current transaction (PostgreSQL; SQLite has no such setting)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL statement_timeout = {int(seconds * 1000)}"))


@contextmanager
def mapped(action: str) -> Iterator[None]:
    """SQLAlchemy's and the driver's errors as ServiceUnavailableError or RowRefusedError (see above)."""
    try:
        yield
    except (DataError, IntegrityError) as exc:
        raise RowRefusedError(f"the database refused a value while {action}: {_cause(exc)}") from exc
    except (DBAPIError, PoolTimeoutError) as exc:
        log.warning("ledger database unavailable while %s: %s: %s", action, type(exc).__name__, _cause(exc))
        raise ServiceUnavailableError(
            "The ledger database is unreachable; try again shortly.",
            code="database_unavailable",
            retry_after=1,
        ) from exc
    except StatementError as exc:  # raised before the database saw it: the driver could not bind a value
        raise RowRefusedError(f"a value could not be sent while {action}: {_cause(exc)}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # the driver's own: a lone surrogate, a huge int
        if isinstance(exc, RowRefusedError):
            raise
        raise RowRefusedError(f"a value could not be encoded while {action}: {exc}") from exc


def _cause(exc: Exception) -> str:
    return scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0], 200)


class Worker:
    """A few threads of its own for blocking database calls (see the module docstring for why)."""

    def __init__(self, name: str, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise ServiceUnavailableError("The ledger database connection is closed.", code="shutting_down")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Queued calls still run; threads blocked in the database end with its time limits."""
        self._closed = True
        self._executor.shutdown(wait=False)
