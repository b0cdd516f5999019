"""Hard budgets across two gateway processes sharing Redis and PostgreSQL (issue 5, research L-06, I4).

A tenant's `total` budget covers about 20 calls of a priced model (openai/gpt-4o-mini; the mock answers
exactly `max_tokens` words, so a call costs nearly its reservation). 50 concurrent clients, round-robin
over the two replicas, call until they are refused. Then:

- the tenant's spend in the ledger is at most the budget plus one reservation (the worst case of one
  call), and every refusal is 429 `budget_exceeded`;
- a later burst is refused before any upstream call: the mock's call count does not move;
- one ledger row per request, and the ledger's sum equals Redis's settled-spend counter to the
  nano-dollar, with nothing left held.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis

from ai_gateway.dialects import openai_chat
from ai_gateway.policy.tokens import estimate_input_tokens
from tests.accounting_support import Sent, expected_cost, ledger_rows, send, session, wait_for_rows
from tests.e2e_support import OPENAI_MODEL, chat, gateway, new_key, new_tenant
from tests.redis_server import RedisServer, shared_redis
from tests.services import Postgres
from tests.support import Proc, Upstreams

CLIENTS = 50
MAX_TOKENS = 60
ANSWER = " ".join(f"w{i:02d}" for i in range(MAX_TOKENS))
BUDGET_CALLS = 20


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams, postgres: Postgres
) -> Iterator[tuple[Proc, Proc, str, RedisServer]]:
    tmp = tmp_path_factory.mktemp("budgets")
    server = shared_redis()
    database_url = postgres.new_database()
    env = {"AIGW_DATABASE_URL": database_url, "AIGW_REDIS_URL": server.url}
    a = gateway(tmp, upstreams, "gw-budget-a", env=env)
    try:
        b = gateway(tmp, upstreams, "gw-budget-b", env=env)
    except BaseException:
        a.stop()
        raise
    yield a, b, database_url, server
    b.stop()
    a.stop()


def _body(i: int) -> dict[str, Any]:
    return {
        "model": OPENAI_MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": f"budget call {i}"}],
    }


def reservation(body: dict[str, Any]) -> int:
    """The worst case the gateway holds for `body`: its prompt estimate plus max_tokens, priced."""
    chat = openai_chat.parse_request(body, 1000, 100_000)
    provider, _, model = OPENAI_MODEL.partition("/")
    return expected_cost(provider, model, estimate_input_tokens(chat), MAX_TOKENS)


async def _clients(urls: list[str], key: str) -> list[Sent]:
    """CLIENTS concurrent clients, each calling until it is refused (at most 10 calls each)."""
    done: list[Sent] = []
    counter = iter(range(10_000))

    async def client(http: Any, index: int) -> None:
        for _ in range(10):
            i = next(counter)
            sent = Sent(f"bud-{i:05d}", "/v1/chat/completions", _body(i), {"authorization": f"Bearer {key}"})
            await send(http, urls[(index + i) % len(urls)], sent)
            done.append(sent)
            if sent.status != 200:
                return

    async with session() as http:
        await asyncio.gather(*(client(http, n) for n in range(CLIENTS)))
    return done


def test_fifty_clients_on_two_replicas_overshoot_by_at_most_one_reservation(
    replicas: tuple[Proc, Proc, str, RedisServer], mocks: Upstreams
) -> None:
    a, b, database_url, server = replicas
    openai = mocks.mocks["openai"]
    openai.fault(f'text="{ANSWER}" ttfb_ms=20')  # every call answers max_tokens words: cost ~ reservation
    worst = max(reservation(_body(i)) for i in (0, 99999))
    micros = (BUDGET_CALLS * worst + worst // 2) // 1000  # budgets are set in whole micro-dollars
    budget_nanos = micros * 1000
    tenant = new_tenant(a, budget_usd=float(Decimal(micros).scaleb(-6)), budget_period="total")
    key, _ = new_key(a, tenant)

    started = time.monotonic()
    sent = asyncio.run(_clients([a.url, b.url], key))
    elapsed = time.monotonic() - started
    statuses = Counter(s.status for s in sent)
    admitted = statuses[200]
    codes = Counter(json.loads(s.raw)["error"]["code"] for s in sent if s.status != 200)
    assert set(statuses) == {200, 429} and codes == {"budget_exceeded": statuses[429]}, (statuses, codes)
    assert openai.calls() == admitted  # one upstream call per admitted request, none for a refused one

    calls_before = openai.calls()
    later = [
        Sent(f"bud-late-{i}", "/v1/chat/completions", _body(10_000 + i), {"authorization": f"Bearer {key}"})
        for i in range(20)
    ]

    async def burst() -> None:
        async with session() as http:
            await asyncio.gather(*(send(http, (a.url, b.url)[i % 2], s) for i, s in enumerate(later)))

    asyncio.run(burst())
    assert {s.status for s in later} == {429}
    assert {json.loads(s.raw)["error"]["code"] for s in later} == {"budget_exceeded"}
    assert openai.calls() == calls_before, "a refused request reached the upstream"

    everything = sent + later
    wait_for_rows(database_url, {s.rid for s in everything})
    rows = {rid: r for rid, r in ledger_rows(database_url).items() if r["tenant_id"] == tenant}
    assert set(rows) == {s.rid for s in everything}
    spent = sum(r["cost_nanos"] for r in rows.values())
    assert all(r["cost_nanos"] <= worst for r in rows.values())  # no call cost more than its hold
    assert sum(r["status"] == "ok" for r in rows.values()) == admitted
    assert all(r["cost_nanos"] == 0 for r in rows.values() if r["status"] != "ok")
    assert spent <= budget_nanos + worst, f"overshoot {spent - budget_nanos} > one reservation {worst}"
    assert admitted >= BUDGET_CALLS - 1, "the budget should admit about BUDGET_CALLS calls"

    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    try:
        base = f"aigw:budget:tenant:{tenant}:total"
        counter: dict[bytes, bytes] = client.hgetall(base)  # type: ignore[assignment]
        assert int(counter[b"spent"]) == spent  # I4: the shared counter is the ledger, exactly
        assert int(counter.get(b"held", b"0")) == 0 and client.zcard(base + ":res") == 0
        keys = list(client.scan_iter(match=f"aigw:budget:tenant:{tenant}:*"))
        client.delete(*keys)
    finally:
        client.close()
    print(
        f"\nbudget {budget_nanos} nano-USD, one reservation {worst}: {CLIENTS} clients on 2 replicas sent "
        f"{len(sent)} calls in {elapsed:.1f}s, {admitted} admitted, spend {spent} "
        f"(overshoot {max(0, spent - budget_nanos)}), upstream calls {openai.calls()}, "
        f"then {len(later)} more refused with no upstream call; Redis spent == ledger sum"
    )


def test_the_hold_is_the_worst_case_of_one_call(
    replicas: tuple[Proc, Proc, str, RedisServer], mocks: Upstreams
) -> None:
    """The reservation the bound above uses is the gateway's: a key budget one micro-dollar below it
    refuses the call before the upstream, one at or above it admits it (key-level budgets, too)."""
    a, b, _, _ = replicas
    body = _body(1)
    worst = reservation(body)
    below, above = (worst - 1) // 1000, -(-worst // 1000)
    results = {}
    for name, micros in (("below", below), ("above", above)):
        key, _ = new_key(a, budget_usd=float(Decimal(micros).scaleb(-6)), budget_period="day")
        reply = chat(b, key, body)
        results[name] = (reply.status, reply.json().get("error", {}).get("code"))
    assert results == {"below": (429, "budget_exceeded"), "above": (200, None)}, (worst, results)
    assert mocks.mocks["openai"].calls() == 1


def test_a_reused_client_request_id_neither_shares_a_hold_nor_loses_a_row(
    replicas: tuple[Proc, Proc, str, RedisServer], mocks: Upstreams
) -> None:
    """`x-request-id` is the client's to choose, so 30 concurrent calls may all carry the same one (a
    careless client, a retry, or one trying its luck): each still holds its own worst case, is settled on
    its own, and leaves its own ledger row."""
    a, b, database_url, server = replicas
    openai = mocks.mocks["openai"]
    openai.fault(f'text="{ANSWER}" ttfb_ms=20')
    worst = reservation(_body(0))
    micros = (5 * worst + worst // 2) // 1000  # room for 5 calls
    key, record = new_key(a, budget_usd=float(Decimal(micros).scaleb(-6)), budget_period="total")
    rid = f"same-{secrets.token_hex(4)}"
    calls = [
        Sent(rid, "/v1/chat/completions", _body(i), {"authorization": f"Bearer {key}"}) for i in range(30)
    ]

    async def burst() -> None:
        async with session() as http:
            await asyncio.gather(*(send(http, (a.url, b.url)[i % 2], s) for i, s in enumerate(calls)))

    asyncio.run(burst())
    admitted = sum(c.status == 200 for c in calls)
    assert 1 <= admitted <= 5 and openai.calls() == admitted, Counter(c.status for c in calls)
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in ledger_rows(database_url).values() if r["key_id"] == record["id"]]
        if len(rows) >= len(calls) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == len(calls), f"{len(calls) - len(rows)} rows lost to a reused request id"
    assert sum(r["status"] == "ok" for r in rows) == admitted
    assert all(r["request_id"].startswith(rid) for r in rows)
    spent = sum(r["cost_nanos"] for r in rows)
    assert spent <= micros * 1000
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    try:
        base = f"aigw:budget:key:{record['id']}:total"
        assert int(client.hget(base, "spent") or 0) == spent  # type: ignore[arg-type]
        client.delete(*client.scan_iter(match=f"aigw:budget:key:{record['id']}:*"))
    finally:
        client.close()
