"""The usage reports through a real gateway on SQLite (CONTRACT §5): known ledger rows are written through
the SQL sink into the gateway's own database, then `/admin/usage` (every grouping), `/admin/usage.csv`,
`/admin/requests` and `/v1/usage` must agree with them to the nano-dollar; scopes, tenant isolation,
validation errors, and `ai-gateway usage`.

Every row lies in March 2020 and every query is bounded to it, so rows the gateway records for its own
requests never mix in."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ai_gateway.admin_cli import USAGE_GROUPS
from ai_gateway.cli import main
from ai_gateway.policy.ledger_row import LedgerAttempt, LedgerRow
from ai_gateway.stores.ledger_sql import SqlLedgerSink
from ai_gateway.stores.reports import GROUPS
from tests.support import Proc, Reply, Upstreams, http, start_gateway

MASTER = "mk-reports-" + secrets.token_hex(16)
AUTH = {"authorization": f"Bearer {MASTER}"}
WINDOW = "since=2020-03-01&until=2020-03-31"
SUMS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_nanos", "cost_saved_nanos")


@dataclass
class World:
    gw: Proc
    tenants: dict[str, dict[str, Any]]  # "a", "b" -> tenant
    keys: dict[str, dict[str, Any]]  # "a_usage", "a_chat", "b_usage" -> key (with its secret)
    rows: list[LedgerRow]


def _rows(t: dict[str, dict[str, Any]], k: dict[str, dict[str, Any]]) -> list[LedgerRow]:
    a, b = t["a"]["id"], t["b"]["id"]
    ka, ka2, kb = k["a_usage"]["id"], k["a_chat"]["id"], k["b_usage"]["id"]
    spec = [
        # ts, tenant, key, provider, model, status, in, out, cached, cost, saved
        ("2020-03-01T10:00:00", a, ka, "openai", "gpt-4o-mini", "ok", 100, 50, 0, 1_234_567, 0),
        ("2020-03-01T23:59:59.999999", a, ka, "openai", "gpt-4o-mini", "ok", 10, 5, 4, 3, 0),
        ("2020-03-02T00:00:00", a, ka2, "anthropic", "claude-haiku-4-5", "ok", 1000, 200, 0, 987_654_321, 0),
        ("2020-03-02T12:00:00", a, ka, "openai", "gpt-4o-mini", "cache_hit", 100, 50, 0, 0, 1_234_567),
        ("2020-03-03T08:00:00", b, kb, "ollama", "llama3.2", "ok", 7, 8, 0, 0, 0),
        ("2020-03-03T09:00:00", b, kb, "openrouter", "x/y", "ok", 20, 30, 0, None, 0),
        ("2020-03-03T10:00:00", None, None, "openai", "gpt-4o-mini", "upstream_error", 0, 0, 0, 0, 0),
        ("2020-03-04T00:00:00", a, ka, None, None, "rejected", 0, 0, 0, 0, 0),
        ("2020-02-29T23:59:59", a, ka, "openai", "gpt-4o-mini", "ok", 1, 1, 0, 5, 0),  # outside the window
    ]
    return [
        LedgerRow(
            request_id=f"rep-{i}-{secrets.token_hex(4)}",
            ts=datetime.fromisoformat(ts).replace(tzinfo=UTC),
            status=status,  # type: ignore[arg-type]
            http_status={"ok": 200, "cache_hit": 200, "rejected": 429}.get(status, 502),
            endpoint="openai_chat",
            tenant_id=tenant,
            key_id=key,
            route=model,
            provider=provider,
            model=model,
            input_tokens=inp,
            output_tokens=out,
            cached_tokens=cached,
            cost_nanos=cost,
            cost_saved_nanos=saved,
            cache_hit=status == "cache_hit",
            attempts=(LedgerAttempt(provider, model or "", "ok", None, 12, 200),) if provider else (),
        )
        for i, (ts, tenant, key, provider, model, status, inp, out, cached, cost, saved) in enumerate(spec)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reports")
    gw = start_gateway(tmp, {**upstreams.env(), "AIGW_MASTER_KEY": MASTER}, name="gw-reports")
    try:
        tenants = {
            n: call(gw, "POST", "/admin/tenants", {"name": f"{n}-{secrets.token_hex(3)}"}).json()
            for n in "ab"
        }
        keys = {
            "a_usage": _key(gw, tenants["a"]["id"], ["usage:read"]),
            "a_chat": _key(gw, tenants["a"]["id"], ["chat"]),
            "b_usage": _key(gw, tenants["b"]["id"], ["usage:read"]),
        }
        rows = _rows(tenants, keys)
        _write(f"sqlite:///{tmp / 'gateway.db'}", rows)
        yield World(gw, tenants, keys, rows)
    finally:
        gw.stop()


def _key(gw: Proc, tenant: str, scopes: list[str]) -> dict[str, Any]:
    reply = call(gw, "POST", "/admin/keys", {"tenant": tenant, "name": "-".join(scopes), "scopes": scopes})
    assert reply.status == 201, reply.body
    return dict(reply.json())


def _write(url: str, rows: list[LedgerRow]) -> None:
    async def go() -> None:
        sink = SqlLedgerSink(url)
        try:
            await sink.write(rows)
        finally:
            sink.close()

    asyncio.run(go())


def call(gw: Proc, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    return http(method, gw.url + path, body, headers=headers or AUTH)


def exact(reply: Reply) -> Any:
    """The body with JSON numbers read as Decimals: what was written, digit for digit."""
    assert reply.status == 200, reply.body
    return json.loads(reply.body, parse_float=Decimal)


def in_window(rows: list[LedgerRow]) -> list[LedgerRow]:
    return [r for r in rows if datetime(2020, 3, 1, tzinfo=UTC) <= r.ts < datetime(2020, 4, 1, tzinfo=UTC)]


GROUP_KEY: dict[str, Callable[[LedgerRow], tuple[Any, ...]]] = {
    "tenant": lambda r: (r.tenant_id,),
    "key": lambda r: (r.key_id, r.tenant_id),
    "model": lambda r: (r.provider, r.model),
    "provider": lambda r: (r.provider,),
    "day": lambda r: (r.ts.date().isoformat(),),
}
GROUP_FIELDS = {
    "tenant": ("tenant_id",),
    "key": ("key_id", "tenant_id"),
    "model": ("provider", "model"),
    "provider": ("provider",),
    "day": ("day",),
}


def expected(rows: list[LedgerRow], group_by: str) -> dict[tuple[Any, ...], dict[str, int]]:
    out: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        sums = out[GROUP_KEY[group_by](r)]
        sums["requests"] += 1
        for name in SUMS[1:]:
            sums[name] += getattr(r, name) or 0
        sums["cost_unknown_requests"] += r.cost_nanos is None
        sums["cache_hits"] += r.cache_hit
        sums["errors"] += r.status not in ("ok", "cache_hit")
    return {k: dict(v) for k, v in out.items()}


def assert_money_exact(sums: dict[str, Any]) -> None:
    assert sums["cost_usd"] == Decimal(sums["cost_nanos"]).scaleb(-9)
    assert sums["cost_saved_usd"] == Decimal(sums["cost_saved_nanos"]).scaleb(-9)


def assert_report(body: dict[str, Any], rows: list[LedgerRow], group_by: str) -> None:
    want = expected(rows, group_by)
    got = {tuple(row[f] for f in GROUP_FIELDS[group_by]): row for row in body["rows"]}
    assert set(got) == set(want), (got.keys(), want.keys())
    for group, sums in want.items():
        assert {name: got[group][name] for name in sums} == sums, group
        assert_money_exact(got[group])
    total = body["total"]
    for name in (*SUMS, "cost_unknown_requests", "cache_hits", "errors"):
        assert total[name] == sum(row[name] for row in body["rows"])  # exactly, in integers
    assert_money_exact(total)
    assert body["group_by"] == group_by and body["truncated"] is False


# --- /admin/usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", GROUPS)
def test_admin_usage_matches_the_ledger_rows_exactly(world: World, group_by: str) -> None:
    body = exact(call(world.gw, "GET", f"/admin/usage?group_by={group_by}&{WINDOW}"))
    assert_report(body, in_window(world.rows), group_by)
    assert body["since"] == "2020-03-01T00:00:00+00:00" and body["until"] == "2020-04-01T00:00:00+00:00"


def test_usage_total_is_exact_to_the_nano_dollar_and_names_groups(world: World) -> None:
    body = exact(call(world.gw, "GET", f"/admin/usage?group_by=tenant&{WINDOW}"))
    known = sum(r.cost_nanos or 0 for r in in_window(world.rows))
    assert body["total"]["cost_nanos"] == known == 988_888_891
    assert body["total"]["cost_usd"] == Decimal("0.988888891")
    assert b'"cost_usd":0.988888891' in call(world.gw, "GET", f"/admin/usage?{WINDOW}").body
    assert body["total"]["cost_unknown_requests"] == 1
    names = {row["tenant_id"]: row["tenant"] for row in body["rows"]}
    assert names == {
        world.tenants["a"]["id"]: world.tenants["a"]["name"],
        world.tenants["b"]["id"]: world.tenants["b"]["name"],
        None: None,
    }
    keys = exact(call(world.gw, "GET", f"/admin/usage?group_by=key&{WINDOW}"))["rows"]
    assert {row["key_id"]: row["key"] for row in keys}[world.keys["a_chat"]["id"]] == "chat"


def test_usage_filters_by_tenant_name_or_id_key_and_time(world: World) -> None:
    a = world.tenants["a"]
    for ref in (a["id"], a["name"]):
        body = exact(call(world.gw, "GET", f"/admin/usage?group_by=day&{WINDOW}&tenant={ref}"))
        assert_report(body, [r for r in in_window(world.rows) if r.tenant_id == a["id"]], "day")
    key = world.keys["a_chat"]["id"]
    body = exact(call(world.gw, "GET", f"/admin/usage?group_by=model&{WINDOW}&key={key}"))
    assert_report(body, [r for r in world.rows if r.key_id == key], "model")
    day = exact(call(world.gw, "GET", "/admin/usage?group_by=day&since=2020-03-02&until=2020-03-02"))
    assert [row["day"] for row in day["rows"]] == ["2020-03-02"] and day["total"]["requests"] == 2
    # An offset is honoured, and a '+' the client did not encode (it arrives as a space) is repaired.
    shifted = exact(
        call(world.gw, "GET", "/admin/usage?since=2020-03-02T01:00:00+01:00&until=2020-03-02T12:00:00Z")
    )
    assert shifted["total"]["requests"] == 1 and shifted["since"] == "2020-03-02T00:00:00+00:00"
    empty = exact(call(world.gw, "GET", f"/admin/usage?{WINDOW}&tenant=no-such-tenant"))
    assert empty["rows"] == [] and empty["total"]["requests"] == 0


def test_usage_csv_has_a_header_and_the_same_rows(world: World) -> None:
    reply = call(world.gw, "GET", f"/admin/usage.csv?group_by=model&{WINDOW}")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/csv")
    assert "usage-by-model.csv" in reply.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(reply.body.decode())))
    body = exact(call(world.gw, "GET", f"/admin/usage?group_by=model&{WINDOW}"))
    assert len(table) == len(body["rows"])
    for line, row in zip(table, body["rows"], strict=True):
        assert (line["provider"] or None, line["model"] or None) == (row["provider"], row["model"])
        assert int(line["cost_nanos"]) == row["cost_nanos"] and Decimal(line["cost_usd"]) == row["cost_usd"]
        assert int(line["requests"]) == row["requests"] and int(line["errors"]) == row["errors"]


# --- /admin/requests -------------------------------------------------------------------------------


def test_requests_pages_newest_first_with_every_row_once(world: World) -> None:
    seen: list[dict[str, Any]] = []
    after = ""
    while True:
        page = exact(call(world.gw, "GET", f"/admin/requests?{WINDOW}&limit=3{after}"))
        assert len(page["data"]) <= 3
        seen += page["data"]
        if not page["has_more"]:
            break
        assert page["last_id"] == page["data"][-1]["request_id"]
        after = f"&after={page['last_id']}"
    want = sorted(in_window(world.rows), key=lambda r: (r.ts, r.request_id), reverse=True)
    assert [row["request_id"] for row in seen] == [r.request_id for r in want]
    by_id = {r.request_id: r for r in world.rows}
    for row in seen:
        original = by_id[row["request_id"]].to_json()
        assert {k: row[k] for k in original} == original  # every column, attempts parsed back to a list
        if row["cost_nanos"] is None:
            assert row["cost_usd"] is None
        else:
            assert row["cost_usd"] == Decimal(row["cost_nanos"]).scaleb(-9)


def test_requests_filter_by_status_and_tenant(world: World) -> None:
    page = exact(call(world.gw, "GET", f"/admin/requests?{WINDOW}&status=upstream_error"))
    assert [row["status"] for row in page["data"]] == ["upstream_error"]
    b = world.tenants["b"]
    page = exact(call(world.gw, "GET", f"/admin/requests?{WINDOW}&tenant={b['name']}"))
    assert {row["tenant_id"] for row in page["data"]} == {b["id"]} and len(page["data"]) == 2


# --- /v1/usage ------------------------------------------------------------------------------------


def test_v1_usage_sees_only_the_callers_tenant(world: World) -> None:
    a, b = world.tenants["a"], world.tenants["b"]
    mine = [r for r in in_window(world.rows) if r.tenant_id == a["id"]]
    headers = {"authorization": f"Bearer {world.keys['a_usage']['key']}"}
    for group_by in GROUPS:
        reply = call(world.gw, "GET", f"/v1/usage?group_by={group_by}&{WINDOW}", headers=headers)
        assert reply.headers["cache-control"] == "no-store"
        assert_report(exact(reply), mine, group_by)
    own = exact(call(world.gw, "GET", f"/v1/usage?{WINDOW}&tenant={a['name']}", headers=headers))
    assert own["total"]["requests"] == len(mine)
    # Another tenant's name, id or key narrows to nothing: no 404, nothing learnt about them.
    for query in (f"tenant={b['name']}", f"tenant={b['id']}", f"key={world.keys['b_usage']['id']}"):
        other = exact(call(world.gw, "GET", f"/v1/usage?{WINDOW}&{query}", headers=headers))
        assert other["rows"] == [] and other["total"]["requests"] == 0
    everything = exact(call(world.gw, "GET", f"/v1/usage?group_by=tenant&{WINDOW}"))  # the master key
    assert everything == exact(call(world.gw, "GET", f"/admin/usage?group_by=tenant&{WINDOW}"))


def test_scopes_usage_read_chat_and_admin(world: World) -> None:
    usage_key = {"authorization": f"Bearer {world.keys['a_usage']['key']}"}
    chat_key = {"x-api-key": world.keys["a_chat"]["key"]}
    assert call(world.gw, "GET", "/v1/usage", headers=chat_key).status == 403
    assert http("GET", world.gw.url + "/v1/usage").status == 401
    for path in ("/admin/usage", "/admin/usage.csv", "/admin/requests"):
        reply = call(world.gw, "GET", path, headers=usage_key)
        assert reply.status == 403 and reply.json()["error"]["code"] == "insufficient_scope"
    assert call(world.gw, "POST", "/v1/usage", {}, headers=usage_key).status == 405


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("group_by=week", "group_by"),
        ("since=yesterday", "since"),
        ("until=2020-13-01", "until"),
        ("since=2020-03-02&until=2020-03-01", "until"),
        ("since=2020-03-02T00:00:00Z&until=2020-03-02T00:00:00Z", "until"),
        ("tenat=acme", "tenat"),
        ("tenant=" + "x" * 200, "tenant"),
    ],
)
def test_bad_parameters_are_400_in_the_contract_shape(world: World, query: str, param: str) -> None:
    usage_key = {"authorization": f"Bearer {world.keys['a_usage']['key']}"}
    for path, headers in (("/admin/usage", AUTH), ("/admin/usage.csv", AUTH), ("/v1/usage", usage_key)):
        reply = call(world.gw, "GET", f"{path}?{query}", headers=headers)
        assert reply.status == 400, (path, reply.body)
        body = reply.json()
        assert set(body) == {"error", "request_id"} and body["error"]["param"] == param, body
        assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("query", "param"),
    [("status=bogus", "status"), ("limit=0", "limit"), ("limit=101", "limit"), ("after=nope", "after")],
)
def test_bad_requests_parameters_are_400(world: World, query: str, param: str) -> None:
    reply = call(world.gw, "GET", f"/admin/requests?{query}")
    assert reply.status == 400, reply.body
    assert reply.json()["error"]["param"] == param


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_usage_table_json_and_csv(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert USAGE_GROUPS == GROUPS  # the CLI's copy of the choices
    monkeypatch.setenv("AIGW_MASTER_KEY", MASTER)
    window = ["--since", "2020-03-01", "--until", "2020-03-31", "--url", world.gw.url]
    assert main(["usage", "--group-by", "tenant", *window]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "TENANT",
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "COST_USD",
        "CACHE_HITS",
        "ERRORS",
    ]
    assert lines[-2].split()[:2] == ["TOTAL", "8"] and "0.988888891+?" in lines[-2]
    assert lines[-1].startswith("+? 1 requests had no known price")
    assert any(line.startswith(world.tenants["a"]["name"]) for line in lines)
    assert main(["usage", "--json", *window]) == 0
    body = json.loads(capsys.readouterr().out, parse_float=Decimal)
    assert_report(body, in_window(world.rows), "model")
    assert main(["usage", "--csv", "--group-by", "day", *window]) == 0
    days = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [d["day"] for d in days] == ["2020-03-01", "2020-03-02", "2020-03-03", "2020-03-04"]
    monkeypatch.setenv("AIGW_MASTER_KEY", world.keys["a_usage"]["key"])
    assert main(["usage", *window]) == 1
    assert "lacks the admin scope" in capsys.readouterr().err
