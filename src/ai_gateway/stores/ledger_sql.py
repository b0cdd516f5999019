"""The ledger in SQL: the LedgerSink the write-behind batcher flushes into, and the budget seed.

    sink = SqlLedgerSink(settings.database_url)       # its own engine, pool and threads
    ledger = Ledger(sink, spool_path)                 # policy/ledger.py
    budgets = Budgets(backend, seed=sink.seed_spent)  # policy/budgets.py SeedFn
    ...
    await ledger.drain(timeout_s)
    sink.close()

`write` inserts a batch in one transaction with `INSERT ... ON CONFLICT (request_id) DO NOTHING` (SQLite
and PostgreSQL alike), so a replayed or twice-sent row is skipped, never doubled. The request id may be
the client's own `x-request-id`, so another request that reused one (same id, another arrival time or
key) is not a duplicate: it is stored as `<id>~<20 hex of a hash>`, never dropped. An outage raises
ServiceUnavailableError (the ledger spools the batch); a refused value raises RowRefusedError, a
ValueError (the ledger retries row by row to isolate it). See `_ledger_db.py` for the time limits.

The INSERT is compiled once, as SQLAlchemy compiles it for the engine's dialect (PostgreSQL's casts
included), and a batch is one driver-level `executemany` of plain tuples, the values passed through the
bind processors SQLAlchemy itself would apply (SQLite's DATETIME text, booleans), so the rows stored are
exactly those a Core insert stores, without its per-row compile and bind work. No RETURNING: when the
driver's rowcount (summed over the batch by sqlite3 and psycopg 3) is the number of rows sent, every row
was new. Otherwise some ids were taken, and the identity columns stored under the batch's ids tell a
replay (stored the same: skipped) from another request (stored differently: renamed). That relies on a
row inserted in this transaction reading back as sent, which holds for rows `sanitize` passed (the
ledger sanitises every row): strings, integers and aware datetimes round-trip exactly on both backends.

The schema comes from the Alembic migrations the key store runs at start (`SqlStore.upgrade`);
`upgrade()` here is for a sink used on its own (tests, an in-memory database).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, func, select
from sqlalchemy.dialects import postgresql, sqlite

from ai_gateway.policy.budgets import BudgetScope, window_for
from ai_gateway.policy.ledger_row import LedgerRow
from ai_gateway.stores import migrate
from ai_gateway.stores._ledger_db import LEDGER, Worker, ledger_engine, mapped, statement_timeout, utc
from ai_gateway.stores.sql import sqlite_file

__all__ = ["SqlLedgerSink"]

# One flusher writes at a time; the second thread serves budget seeds meanwhile.
_THREADS = 2
# As long as the Ledger waits for a write (its default write_timeout_s): a write it has given up on (and
# spooled) should not keep holding a thread and a connection much longer.
_WRITE_TIMEOUT_S = 5.0
_SEED_TIMEOUT_S = 10.0
_SCOPE_COLUMNS = {"key": LEDGER.c.key_id, "tenant": LEDGER.c.tenant_id}
# What tells two rows with one request id apart: a replay repeats all of it (it is the same row), another
# request that reused the id differs at least in its arrival time to the microsecond or its latency.
_IDENTITY = (
    LEDGER.c.request_id,
    LEDGER.c.ts,
    LEDGER.c.tenant_id,
    LEDGER.c.key_id,
    LEDGER.c.endpoint,
    LEDGER.c.latency_ms,
)


def _same_request(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return utc(a["ts"]) == utc(b["ts"]) and all(a[c.name] == b[c.name] for c in _IDENTITY[2:])


def _distinct_id(values: Mapping[str, Any]) -> str:
    """The id a second request with an already-used id is stored under: `<id>~<hash>`, the hash of what
    tells it apart, so a replay of that row maps to the same id and is skipped in turn."""
    identity = "|".join(
        str(utc(values["ts"]).isoformat()) if c.name == "ts" else str(values[c.name]) for c in _IDENTITY
    )
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"{values['request_id'][:107]}~{digest}"


def _driver_insert(dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """`INSERT ... ON CONFLICT (request_id) DO NOTHING` of every column as SQLAlchemy compiles it for
    `dialect`, with positional placeholders, and the columns they stand for, in order."""
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    statement = insert(LEDGER).on_conflict_do_nothing(index_elements=["request_id"])
    compiled = statement.compile(dialect=dialect, column_keys=list(LEDGER.c.keys()))
    if compiled.positional and compiled.positiontup is not None:  # sqlite3: qmark
        return compiled.string, tuple(compiled.positiontup)
    if dialect.paramstyle == "pyformat":  # psycopg: %(name)s, whose tuple form is %s
        placeholder = re.compile(r"%\((\w+)\)s")
        return placeholder.sub("%s", compiled.string), tuple(placeholder.findall(compiled.string))
    raise ValueError(f"the ledger does not support the {dialect.driver} driver's paramstyle")


class SqlLedgerSink:
    def __init__(self, url: str) -> None:
        self._sqlite_file = sqlite_file(url)
        with mapped("connecting"):
            self._engine = ledger_engine(url, connections=_THREADS)
        dialect = self._engine.dialect
        self._insert_sql, columns = _driver_insert(dialect)
        self._columns = itemgetter(*columns)
        # SQLAlchemy's own bind processors for the columns that have one, by position in a tuple.
        processors = (
            (i, LEDGER.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for i, name in enumerate(columns)
        )
        self._processors: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, p) for i, p in processors if p is not None
        )
        self._worker = Worker("ledger-sql", _THREADS)

    def upgrade(self) -> None:
        with mapped("migrating the schema"):
            migrate.upgrade(self._engine, self._sqlite_file)

    def close(self) -> None:
        """After `Ledger.drain`: later writes raise ServiceUnavailableError, so rows go to the spool."""
        self._worker.close()
        self._engine.dispose()

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        first: dict[str, dict[str, Any]] = {}
        others: list[dict[str, Any]] = []  # other requests under an id already in this batch
        for row in rows:
            values = row.to_columns()
            values["ts"] = utc(values["ts"])  # SQLite keeps the wall clock only: store it in UTC
            seen = first.get(values["request_id"])
            if seen is None:
                first[values["request_id"]] = values
            elif not _same_request(seen, values):  # the same row twice: the first wins, as below
                others.append(values)
        if first:
            await self._worker.run(self._write, list(first.values()), others)

    def _write(self, values: list[dict[str, Any]], others: list[dict[str, Any]]) -> None:
        with mapped("writing ledger rows"), self._engine.begin() as conn:
            statement_timeout(conn, _WRITE_TIMEOUT_S)
            inserted = self._insert(conn, values)
            if inserted == len(values) and not others:
                return  # every id was new: the common case
            # An id already taken: a replay of the same request (skipped), or another request that reused
            # the client's `x-request-id`, which is stored under an id of its own instead of being lost.
            # Rows just inserted read back as sent, so they compare equal and are skipped too.
            pending = others if inserted == len(values) else values + others
            query = select(*_IDENTITY).where(
                LEDGER.c.request_id.in_(sorted({v["request_id"] for v in pending}))
            )
            stored = {r.request_id: dict(r._mapping) for r in conn.execute(query)}
            renamed: dict[str, dict[str, Any]] = {}
            for v in pending:
                kept = stored.get(v["request_id"])
                if kept is not None and not _same_request(kept, v):
                    rid = _distinct_id(v)
                    renamed.setdefault(rid, {**v, "request_id": rid})
            if renamed:
                self._insert(conn, list(renamed.values()))

    def _insert(self, conn: Connection, values: list[dict[str, Any]]) -> int:
        """One executemany of the compiled INSERT; the number of rows inserted (ids not taken yet), or -1
        if the driver cannot tell."""
        columns, processors = self._columns, self._processors
        params: list[tuple[Any, ...]] = []
        for v in values:
            row = columns(v)
            if processors:
                cells = list(row)
                for i, process in processors:
                    cells[i] = process(cells[i])
                row = tuple(cells)
            params.append(row)
        return conn.exec_driver_sql(self._insert_sql, params).rowcount

    async def seed_spent(self, scope: BudgetScope, window_start: datetime) -> int:
        """The budgets' SeedFn: nano-dollars spent by `key:<id>` or `tenant:<id>` in the calendar window
        that starts at `window_start`. Unknown costs count as 0 (they are unknown, not free: the report
        shows how many). Rows still in the ledger's queue or spool are not in the sum."""
        kind, _, ident = scope.name.partition(":")
        column = _SCOPE_COLUMNS.get(kind)
        if column is None or not ident:
            raise ValueError(f"budget scope {scope.name!r} is neither key:<id> nor tenant:<id>")
        window = window_for(scope.period, utc(window_start).timestamp())
        query = select(func.coalesce(func.sum(LEDGER.c.cost_nanos), 0)).where(
            column == ident, LEDGER.c.ts >= window.start
        )
        if window.end is not None:
            query = query.where(LEDGER.c.ts < window.end)
        return await self._worker.run(self._scalar_int, query)

    def _scalar_int(self, query: Any) -> int:
        with mapped("summing spend"), self._engine.begin() as conn:
            statement_timeout(conn, _SEED_TIMEOUT_S)
            return int(conn.execute(query).scalar_one())
