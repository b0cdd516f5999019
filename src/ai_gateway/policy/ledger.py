"""The ledger writer: every request's row reaches the database, none on the request path, none lost.

    ledger = Ledger(sink, spool_path)      # sink: the SQL store's LedgerSink
    await ledger.start()                   # replays rows a previous run left in the spool
    ledger.record(row)                     # per request: O(1), never awaits, never raises
    await ledger.drain(timeout_s=10)       # on SIGTERM, after in-flight requests finished

Path of a row:
- `record` appends to a bounded in-memory queue. When the queue is full it writes the row straight to
  the spool file (buffered, fsync'd by the flusher's next tick) instead of dropping it.
- A background flusher takes batches (up to `batch_size` rows, at least every `flush_interval_s`),
  sanitises them and writes them to the sink, bounded by `write_timeout_s`.
- The sink raising ServiceUnavailableError (or timing out) means the database is down or slow: the batch
  goes to the spool, fsync'd, and so does every batch after it until a replay succeeds. Replays run at
  start-up and then on a backoff (`replay_backoff_s`, doubling to its max); they read the spool in
  batches and delete a spool file only after all its rows were confirmed written.
- Any other exception means the database refused the data: the batch is retried row by row so the good
  rows land. A row refused on its own is spooled and retried once by a replay; refused again, it goes to
  `<spool>.rejected` and is counted. If every row of a batch is refused, the sink is assumed broken, not
  the data, and the batch is spooled.
- `drain` flushes the queue; if the sink is down everything stays in the spool for the next start.
  `record` after `drain` appends to the spool with an fsync. Only one process may use a spool path
  (`stores/spool.py` locks it); `drain` releases it.

Rows may reach the sink twice (a write that timed out but committed, a replay after a crash): the sink
must ignore request ids it already has. If the spool's disk fails too, rows stay in memory past the
queue bound (counted in `write_errors`, logged) rather than being dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from ai_gateway.errors import BackendUnavailableError, ServiceUnavailableError
from ai_gateway.policy.ledger_row import LedgerRow, sanitize
from ai_gateway.stores.spool import Spool

__all__ = ["Ledger", "LedgerSink", "LedgerStats", "default_spool_path"]

log = logging.getLogger("ai_gateway.ledger")

_TRANSIENT = (ServiceUnavailableError, BackendUnavailableError, TimeoutError, OSError)


class LedgerSink(Protocol):
    async def write(self, rows: Sequence[LedgerRow]) -> None:
        """Insert the rows in one transaction, skipping rows already present (the same request id from
        the same request; another request that reused the id keeps a row of its own).

        Raise ServiceUnavailableError when the database is unreachable or too slow; any other exception
        says the rows' data was refused."""


@dataclass(slots=True)
class LedgerStats:
    rows_recorded: int = 0
    rows_written: int = 0  # confirmed by the sink, directly or by a replay
    rows_spooled: int = 0
    rows_replayed: int = 0
    rows_rejected: int = 0  # refused as data twice: in `<spool>.rejected`
    write_errors: int = 0  # failed sink writes and spool writes
    spool_corrupt: int = 0  # torn or unparseable spool lines (moved to `<spool>.rejected`)


def default_spool_path(database_file: Path | None) -> Path:
    """Next to the SQLite database; in the working directory when the database is not a local file."""
    if database_file is None:
        return Path("ai-gateway.ledger-spool.jsonl")
    return database_file.with_name(database_file.name + ".ledger-spool.jsonl")


class _Down(Exception):
    pass


class _Refused(Exception):
    pass


class Ledger:
    def __init__(
        self,
        sink: LedgerSink,
        spool_path: Path | str,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        write_timeout_s: float = 5.0,
        replay_backoff_s: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self._sink = sink
        self._spool = Spool(spool_path)
        self._max_queue = max_queue
        self._batch = batch_size
        self._interval = flush_interval_s
        self._write_timeout = write_timeout_s
        self._backoff_min, self._backoff_max = replay_backoff_s
        self._backoff = self._backoff_min
        self._queue: deque[LedgerRow] = deque()
        self._in_flight: list[LedgerRow] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._retry_at = 0.0  # loop time before which the sink is not tried (it was down)
        self._replay_file: Path | None = None
        self._replay_offset = 0
        self.stats = LedgerStats()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def spool_depth(self) -> int:
        return self._spool.depth

    def record(self, row: LedgerRow) -> None:
        self.stats.rows_recorded += 1
        if self._closed or len(self._queue) >= self._max_queue:
            self._spill(row)
            return
        self._queue.append(row)
        if len(self._queue) >= self._batch:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-flusher")

    async def drain(self, timeout_s: float) -> None:
        """Flush what is queued (to the sink, or to the spool if the sink is down) and stop."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        rows = [sanitize(r) for r in self._in_flight + list(self._queue)]
        self._in_flight, self._queue = [], deque()
        self._closed = True
        try:
            await asyncio.to_thread(self._spool.append, [_line(r) for r in rows])
            await asyncio.to_thread(self._spool.close)
            self.stats.rows_spooled += len(rows)
        except OSError as exc:
            self.stats.write_errors += 1
            log.error("ledger: %d rows could not be spooled at shutdown: %s", len(rows), exc)

    # --- the flusher -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                busy = await self._tick()
            except Exception:  # a bug must not stop accounting: keep the rows and go on
                log.exception("ledger flusher error")
                self.stats.write_errors += 1
                self._queue.extendleft(reversed(self._in_flight))
                self._in_flight = []
                busy = False
                await asyncio.sleep(self._interval)
            if self._closing and not self._queue and not busy:
                return
            if busy or len(self._queue) >= self._batch:
                await asyncio.sleep(0)  # let requests run between batches
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    async def _tick(self) -> bool:
        """Flush the queue, then one replay batch if one is due; True if more replay work is waiting."""
        for _ in range(-(-len(self._queue) // self._batch)):  # what is queued now, not what arrives
            n = min(self._batch, len(self._queue))
            self._in_flight = [sanitize(self._queue.popleft()) for _ in range(n)]
            if self._sink_down():
                spooled = await self._to_spool(self._in_flight)
            else:
                down, refused = await self._deliver(self._in_flight)
                spooled = await self._to_spool(down + refused)  # a lone refused row: one more chance
            self._in_flight = []
            if not spooled:
                return False  # the disk failed: the rows are back in the queue; try next tick
        if self._spool.unsynced:
            await asyncio.to_thread(self._spool.sync)
        if self._spool.depth == 0 or self._sink_down():
            return False
        return await self._replay_step()

    async def _replay_step(self) -> bool:
        if self._replay_file is None:
            self._replay_file = await asyncio.to_thread(self._spool.begin_replay)
            self._replay_offset = 0
            if self._replay_file is None:
                return False
        chunk = await asyncio.to_thread(self._spool.read, self._replay_file, self._replay_offset, self._batch)
        rows: list[LedgerRow] = []
        bad: list[bytes] = []
        for line in chunk.lines:
            try:
                rows.append(sanitize(LedgerRow.from_json(orjson.loads(line))))
            except (orjson.JSONDecodeError, ValueError):
                bad.append(line)
        if chunk.torn is not None:
            log.warning("ledger spool: skipping a torn last line (%d bytes)", len(chunk.torn))
            bad.append(chunk.torn)
        down, refused = await self._deliver(rows)
        if down:
            return False  # keep the offset: the next replay resumes here
        if refused:
            self.stats.rows_rejected += len(refused)
            log.error("ledger: %d rows refused twice, kept in %s", len(refused), self._spool.rejected_path)
        self.stats.spool_corrupt += len(bad)
        await asyncio.to_thread(self._spool.reject, bad + [_line(r) for r in refused])
        self.stats.rows_replayed += len(rows) - len(refused)
        self._spool.consumed(len(chunk.lines))
        self._replay_offset = chunk.next_offset
        if chunk.eof:
            await asyncio.to_thread(self._spool.finish_replay, self._replay_file)
            self._replay_file = None
        return True

    async def _deliver(self, rows: list[LedgerRow]) -> tuple[list[LedgerRow], list[LedgerRow]]:
        """Write rows; return (not written because the sink is down, refused as data)."""
        if not rows:
            return [], []
        try:
            await self._write(rows)
            return [], []
        except _Down:
            return rows, []
        except _Refused:
            if len(rows) == 1:
                return [], rows
        refused: list[LedgerRow] = []
        for i, row in enumerate(rows):  # find the row the database refuses; the others still land
            try:
                await self._write([row])
            except _Down:
                return rows[i:], refused
            except _Refused:
                refused.append(row)
        if len(refused) == len(rows):  # nothing at all was accepted: blame the sink, not the data
            self._mark_down()
            return rows, []
        return [], refused

    async def _write(self, rows: list[LedgerRow]) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._sink.write(rows)
        except _TRANSIENT as exc:
            self.stats.write_errors += 1
            self._mark_down()
            log.warning("ledger sink unavailable (%s); spooling", type(exc).__name__)
            raise _Down from exc
        except Exception as exc:
            self.stats.write_errors += 1
            log.warning("ledger sink refused %d rows: %s", len(rows), type(exc).__name__)
            raise _Refused from exc
        self.stats.rows_written += len(rows)
        self._backoff = self._backoff_min

    def _sink_down(self) -> bool:
        return asyncio.get_running_loop().time() < self._retry_at

    def _mark_down(self) -> None:
        self._retry_at = asyncio.get_running_loop().time() + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    # --- the spool -------------------------------------------------------------------------------

    async def _to_spool(self, rows: list[LedgerRow]) -> bool:
        if not rows:
            return True
        try:
            await asyncio.to_thread(self._spool.append, [_line(r) for r in rows])
        except OSError as exc:
            # The disk failed too: keep the rows in memory, past the bound, rather than lose them.
            self.stats.write_errors += 1
            log.error("ledger spool write failed (%s); %d rows kept in memory", exc, len(rows))
            self._queue.extendleft(reversed(rows))
            self._mark_down()
            return False
        self.stats.rows_spooled += len(rows)
        return True

    def _spill(self, row: LedgerRow) -> None:
        try:
            self._spool.append([_line(sanitize(row))], fsync=self._closed)
            if self._closed:  # after drain: release the spool again, as drain left it
                self._spool.close()
        except OSError as exc:
            self.stats.write_errors += 1
            log.error("ledger spool write failed (%s); row kept in memory", exc)
            self._queue.append(row)
            return
        self.stats.rows_spooled += 1


def _line(row: LedgerRow) -> bytes:
    return orjson.dumps(row.to_json(), option=orjson.OPT_APPEND_NEWLINE)
