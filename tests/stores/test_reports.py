"""Report queries on SQLite and PostgreSQL: UTC days whatever the session time zone, truncation that
keeps the total exact, newest-first paging through equal timestamps, the tenant restriction, and query
plans that use the ledger's indexes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from ai_gateway.errors import InvalidRequestError, ServiceUnavailableError
from ai_gateway.policy.budgets import BudgetScope
from ai_gateway.policy.ledger_row import LedgerRow
from ai_gateway.stores.ledger_sql import SqlLedgerSink
from ai_gateway.stores.reports import Filters, Reports, Sums
from ai_gateway.stores.sql import Limits, SqlStore

T0 = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def row(rid: str, minutes: int, **kw: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "request_id": rid,
        "ts": T0 + timedelta(minutes=minutes),
        "status": "ok",
        "http_status": 200,
        "endpoint": "simple_chat",
        "tenant_id": "t1",
        "key_id": "k1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_nanos": 7,
    }
    base.update(kw)
    return LedgerRow(**base)


def seed(url: str, rows: list[LedgerRow]) -> None:
    async def go() -> None:
        sink = SqlLedgerSink(url)
        try:
            await sink.write(rows)
        finally:
            sink.close()

    run(go())


def report(url: str, call: Any) -> Any:
    async def go() -> Any:
        reports = Reports(url)
        try:
            return await call(reports)
        finally:
            reports.close()

    return run(go())


def test_days_are_utc_whatever_the_session_time_zone(ledger_url: str) -> None:
    if "postgresql" in ledger_url:  # every new session of this database now starts in New York
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            conn.execute(
                f"ALTER DATABASE \"{ledger_url.rsplit('/', 1)[1]}\" SET timezone TO 'America/New_York'"
            )
    seed(ledger_url, [row("a", 0), row("b", 59, cost_nanos=None), row("c", 60), row("d", 60 * 24 - 1)])
    got = report(ledger_url, lambda r: r.usage("day", Filters()))
    assert [(u.group["day"], u.sums.requests, u.sums.cost_nanos) for u in got.rows] == [
        ("2026-11-27", 2, 7),
        ("2026-11-28", 2, 14),
    ]
    assert got.total == Sums(4, 40, 80, 0, 21, 1, 0, 0, 0)


def test_truncated_groups_keep_an_exact_total(ledger_url: str) -> None:
    seed(ledger_url, [row(f"r{i}", i, model=f"m{i % 3}", cost_nanos=10**i) for i in range(6)])
    got = report(ledger_url, lambda r: r.usage("model", Filters(), max_rows=2))
    assert got.truncated and len(got.rows) == 2
    assert got.total.cost_nanos == 111_111 and got.total.requests == 6
    assert [u.group["model"] for u in got.rows] == ["m2", "m1"]  # the most expensive first


def test_paging_is_newest_first_through_equal_timestamps(ledger_url: str) -> None:
    rows = [row(f"r{i:02d}", i // 4) for i in range(10)]  # four rows share each minute
    seed(ledger_url, rows)

    async def walk(reports: Reports) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await reports.requests(Filters(), limit=3, after=after)
            seen += [r["request_id"] for r in page.rows]
            if not page.has_more:
                return seen
            after = page.rows[-1]["request_id"]

    assert report(ledger_url, walk) == [
        r.request_id for r in sorted(rows, key=lambda r: (r.ts, r.request_id), reverse=True)
    ]
    with pytest.raises(InvalidRequestError) as caught:
        report(ledger_url, lambda r: r.requests(Filters(), limit=3, after="no-such-id"))
    assert caught.value.param == "after"


def test_tenant_filters_by_name_and_the_restriction_wins(ledger_url: str) -> None:
    store = SqlStore(ledger_url)
    acme = store.create_tenant("acme", Limits())
    store.close()
    seed(
        ledger_url,
        [row("a", 0, tenant_id=acme.id), row("b", 1, tenant_id="other"), row("c", 2, tenant_id=None)],
    )

    def total(f: Filters) -> int:
        return int(report(ledger_url, lambda r: r.usage("tenant", f)).total.requests)

    assert total(Filters(tenant="acme")) == total(Filters(tenant=acme.id)) == 1
    assert total(Filters(within_tenant="other")) == 1
    assert total(Filters(tenant="acme", within_tenant="other")) == 0  # another tenant: nothing
    assert total(Filters(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=2))) == 1
    tenants = report(ledger_url, lambda r: r.usage("tenant", Filters())).rows
    assert {u.group["tenant_id"]: u.group["tenant"] for u in tenants} == {
        acme.id: "acme",
        "other": None,
        None: None,
    }


def test_report_and_seed_queries_use_the_ledger_indexes(ledger_url: str) -> None:
    seed(ledger_url, [row(f"r{i}", i, tenant_id=f"t{i % 5}", key_id=f"k{i % 7}") for i in range(200)])
    window = Filters(since=T0, until=T0 + timedelta(hours=1))
    cases = [
        ("ix_ledger_ts", lambda r: r.usage("model", window)),
        ("ix_ledger_tenant_ts", lambda r: r.usage("day", Filters(T0, None, "t1"))),
        ("ix_ledger_key_ts", lambda r: r.usage("provider", Filters(T0, None, None, "k1"))),
        ("ix_ledger_ts", lambda r: r.requests(window, limit=10, after=None)),
    ]
    for index, call in cases:
        assert index in plan_of(ledger_url, call, "ledger.ts"), index

    async def seeded(sink: SqlLedgerSink) -> int:
        return await sink.seed_spent(BudgetScope("key:k1", 1, "day"), T0)

    assert "ix_ledger_key_ts" in plan_of(ledger_url, seeded, "sum(", sink=True)


def plan_of(url: str, call: Any, marker: str, sink: bool = False) -> str:
    """The query plan of the statement `call` runs that mentions `marker`, with sequential scans off
    on PostgreSQL (a table this small would otherwise be scanned whatever the indexes)."""
    seen: list[tuple[str, Any]] = []

    async def go() -> str:
        owner: Any = SqlLedgerSink(url) if sink else Reports(url)
        engine = owner._engine

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if marker in statement.lower() and "explain" not in statement.lower():
                seen.append((statement, params))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            await call(owner)
            statement, params = seen[-1]
            with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SET enable_seqscan = off")
                    lines = conn.exec_driver_sql("EXPLAIN " + statement, params).scalars().all()
                else:
                    lines = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
            return "\n".join(lines)
        finally:
            owner.close()

    return str(run(go()))


def test_too_many_reports_at_once_is_a_503_not_a_queue(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ai_gateway.stores.reports._MAX_WAITING", 0)
    with pytest.raises(ServiceUnavailableError) as caught:
        report(ledger_url, lambda r: r.usage("model", Filters()))
    assert caught.value.code == "reports_busy" and caught.value.retry_after
