"""Budgets in a real Redis: the Lua windows agree with Python's, holds are atomic across replicas
(two clients = two replicas), expire when a replica dies, survive NOSCRIPT, and an outage falls back
to local enforcement without failing open."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ai_gateway.errors import BackendUnavailableError, RateLimitError
from ai_gateway.policy.budgets import Budgets, BudgetScope, Reservation, window_for
from ai_gateway.stores._redis import connect
from ai_gateway.stores.budgets_memory import MemoryBudgets
from ai_gateway.stores.budgets_redis import RedisBudgets
from tests.redis_server import RedisServer, shared_redis, start_redis, unique_prefix

TIMEOUT = 2.0  # generous: a busy CI machine must not turn these into outages


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.fixture(scope="module")
def server() -> RedisServer:
    return shared_redis()


@pytest.fixture
def prefix(server: RedisServer) -> Iterator[str]:
    p = unique_prefix("budgets")
    yield p

    async def clean() -> None:
        client = aioredis.Redis.from_url(server.url)
        keys = [k async for k in client.scan_iter(match=p + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    run(clean())


def replica(url: str, prefix: str, **kw: Any) -> RedisBudgets:
    return RedisBudgets(connect(url, TIMEOUT), prefix=prefix, timeout_s=TIMEOUT, **kw)


async def close(*backends: RedisBudgets) -> None:
    for b in backends:
        await b._client.aclose()


# --- windows, from Redis TIME or a given clock ---------------------------------------------------

boundaries = st.sampled_from(
    [
        utc(2026, 11, 27, 23, 59, 59),
        utc(2026, 11, 28),
        utc(2026, 12, 31, 23, 59, 59),
        utc(2027, 1, 1),
        utc(2024, 2, 29, 12),  # leap day
        utc(2000, 2, 29),
        utc(2100, 3, 1),  # 2100 is not a leap year
        utc(1999, 12, 31, 23, 59, 59),
    ]
)
instants = st.one_of(boundaries, st.integers(0, int(utc(2200, 1, 1))).map(float))


@given(st.lists(instants, min_size=10, max_size=10))
@hsettings(max_examples=6, deadline=None)
def test_lua_windows_match_python(server: RedisServer, stamps: list[float]) -> None:
    prefix = unique_prefix("budgets-win")

    async def go() -> None:
        clock = {"now": 0.0}
        b = replica(server.url, prefix, clock=lambda: clock["now"])
        for i, now in enumerate(stamps):
            day, month = BudgetScope(f"key:k{i}", 10, "day"), BudgetScope(f"tenant:t{i}", 10, "month")
            clock["now"] = now
            r = await b.reserve([day, month], 10, f"r{i}")
            assert [h.window for h in r.holds] == [window_for("day", now), window_for("month", now)]
            with pytest.raises(RateLimitError) as exc:
                await b.reserve([day], 1, f"x{i}")
            end = window_for("day", now).end
            assert end is not None
            assert exc.value.retry_after == max(1, int(end.timestamp() - int(now)))
        keys = await b._client.execute_command("KEYS", prefix + "*")
        await b._client.execute_command("DEL", *keys)
        await close(b)

    run(go())


def test_rollover_at_midnight_on_the_redis_side(server: RedisServer, prefix: str) -> None:
    async def go() -> None:
        clock = {"now": utc(2026, 11, 30, 23, 59, 59)}
        b = replica(server.url, prefix, clock=lambda: clock["now"])
        day = BudgetScope("key:k", 1_000, "day")
        month = BudgetScope("tenant:t", 1_000_000, "month")
        r = await b.reserve([day, month], 1_000, "r1")
        await b.settle(r, 1_000)
        with pytest.raises(RateLimitError) as exc:
            await b.reserve([day], 1, "r2")
        assert exc.value.retry_after == 1
        assert await b.spent(month) == 1_000
        clock["now"] = utc(2026, 12, 1)
        assert await b.spent(day) == 0 and await b.spent(month) == 0
        r = await b.reserve([day], 1_000, "r3")
        assert r.holds[0].window.label == "day:2026-12-01"
        # Window keys expire a few days after their window; a total budget's never do.
        ttl = await b._client.execute_command("TTL", f"{prefix}key:k:day:2026-12-01")
        assert 86_400 < ttl <= 4 * 86_400  # the rest of the day, plus three days of grace
        total = BudgetScope("tenant:t", 10, "total")
        await b.reserve([total], 1, "r4")
        assert await b._client.execute_command("TTL", f"{prefix}tenant:t:total") == -1
        await close(b)

    run(go())


# --- atomicity across replicas -------------------------------------------------------------------


def test_fifty_concurrent_requests_on_two_replicas_overshoot_at_most_one_reservation(
    server: RedisServer, prefix: str
) -> None:
    """research/reliability.md L-06, in miniature: budget $0.05, a request reserves $0.001."""
    limit, worst = 50_000_000, 1_000_000

    async def go() -> None:
        replicas = [replica(server.url, prefix), replica(server.url, prefix)]
        scope = BudgetScope("tenant:t1", limit, "day")
        key = BudgetScope("key:k1", 10 * limit, "month")
        rng = random.Random(5)
        settled: list[int] = []
        refused, codes = 0, set()

        async def client(n: int) -> None:
            nonlocal refused
            b, i = replicas[n % 2], 0
            while True:
                i += 1
                try:
                    r = await b.reserve([key, scope], worst, f"c{n}-{i}")
                except RateLimitError as exc:
                    codes.add(exc.code)
                    refused += 1
                    return
                await asyncio.sleep(rng.random() / 200)  # the "upstream call"
                actual = rng.randint(worst // 2, worst)
                settled.append(actual)
                await b.settle(r, actual)

        started = time.monotonic()
        await asyncio.gather(*(client(n) for n in range(50)))
        elapsed = time.monotonic() - started
        spent = await replicas[0].spent(scope)
        assert spent == sum(settled) == await replicas[1].spent(scope)  # I4: exact
        assert spent <= limit + worst  # the bound the issue asks for ...
        assert spent <= limit  # ... and with honest worst cases, not even that
        assert spent > limit - 2 * worst  # the budget was really used, not refused early
        assert refused == 50 and codes == {"budget_exceeded"}
        assert await replicas[0].spent(key) == spent
        flat = await replicas[0]._client.execute_command("HGETALL", f"{prefix}{scope.name}:{r_label(scope)}")
        state = dict(zip(flat[::2], flat[1::2], strict=True))
        assert int(state[b"held"]) == 0  # every hold released
        assert elapsed < 10
        await close(*replicas)

    run(go())


def r_label(scope: BudgetScope) -> str:
    return window_for(scope.period, time.time()).label


def test_a_dead_replicas_holds_expire(server: RedisServer, prefix: str) -> None:
    async def go() -> None:
        dying = replica(server.url, prefix, reservation_ttl_s=0.3)
        alive = replica(server.url, prefix, reservation_ttl_s=0.3)
        scope = BudgetScope("tenant:t1", 1_000, "total")
        await dying.reserve([scope], 900, "lost")  # never settled: the replica "died"
        with pytest.raises(RateLimitError):
            await alive.reserve([scope], 200, "r1")
        await asyncio.sleep(0.4)
        r = await alive.reserve([scope], 1_000, "r2")  # the expired hold was purged in the script
        await alive.settle(r, 1_000)
        assert await alive.spent(scope) == 1_000
        assert await alive._client.execute_command("ZCARD", f"{prefix}tenant:t1:total:res") == 0
        await close(dying, alive)

    run(go())


def test_settle_is_idempotent_across_replicas(server: RedisServer, prefix: str) -> None:
    async def go() -> None:
        a, b = replica(server.url, prefix), replica(server.url, prefix)
        scope = BudgetScope("key:k", 10_000, "month")
        r = await a.reserve([scope], 1_000, "r1")
        assert await a.reserve([scope], 1_000, "r1") == r  # a retried reserve holds once
        await a.settle(r, 1_500)  # more than held: a capped unknown price
        await b.settle(r, 1_500)  # replayed from a queue elsewhere
        assert await b.spent(scope) == 1_500
        await a.reserve([scope], 8_500, "r2")  # 1500 + 8500 == limit
        await close(a, b)

    run(go())


def test_seed_once_per_window_and_first_replica_wins(server: RedisServer, prefix: str) -> None:
    calls: list[tuple[str, str, datetime]] = []

    def seeder(tag: str, value: int) -> Any:
        async def seed(scope: BudgetScope, start: datetime) -> int:
            calls.append((tag, scope.name, start))
            await asyncio.sleep(0.02)
            return value

        return seed

    async def go() -> None:
        a = replica(server.url, prefix, seed=seeder("a", 600))
        scope = BudgetScope("tenant:t", 1_000, "day")
        results = await asyncio.gather(
            *(a.reserve([scope], 100, f"r{i}") for i in range(20)), return_exceptions=True
        )
        assert sum(isinstance(r, Reservation) for r in results) == 4  # 600 + 4 x 100
        assert len(calls) == 1 and calls[0][1:] == ("tenant:t", window_for("day", time.time()).start)
        b = replica(server.url, prefix, seed=seeder("b", 0))
        await b.spent(scope)
        assert len(calls) == 1  # the counter exists: b never asks its ledger
        # A flushed Redis: the counter starts again from the seed, exactly once.
        base = f"{prefix}tenant:t:{window_for('day', time.time()).label}"
        await a._client.execute_command("DEL", base, base + ":res", base + ":amt")
        assert await b.spent(scope) == 0 and await a.spent(scope) == 0
        assert [c[0] for c in calls] == ["a", "b"]
        await close(a, b)

    run(go())


@pytest.fixture
def private() -> Iterator[RedisServer]:
    s = start_redis()
    yield s
    s.stop()


def test_noscript_reloads(private: RedisServer) -> None:
    async def go() -> None:
        b = replica(private.url, "aigw:budget:")
        scope = BudgetScope("key:k", 100, "day")
        await b.reserve([scope], 10, "r1")
        assert private.command("SCRIPT", "FLUSH").startswith(b"+OK")
        r = await b.reserve([scope], 10, "r2")
        await b.settle(r, 10)
        assert b.script_loads >= 2
        await close(b)

    run(go())


def test_redis_errors_are_mapped_once(private: RedisServer) -> None:
    async def go() -> None:
        b = replica(private.url, "aigw:budget:")
        private.kill()
        with pytest.raises(BackendUnavailableError):
            await b.reserve([BudgetScope("key:k", 100, "day")], 10, "r1")
        await close(b)

    run(go())


def test_outage_then_recovery_through_the_facade(private: RedisServer) -> None:
    """Redis dies: a tenant at budget stays blocked, others spend what was left, nobody waits on the
    dead server; Redis comes back empty: counters are seeded again and queued settles replay."""

    async def ledger(scope: BudgetScope, start: datetime) -> int:
        return ledger_sums.get(scope.name, 0)

    ledger_sums: dict[str, int] = {}

    async def go() -> None:
        mono = {"now": 0.0}
        shared = RedisBudgets(connect(private.url, 0.2), timeout_s=0.2, seed=ledger)
        b = Budgets(
            shared,
            fallback=lambda seed: MemoryBudgets(seed=seed),
            seed=ledger,
            retry_s=5,
            clock=lambda: mono["now"],
        )
        broke, rich = BudgetScope("tenant:broke", 1_000, "day"), BudgetScope("tenant:rich", 1_000, "day")
        for scope, spend in ((broke, 1_000), (rich, 300)):
            await b.settle(await b.reserve([scope], spend, f"s-{scope.name}"), spend)
            ledger_sums[scope.name] = spend
        held = await b.reserve([rich], 200, "in-flight")

        private.kill()
        with pytest.raises(RateLimitError):
            await b.reserve([broke], 1, "x1")
        t = time.monotonic()
        local = await b.reserve([rich], 500, "x2")
        with pytest.raises(RateLimitError):
            await b.reserve([rich], 201, "x3")
        assert time.monotonic() - t < 0.1  # degraded: no waiting on the dead server
        await b.settle(held, 150)
        await b.settle(local, 400)
        ledger_sums["tenant:rich"] = 300 + 150 + 400
        assert b.stats.degraded and b.stats.pending_settles == 2

        private.restart()  # empty: every counter is gone
        mono["now"] += 6
        await b.reserve([rich], 10, "after")
        await b.aclose()
        assert not b.stats.degraded and b.stats.pending_settles == 0
        # Seeded from the ledger (850); the replayed settles found no hold and a seeded counter,
        # so they added too: the counter errs high, never low, after a Redis wipe.
        assert await b.spent(rich) >= 850
        with pytest.raises(RateLimitError):
            await b.reserve([broke], 1, "x4")
        await shared._client.aclose()

    run(go())
