"""Token bucket stores: exact admission in memory and in Redis, across replicas, on Redis's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ai_gateway.errors import BackendUnavailableError
from ai_gateway.stores._redis import RespClient, connect
from ai_gateway.stores.buckets import TICKS_PER_TOKEN, Bucket, BucketStore, bucket_state, refill
from ai_gateway.stores.buckets_memory import MemoryBuckets
from ai_gateway.stores.buckets_redis import RedisBuckets
from tests.redis_server import RedisServer, shared_redis, start_redis, unique_prefix

# Generous: these tests are about correctness, and a busy CI machine must not turn them into timeouts.
TIMEOUT = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def redis_shared() -> RedisServer:
    return shared_redis()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def redis_store(url: str, prefix: str) -> RedisBuckets:
    return RedisBuckets(connect(url, TIMEOUT), prefix=prefix, timeout_s=TIMEOUT)


async def burst(store: BucketStore, bucket: Bucket, n: int) -> int:
    decisions = await asyncio.gather(*(store.admit([bucket]) for _ in range(n)))
    return sum(d.admitted for d in decisions)


# --- arithmetic ----------------------------------------------------------------------------------


def test_refill_is_exact_and_capped() -> None:
    cap = 10 * TICKS_PER_TOKEN
    assert refill(0, 0, 1000, cap, 60) == 60_000  # one per second: one token after 1 s
    assert refill(0, 0, 1_000_000, cap, 60) == cap
    assert refill(5, 100, 50, cap, 60) == 5  # the clock went backwards: nothing
    assert refill(-cap, 0, 10_000, cap, 60) == -cap + 600_000


def test_bucket_state_in_client_units() -> None:
    b = Bucket("k", capacity=60, per_minute=60, cost=2)
    s = bucket_state(b, TICKS_PER_TOKEN // 2)  # half a token left
    assert (s.limit, s.remaining) == (60, 0)
    assert s.retry_s == 1.5  # 1.5 tokens at one per second
    assert s.reset_s == 59.5
    assert bucket_state(Bucket("k", 5, 0, 1), 0).retry_s is None  # never refills


# --- memory --------------------------------------------------------------------------------------


def test_memory_burst_of_100_admits_exactly_5() -> None:
    store = MemoryBuckets()
    assert run(burst(store, Bucket("b", capacity=5, per_minute=0), 100)) == 5


def test_memory_all_or_nothing_across_buckets() -> None:
    async def go() -> None:
        store = MemoryBuckets(FakeClock())
        key, tenant = Bucket("key", 5, 0, 1), Bucket("tenant", 2, 0, 1)
        assert (await store.admit([key, tenant])).admitted
        assert (await store.admit([key, tenant])).admitted
        denied = await store.admit([key, tenant])
        assert not denied.admitted
        assert [s.remaining for s in denied.states] == [3, 0]  # the key bucket was not charged
        assert (await store.admit([key])).admitted

    run(go())


def test_memory_adjust_refunds_charges_and_bounds_debt() -> None:
    async def go() -> None:
        store = MemoryBuckets(FakeClock())
        b = Bucket("t", 100, 0, 80)
        await store.admit([b])
        await store.adjust([Bucket("t", 100, 0, -30)])  # used 50 of the 80 reserved
        assert (await store.admit([Bucket("t", 100, 0, 50)])).admitted
        await store.adjust([Bucket("t", 100, 0, 500)])  # a far longer answer than reserved
        state = (await store.admit([Bucket("t", 100, 0, 1)])).states[0]
        assert state.remaining == 0
        await store.adjust([Bucket("t", 100, 0, -1000)])  # refunds stop at capacity
        assert (await store.admit([Bucket("t", 100, 0, 100)])).admitted
        assert not (await store.admit([Bucket("t", 100, 0, 1)])).admitted

    run(go())


def test_memory_debt_is_paid_back_by_refill() -> None:
    async def go() -> None:
        clock = FakeClock()
        store = MemoryBuckets(clock)
        await store.adjust([Bucket("t", 60, 60, 120)])  # 60 into debt
        assert not (await store.admit([Bucket("t", 60, 60, 1)])).admitted
        clock.now += 60_999
        assert not (await store.admit([Bucket("t", 60, 60, 1)])).admitted
        clock.now += 1
        assert (await store.admit([Bucket("t", 60, 60, 1)])).admitted

    run(go())


def test_memory_clock_stepping_back_refills_nothing_twice() -> None:
    async def go() -> list[bool]:
        clock = FakeClock()
        store = MemoryBuckets(clock)
        bucket = Bucket("b", capacity=2, per_minute=60)  # one a second
        outcomes = [(await store.admit([bucket])).admitted]
        clock.now -= 1000  # the clock steps back a second
        outcomes.append((await store.admit([bucket])).admitted)
        clock.now += 1000  # and catches up: no real time has passed since the first admit
        outcomes.append((await store.admit([bucket])).admitted)
        clock.now += 1000
        outcomes.append((await store.admit([bucket])).admitted)
        return outcomes

    assert run(go()) == [True, True, False, True]


def test_memory_forgets_only_refilled_buckets() -> None:
    async def go() -> None:
        clock = FakeClock()
        store = MemoryBuckets(clock)
        await store.admit([Bucket("slow", 1, 0, 1)])  # never refills: must never be forgotten
        for i in range(1100):
            await store.admit([Bucket(f"k{i}", 10, 60, 1)])
            clock.now += 1
        clock.now += 2_000
        await store.admit([Bucket("trigger", 10, 60, 1)])
        assert len(store) < 1100
        assert not (await store.admit([Bucket("slow", 1, 0, 1)])).admitted

    run(go())


class BucketMachine(RuleBasedStateMachine):
    """Whatever the sequence of admits, refunds, waits and clock steps back, admitted - refunded stays
    within B + r*t, t being the span of the clock readings."""

    @initialize(capacity=st.integers(1, 50), per_minute=st.integers(0, 6000))
    def setup(self, capacity: int, per_minute: int) -> None:
        self.clock = FakeClock()
        self.earliest = self.latest = self.clock.now
        self.store = MemoryBuckets(self.clock)
        self.capacity, self.per_minute = capacity, per_minute
        self.admitted = 0
        self.refunded = 0

    def bucket(self, cost: int) -> Bucket:
        return Bucket("b", self.capacity, self.per_minute, cost)

    @rule(cost=st.integers(0, 60))
    def admit(self, cost: int) -> None:
        if run(self.store.admit([self.bucket(cost)])).admitted:
            self.admitted += cost

    @rule(ms=st.integers(0, 5_000))
    def wait(self, ms: int) -> None:
        self.clock.now += ms

    @rule(back=st.integers(1, 2_000))
    def clock_steps_back(self, back: int) -> None:
        self.clock.now -= back  # e.g. a VM migrated; the time between must not refill twice

    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        amount = data.draw(st.integers(0, max(0, self.admitted - self.refunded)))
        run(self.store.adjust([self.bucket(-amount)]))
        self.refunded += amount

    @invariant()
    def never_more_than_burst_plus_refill(self) -> None:
        if not hasattr(self, "store"):
            return
        # The bucket can only know the span of the clock readings it was given.
        self.latest = max(self.latest, self.clock.now)
        self.earliest = min(self.earliest, self.clock.now)
        elapsed_ms = self.latest - self.earliest
        allowance = self.capacity + self.per_minute * elapsed_ms / 60_000
        assert self.admitted - self.refunded <= allowance + 1e-9


TestBucketProperty = BucketMachine.TestCase
TestBucketProperty.settings = hsettings(max_examples=60, stateful_step_count=40, deadline=None)


# --- Redis ---------------------------------------------------------------------------------------


def test_redis_burst_of_100_admits_exactly_5(redis_shared: RedisServer) -> None:
    async def go() -> int:
        store = redis_store(redis_shared.url, unique_prefix("burst"))
        try:
            return await burst(store, Bucket("b", capacity=5, per_minute=0), 100)
        finally:
            await store.aclose()

    assert run(go()) == 5


def test_two_replicas_share_one_allowance(redis_shared: RedisServer) -> None:
    """Two instances, each with its own pool: a burst split over both admits exactly the capacity."""

    async def go() -> int:
        prefix = unique_prefix("replicas")
        a, b = redis_store(redis_shared.url, prefix), redis_store(redis_shared.url, prefix)
        bucket = Bucket("b", capacity=5, per_minute=0)
        try:
            decisions = await asyncio.gather(*((a if i % 2 else b).admit([bucket]) for i in range(100)))
        finally:
            await a.aclose()
            await b.aclose()
        return sum(d.admitted for d in decisions)

    assert run(go()) == 5


async def redis_ms(client: RespClient) -> int:
    seconds, micros = await client.execute_command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


def test_two_replicas_under_load_admit_at_most_and_nearly_all_of_the_allowance(
    redis_shared: RedisServer,
) -> None:
    """L-04 at the store level: B + r*T is never exceeded and at least 98% of it is used."""
    capacity, per_minute, run_s, workers = 10, 6000, 2.0, 8  # 100/s

    async def go() -> tuple[int, int]:
        prefix = unique_prefix("load")
        clients = [connect(redis_shared.url, TIMEOUT) for _ in range(2)]
        stores = [RedisBuckets(c, prefix=prefix, timeout_s=TIMEOUT) for c in clients]
        bucket = Bucket("b", capacity, per_minute)
        admitted = 0
        loop = asyncio.get_running_loop()
        start = await redis_ms(clients[0])
        stop_at = loop.time() + run_s

        async def hammer(store: RedisBuckets) -> None:
            nonlocal admitted
            while loop.time() < stop_at:
                decision = await store.admit([bucket])  # not `admitted += await ...`: that reads first
                admitted += decision.admitted

        await asyncio.gather(*(hammer(stores[i % 2]) for i in range(workers)))
        end = await redis_ms(clients[0])
        for store in stores:
            await store.aclose()
        return admitted, end - start

    admitted, elapsed_ms = run(go())
    allowance = capacity + per_minute * elapsed_ms / 60_000
    assert admitted <= allowance
    assert admitted >= 0.98 * allowance - 1, (admitted, allowance)


def test_skewed_local_clock_changes_nothing(
    redis_shared: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions come from Redis TIME: a replica whose clock runs an hour ahead refills nothing early,
    where an in-process bucket on that clock would."""
    bucket = Bucket("b", capacity=3, per_minute=60)

    async def drain_then_ask(skew_s: float) -> tuple[bool, float | None]:
        prefix = unique_prefix("skew")
        a, b = redis_store(redis_shared.url, prefix), redis_store(redis_shared.url, prefix)
        try:
            for _ in range(3):
                assert (await a.admit([bucket])).admitted
            real_time, real_mono = time.time, time.monotonic_ns
            monkeypatch.setattr(time, "time", lambda: real_time() + skew_s)
            monkeypatch.setattr(time, "monotonic_ns", lambda: real_mono() + int(skew_s * 1e9))
            decision = await b.admit([bucket])
            monkeypatch.undo()
            return decision.admitted, decision.states[0].retry_s
        finally:
            await a.aclose()
            await b.aclose()

    admitted, retry = run(drain_then_ask(3600.0))
    assert not admitted
    assert retry is not None and 0.5 < retry <= 1.0

    memory = MemoryBuckets()
    for _ in range(3):
        run(memory.admit([bucket]))
    real_mono = time.monotonic_ns
    monkeypatch.setattr(time, "monotonic_ns", lambda: real_mono() + 3600 * 10**9)
    assert run(memory.admit([bucket])).admitted  # what the Redis script protects against


def test_redis_adjust_and_expiry(redis_shared: RedisServer) -> None:
    async def go(prefix: str) -> None:
        store = redis_store(redis_shared.url, prefix)
        try:
            assert (await store.admit([Bucket("t", 100, 60, 80)])).admitted
            pttl = int(redis_shared.command("PTTL", prefix + "t").split(b"\r\n")[0][1:])
            assert 80_000 < pttl <= 81_000  # 80 tokens at one per second, plus a second of slack
            await store.adjust([Bucket("t", 100, 60, -30)])
            assert (await store.admit([Bucket("t", 100, 60, 50)])).admitted
            assert not (await store.admit([Bucket("t", 100, 60, 2)])).admitted
            await store.adjust([Bucket("t", 100, 60, -1000)])  # back to full: the key is deleted
            assert redis_shared.command("EXISTS", prefix + "t").startswith(b":0")
            await store.adjust([Bucket("t", 100, 60, 500)])  # debt stops at -capacity
            state = (await store.admit([Bucket("t", 100, 60, 1)])).states[0]
            assert state.remaining == 0 and state.retry_s is not None and 100 < state.retry_s <= 101
        finally:
            await store.aclose()

    run(go(unique_prefix("adjust")))


def test_noscript_after_script_flush_reloads_transparently(private_redis: RedisServer) -> None:
    async def go() -> list[bool]:
        store = redis_store(private_redis.url, unique_prefix("noscript"))
        bucket = Bucket("b", capacity=3, per_minute=0)
        try:
            first = (await store.admit([bucket])).admitted
            loads = store.script_loads
            assert private_redis.command("SCRIPT", "FLUSH").startswith(b"+OK")
            second = (await store.admit([bucket])).admitted
            assert store.script_loads == loads + 1
            third = (await store.admit([bucket])).admitted
            assert store.script_loads == loads + 1  # loaded once, then called by SHA again
            return [first, second, third, (await store.admit([bucket])).admitted]
        finally:
            await store.aclose()

    assert run(go()) == [True, True, True, False]  # the bucket's state survived the flush


def test_wrongtype_at_a_bucket_key_is_a_backend_error(redis_shared: RedisServer) -> None:
    prefix = unique_prefix("wrongtype")
    redis_shared.command("SET", prefix + "b", "not a hash")

    async def go() -> BackendUnavailableError:
        store = redis_store(redis_shared.url, prefix)
        try:
            with pytest.raises(BackendUnavailableError) as caught:
                await store.admit([Bucket("b", 5, 60)])
            return caught.value
        finally:
            await store.aclose()

    err = run(go())
    assert "WRONGTYPE" in str(err)
    assert not err.transient  # Redis is fine; only this key is bad: no reason to open the breaker


def test_dead_redis_is_a_backend_error_within_the_timeout() -> None:
    async def go() -> float:
        from tests.support import free_port

        store = RedisBuckets(connect(f"redis://127.0.0.1:{free_port()}/0", 0.05), timeout_s=0.05)
        started = time.perf_counter()
        try:
            with pytest.raises(BackendUnavailableError) as caught:
                await store.admit([Bucket("b", 5, 60)])
            assert caught.value.transient
            return time.perf_counter() - started
        finally:
            await store.aclose()

    assert run(go()) < 0.5
