"""An in-memory LedgerSink: for tests, and for a gateway run without a database.

It behaves like the SQL sink where the ledger can tell: a batch lands whole or not at all, request ids
already present are skipped (ON CONFLICT DO NOTHING), an outage raises ServiceUnavailableError, and a
row the database would refuse raises a plain data error. Tests switch `down`, `delay_s` and `refuse`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from ai_gateway.errors import ServiceUnavailableError
from ai_gateway.policy.ledger_row import LedgerRow

__all__ = ["MemorySink"]


class MemorySink:
    def __init__(self) -> None:
        self.rows: dict[str, LedgerRow] = {}
        self.down = False
        self.delay_s = 0.0
        self.refuse: Callable[[LedgerRow], bool] | None = None
        self.batches = 0  # committed writes
        self.duplicates = 0  # rows skipped because their request id was already stored

    async def write(self, rows: Sequence[LedgerRow]) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.down:
            raise ServiceUnavailableError("The ledger database is down.", code="database_unavailable")
        if self.refuse is not None:
            for row in rows:
                if self.refuse(row):
                    raise ValueError(f"row {row.request_id[:40]!r} refused")
        for row in rows:
            if row.request_id in self.rows:
                self.duplicates += 1
            else:
                self.rows[row.request_id] = row
        self.batches += 1
