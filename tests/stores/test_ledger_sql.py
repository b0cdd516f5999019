"""The SQL ledger sink on SQLite and PostgreSQL: the migrated table is LEDGER_COLUMNS, rows round-trip
exactly (stored as a SQLAlchemy Core insert stores them, read back alike through SQLAlchemy and the
reports), writes are idempotent per request id, a batch of new ids is one INSERT while a batch with taken
ids skips replays and renames reused ids (also with the driver's rowcount ignored, so every row just
inserted is compared with what it reads back as), a poison row refuses its batch as data (not as an
outage) and the real `Ledger` then isolates it, budget seeds sum calendar windows exactly, and a database
outage under a real `Ledger` (a SQLite write lock; PostgreSQL behind a TCP proxy that is stopped and
restarted) loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite

from ai_gateway.errors import ServiceUnavailableError
from ai_gateway.policy.budgets import BudgetScope, Period, window_for
from ai_gateway.policy.ledger import Ledger
from ai_gateway.policy.ledger_row import LEDGER_COLUMNS, LedgerAttempt, LedgerRow, sanitize
from ai_gateway.stores._ledger_db import LEDGER, RowRefusedError, utc
from ai_gateway.stores.ledger_sql import SqlLedgerSink
from ai_gateway.stores.reports import Filters, Reports
from ai_gateway.stores.sql import SqlStore, engine_url
from tests.services import Postgres

TS = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FAST: dict[str, Any] = {
    "flush_interval_s": 0.01,
    "replay_backoff_s": (0.05, 0.2),
    "write_timeout_s": 1.0,
    "batch_size": 50,
}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def row(rid: str, **kw: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "request_id": rid,
        "ts": TS,
        "status": "ok",
        "http_status": 200,
        "endpoint": "openai_chat",
        "stream": True,
        "tenant_id": "t1",
        "key_id": "k1",
        "route": "default",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 12,
        "output_tokens": 34,
        "cached_tokens": 4,
        "cost_nanos": 1_234,
        "cost_saved_nanos": 0,
        "price_source": "genai-prices",
        "latency_ms": 85,
        "ttft_ms": 20,
        "usage_estimated": True,
        "attempts": (
            LedgerAttempt("ollama", "llama3.2", "error", "connect refused", 3, None, "connect"),
            LedgerAttempt("openai", "gpt-4o-mini", "ok", None, 80, 200),
        ),
    }
    base.update(kw)
    return LedgerRow(**base)


def stored(url: str) -> dict[str, LedgerRow]:
    """Every row in the table, read back into LedgerRows."""
    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            result = conn.execute(select(LEDGER)).mappings().all()
    finally:
        engine.dispose()
    rows = {}
    for r in result:
        values = {**r, "ts": utc(r["ts"]).isoformat()}
        values["attempts"] = orjson.loads(r["attempts"])
        rows[r["request_id"]] = LedgerRow.from_json(values)
    return rows


def write(url: str, *batches: list[LedgerRow]) -> None:
    async def go() -> None:
        sink = SqlLedgerSink(url)
        try:
            for batch in batches:
                await sink.write(batch)
        finally:
            sink.close()

    run(go())


def test_migrated_table_is_the_ledger_columns(ledger_url: str) -> None:
    engine = create_engine(engine_url(ledger_url))
    try:
        found = inspect(engine)
        columns = found.get_columns("ledger")
        indexes = {ix["name"]: ix["column_names"] for ix in found.get_indexes("ledger")}
        primary = found.get_pk_constraint("ledger")["constrained_columns"]
    finally:
        engine.dispose()
    assert tuple(c["name"] for c in columns) == LEDGER_COLUMNS == tuple(LEDGER.c.keys())
    assert {c["name"]: c["nullable"] for c in columns} == {c.name: c.nullable for c in LEDGER.c}
    assert primary == ["request_id"]
    assert indexes == {
        "ix_ledger_ts": ["ts"],
        "ix_ledger_tenant_ts": ["tenant_id", "ts"],
        "ix_ledger_key_ts": ["key_id", "ts"],
    }
    if "postgresql" in ledger_url:
        ts = next(c for c in columns if c["name"] == "ts")
        assert getattr(ts["type"], "timezone", None) is True  # TIMESTAMPTZ


def test_rows_round_trip_exactly(ledger_url: str) -> None:
    plain = row("r-plain")
    odd = row(
        "r-odd",
        ts=datetime(2026, 11, 28, 0, 30, tzinfo=timezone(timedelta(hours=2))),  # stored as 22:30 UTC
        tenant_id=None,
        key_id=None,
        cost_nanos=None,
        input_tokens=2**62,
        ttft_ms=None,
        cache_hit=True,
        stream=False,
        model="modèle/ünïcode ✓",
        attempts=(),
    )
    write(ledger_url, [plain, odd])
    got = stored(ledger_url)
    assert got["r-plain"] == plain
    assert got["r-odd"] == replace(odd, ts=datetime(2026, 11, 27, 22, 30, tzinfo=UTC))


def test_writes_are_idempotent_per_request_id(ledger_url: str) -> None:
    first = row("a", cost_nanos=1)
    write(
        ledger_url,
        [first, row("b"), replace(first, cost_nanos=999)],  # twice in one batch: the first wins
        [row("b"), row("c")],  # a replay overlapping the last batch
        [replace(first, status="upstream_error")],  # a late duplicate never overwrites
    )
    got = stored(ledger_url)
    assert sorted(got) == ["a", "b", "c"]
    assert got["a"] == first


def test_another_request_reusing_a_request_id_keeps_its_own_row(ledger_url: str) -> None:
    """`x-request-id` may come from the client, and a client may send one twice: the second request is
    stored as `<id>~<hash>` instead of being dropped as a duplicate, and replays of either still are."""
    first = row("dup", cost_nanos=1)
    second = row("dup", cost_nanos=2, ts=TS + timedelta(seconds=1))
    third = row("dup", cost_nanos=3, ts=TS + timedelta(seconds=2))
    write(
        ledger_url,
        [first, second, second],  # another request in the same batch, and its replay
        [third, first, second],  # another in a later batch, with replays of both earlier ones
        [third],
    )
    got = stored(ledger_url)
    assert len(got) == 3 and got["dup"] == first
    others = sorted((r for rid, r in got.items() if rid != "dup"), key=lambda r: r.cost_nanos or 0)
    assert [r.cost_nanos for r in others] == [2, 3]
    assert all(r.request_id.startswith("dup~") and len(r.request_id) == 24 for r in others)
    assert others[0] == replace(second, request_id=others[0].request_id)


def edge_rows(prefix: str) -> list[LedgerRow]:
    """Values at the edges of what a sanitised row holds."""
    return [
        row(f"{prefix}plain"),
        row(  # microseconds, another offset: stored as 2026-11-27 19:00:15.123456 UTC
            f"{prefix}micro",
            ts=datetime(2026, 11, 28, 0, 30, 15, 123_456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        row(f"{prefix}last-micro", ts=datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        row(f"{prefix}epoch", ts=datetime(1970, 1, 1, tzinfo=UTC), latency_ms=0, ttft_ms=0),
        row(
            f"{prefix}nulls",
            tenant_id=None,
            key_id=None,
            route=None,
            provider=None,
            model=None,
            error_class=None,
            cost_nanos=None,
            price_source=None,
            ttft_ms=None,
            attempts=(),
        ),
        row(  # past 2**53, where a float would lose the last nano-dollar; up to BIGINT's maximum
            f"{prefix}big",
            key_id="k-big",
            input_tokens=2**63 - 1,
            output_tokens=2**53 + 1,
            cached_tokens=2**62,
            cost_nanos=2**62 + 1,
            cost_saved_nanos=2**53 + 3,
            latency_ms=2**31 - 1,
            ttft_ms=2**31 - 1,
            http_status=999,
            stream=False,
            cache_hit=True,
            usage_estimated=False,
        ),
        sanitize(  # NUL bytes stripped, lone surrogates replaced, the rest of the unicode kept
            row(
                f"{prefix}text",
                tenant_id="t\x00nul",
                model="modèle/ünïcode ✓ 🚀 日本語",
                error_class="bad\ud800surrogate",
                route="'quoted'; DROP TABLE ledger; --",
                attempts=(LedgerAttempt("p\x00", "m ✓", "error", "nul \x00 and 🚀", 7, 503, "http"),),
            )
        ),
    ]


@pytest.fixture(params=["rowcount", "no-rowcount"])
def rowcount(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With "no-rowcount" the sink is told nothing of how many rows its INSERT inserted, so every batch
    takes the slow path: rows just inserted must read back as sent, or they would be stored twice."""
    if request.param == "no-rowcount":
        insert = SqlLedgerSink._insert

        def unknown(self: SqlLedgerSink, conn: Any, values: list[dict[str, Any]]) -> int:
            insert(self, conn, values)
            return -1  # what a DB-API driver reports when it cannot tell

        monkeypatch.setattr(SqlLedgerSink, "_insert", unknown)
    return str(request.param)


def report_rows(url: str) -> tuple[dict[str, LedgerRow], dict[str, Any]]:
    """Every row through the reports' `requests` page, and usage totals by key."""

    async def go() -> tuple[Any, Any, Any]:
        reports = Reports(url)
        try:
            page = await reports.requests(Filters(), limit=1000, after=None)
            big = await reports.usage("key", Filters(key_id="k-big"))
            others = await reports.usage("key", Filters(key_id="k1"))
            return page, big, others
        finally:
            reports.close()

    page, big, others = run(go())
    assert not page.has_more
    rows = {r["request_id"]: LedgerRow.from_json({**r, "ts": r["ts"].isoformat()}) for r in page.rows}
    return rows, {"k-big": big.total, "k1": others.total}


def test_edge_values_round_trip_exactly(ledger_url: str, rowcount: str) -> None:
    rows = edge_rows("")
    write(ledger_url, rows[:3], rows[3:])
    expected = {r.request_id: replace(r, ts=utc(r.ts)) for r in rows}
    assert stored(ledger_url) == expected  # read back through SQLAlchemy: nothing added, nothing changed
    got, totals = report_rows(ledger_url)
    assert got == expected
    text = expected["text"]
    assert (text.tenant_id, text.error_class) == ("tnul", "bad?surrogate")
    assert text.attempts[0].provider == "p" and text.attempts[0].error == "nul  and 🚀"
    big = expected["big"]
    assert totals["k-big"].requests == 1
    assert (totals["k-big"].input_tokens, totals["k-big"].cost_nanos) == (2**63 - 1, 2**62 + 1)
    assert (totals["k-big"].output_tokens, totals["k-big"].cost_saved_nanos) == (2**53 + 1, 2**53 + 3)
    assert big.cost_nanos == 2**62 + 1
    k1 = [r for r in expected.values() if r.key_id == "k1"]
    assert totals["k1"].requests == len(k1)
    assert totals["k1"].cost_nanos == sum(r.cost_nanos or 0 for r in k1)
    assert totals["k1"].cost_unknown_requests == 0


def raw_rows(url: str) -> dict[str, str]:
    """Each row as the database holds it, by request id: SQLite's `quote()` of every column (type and
    text, so 1 is not '1'), PostgreSQL's text form of the row."""
    if "postgresql" in url:
        with psycopg.connect(url) as conn:
            conn.execute("SET TimeZone TO 'UTC'")
            found = conn.execute("SELECT request_id, ledger::text FROM ledger").fetchall()
    else:
        quoted = " || ',' || ".join(f"quote({c})" for c in LEDGER_COLUMNS)
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            found = db.execute(f"SELECT request_id, {quoted} FROM ledger").fetchall()
    return {str(rid): str(text) for rid, text in found}


def test_rows_are_stored_as_a_sqlalchemy_core_insert_stores_them(ledger_url: str) -> None:
    """The sink's own INSERT against the one it replaced, `insert(LEDGER).on_conflict_do_nothing()`
    executed by SQLAlchemy with a list of dicts: the same bytes in every column."""
    core = edge_rows("core-")
    engine = create_engine(engine_url(ledger_url))
    dialect = postgresql if "postgresql" in ledger_url else sqlite
    try:
        with engine.begin() as conn:
            values = [{**r.to_columns(), "ts": utc(r.ts)} for r in core]
            conn.execute(dialect.insert(LEDGER).on_conflict_do_nothing(index_elements=["request_id"]), values)
    finally:
        engine.dispose()
    write(ledger_url, edge_rows("sink-"))
    raw = raw_rows(ledger_url)
    assert len(raw) == 2 * len(core)
    for r in core:
        name = r.request_id.removeprefix("core-")
        assert raw[f"sink-{name}"] == raw[r.request_id].replace("core-", "sink-", 1), name


def test_a_batch_with_taken_ids_skips_replays_renames_reuses_and_inserts_the_rest(
    ledger_url: str, rowcount: str
) -> None:
    a, b, c = row("a", cost_nanos=1), row("b", cost_nanos=2), row("c", cost_nanos=3)
    b_again = replace(b, ts=b.ts + timedelta(microseconds=1), cost_nanos=20)  # another request, 1 µs later
    c_again = replace(c, latency_ms=c.latency_ms + 1, cost_nanos=30)  # another request, as slow + 1 ms
    a_again = replace(a, key_id="k2", cost_nanos=10)  # another key, in the same batch as a's replay
    new = edge_rows("new-")
    write(
        ledger_url,
        [a, b, c],
        [new[0], a, b_again, new[1], c_again, *new[2:], a_again, b_again],
    )
    got = stored(ledger_url)
    assert len(got) == 3 + 3 + len(new)
    assert (got["a"], got["b"], got["c"]) == (a, b, c)  # the first request under an id keeps it
    for r in new:
        assert got[r.request_id] == replace(r, ts=utc(r.ts))
    renamed = {r.cost_nanos: r for rid, r in got.items() if "~" in rid}
    assert set(renamed) == {10, 20, 30}
    for again in (a_again, b_again, c_again):
        kept = renamed[again.cost_nanos]
        assert kept.request_id.startswith(f"{again.request_id}~") and len(kept.request_id) == 22
        assert kept == replace(again, request_id=kept.request_id)

    # A replay of both batches, all ids taken (rowcount 0): nothing changes.
    write(ledger_url, [a_again, c_again, *new, b_again, a, b, c])
    assert stored(ledger_url) == got


def test_a_batch_of_new_ids_is_one_insert_and_nothing_else(ledger_url: str) -> None:
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        statements.append(("executemany " if executemany else "") + statement.split(" (")[0])

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        write(ledger_url, [row(f"n{i}") for i in range(64)])
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    expected = ["executemany INSERT INTO ledger"]
    if "postgresql" in ledger_url:
        expected.insert(0, "SET LOCAL statement_timeout = 5000")
    assert statements == expected  # no SELECT, no RETURNING
    assert sorted(stored(ledger_url)) == sorted(f"n{i}" for i in range(64))


def test_a_poison_row_refuses_its_batch_as_data(ledger_url: str) -> None:
    poisons = [row("p1", status=None), row("p2", input_tokens=2**64), row("p3", model="\ud800")]
    if "postgresql" in ledger_url:
        poisons.append(row("p4", tenant_id="nul\x00byte"))  # SQLite stores it; PostgreSQL refuses it

    async def go() -> None:
        sink = SqlLedgerSink(ledger_url)
        try:
            for poison in poisons:
                with pytest.raises(RowRefusedError) as caught:
                    await sink.write([row(f"good-{poison.request_id}"), poison])
                assert isinstance(caught.value, ValueError)
                assert not isinstance(caught.value, ServiceUnavailableError)
        finally:
            sink.close()

    run(go())
    assert stored(ledger_url) == {}  # one transaction per batch: nothing of it landed


class _PoisoningSink(SqlLedgerSink):
    """Turns rows routed to "POISON" into a NOT NULL violation after the ledger sanitised them, so the
    database itself refuses them."""

    async def write(self, rows: Any) -> None:
        await super().write([replace(r, status=None) if r.route == "POISON" else r for r in rows])


def test_the_ledger_isolates_a_poison_row_and_keeps_the_rest(ledger_url: str, tmp_path: Path) -> None:
    rows = [row(f"r{i}", route="POISON" if i == 7 else "default") for i in range(20)]

    async def go() -> Ledger:
        sink = _PoisoningSink(ledger_url)
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()
        for r in rows:
            ledger.record(r)
        await wait_until_settled(ledger)
        await ledger.drain(5)
        sink.close()
        return ledger

    ledger = run(go())
    assert sorted(stored(ledger_url)) == sorted(r.request_id for r in rows if r.route != "POISON")
    assert ledger.stats.rows_rejected == 1
    assert b'"r7"' in (tmp_path / "spool.jsonl.rejected").read_bytes()


def test_seed_spent_sums_calendar_windows_exactly(ledger_url: str) -> None:
    def at(year: int, month: int, day: int, hour: int = 0, last: bool = False) -> datetime:
        """Midnight, or with `last` the final microsecond before the next midnight, of a UTC day."""
        if last:
            return datetime(year, month, day, 23, 59, 59, 999_999, tzinfo=UTC)
        return datetime(year, month, day, hour, tzinfo=UTC)

    write(
        ledger_url,
        [
            row("day-start", ts=at(2026, 11, 27), cost_nanos=1),
            row("day-end", ts=at(2026, 11, 27, last=True), cost_nanos=10),
            row("next-day", ts=at(2026, 11, 28), cost_nanos=100),
            row("prev-day", ts=at(2026, 11, 26, last=True), cost_nanos=1_000),
            row("month-start", ts=at(2026, 11, 1), cost_nanos=10_000),
            row("prev-month", ts=at(2026, 10, 31, last=True), cost_nanos=100_000),
            row("next-month", ts=at(2026, 12, 1), cost_nanos=1_000_000),
            row("unknown-price", ts=at(2026, 11, 27, 12), cost_nanos=None),
            row("other-key", ts=at(2026, 11, 27, 12), key_id="k2", cost_nanos=10_000_000),
            row("other-tenant", ts=at(2026, 11, 27, 12), tenant_id="t2", key_id="k9", cost_nanos=10**8),
            # Past 2**53: a float would lose the 1 nano-dollar.
            row("big-1", ts=at(2026, 11, 27, 12), key_id="k3", tenant_id="t3", cost_nanos=2**53 - 1),
            row("big-2", ts=at(2026, 11, 27, 13), key_id="k3", tenant_id="t3", cost_nanos=2),
        ],
    )

    async def go() -> dict[str, int]:
        sink = SqlLedgerSink(ledger_url)
        try:
            out = {}
            cases: list[tuple[str, Period]] = [
                ("key:k1", "day"),
                ("key:k1", "month"),
                ("key:k1", "total"),
                ("tenant:t1", "day"),
                ("tenant:t1", "month"),
                ("tenant:t1", "total"),
                ("key:k3", "day"),
                ("key:nobody", "total"),
            ]
            for name, period in cases:
                window = window_for(period, at(2026, 11, 27, 15).timestamp())
                scope = BudgetScope(name, 10**12, period)
                out[f"{name}/{period}"] = await sink.seed_spent(scope, window.start)
            # Any instant of the window names it, whatever its offset.
            local = datetime(2026, 11, 27, 1, tzinfo=timezone(timedelta(hours=1)))
            out["local"] = await sink.seed_spent(BudgetScope("key:k1", 1, "day"), local)
            with pytest.raises(ValueError):
                await sink.seed_spent(BudgetScope("model:x", 1, "day"), local)
            return out
        finally:
            sink.close()

    assert run(go()) == {
        "key:k1/day": 11,
        "key:k1/month": 11_111,
        "key:k1/total": 1_111_111,
        "tenant:t1/day": 10_000_011,
        "tenant:t1/month": 10_011_111,
        "tenant:t1/total": 11_111_111,
        "key:k3/day": 2**53 + 1,
        "key:nobody/total": 0,
        "local": 11,
    }


def test_a_closed_sink_reports_unavailable_so_rows_are_spooled(ledger_url: str) -> None:
    async def go() -> None:
        sink = SqlLedgerSink(ledger_url)
        sink.close()
        with pytest.raises(ServiceUnavailableError):
            await sink.write([row("late")])

    run(go())


# --- outages ---------------------------------------------------------------------------------------


async def wait_until_settled(ledger: Ledger, timeout_s: float = 20.0) -> None:
    """Until every recorded row is confirmed by the database (queue and spool empty)."""
    deadline = time.monotonic() + timeout_s
    while ledger.queue_depth or ledger.spool_depth:
        assert time.monotonic() < deadline, (ledger.queue_depth, ledger.spool_depth, ledger.stats)
        await asyncio.sleep(0.05)


async def record_through(
    ledger: Ledger,
    outage: Any,
    recover: Any,
    *,
    seconds: float = 3.0,
    down_at: float = 0.5,
    up_at: float = 2.2,
) -> list[LedgerRow]:
    """Record a row every 10 ms for `seconds`, with the database unavailable from `down_at` to `up_at`."""
    rows: list[LedgerRow] = []
    start = time.monotonic()
    down = up = False
    i = 0
    while (elapsed := time.monotonic() - start) < seconds:
        if not down and elapsed >= down_at:
            await outage()
            down = True
        if down and not up and elapsed >= up_at:
            await recover()
            up = True
        rows.append(row(f"o{i:05d}", cost_nanos=i, ts=TS + timedelta(milliseconds=i)))
        ledger.record(rows[-1])
        i += 1
        await asyncio.sleep(0.01)
    return rows


def assert_nothing_lost(url: str, rows: list[LedgerRow], ledger: Ledger) -> None:
    got = stored(url)
    assert len(got) == len(rows)  # the primary key rules out duplicates; this rules out losses
    assert got == {r.request_id: r for r in rows}
    assert ledger.stats.rows_spooled > 0 and ledger.stats.rows_replayed > 0, ledger.stats  # it did go down
    assert ledger.stats.rows_rejected == 0


def migrated(url: str) -> str:
    store = SqlStore(url)
    store.upgrade()
    store.close()
    return url


def test_sqlite_write_lock_outage_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    ledger_url = migrated(f"sqlite:///{tmp_path / 'ledger.db'}")
    blocker = sqlite3.connect(tmp_path / "ledger.db", timeout=10, isolation_level=None)

    async def go() -> tuple[list[LedgerRow], Ledger]:
        sink = SqlLedgerSink(ledger_url)
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()

        async def lock() -> None:
            blocker.execute("BEGIN EXCLUSIVE")  # every other writer now waits, then fails: "locked"

        async def unlock() -> None:
            blocker.execute("COMMIT")

        rows = await record_through(ledger, lock, unlock, up_at=4.0, seconds=4.5)
        await wait_until_settled(ledger)
        await ledger.drain(5)
        sink.close()
        return rows, ledger

    try:
        rows, ledger = run(go())
    finally:
        blocker.close()
    assert_nothing_lost(ledger_url, rows, ledger)


class TcpProxy:
    """127.0.0.1:port -> target; `stop` refuses new connections and cuts the open ones."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._open.discard(writer)


def test_postgres_connection_refused_outage_loses_and_duplicates_nothing(
    postgres: Postgres, tmp_path: Path
) -> None:
    direct = migrated(postgres.new_database())  # the migration and the final count skip the proxy
    name = direct.rsplit("/", 1)[1]

    async def go() -> tuple[list[LedgerRow], Ledger]:
        proxy = TcpProxy(postgres.host, postgres.port)
        await proxy.start()
        sink = SqlLedgerSink(f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}")
        ledger = Ledger(sink, tmp_path / "spool.jsonl", **FAST)
        await ledger.start()
        rows = await record_through(ledger, proxy.stop, proxy.start)
        await wait_until_settled(ledger)
        await ledger.drain(5)
        sink.close()
        await proxy.stop()
        return rows, ledger

    rows, ledger = run(go())
    assert_nothing_lost(direct, rows, ledger)
    engine = create_engine(engine_url(direct))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(LEDGER)).scalar_one() == len(rows)
    engine.dispose()
