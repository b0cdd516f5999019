"""The ledger reconciled against the upstreams (issue 5, research/reliability.md I1-I5, F-16).

A mixed workload runs through a real gateway (response cache on) against the mock upstreams: OpenAI
chat completions, the simple API and /v1/messages, streamed and not, to OpenAI, Anthropic, OpenRouter
(its own reported cost) and Ollama (free); prompt-cache reads and writes; a fallback chain whose first
target answers 503; a chain whose every target fails (502); streams the upstream cuts after 3 chunks;
cache hits; clients that leave mid-stream and while waiting for a non-stream answer; a model with no known
price; a key over its rpm; a key over its budget; bad input, an unknown key and an unknown model. Every request carries the client's own `x-request-id`, and every prompt a marker that
finds it in the mocks' logs. Then, on SQLite and on PostgreSQL:

- exactly one ledger row per request sent, with the right status and HTTP status (I2);
- completed calls: the row's tokens are what the mock counted in the body it received and the tokens it
  sent, token for token (I3), and the cost is those tokens priced by genai-prices (or OpenRouter's own
  figure), to the nano-dollar; the cost the client was told (`x-aigw-cost-usd`, `cost_usd`) is the row's;
- each upstream attempt the mocks saw is one attempt in the ledger (I1);
- cache hits cost 0 and carry the original's cost as `cost_saved_nanos`;
- clients that left mid-stream, and streams the upstream cut: `client_disconnected` / `upstream_error`,
  HTTP 200, billed output tokens at least what the client received and at most what the mock emitted,
  cost > 0; a client that left a non-stream call while waiting: `client_disconnected`, 499, the cancelled
  attempt kept and the prompt billed;
- the unpriced model: cost unknown (null), never a silent 0, and a warning in the log;
- refused requests (rate limit, budget, bad input, unknown key, unknown model) cost 0 and reached no
  upstream (I5);
- `GET /admin/usage?group_by=model` equals the ledger rows group by group, and its total equals the sum
  of the rows and of the costs the clients were told plus those they could not be (streams without a
  usage chunk, clients that left).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from tests.accounting_support import (
    Sent,
    Served,
    calls_with,
    expected_cost,
    received_words,
    send_all,
    send_then_leave,
    served,
    stream_then_leave,
    wait_for_rows,
)
from tests.e2e_support import MASTER, admin, gateway, new_key, new_tenant
from tests.services import Postgres
from tests.support import Mock, Proc, Upstreams, http, start_mock

OPENAI = "openai/gpt-4o-mini"
HAIKU = "anthropic/claude-haiku-4-5"
OPENROUTER = "openrouter/openai/gpt-4o-mini"
OLLAMA = "ollama/llama3.2"
# Three-letter words: the gateway's count of delivered text (4 characters a token) then equals the mock's
# (a word a token), so the bounds on a disconnected stream's billing are exact, not approximate.
WORDS = " ".join(f"w{i:02d}" for i in range(20))
LEAVE_AFTER = 3  # content chunks a leaving client reads
CONFIG = """
retries: {{max_retries: 0}}
breaker: {{failure_threshold: 1000, cooldown_s: 1}}
providers:
  flaky: {{type: openai, base_url: "{flaky}/v1", api_key: "env:OPENAI_API_KEY", default_model: m1, models: [m1, m2]}}
routes:
  chain: [flaky/m1, {openai}]
  doomed: [flaky/m1, flaky/m2]
"""


@dataclass
class Case:
    sent: Sent
    kind: str  # ok | fallback | doomed | broken | hit | unpriced | left_stream | left_wait | refused
    provider: str | None = None  # who should answer
    model: str | None = None
    status: str = "ok"
    http_status: int = 200
    marker: str = ""  # found in the mock log of the call(s) this request made
    original: str | None = None  # for a cache hit: the request id of the answer it replays
    cached: int = 0  # prompt-cache reads the mock reports (its `cached` directive)
    cache_write: int = 0  # and prompt-cache writes (`cache_write`)


@dataclass
class World:
    gw: Proc
    database_url: str
    flaky: Mock
    keys: dict[str, str]


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mock]:
    mock = start_mock(tmp_path_factory.mktemp("flaky"), "flaky")
    yield mock
    mock.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: Upstreams,
    flaky: Mock,
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"accounting-{request.param}")
    env: dict[str, str] = {}
    database_url = f"sqlite:///{tmp / 'gateway.db'}"
    if request.param == "postgres":
        postgres: Postgres = request.getfixturevalue("postgres")
        database_url = env["AIGW_DATABASE_URL"] = postgres.new_database()
    config = CONFIG.format(flaky=flaky.url, openai=OPENAI)
    gw = gateway(tmp, upstreams, "gw-accounting", config=config, env=env, cache=True)
    try:
        tenant = new_tenant(gw)
        keys = {
            "main": new_key(gw, tenant)[0],
            "rpm1": new_key(gw, tenant, rpm=1)[0],
            # Far less than any call's worst case: every call is refused before an upstream sees it.
            "broke": new_key(gw, tenant, budget_usd=0.000001, budget_period="total")[0],
        }
        yield World(gw, database_url, flaky, keys)
    finally:
        gw.stop()


def _rid(tag: str) -> str:
    return f"rec-{tag}-{secrets.token_hex(4)}"


def _openai(
    key: str, tag: str, model: str = OPENAI, stream: bool = False, usage: bool = True, **extra: Any
) -> Case:
    rid = _rid(tag)
    text = extra.pop("text", f"rid-{rid} what is the answer")
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    return Case(
        Sent(rid, "/v1/chat/completions", body, {"authorization": f"Bearer {key}"}), "ok", marker=f"rid-{rid}"
    )


def _simple(key: str, tag: str, model: str, stream: bool = False) -> Case:
    rid = _rid(tag)
    body = {"model": model, "prompt": f"rid-{rid} tell me more please", "stream": stream}
    return Case(Sent(rid, "/v1/chat", body, {"authorization": f"Bearer {key}"}), "ok", marker=f"rid-{rid}")


def _messages(key: str, tag: str, model: str, stream: bool = False) -> Case:
    rid = _rid(tag)
    body = {
        "model": model,
        "max_tokens": 64,
        "system": "be brief",
        "messages": [{"role": "user", "content": f"rid-{rid} an anthropic client asks"}],
        "stream": stream,
    }
    return Case(Sent(rid, "/v1/messages", body, {"x-api-key": key}), "ok", marker=f"rid-{rid}")


def _split(label: str) -> tuple[str, str]:
    provider, _, model = label.partition("/")
    return provider, model


def _answered(case: Case, label: str) -> Case:
    case.provider, case.model = _split(label)
    return case


def workload(keys: dict[str, str]) -> tuple[list[Case], list[Case], list[Case], list[Case]]:
    """(answered calls, clients that leave, cache hits to send after their originals, refusals)."""
    main = keys["main"]
    calls: list[Case] = []
    for i in range(6):
        calls.append(_answered(_openai(main, f"oa{i}", stream=i % 2 == 1), OPENAI))
    calls.append(_answered(_openai(main, "oa-nousage", stream=True, usage=False), OPENAI))
    calls.append(_answered(_openai(main, "oa-haiku", model=HAIKU, max_tokens=50), HAIKU))
    calls.append(_answered(_openai(main, "oa-or", model=OPENROUTER, stream=True), OPENROUTER))
    for i, model in enumerate((HAIKU, OPENROUTER, OLLAMA, OPENAI)):
        calls.append(_answered(_simple(main, f"simple{i}", model, stream=i % 2 == 0), model))
        calls.append(_answered(_simple(main, f"simple{i}s", model, stream=i % 2 == 1), model))
    for i, model in enumerate((HAIKU, OPENAI)):
        calls.append(_answered(_messages(main, f"msg{i}", model), model))
        calls.append(_answered(_messages(main, f"msg{i}s", model, stream=True), model))
    # Prompt caches: OpenAI reports cached reads; Anthropic reads and writes, its input_tokens without them.
    for case, cached, written in (
        (_answered(_openai(main, "oa-pc"), OPENAI), 2, 0),
        (_answered(_messages(main, "msg-pc", HAIKU), HAIKU), 3, 2),
        (_answered(_messages(main, "msg-pcs", HAIKU, stream=True), HAIKU), 3, 2),
    ):
        case.cached, case.cache_write = cached, written
        case.sent.body["messages"][0]["content"] += f" [[mock cached={cached} cache_write={written}]]"
        calls.append(case)
    for model in (OPENAI, HAIKU):  # the upstream cuts the stream after 3 chunks: 200, then an SSE error
        case = _answered(_openai(main, f"broken-{model[:5]}", model=model, stream=True), model)
        case.sent.body["messages"][0]["content"] += f' [[mock drop_after=3 text="{WORDS}"]]'
        case.kind, case.status = "broken", "upstream_error"
        calls.append(case)
    unpriced = _answered(
        _simple(main, "unpriced", "openai/gpt-nobody-prices-this"), "openai/gpt-nobody-prices-this"
    )
    unpriced.kind = "unpriced"
    calls.append(unpriced)
    for i in range(4):  # the first target answers 503, the second serves
        case = _answered(_openai(main, f"chain{i}", model="chain", stream=i % 2 == 1), OPENAI)
        case.kind = "fallback"
        calls.append(case)
    for i in range(2):  # every target answers 503
        case = _openai(main, f"doomed{i}", model="doomed", stream=i == 1)
        case.kind, case.status, case.http_status = "doomed", "upstream_error", 502
        calls.append(case)

    originals, hits = [], []
    for i, stream in enumerate((False, True)):
        tag = f"cache{i}-{secrets.token_hex(3)}"
        first = _answered(_openai(main, f"orig{i}", stream=stream, text=f"{tag} cache this answer"), OPENAI)
        first.marker = tag
        again = _answered(_openai(main, f"hit{i}", stream=stream, text=f"{tag} cache this answer"), OPENAI)
        again.kind, again.status, again.original, again.marker = "hit", "cache_hit", first.sent.rid, tag
        originals.append(first)
        hits.append(again)
    calls += originals

    leaving = []
    for i, (path, model) in enumerate(
        (("openai", OPENAI), ("openai", HAIKU), ("simple", OPENAI), ("simple", HAIKU))
    ):
        directive = f'[[mock gap_ms=100 text="{WORDS}"]]'
        if path == "openai":
            case = _openai(main, f"left{i}", model=model, stream=True)
            case.sent.body["messages"][0]["content"] += f" {directive}"
        else:
            case = _simple(main, f"left{i}", model, stream=True)
            case.sent.body["prompt"] += f" {directive}"
        case.provider, case.model = _split(model)
        case.kind, case.status = "left_stream", "client_disconnected"
        leaving.append(case)
    waiting = _openai(main, "leftwait", max_tokens=20)
    waiting.sent.body["messages"][0]["content"] += " [[mock ttfb_ms=2000]]"
    waiting.provider, waiting.model = _split(OPENAI)
    waiting.kind, waiting.status, waiting.http_status = "left_wait", "client_disconnected", 499
    leaving.append(waiting)

    refused: list[Case] = []
    for i in range(3):  # rpm=1: the first is answered, the other two refused
        case = _answered(_openai(keys["rpm1"], f"rpm{i}"), OPENAI)
        if i:
            case.kind, case.status, case.http_status = "refused", "rejected", 429
        (refused if i else calls).append(case)
    for case, status, http_status in (
        (_openai(keys["broke"], "budget", max_tokens=100), "rejected", 429),
        (_openai(main, "badinput"), "invalid_request", 400),
        (_openai("sk-aigw-not-a-real-key-000000000000", "nokey"), "rejected", 401),
        (_openai(main, "nomodel", model="nosuch/model-x"), "invalid_request", 404),
        (_messages(main, "badmsg", HAIKU), "invalid_request", 400),
    ):
        case.kind, case.status, case.http_status = "refused", status, http_status
        refused.append(case)
    refused[-4].sent.body["messages"] = f"{refused[-4].marker} is not a list"
    del refused[-1].sent.body["max_tokens"]
    return calls, leaving, hits, refused


async def _run(
    world: World, calls: list[Case], leaving: list[Case], hits: list[Case], refused: list[Case]
) -> None:
    port = world.gw.port
    lefts = [
        stream_then_leave(port, c.sent, LEAVE_AFTER)
        if c.kind == "left_stream"
        else send_then_leave(port, c.sent, 0.3)
        for c in leaving
    ]
    answered = send_all(world.gw.url, [c.sent for c in calls])
    await asyncio.gather(answered, *lefts)
    # The rpm=1 key's first call was in `calls`; its other two, and the rest, go now.
    await send_all(world.gw.url, [c.sent for c in refused])
    await send_all(world.gw.url, [c.sent for c in hits])  # after their originals were answered


def _mock_logs(mocks: dict[str, Mock], leaving: list[Case], timeout_s: float = 10) -> dict[str, list[Served]]:
    """Each mock's log, once every call a client left has ended there too (aborted or completed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = {name: served(m.calls_log()) for name, m in mocks.items()}
        pending = [
            c
            for c in leaving
            if any(not (s.completed or s.aborted) for s in calls_with(logs[c.provider or ""], c.marker))
        ]
        if not pending or time.monotonic() > deadline:
            return logs
        time.sleep(0.1)


def test_the_ledger_reconciles_with_the_upstreams(world: World, mocks: Upstreams) -> None:
    world.flaky.reset()
    world.flaky.fault("status=503")
    calls, leaving, hits, refused = workload(world.keys)
    started = time.monotonic()
    asyncio.run(_run(world, calls, leaving, hits, refused))
    cases = calls + leaving + hits + refused
    rows = wait_for_rows(world.database_url, {c.sent.rid for c in cases})
    elapsed = time.monotonic() - started

    # I2: one row per request sent, none other (the gateway has its own database).
    assert set(rows) == {c.sent.rid for c in cases}
    for case in cases:
        if case.kind not in ("left_stream", "left_wait"):
            assert case.sent.status == case.http_status, (
                case.sent.rid,
                case.sent.status,
                case.sent.raw[:300],
            )

    by_provider = _mock_logs(mocks.mocks, leaving)
    by_provider["flaky"] = served(world.flaky.calls_log())
    everything = [s for log in by_provider.values() for s in log]

    costs_seen_by_clients = 0
    costs_not_seen = 0
    for case in cases:
        row = rows[case.sent.rid]
        label = case.sent.rid
        assert (row["status"], row["http_status"]) == (case.status, case.http_status), (label, row)
        cost = row["cost_nanos"]
        if case.kind == "unpriced":  # recorded as unknown, never a silent 0, and the client is not told 0
            (call,) = calls_with(by_provider["openai"], case.marker)
            assert (row["input_tokens"], row["output_tokens"]) == (call.input_tokens, call.output_tokens_sent)
            assert (cost, row["price_source"], case.sent.client_cost_nanos) == (None, "unknown", None), row
            assert case.sent.json()["cost_usd"] is None and "x-aigw-cost-usd" not in case.sent.reply_headers
            assert f"no price known for openai/{case.model}" in world.gw.log()
            continue
        assert cost is not None, (label, row)
        if case.kind in ("ok", "fallback"):
            (call,) = calls_with(by_provider[case.provider or ""], case.marker)
            assert call.completed and call.status == 200, (label, call)
            tokens = (row["input_tokens"], row["output_tokens"])
            assert tokens == (call.input_tokens, call.output_tokens_sent), (label, row, call)
            assert row["cached_tokens"] == case.cached and not row["usage_estimated"], (label, row)
            assert (row["provider"], row["model"]) == (case.provider, case.model), label
            priced = expected_cost(
                case.provider or "", case.model or "", *tokens, case.cached, case.cache_write
            )
            assert cost == priced, (label, row, priced)
            assert cost > 0 or case.provider == "ollama", label
            statuses = [(a["provider"], a["status"]) for a in row["attempts"]]
            if case.kind == "fallback":
                assert statuses == [("flaky", "error"), ("openai", "ok")], label
                assert [c.status for c in calls_with(by_provider["flaky"], case.marker)] == [503]
            else:
                assert statuses == [(case.provider, "ok")], label
        elif case.kind == "doomed":
            assert [c.status for c in calls_with(by_provider["flaky"], case.marker)] == [503, 503]
            assert [(a["model"], a["http_status"]) for a in row["attempts"]] == [("m1", 503), ("m2", 503)]
            assert (cost, row["input_tokens"], row["output_tokens"]) == (0, 0, 0), label
            assert row["error_class"] == "all_providers_failed"
        elif case.kind == "hit":
            original = rows[case.original or ""]
            assert len(calls_with(everything, case.marker)) == 1, "a cache hit reached an upstream"
            assert row["cache_hit"] and cost == 0, label
            assert row["cost_saved_nanos"] == original["cost_nanos"] > 0, (row, original)
            assert (row["input_tokens"], row["output_tokens"]) == (
                original["input_tokens"],
                original["output_tokens"],
            )
            assert case.sent.reply_headers["x-aigw-cache"] == "hit"
        elif case.kind == "left_stream":
            (call,) = calls_with(by_provider[case.provider or ""], case.marker)
            assert call.aborted and not call.completed, ("the upstream call was not cancelled", call)
            assert 0 < case.sent.received_tokens <= call.output_tokens_sent < len(WORDS.split())
            assert case.sent.received_tokens <= row["output_tokens"] <= call.output_tokens_sent, (row, call)
            assert row["usage_estimated"] and row["error_class"] == "client_disconnected"
            priced = expected_cost(
                case.provider or "", case.model or "", row["input_tokens"], row["output_tokens"]
            )
            assert cost == priced > 0, (row, priced)
        elif case.kind == "broken":
            (call,) = calls_with(by_provider[case.provider or ""], case.marker)
            assert call.dropped and call.output_tokens_sent == 3, call
            received = received_words(case.sent.raw)
            assert b"upstream_stream_error" in case.sent.raw and received == 3, case.sent.raw[-400:]
            assert received <= row["output_tokens"] <= call.output_tokens_sent, (row, call)
            assert row["usage_estimated"] and row["error_class"] == "reset", row
            priced = expected_cost(
                case.provider or "", case.model or "", row["input_tokens"], row["output_tokens"]
            )
            assert cost == priced > 0, (row, priced)
        elif case.kind == "left_wait":
            assert len(calls_with(by_provider["openai"], case.marker)) == 1
            # Cancelled in flight: the attempt is kept (I1) and the prompt estimate billed.
            assert [(a["provider"], a["kind"]) for a in row["attempts"]] == [("openai", "cancelled")], row
            assert row["usage_estimated"] and row["input_tokens"] > 0 and row["output_tokens"] == 0, row
            assert cost == expected_cost("openai", "gpt-4o-mini", row["input_tokens"], 0) > 0, row
        else:  # refused before any upstream call
            assert calls_with(everything, case.marker) == [], f"{label} reached an upstream"
            assert (cost, row["input_tokens"], row["output_tokens"], row["attempts"]) == (0, 0, 0, []), row
        if case.sent.client_cost_nanos is not None:
            assert case.sent.client_cost_nanos == cost, (label, case.sent.client_cost_nanos, row)
            costs_seen_by_clients += cost
        else:
            costs_not_seen += cost
            told = case.kind in ("ok", "fallback", "hit") and not (
                case.sent.stream
                and (case.sent.path == "/v1/messages" or "stream_options" not in case.sent.body)
            )
            assert not told, f"{label}: the client was not told the cost"

    # I1: every upstream attempt the mocks saw is one attempt in the ledger, and none more.
    attempts = Counter(
        a["provider"] for r in rows.values() for a in r["attempts"] if a["status"] != "skipped"
    )
    seen = Counter({name: len(log) for name, log in by_provider.items() if log})
    assert attempts == seen, (attempts, seen)

    _assert_usage_report(world, rows)
    total = admin(world.gw, "GET", "/admin/usage?group_by=model")["total"]
    assert total["cost_nanos"] == sum(r["cost_nanos"] or 0 for r in rows.values())
    assert total["cost_unknown_requests"] == 1
    assert total["cost_nanos"] == costs_seen_by_clients + costs_not_seen
    assert total["cost_saved_nanos"] == sum(rows[c.original or ""]["cost_nanos"] for c in hits)
    assert total["requests"] == len(cases) and total["cache_hits"] == len(hits)
    print(
        f"\nreconciled {len(cases)} requests ({Counter(c.kind for c in cases)}) in {elapsed:.1f}s: "
        f"ledger {total['cost_nanos']} nano-USD = {costs_seen_by_clients} told to clients "
        f"+ {costs_not_seen} not told (streams without a usage chunk, streams cut short); "
        f"upstream calls {dict(seen)}"
    )
    _assert_requests_listing(world, rows)


def _assert_usage_report(world: World, rows: dict[str, dict[str, Any]]) -> None:
    """`/admin/usage?group_by=model` is the ledger rows summed per (provider, model), in integers."""
    report = admin(world.gw, "GET", "/admin/usage?group_by=model")
    want: dict[tuple[Any, Any], Counter[str]] = defaultdict(Counter)
    for r in rows.values():
        sums = want[(r["provider"], r["model"])]
        sums["requests"] += 1
        for name in ("input_tokens", "output_tokens", "cached_tokens", "cost_nanos", "cost_saved_nanos"):
            sums[name] += r[name] or 0
        sums["cost_unknown_requests"] += r["cost_nanos"] is None
        sums["cache_hits"] += r["cache_hit"]
        sums["errors"] += r["status"] not in ("ok", "cache_hit")
    got = {(g["provider"], g["model"]): g for g in report["rows"]}
    assert set(got) == set(want)
    for group, sums in want.items():
        assert {k: got[group][k] for k in sums} == {k: sums[k] for k in sums}, group
        assert Decimal(str(got[group]["cost_usd"])) == Decimal(got[group]["cost_nanos"]).scaleb(-9)
    for name in ("requests", "input_tokens", "output_tokens", "cost_nanos", "cost_saved_nanos", "cache_hits"):
        assert report["total"][name] == sum(g[name] for g in report["rows"]), name


def _assert_requests_listing(world: World, rows: dict[str, dict[str, Any]]) -> None:
    """`/admin/requests`, paged to the end, lists exactly the rows in the table."""
    listed: list[str] = []
    after = ""
    for _ in range(20):
        page = admin(world.gw, "GET", f"/admin/requests?limit=100{after}")
        listed += [r["request_id"] for r in page["data"]]
        if not page["has_more"]:
            break
        after = f"&after={page['last_id']}"
    assert sorted(listed) == sorted(rows)
    reply = http(
        "GET", world.gw.url + "/admin/requests?limit=1", headers={"authorization": f"Bearer {MASTER}"}
    )
    assert reply.status == 200


def test_a_client_that_leaves_is_billed_for_what_it_was_sent(world: World, mocks: Upstreams) -> None:
    """F-16: an Anthropic-SDK client leaves a stream after 5 chunks; another leaves a non-stream call
    while the upstream is still thinking. The upstream call is cancelled within a second, and the row
    is there within 5 s: client_disconnected, billed for at least what the client received."""
    key = world.keys["main"]
    stream = _messages(key, "f16s", HAIKU, stream=True)
    stream.sent.body["messages"][0]["content"] += f' [[mock gap_ms=100 text="{WORDS}"]]'
    waiting = _openai(key, "f16w", max_tokens=20)
    waiting.sent.body["messages"][0]["content"] += " [[mock ttfb_ms=1500]]"

    async def go() -> float:
        await asyncio.gather(
            stream_then_leave(world.gw.port, stream.sent, 5),
            send_then_leave(world.gw.port, waiting.sent, 0.3),
        )
        return time.monotonic()

    left_at = asyncio.run(go())
    anthropic = mocks.mocks["anthropic"]
    while not any(c.aborted for c in calls_with(served(anthropic.calls_log()), stream.marker)):
        assert time.monotonic() - left_at < 1.0, "the upstream stream was not cancelled within 1 s"
        time.sleep(0.02)
    rows = wait_for_rows(world.database_url, {stream.sent.rid, waiting.sent.rid}, timeout_s=5)
    (call,) = calls_with(served(anthropic.calls_log()), stream.marker)
    row = rows[stream.sent.rid]
    assert (row["status"], row["http_status"], row["endpoint"]) == (
        "client_disconnected",
        200,
        "anthropic_messages",
    )
    assert stream.sent.received_tokens >= 5
    assert stream.sent.received_tokens <= row["output_tokens"] <= call.output_tokens_sent, (row, call)
    assert row["input_tokens"] == call.input_tokens  # Anthropic reports the prompt in message_start
    assert (
        row["cost_nanos"]
        == expected_cost("anthropic", "claude-haiku-4-5", row["input_tokens"], row["output_tokens"])
        > 0
    )
    wait = rows[waiting.sent.rid]
    assert (wait["status"], wait["http_status"], wait["error_class"]) == (
        "client_disconnected",
        499,
        "client_disconnected",
    )
    assert (
        wait["cost_nanos"] > 0
        and wait["usage_estimated"]
        and (wait["provider"], wait["model"]) == ("openai", "gpt-4o-mini")
    )
