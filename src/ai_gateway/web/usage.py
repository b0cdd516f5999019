"""`GET /v1/usage` (scope `usage:read`), and the parsing and rendering it shares with the admin API's
`/admin/usage`, `/admin/usage.csv` and `/admin/requests` (web/admin.py).

Money leaves as `cost_usd`, a JSON number written from the exact decimal (never through a float), next
to `cost_nanos`, the same amount as an integer of nano-dollars that totals can be checked against
exactly. `cost_unknown_requests` counts rows whose price is unknown: when it is not 0, the cost is a
lower bound.

`since` and `until` take an ISO 8601 date or date-time; without an offset they are UTC. `since` is
inclusive and `until` exclusive, except that `until` given as a bare date includes that whole day, so
`since=2026-11-01&until=2026-11-30` is all of November.

A key sees only its own tenant's usage: its `tenant` and `key` filters narrow within that tenant, and one
naming another tenant simply matches nothing (no 404, so nothing is learnt about other tenants). The
master key, and the loopback admin of open mode, see every tenant.
"""

from __future__ import annotations

import csv
import io
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from ai_gateway.errors import InvalidRequestError, PermissionDeniedError
from ai_gateway.policy.auth import principal_of
from ai_gateway.policy.pricing import format_usd
from ai_gateway.stores.reports import (
    GROUP_FIELDS,
    GROUPS,
    SUM_FIELDS,
    Filters,
    GroupBy,
    Reports,
    Sums,
    UsageReport,
)
from ai_gateway.web._asgi import Request, Send

__all__ = [
    "USAGE_PARAMS",
    "UsageEndpoint",
    "check_params",
    "group_by_of",
    "parse_time",
    "render_csv",
    "render_ledger_row",
    "render_usage",
    "usage_filters",
]

USAGE_PARAMS = frozenset({"group_by", "since", "until", "tenant", "key"})
_MAX_PARAM_CHARS = 128
# A `+02:00` offset arrives as ` 02:00` when the client did not percent-encode the plus sign.
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def parse_time(value: str, param: str, *, end: bool = False) -> datetime:
    """An ISO 8601 date or date-time as aware UTC; a bare date is its midnight, or (`end`) the next one."""
    text = _LOST_PLUS.sub(r"\1+\2", value.strip())
    try:
        if len(text) <= 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), UTC)
            return start + timedelta(days=1) if end else start
        at = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{param}: expected an ISO 8601 date or date-time, e.g. 2026-11-01 or 2026-11-01T08:00:00Z.",
            param=param,
            code="invalid_time",
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _bounded(value: str | None, param: str) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > _MAX_PARAM_CHARS:
        raise InvalidRequestError(f"{param}: at most {_MAX_PARAM_CHARS} characters.", param=param)
    return value


def usage_filters(
    since: str | None, until: str | None, tenant: str | None, key: str | None, status: str | None = None
) -> Filters:
    """The query parameters both APIs share, checked; InvalidRequestError (400) names the bad one."""
    start = parse_time(since, "since") if since else None
    stop = parse_time(until, "until", end=True) if until else None
    if start is not None and stop is not None and start >= stop:
        raise InvalidRequestError("until must be later than since.", param="until", code="invalid_time")
    return Filters(start, stop, _bounded(tenant, "tenant"), _bounded(key, "key"), _bounded(status, "status"))


def check_params(names: Iterable[str], allowed: frozenset[str]) -> None:
    """400 for a query parameter the endpoint does not know: a typo must not silently widen a report."""
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise InvalidRequestError(
            f"Unknown query parameter '{unknown[0]}'; use {', '.join(sorted(allowed))}.",
            param=unknown[0],
            code="unknown_parameter",
        )


def group_by_of(value: str | None) -> GroupBy:
    for name in GROUPS:
        if value == name:
            return name
    raise InvalidRequestError(
        f"group_by must be one of: {', '.join(GROUPS)}.", param="group_by", code="invalid_group_by"
    )


# --- rendering -------------------------------------------------------------------------------------


def _usd(nanos: int | None) -> orjson.Fragment | None:
    text = format_usd(nanos)
    return None if text is None else orjson.Fragment(text.encode())


def _sums_fields(sums: Sums, usd: Callable[[int | None], Any] = _usd) -> dict[str, Any]:
    """The sums, each cost preceded by its USD amount (rendered by `usd`)."""
    out: dict[str, Any] = {}
    for name in SUM_FIELDS:
        if name in ("cost_nanos", "cost_saved_nanos"):
            out[name.replace("_nanos", "_usd")] = usd(getattr(sums, name))
        out[name] = getattr(sums, name)
    return out


def render_usage(report: UsageReport, filters: Filters) -> bytes:
    """`{"object":"usage","group_by","since","until","rows":[{...group fields, ...sums}],"total":{...sums},
    "truncated"}` as JSON bytes (orjson: the money fragments go out as written)."""
    body = {
        "object": "usage",
        "group_by": report.group_by,
        "since": filters.since.isoformat() if filters.since else None,
        "until": filters.until.isoformat() if filters.until else None,
        "rows": [{**row.group, **_sums_fields(row.sums)} for row in report.rows],
        "total": _sums_fields(report.total),
        "truncated": report.truncated,
    }
    return orjson.dumps(body)


def _csv_cell(value: Any) -> Any:
    # A name a client chose (a model, a key name) must not run as a spreadsheet formula (OWASP CSV injection).
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


def render_csv(report: UsageReport) -> bytes:
    """The rows only, with a header row; money as exact decimal strings of USD."""
    columns = [*GROUP_FIELDS[report.group_by], *_sums_fields(Sums())]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in report.rows:
        values = {**row.group, **_sums_fields(row.sums, format_usd)}
        writer.writerow([_csv_cell(values[c]) for c in columns])
    return out.getvalue().encode()


def render_ledger_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger row for JSON: every column, `ts` in ISO 8601 UTC, `attempts` a list, and the costs in USD."""
    out = dict(row)
    out["ts"] = row["ts"].isoformat()
    out["cost_usd"] = _usd(row["cost_nanos"])
    out["cost_saved_usd"] = _usd(row["cost_saved_nanos"])
    return out


# --- GET /v1/usage --------------------------------------------------------------------------------


class UsageEndpoint:
    """The route handler (web/app.py's table); the key's scope was checked before it is called."""

    def __init__(self, reports: Reports) -> None:
        self._reports = reports

    async def __call__(self, req: Request, send: Send) -> None:
        params = dict(urllib.parse.parse_qsl(req.query.decode("latin-1"), keep_blank_values=True))
        check_params(params, USAGE_PARAMS)
        group_by = group_by_of(params.get("group_by", "model"))
        get = params.get
        filters = usage_filters(get("since"), get("until"), get("tenant"), get("key"))
        principal = principal_of(req.scope)
        if principal is None or (principal.kind == "key" and not principal.tenant_id):
            # Unreachable through web/app.py, which authenticates first; never a reason to show everything.
            raise PermissionDeniedError("This endpoint needs a key with the usage:read scope.")
        if principal.kind == "key":
            own = (principal.tenant_id, principal.tenant_name)
            tenant = None if filters.tenant in own else filters.tenant  # another tenant: matches nothing
            filters = replace(filters, tenant=tenant, within_tenant=principal.tenant_id)
        payload = render_usage(await self._reports.usage(group_by, filters), filters)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", req.request_id.encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
