"""The admin API's reports (CONTRACT §5): `GET /admin/usage`, `GET /admin/usage.csv` and
`GET /admin/requests`, added to the admin app by `add_usage_routes`.

Parameters and output are those of `GET /v1/usage` (web/usage.py), without the tenant restriction;
`/admin/requests` adds `status`, `limit` (1-100, default 20) and `after` (the `last_id` of the previous
page) and lists ledger rows newest first. Responses are written with orjson rather than through
pydantic, so `cost_usd` goes out as the exact decimal; the models below document them in `/docs`.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ai_gateway.errors import InvalidRequestError
from ai_gateway.policy.ledger_row import STATUSES
from ai_gateway.stores.reports import GROUPS, Reports
from ai_gateway.web.usage import (
    USAGE_PARAMS,
    check_params,
    group_by_of,
    render_csv,
    render_ledger_row,
    render_usage,
    usage_filters,
)

__all__ = ["add_usage_routes"]

_REQUESTS_PARAMS = frozenset({"since", "until", "tenant", "key", "status", "limit", "after"})

GroupByParam = Annotated[str, Query(description=f"one of: {', '.join(GROUPS)}")]
TimeParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO 8601 date or date-time, UTC unless an offset is given; `until` is exclusive, "
        "but a bare date for `until` includes that day",
    ),
]
TenantParam = Annotated[str | None, Query(max_length=128, description="tenant id or name")]
KeyParam = Annotated[str | None, Query(max_length=128, description="key id")]


class UsageSums(BaseModel):
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int = Field(description="input tokens read from a prompt cache")
    cost_usd: float = Field(description="exact decimal of cost_nanos / 1e9; known costs only")
    cost_nanos: int = Field(description="the cost in integer nano-dollars: exact, for checking totals")
    cost_unknown_requests: int = Field(description="requests whose price is unknown: the cost is a floor")
    cost_saved_usd: float = Field(description="what cache hits would have cost")
    cost_saved_nanos: int
    cache_hits: int
    errors: int = Field(description="requests that did not end ok or cache_hit")


class UsageGroup(UsageSums):
    model_config = ConfigDict(extra="allow")


class UsageOut(BaseModel):
    object: str = "usage"
    group_by: str
    since: str | None
    until: str | None
    rows: list[UsageGroup] = Field(
        description="group fields first: tenant_id+tenant | key_id+key+tenant_id | provider+model | "
        "provider | day (UTC, YYYY-MM-DD)"
    )
    total: UsageSums
    truncated: bool = Field(description="more than 10,000 groups: rows were cut, total was not")


class LedgerRowOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    request_id: str
    ts: str
    status: str
    cost_usd: float | None
    cost_nanos: int | None = Field(description="null: the price is unknown")
    attempts: list[dict[str, Any]]


class RequestList(BaseModel):
    object: str = "list"
    data: list[LedgerRowOut]
    has_more: bool
    last_id: str | None


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def add_usage_routes(app: FastAPI, reports: Reports, errors: dict[int | str, dict[str, Any]]) -> None:
    @app.get("/admin/usage", response_class=Response, responses={**errors, 200: {"model": UsageOut}})
    async def usage(
        request: Request,
        group_by: GroupByParam = "model",
        since: TimeParam = None,
        until: TimeParam = None,
        tenant: TenantParam = None,
        key: KeyParam = None,
    ) -> Response:
        check_params(request.query_params.keys(), USAGE_PARAMS)
        filters = usage_filters(since, until, tenant, key)
        report = await reports.usage(group_by_of(group_by), filters)
        return _json(render_usage(report, filters))

    @app.get(
        "/admin/usage.csv",
        response_class=Response,
        responses={**errors, 200: {"content": {"text/csv": {}}, "description": "the rows, with a header"}},
    )
    async def usage_csv(
        request: Request,
        group_by: GroupByParam = "model",
        since: TimeParam = None,
        until: TimeParam = None,
        tenant: TenantParam = None,
        key: KeyParam = None,
    ) -> Response:
        check_params(request.query_params.keys(), USAGE_PARAMS)
        grouping = group_by_of(group_by)
        report = await reports.usage(grouping, usage_filters(since, until, tenant, key))
        disposition = f'attachment; filename="usage-by-{grouping}.csv"'
        return Response(
            render_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": disposition},
        )

    @app.get("/admin/requests", response_class=Response, responses={**errors, 200: {"model": RequestList}})
    async def list_requests(
        request: Request,
        since: TimeParam = None,
        until: TimeParam = None,
        tenant: TenantParam = None,
        key: KeyParam = None,
        status: Annotated[str | None, Query(description=f"one of: {', '.join(sorted(STATUSES))}")] = None,
        limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
        after: Annotated[str | None, Query(max_length=128, description="the previous page's last_id")] = None,
    ) -> Response:
        check_params(request.query_params.keys(), _REQUESTS_PARAMS)
        if status is not None and status not in STATUSES:
            listed = ", ".join(sorted(STATUSES))
            raise InvalidRequestError(
                f"status must be one of: {listed}.", param="status", code="invalid_status"
            )
        filters = usage_filters(since, until, tenant, key, status)
        page = await reports.requests(filters, limit=limit, after=after)
        data = [render_ledger_row(row) for row in page.rows]
        last_id = data[-1]["request_id"] if data else None
        body = {"object": "list", "data": data, "has_more": page.has_more, "last_id": last_id}
        return _json(orjson.dumps(body))
