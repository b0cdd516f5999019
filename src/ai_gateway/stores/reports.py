"""Usage reports over the ledger table: sums grouped by tenant, key, model, provider or UTC day, and the
rows themselves, newest first. Served by the admin API and `GET /v1/usage`, never on a model call.

    reports = Reports(settings.database_url)
    report = await reports.usage("model", Filters(since=..., until=..., tenant="acme"))
    page = await reports.requests(Filters(status="upstream_error"), limit=50, after=None)

Every query is a range over `ts` (index `ix_ledger_ts`), or over `(tenant_id, ts)` / `(key_id, ts)` when
filtered by tenant or key, aggregated with GROUP BY; tenant and key names are joined onto the (few)
groups afterwards. Sums are integers (nano-dollars, tokens), so a total is exactly the sum of its rows.

Reports get their own small engine and threads (`_ledger_db.py`), so however slow or numerous they are,
they never hold a connection or a thread the request path or the ledger writer needs. Too many at once
is a 503 `reports_busy` rather than an unbounded queue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    Select,
    String,
    and_,
    case,
    column,
    func,
    or_,
    select,
    table,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ai_gateway.errors import InvalidRequestError, ServiceUnavailableError
from ai_gateway.stores._ledger_db import LEDGER, Worker, ledger_engine, mapped, statement_timeout, utc

__all__ = [
    "GROUPS",
    "GROUP_FIELDS",
    "SUM_FIELDS",
    "Filters",
    "GroupBy",
    "Reports",
    "RequestsPage",
    "Sums",
    "UsageReport",
    "UsageRow",
]

T = TypeVar("T")
GroupBy = Literal["tenant", "key", "model", "provider", "day"]
GROUPS: tuple[GroupBy, ...] = get_args(GroupBy)
# The fields that name a group, in output order; `tenant` and `key` are names, the rest ledger columns.
GROUP_FIELDS: Mapping[GroupBy, tuple[str, ...]] = {
    "tenant": ("tenant_id", "tenant"),
    "key": ("key_id", "key", "tenant_id"),
    "model": ("provider", "model"),
    "provider": ("provider",),
    "day": ("day",),
}
_OK_STATUSES = ("ok", "cache_hit")
_THREADS = 2
_MAX_WAITING = 8  # reports running or queued per replica before new ones get a 503
_TIMEOUT_S = 30.0

_L = LEDGER.c
_tenants = table("tenants", column("id", String), column("name", String))
_keys = table("api_keys", column("id", String), column("name", String))


class _UtcDay(FunctionElement[str]):
    """The UTC calendar date of a timestamp as 'YYYY-MM-DD', in each backend's own SQL."""

    type = String()
    name = "utc_day"
    inherit_cache = True


@compiles(_UtcDay, "sqlite")
def _utc_day_sqlite(element: _UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite holds timestamps as UTC wall-clock text ('2026-11-27 13:45:00.000000').
    return f"date({compiler.process(next(iter(element.clauses)), **kw)})"


@compiles(_UtcDay, "postgresql")
def _utc_day_postgresql(element: _UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # Explicit: the session's TimeZone setting must not move a request to another day.
    return f"to_char({compiler.process(next(iter(element.clauses)), **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@dataclass(frozen=True, slots=True)
class Filters:
    """`since` inclusive, `until` exclusive. `tenant` is an id or a name; `within_tenant` (an id) is a
    hard restriction on top of every other filter, for a tenant reading its own usage."""

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    key_id: str | None = None
    status: str | None = None
    within_tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Sums:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int = 0  # known costs only
    cost_unknown_requests: int = 0  # rows with no known price: `cost_nanos` is a lower bound if > 0
    cost_saved_nanos: int = 0  # by cache hits
    cache_hits: int = 0
    errors: int = 0  # requests that did not end `ok` or `cache_hit`

    def __add__(self, other: Sums) -> Sums:
        return Sums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Sums)))


SUM_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Sums))


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: Mapping[str, str | None]  # GROUP_FIELDS[group_by] -> value (None: no tenant/key/provider)
    sums: Sums


@dataclass(frozen=True, slots=True)
class UsageReport:
    group_by: GroupBy
    rows: list[UsageRow]
    total: Sums
    truncated: bool = False  # more groups than `max_rows`; `total` still covers all of them


@dataclass(frozen=True, slots=True)
class RequestsPage:
    rows: list[dict[str, Any]] = field(default_factory=list)  # LEDGER_COLUMNS; ts aware, attempts a list
    has_more: bool = False


_METRICS = (
    func.count().label("requests"),
    func.coalesce(func.sum(_L.input_tokens), 0).label("input_tokens"),
    func.coalesce(func.sum(_L.output_tokens), 0).label("output_tokens"),
    func.coalesce(func.sum(_L.cached_tokens), 0).label("cached_tokens"),
    func.coalesce(func.sum(_L.cost_nanos), 0).label("cost_nanos"),
    (func.count() - func.count(_L.cost_nanos)).label("cost_unknown_requests"),
    func.coalesce(func.sum(_L.cost_saved_nanos), 0).label("cost_saved_nanos"),
    func.coalesce(func.sum(case((_L.cache_hit, 1), else_=0)), 0).label("cache_hits"),
    func.coalesce(func.sum(case((_L.status.in_(_OK_STATUSES), 0), else_=1)), 0).label("errors"),
)


def _group_columns(group_by: GroupBy) -> list[ColumnElement[Any]]:
    if group_by == "day":
        return [_UtcDay(_L.ts).label("day")]
    columns = {"tenant": ["tenant_id"], "key": ["key_id", "tenant_id"], "model": ["provider", "model"]}
    return [_L[name] for name in columns.get(group_by, [group_by])]


def _sums(row: Any) -> Sums:
    # PostgreSQL's SUM(bigint) is NUMERIC (a Decimal here): exact, and an int again at once.
    return Sums(*(int(getattr(row, name)) for name in SUM_FIELDS))


class Reports:
    def __init__(self, url: str) -> None:
        with mapped("connecting"):
            self._engine = ledger_engine(url, connections=_THREADS)
        self._worker = Worker("reports-sql", _THREADS)
        self._waiting = 0

    def close(self) -> None:
        self._worker.close()
        self._engine.dispose()

    async def usage(self, group_by: GroupBy, filters: Filters, *, max_rows: int = 10_000) -> UsageReport:
        if group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {GROUPS}")
        return await self._run(self._usage, group_by, filters, max_rows)

    async def requests(self, filters: Filters, *, limit: int, after: str | None) -> RequestsPage:
        """Newest first (`ts`, then request id, descending); `after` is the last request id of the
        previous page. Rows that arrive late with an older `ts` (a spool replay) show up on later pages."""
        return await self._run(self._requests, filters, limit, after)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._waiting >= _MAX_WAITING:
            raise ServiceUnavailableError(
                "Too many usage reports are running; try again shortly.", code="reports_busy", retry_after=2
            )
        self._waiting += 1
        try:
            return await self._worker.run(fn, *args)
        finally:
            self._waiting -= 1

    # --- in the worker threads -------------------------------------------------------------------

    def _usage(self, group_by: GroupBy, filters: Filters, max_rows: int) -> UsageReport:
        groups = _group_columns(group_by)
        with mapped("reading usage"), self._engine.connect() as conn:
            statement_timeout(conn, _TIMEOUT_S)
            where = self._where(conn, filters)
            agg = select(*groups, *_METRICS).where(*where).group_by(*groups).subquery()
            query = _named(agg, group_by).limit(max_rows + 1)
            result = conn.execute(query).all()
            truncated = len(result) > max_rows
            rows = [
                UsageRow({name: getattr(r, name) for name in GROUP_FIELDS[group_by]}, _sums(r))
                for r in result[:max_rows]
            ]
            if truncated:
                total = _sums(conn.execute(select(*_METRICS).where(*where)).one())
            else:
                total = sum((r.sums for r in rows), Sums())
        return UsageReport(group_by, rows, total, truncated)

    def _requests(self, filters: Filters, limit: int, after: str | None) -> RequestsPage:
        with mapped("reading ledger rows"), self._engine.connect() as conn:
            statement_timeout(conn, _TIMEOUT_S)
            where = self._where(conn, filters)
            if after is not None:
                ts = conn.execute(select(_L.ts).where(_L.request_id == after)).scalar()
                if ts is None:
                    raise InvalidRequestError(
                        "Unknown cursor: pass the last_id of the previous page as after.",
                        param="after",
                        code="invalid_cursor",
                    )
                where.append(or_(_L.ts < ts, and_(_L.ts == ts, _L.request_id < after)))
            query = select(LEDGER).where(*where).order_by(_L.ts.desc(), _L.request_id.desc()).limit(limit + 1)
            result = conn.execute(query).mappings().all()
        return RequestsPage([_ledger_row(r) for r in result[:limit]], len(result) > limit)

    @staticmethod
    def _where(conn: Connection, f: Filters) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if f.since is not None:
            where.append(_L.ts >= utc(f.since))
        if f.until is not None:
            where.append(_L.ts < utc(f.until))
        if f.within_tenant is not None:
            where.append(_L.tenant_id == f.within_tenant)
        if f.tenant is not None:
            # An id, or a name resolved first: `tenant_id IN (...)` keeps the (tenant_id, ts) index usable.
            named = select(_tenants.c.id).where(_tenants.c.name == f.tenant)
            ids = {f.tenant, *conn.execute(named).scalars()}
            where.append(_L.tenant_id.in_(sorted(ids)))
        if f.key_id is not None:
            where.append(_L.key_id == f.key_id)
        if f.status is not None:
            where.append(_L.status == f.status)
        return where


def _named(agg: Any, group_by: GroupBy) -> Select[Any]:
    """The aggregated groups with tenant or key names joined on, in report order: days in order, other
    groups by cost, then requests, descending."""
    if group_by == "tenant":
        query = select(agg, _tenants.c.name.label("tenant")).select_from(
            agg.outerjoin(_tenants, _tenants.c.id == agg.c.tenant_id)
        )
    elif group_by == "key":
        query = select(agg, _keys.c.name.label("key")).select_from(
            agg.outerjoin(_keys, _keys.c.id == agg.c.key_id)
        )
    else:
        query = select(agg)
    if group_by == "day":
        return query.order_by(agg.c.day)
    tiebreak: Sequence[Any] = [agg.c[name] for name in GROUP_FIELDS[group_by] if name in agg.c]
    return query.order_by(agg.c.cost_nanos.desc(), agg.c.requests.desc(), *tiebreak)


def _ledger_row(values: RowMapping) -> dict[str, Any]:
    row = {str(k): v for k, v in values.items()}
    row["ts"] = utc(row["ts"])
    try:
        row["attempts"] = orjson.loads(row["attempts"])
    except orjson.JSONDecodeError:  # written by hand, or by something else: show it, do not fail the page
        row["attempts"] = []
    return row
