"""The ledger in SQL: the LedgerSink the write-behind batcher flushes into, and the budget seed.

    sink = SqlLedgerSink(settings.database_url)       # its own engine, pool and threads
    ledger = Ledger(sink, spool_path)                 # policy/ledger.py
    budgets = Budgets(backend, seed=sink.seed_spent)  # policy/budgets.py SeedFn
    ...
    await ledger.drain(timeout_s)
    sink.close()

`write` inserts a batch in one transaction with `INSERT ... ON CONFLICT (request_id) DO NOTHING` (SQLite
and PostgreSQL alike), so a replayed or twice-sent row is skipped, never doubled. An outage raises
ServiceUnavailableError (the ledger spools the batch); a refused value raises RowRefusedError, a
ValueError (the ledger retries row by row to isolate it). See `_ledger_db.py` for the time limits.

The schema comes from the Alembic migrations the key store runs at start (`SqlStore.upgrade`);
`upgrade()` here is for a sink used on its own (tests, an in-memory database).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, func, select
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


class SqlLedgerSink:
    def __init__(self, url: str) -> None:
        self._sqlite_file = sqlite_file(url)
        with mapped("connecting"):
            self._engine = ledger_engine(url, connections=_THREADS)
        self._worker = Worker("ledger-sql", _THREADS)
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        self._insert: Insert = dialect.insert(LEDGER).on_conflict_do_nothing(index_elements=["request_id"])

    def upgrade(self) -> None:
        with mapped("migrating the schema"):
            migrate.upgrade(self._engine, self._sqlite_file)

    def close(self) -> None:
        """After `Ledger.drain`: later writes raise ServiceUnavailableError, so rows go to the spool."""
        self._worker.close()
        self._engine.dispose()

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        unique: dict[str, dict[str, Any]] = {}
        for row in rows:  # a request id twice in one batch: the first wins, as ON CONFLICT would have it
            if row.request_id not in unique:
                values = row.to_columns()
                values["ts"] = utc(values["ts"])  # SQLite keeps the wall clock only: store it in UTC
                unique[row.request_id] = values
        if unique:
            await self._worker.run(self._write, list(unique.values()))

    def _write(self, values: list[dict[str, Any]]) -> None:
        with mapped("writing ledger rows"), self._engine.begin() as conn:
            statement_timeout(conn, _WRITE_TIMEOUT_S)
            conn.execute(self._insert, values)

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
