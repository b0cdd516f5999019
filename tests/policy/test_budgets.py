"""Budgets: calendar windows, the in-process backend's atomic holds, and the `Budgets` facade's
fallback when the shared backend is down. The Redis backend has its own tests in tests/stores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ai_gateway.errors import BackendUnavailableError, RateLimitError, ServiceUnavailableError
from ai_gateway.policy.budgets import (
    Budgets,
    BudgetScope,
    Reservation,
    window_for,
)
from ai_gateway.stores.budgets_memory import MemoryBudgets

DAY = 86_400
T0 = datetime(2026, 11, 27, 12, tzinfo=UTC).timestamp()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


# --- windows -------------------------------------------------------------------------------------

instants = st.integers(min_value=0, max_value=int(utc(2200, 1, 1))).map(float)


@given(instants)
def test_day_window_is_the_utc_calendar_day(now: float) -> None:
    w = window_for("day", now)
    assert w.end is not None
    assert w.start.timestamp() <= now < w.end.timestamp()
    assert (w.start.hour, w.start.minute, w.start.second) == (0, 0, 0)
    assert w.end.timestamp() - w.start.timestamp() == DAY
    assert w.label == "day:" + datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


@given(instants)
def test_month_window_is_the_utc_calendar_month(now: float) -> None:
    w = window_for("month", now)
    at = datetime.fromtimestamp(now, UTC)
    assert w.end is not None
    assert w.start.timestamp() <= now < w.end.timestamp()
    assert (w.start.year, w.start.month, w.start.day, w.start.hour) == (at.year, at.month, 1, 0)
    assert w.end.day == 1 and w.end.hour == 0
    assert (w.end.year * 12 + w.end.month) - (w.start.year * 12 + w.start.month) == 1
    assert w.label == f"month:{at:%Y-%m}"


def test_total_window_never_ends() -> None:
    assert window_for("total", T0).label == "total"
    assert window_for("total", T0).end is None


def test_scope_validation() -> None:
    with pytest.raises(ValueError):
        BudgetScope("key:k", -1, "day")
    with pytest.raises(ValueError):
        BudgetScope("key:k", 2**53, "day")
    with pytest.raises(ValueError):
        BudgetScope("key:k", 10, "week")  # type: ignore[arg-type]


# --- the in-process backend ----------------------------------------------------------------------


def test_reserve_settle_and_the_429() -> None:
    async def go() -> None:
        clock = Clock(utc(2026, 11, 27, 23, 59, 58))
        b = MemoryBudgets(clock=clock)
        key = BudgetScope("key:k1", 1_000, "day")
        r = await b.reserve([key], 600, "r1")
        with pytest.raises(RateLimitError) as exc:
            await b.reserve([key], 401, "r2")  # 600 held + 401 > 1000
        assert exc.value.code == "budget_exceeded" and exc.value.status == 429
        assert exc.value.retry_after == 2  # seconds to UTC midnight
        assert "key's daily budget of $0.000001" in exc.value.message
        await b.settle(r, 250)
        assert await b.spent(key) == 250
        await b.reserve([key], 750, "r3")  # 250 spent + 750 held == limit: allowed
        with pytest.raises(RateLimitError):
            await b.reserve([key], 0, "r4")  # at the limit even a free request is refused

    run(go())


def test_all_or_nothing_across_scopes() -> None:
    async def go() -> None:
        b = MemoryBudgets(clock=Clock())
        key = BudgetScope("key:k1", 10_000, "day")
        tenant = BudgetScope("tenant:t1", 1_000, "total")
        await b.reserve([key, tenant], 900, "r1")
        with pytest.raises(RateLimitError) as exc:
            await b.reserve([key, tenant], 200, "r2")
        assert exc.value.retry_after is None  # a total budget never resets
        # Nothing was held on the key for the refused request.
        r = await b.reserve([key], 9_100, "r3")
        assert r.amount_nanos == 9_100

    run(go())


def test_settle_is_idempotent_and_may_exceed_the_hold() -> None:
    async def go() -> None:
        b = MemoryBudgets(clock=Clock())
        key = BudgetScope("key:k1", 1_000, "month")
        r = await b.reserve([key], 100, "r1")
        await b.settle(r, 300)  # an unknown price capped above the worst case
        await b.settle(r, 300)
        assert await b.spent(key) == 300
        r2 = await b.reserve([key], 100, "r2")
        assert await b.reserve([key], 100, "r2") == r2  # a repeated reserve holds once
        await b.reserve([key], 600, "r3")  # 300 + 100 + 600 == 1000

    run(go())


def test_window_rolls_over_at_utc_midnight_and_month_start() -> None:
    async def go() -> None:
        clock = Clock(utc(2026, 1, 31, 23, 59, 59))
        b = MemoryBudgets(clock=clock)
        day = BudgetScope("key:k1", 1_000, "day")
        month = BudgetScope("tenant:t1", 5_000, "month")
        r = await b.reserve([day, month], 1_000, "r1")
        await b.settle(r, 1_000)
        with pytest.raises(RateLimitError) as exc:
            await b.reserve([day], 1, "r2")
        assert exc.value.retry_after == 1
        clock.now = utc(2026, 2, 1)  # midnight, and a new month
        assert await b.spent(day) == 0
        assert await b.spent(month) == 0
        r = await b.reserve([day, month], 1_000, "r3")
        assert [h.window.label for h in r.holds] == ["day:2026-02-01", "month:2026-02"]
        # The late settle of a hold taken before midnight charges the window it was taken in.
        await b.settle(r, 10)
        assert await b.spent(day) == 10

    run(go())


def test_unsettled_holds_expire() -> None:
    async def go() -> None:
        clock = Clock()
        b = MemoryBudgets(clock=clock, reservation_ttl_s=60)
        key = BudgetScope("key:k1", 1_000, "total")
        await b.reserve([key], 1_000, "lost")  # its replica "died": never settled
        with pytest.raises(RateLimitError):
            await b.reserve([key], 1, "r2")
        clock.now += 61
        await b.reserve([key], 1_000, "r3")

    run(go())


def test_seed_runs_once_per_scope_and_window() -> None:
    calls: list[tuple[str, datetime]] = []

    async def seed(scope: BudgetScope, start: datetime) -> int:
        calls.append((scope.name, start))
        await asyncio.sleep(0.01)  # an await before the check: concurrency must still hold
        return 700

    async def go() -> None:
        clock = Clock()
        b = MemoryBudgets(seed=seed, clock=clock)
        key = BudgetScope("key:k1", 1_000, "day")
        results = await asyncio.gather(
            *(b.reserve([key], 100, f"r{i}") for i in range(20)), return_exceptions=True
        )
        assert sum(isinstance(r, Reservation) for r in results) == 3  # 700 seeded + 3 x 100
        assert calls == [("key:k1", datetime(2026, 11, 27, tzinfo=UTC))]
        clock.now += DAY
        await b.spent(key)
        assert len(calls) == 2  # a new window, a new seed

    run(go())


def test_failing_seed_fails_closed() -> None:
    async def seed(scope: BudgetScope, start: datetime) -> int:
        raise ServiceUnavailableError("db down", code="database_unavailable")

    async def go() -> None:
        b = Budgets(MemoryBudgets(seed=seed, clock=Clock()))
        with pytest.raises(ServiceUnavailableError) as exc:
            await b.reserve([BudgetScope("key:k1", 1_000, "day")], 1, "r1")
        assert exc.value.code == "accounting_unavailable"

    run(go())


def test_concurrent_reservations_never_pass_the_limit() -> None:
    async def seed(scope: BudgetScope, start: datetime) -> int:
        await asyncio.sleep(0.001)
        return 0

    async def go() -> None:
        rng = random.Random(7)
        b = Budgets(MemoryBudgets(seed=seed))
        scope = BudgetScope("tenant:t1", 50_000_000, "day")
        settled: list[int] = []

        async def worker(n: int) -> None:
            i = 0
            while True:
                i += 1
                try:
                    r = await b.reserve([scope], 1_000_000, f"w{n}-{i}")
                except RateLimitError:
                    return
                await asyncio.sleep(rng.random() / 1000)
                actual = rng.randint(0, 1_000_000)
                settled.append(actual)
                await b.settle(r, actual)

        await asyncio.gather(*(worker(n) for n in range(50)))
        spent = await b.spent(scope)
        assert spent == sum(settled)  # exact, nano for nano
        assert 50_000_000 - 1_000_000 < spent <= 50_000_000

    run(go())


# --- property: no interleaving of reserve / settle / time passes the limit -----------------------


class BudgetMachine(RuleBasedStateMachine):
    """The backend against a model; amounts settle at most at their hold (an honest worst case)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(utc(2026, 12, 31, 22))
        self.backend = MemoryBudgets(clock=self.clock, reservation_ttl_s=600)
        self.scopes = [BudgetScope("key:k", 5_000, "day"), BudgetScope("tenant:t", 12_000, "month")]
        self.open: list[tuple[Reservation, int, float]] = []
        self.spent: dict[tuple[str, str], int] = {}
        self.n = 0

    def _labels(self) -> list[tuple[str, str]]:
        return [(s.name, window_for(s.period, self.clock.now).label) for s in self.scopes]

    @initialize()
    def start(self) -> None:
        pass

    @rule(amount=st.integers(0, 3_000), which=st.sampled_from(["key", "tenant", "both"]))
    def reserve(self, amount: int, which: str) -> None:
        scopes = {"key": self.scopes[:1], "tenant": self.scopes[1:], "both": self.scopes}[which]
        self.n += 1
        try:
            r = run(self.backend.reserve(scopes, amount, f"r{self.n}"))
        except RateLimitError:
            return
        self.open.append((r, amount, self.clock.now + 600))

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        r, amount, _ = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        actual = data.draw(st.integers(0, amount))
        run(self.backend.settle(r, actual))
        for h in r.holds:
            key = (h.scope.name, h.window.label)
            self.spent[key] = self.spent.get(key, 0) + actual

    @rule(seconds=st.sampled_from([1, 59, 601, 3_600, DAY]))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += seconds
        # A hold outlives its ttl only if its replica died: that request never settles.
        self.open = [o for o in self.open if o[2] > self.clock.now]

    @invariant()
    def within_limits_and_exact(self) -> None:
        for scope, key in zip(self.scopes, self._labels(), strict=True):
            counter = self.backend._counters.get(key)
            if counter is None:
                continue
            assert counter.spent + counter.held <= scope.limit_nanos
            assert counter.spent == self.spent.get(key, 0)


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = hsettings(max_examples=60, stateful_step_count=40, deadline=None)


@given(st.lists(st.integers(0, 10**12), max_size=30))
@hsettings(max_examples=50, deadline=None)
def test_nano_dollar_sums_are_exact(actuals: list[int]) -> None:
    async def go() -> int:
        b = MemoryBudgets(clock=Clock())
        scope = BudgetScope("tenant:t", 2**53 - 1, "total")
        for i, a in enumerate(actuals):
            await b.settle(await b.reserve([scope], a, f"r{i}"), a)
        return await b.spent(scope)

    assert run(go()) == sum(actuals)


# --- the facade: a shared backend that goes away -------------------------------------------------


@dataclass
class Flaky:
    """A stand-in for Redis: a MemoryBudgets that can be switched off."""

    inner: MemoryBudgets
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def _check(self, op: str) -> None:
        self.calls.append(op)
        if self.down:
            raise BackendUnavailableError("redis budget: ConnectionError")

    async def reserve(self, scopes: Sequence[BudgetScope], amount: int, rid: str) -> Reservation:
        self._check("reserve")
        return await self.inner.reserve(scopes, amount, rid)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        self._check("settle")
        await self.inner.settle(reservation, actual)

    async def spent(self, scope: BudgetScope) -> int:
        self._check("spent")
        return await self.inner.spent(scope)

    def last_known(self, scope_name: str, window: str) -> int | None:
        return self.inner.last_known(scope_name, window)


def test_without_a_fallback_an_outage_is_a_503() -> None:
    async def go() -> None:
        shared = Flaky(MemoryBudgets(clock=Clock()), down=True)
        b = Budgets(shared)
        with pytest.raises(ServiceUnavailableError) as exc:
            await b.reserve([BudgetScope("key:k", 10, "day")], 1, "r1")
        assert exc.value.code == "accounting_unavailable" and exc.value.retry_after == 1

    run(go())


def test_outage_falls_back_to_local_from_the_last_known_spend_and_replays() -> None:
    async def ledger_seed(scope: BudgetScope, start: datetime) -> int:
        return 0

    async def go() -> None:
        clock, mono = Clock(), Clock(0.0)
        shared = Flaky(MemoryBudgets(clock=clock))
        b = Budgets(
            shared,
            fallback=lambda seed: MemoryBudgets(seed=seed, clock=clock),
            seed=ledger_seed,
            retry_s=5,
            clock=mono,
        )
        broke = BudgetScope("tenant:broke", 1_000, "day")
        rich = BudgetScope("tenant:rich", 1_000, "day")
        for scope, spend in ((broke, 1_000), (rich, 400)):
            await b.settle(await b.reserve([scope], spend, f"seed-{scope.name}"), spend)
        in_flight = await b.reserve([rich], 100, "in-flight")  # held in "Redis" when it goes away

        shared.down = True
        with pytest.raises(RateLimitError):  # a tenant at budget stays blocked
            await b.reserve([broke], 1, "x1")
        assert b.stats.degraded and b.stats.degraded_entries == 1
        local = await b.reserve([rich], 500, "x2")  # 400 known spent + 500 <= 1000
        with pytest.raises(RateLimitError):
            await b.reserve([rich], 101, "x3")
        await b.settle(in_flight, 100)  # queued for Redis, counted locally
        await b.settle(local, 450)
        assert b.stats.pending_settles == 2
        assert await b.spent(rich) == 950
        assert shared.calls.count("reserve") == 4  # one failure, then no retry before retry_s

        shared.down = False
        mono.now += 6
        await b.reserve([rich], 50, "after")  # Redis answers: the queue replays in the background
        await b.aclose()
        assert not b.stats.degraded and b.stats.pending_settles == 0
        assert b.stats.settles_replayed == 2
        assert await b.spent(rich) == 400 + 100 + 450  # exact, and the in-flight hold released
        await b.settle(local, 450)  # a settle repeated after recovery changes nothing
        assert await b.spent(rich) == 950

    run(go())


def test_no_scopes_holds_nothing() -> None:
    async def go() -> None:
        shared = Flaky(MemoryBudgets(clock=Clock()), down=True)
        b = Budgets(shared)
        r = await b.reserve([], 10, "r1")
        await b.settle(r, 10)
        assert shared.calls == []
        with pytest.raises(ValueError):
            await b.reserve([BudgetScope("key:k", 10, "day")], -1, "r2")

    run(go())
