"""Rate-limit policy: scopes, headers, 429s, TPM reserve-and-settle, and each `on_backend_error` mode
against a Redis that dies mid-run (research/reliability.md F-19..F-22)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, Literal

import pytest

from ai_gateway.errors import BackendUnavailableError, RateLimitError, ServiceUnavailableError
from ai_gateway.policy.auth import Principal
from ai_gateway.policy.limit_store import FailoverBuckets, ScaledBuckets
from ai_gateway.policy.limits import (
    Admission,
    Limiter,
    LimitScope,
    build_limiter,
    format_reset,
    scopes_for,
    startup_warning,
)
from ai_gateway.settings import LimitsSettings, Settings, load_settings
from ai_gateway.stores._redis import connect
from ai_gateway.stores.buckets import Bucket, Decision
from ai_gateway.stores.buckets_memory import MemoryBuckets
from ai_gateway.stores.buckets_redis import RedisBuckets
from ai_gateway.stores.sql import Limits
from tests.redis_server import RedisServer, shared_redis, start_redis, unique_prefix

Mode = Literal["local", "allow", "deny"]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def memory_limiter(clock: Clock | None = None) -> Limiter:
    clock = clock or Clock()
    return Limiter(MemoryBuckets(clock.ms))


def header_map(admission: Admission) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in admission.headers()}


# --- scopes, headers, 429s -----------------------------------------------------------------------


def test_scopes_take_config_defaults_per_field_and_validate() -> None:
    defaults = LimitsSettings(rpm=60, tpm=10_000)
    assert LimitScope.for_key("k", None, 500, defaults) == LimitScope("key:k", 60, 500, "this API key")
    assert LimitScope.for_key("k", None, None).rpm is None
    assert LimitScope.for_tenant("t", 10, None).name == "tenant:t"
    assert LimitScope.for_model("k", "openai/gpt-4o", 5, None).name == "key:k:model:openai/gpt-4o"
    with pytest.raises(ValueError, match="rpm"):
        LimitScope("key:k", rpm=0)


def test_scopes_of_a_caller() -> None:
    defaults = LimitsSettings(rpm=60)
    key = Principal(
        "key",
        frozenset({"chat"}),
        key_id="k1",
        tenant_id="t1",
        key_limits=Limits(tpm=1000),
        tenant_limits=Limits(rpm=600),
    )
    assert scopes_for(key, defaults) == [
        LimitScope("key:k1", 60, 1000, "this API key"),
        LimitScope("tenant:t1", 600, None, "this tenant"),
    ]
    assert scopes_for(Principal("master", frozenset({"admin"})), defaults) == []


def test_headers_are_openai_shaped() -> None:
    limiter = memory_limiter()
    admission = run(limiter.admit([LimitScope.for_key("k", 60, 1000)], 100))
    assert header_map(admission) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",  # 100 tokens back at 1000/60 per second
    }


def test_headers_report_the_tightest_scope() -> None:
    limiter = memory_limiter()
    scopes = [LimitScope.for_key("k", 100, None), LimitScope.for_tenant("t", 3, None)]
    admission = run(limiter.admit(scopes, 0))
    assert header_map(admission)["x-ratelimit-remaining-requests"] == "2"
    assert header_map(admission)["x-ratelimit-limit-requests"] == "3"


def test_no_limits_means_no_buckets_and_no_headers() -> None:
    limiter = memory_limiter()
    admission = run(limiter.admit([LimitScope.for_key("k", None, None)], 100))
    assert admission.headers() == [] and admission.store is None
    run(limiter.settle(admission, 50))  # nothing to settle, and no error


@pytest.mark.parametrize(
    ("rpm", "tpm", "estimate", "code"),
    [(2, None, 0, "rate_limited"), (None, 100, 60, "tokens_rate_limited"), (2, 100, 60, "rate_limited")],
)
def test_429_carries_code_retry_after_and_headers(
    rpm: int | None, tpm: int | None, estimate: int, code: str
) -> None:
    async def go() -> RateLimitError:
        limiter = memory_limiter()
        scope = [LimitScope.for_key("k", rpm, tpm)]
        await limiter.admit(scope, estimate)
        if rpm is not None:
            await limiter.admit([LimitScope.for_key("k", rpm, None)], 0)
        with pytest.raises(RateLimitError) as caught:
            await limiter.admit(scope, estimate)
        assert limiter.stats.rejected == 1
        return caught.value

    err = run(go())
    assert (err.status, err.code) == (429, code)
    assert err.retry_after is not None and err.retry_after >= 1 and err.retry_after == int(err.retry_after)
    assert "per minute" in err.message and "this API key" in err.message
    remaining = "x-ratelimit-remaining-requests" if code == "rate_limited" else "x-ratelimit-remaining-tokens"
    assert remaining in err.headers


def test_retry_after_is_rounded_up_so_honouring_it_succeeds() -> None:
    clock = Clock()

    async def go() -> None:
        limiter = memory_limiter(clock)
        scope = [LimitScope.for_key("k", 40, None)]  # one every 1.5 s
        for _ in range(40):
            await limiter.admit(scope, 0)
        with pytest.raises(RateLimitError) as caught:
            await limiter.admit(scope, 0)
        assert caught.value.retry_after == 2.0
        clock.now += caught.value.retry_after
        await limiter.admit(scope, 0)

    run(go())


def test_a_scope_listed_twice_is_charged_once() -> None:
    limiter = memory_limiter()
    scope = LimitScope.for_key("k", 2, None)
    run(limiter.admit([scope, scope], 0))
    run(limiter.admit([scope], 0))  # would be refused had the first admit charged twice


# --- TPM reserve and settle ----------------------------------------------------------------------


def test_settle_refunds_a_short_answer() -> None:
    async def go() -> None:
        limiter = memory_limiter()
        scope = [LimitScope.for_key("k", None, 1000)]
        first = await limiter.admit(scope, 800)
        assert first.reserved_tokens == 800
        with pytest.raises(RateLimitError):
            await limiter.admit(scope, 300)
        await limiter.settle(first, 100)
        await limiter.settle(first, 100)  # idempotent
        second = await limiter.admit(scope, 900)
        assert header_map(second)["x-ratelimit-remaining-tokens"] == "0"

    run(go())


def test_settle_charges_a_long_answer_into_debt() -> None:
    clock = Clock()

    async def go() -> None:
        limiter = memory_limiter(clock)
        scope = [LimitScope.for_key("k", None, 600)]  # 10 tokens a second
        admission = await limiter.admit(scope, 100)
        await limiter.settle(admission, 900)  # 800 more than reserved: 300 into debt
        with pytest.raises(RateLimitError) as caught:
            await limiter.admit(scope, 1)
        assert caught.value.code == "tokens_rate_limited"
        assert caught.value.retry_after == 31.0  # 301 tokens at 10 per second, rounded up
        clock.now += 31
        await limiter.admit(scope, 1)

    run(go())


def test_an_estimate_above_the_limit_waits_for_a_full_bucket() -> None:
    async def go() -> None:
        limiter = memory_limiter()
        scope = [LimitScope.for_key("k", None, 1000)]
        admission = await limiter.admit(scope, 5000)  # clamped, not refused forever
        assert admission.reserved_tokens == 1000
        with pytest.raises(RateLimitError):
            await limiter.admit(scope, 1)

    run(go())


def test_settle_error_is_counted_not_raised() -> None:
    class BrokenAdjust(MemoryBuckets):
        async def adjust(self, buckets: Sequence[Bucket]) -> None:
            raise BackendUnavailableError("redis rate limit adjust: ConnectionError")

    async def go() -> Limiter:
        limiter = Limiter(BrokenAdjust())
        admission = await limiter.admit([LimitScope.for_key("k", None, 100)], 50)
        await limiter.settle(admission, 10)
        return limiter

    assert run(go()).stats.settle_errors == 1


# --- helpers for operators -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0201, "21ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
    ],
)
def test_format_reset_matches_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_startup_warning_only_for_several_workers_without_redis() -> None:
    assert startup_warning(1, None) is None
    assert startup_warning(4, "redis://h:6379/0") is None
    message = startup_warning(4, None)
    assert message is not None and "4x" in message and "AIGW_REDIS_URL" in message


# --- backend failure modes, without Redis --------------------------------------------------------


class DeadStore:
    def __init__(self, transient: bool = True) -> None:
        self.calls = 0
        self.transient = transient

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        self.calls += 1
        raise BackendUnavailableError("redis rate limit admit: ConnectionError", transient=self.transient)

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        self.calls += 1
        raise BackendUnavailableError("redis rate limit adjust: ConnectionError", transient=self.transient)

    async def aclose(self) -> None:
        pass


def failover(mode: Mode, shared: Any, clock: Clock, share: int = 1) -> Limiter:
    store = FailoverBuckets(shared, ScaledBuckets(MemoryBuckets(clock.ms), share), mode, clock=clock)
    return Limiter(store, store.stats)


def test_breaker_stops_calling_a_dead_store_then_probes() -> None:
    clock, dead = Clock(), DeadStore()
    limiter = failover("allow", dead, clock)
    scope = [LimitScope.for_key("k", 10, None)]
    for _ in range(10):
        run(limiter.admit(scope, 0))
    assert dead.calls == 3  # then the breaker opened
    assert (limiter.stats.backend_errors, limiter.stats.breaker_skips) == (3, 7)
    assert limiter.stats.failure_mode_allowed == 10
    clock.now += 5
    run(limiter.admit(scope, 0))
    assert dead.calls == 4  # one probe after the cooldown, which failed: open again
    run(limiter.admit(scope, 0))
    assert dead.calls == 4


def test_a_rejected_key_does_not_open_the_breaker() -> None:
    clock, wrongtype = Clock(), DeadStore(transient=False)
    limiter = failover("local", wrongtype, clock)
    for _ in range(6):
        run(limiter.admit([LimitScope.for_key("k", 100, None)], 0))
    assert wrongtype.calls == 6
    assert isinstance(limiter.store, FailoverBuckets) and limiter.store.guard.state == "closed"


def test_local_mode_holds_the_replica_share() -> None:
    async def go() -> list[bool]:
        limiter = failover("local", DeadStore(), Clock(), share=3)
        scope = [LimitScope.for_key("k", 10, None)]  # 10 shared by 3 replicas: 3 each
        return [await ok(limiter, scope) for _ in range(5)]

    assert run(go()) == [True, True, True, False, False]


async def ok(limiter: Limiter, scopes: list[LimitScope], tokens: int = 0) -> bool:
    try:
        await limiter.admit(scopes, tokens)
    except RateLimitError:
        return False
    return True


# --- Redis, for real -----------------------------------------------------------------------------


@pytest.fixture
def redis_proc() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def redis_settings(url: str, mode: Mode, replicas: int = 1, timeout_s: float = 0.05) -> Settings:
    base = load_settings(env={"AIGW_REDIS_URL": url}, config_path="/dev/null")
    limits = LimitsSettings(on_backend_error=mode, expected_replicas=replicas, backend_timeout_s=timeout_s)
    return dataclasses.replace(base, limits=limits)


@pytest.mark.parametrize("mode", ["local", "allow", "deny"])
def test_redis_killed_mid_run(redis_proc: RedisServer, mode: Mode) -> None:
    """Redis decides until it dies; then each mode does what it documents, and nothing else escapes."""

    async def go() -> tuple[list[str], Limiter, float]:
        limiter = build_limiter(redis_settings(redis_proc.url, mode, replicas=2, timeout_s=0.5))
        scope = [LimitScope.for_key(unique_prefix("k"), 4, None)]
        before = await limiter.admit(scope, 0)
        assert header_map(before)["x-ratelimit-remaining-requests"] == "3"  # decided in Redis
        redis_proc.kill()
        outcomes = []
        started = time.perf_counter()
        for _ in range(6):
            try:
                admission = await limiter.admit(scope, 0)
                outcomes.append("ok" if admission.headers() else "ok-unchecked")
            except RateLimitError as err:
                outcomes.append(str(err.status))
            except ServiceUnavailableError as err:
                outcomes.append(f"{err.status} {err.code} retry {err.retry_after:g}")
        elapsed = time.perf_counter() - started
        await limiter.aclose()
        return outcomes, limiter, elapsed

    outcomes, limiter, elapsed = run(go())
    expected = {
        "local": ["ok", "ok", "429", "429", "429", "429"],  # 4 shared by 2 replicas: 2 here
        "allow": ["ok-unchecked"] * 6,  # and no x-ratelimit headers: nothing decided
        "deny": ["503 rate_limiter_unavailable retry 1"] * 6,
    }[mode]
    assert outcomes == expected
    stats = limiter.stats
    assert (stats.backend_errors, stats.breaker_skips) == (3, 3)  # 3 failures, then left alone
    assert stats.failure_mode_allowed == (6 if mode == "allow" else 0)
    assert stats.failure_mode_local == (6 if mode == "local" else 0)
    assert stats.failure_mode_denied == (6 if mode == "deny" else 0)
    assert elapsed < 1.5  # refused connections fail fast; at worst 3 timeouts before the breaker


def test_a_stalled_redis_costs_one_timeout_then_nothing() -> None:
    """F-20: a Redis that accepts but never answers is treated as down after the 50 ms timeout."""

    async def go() -> list[float]:
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(-1)

        server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        limiter = build_limiter(redis_settings(f"redis://127.0.0.1:{port}/0", "allow"))
        scope = [LimitScope.for_key("k", 5, None)]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            await limiter.admit(scope, 0)
            times.append(time.perf_counter() - started)
        server.close()
        await limiter.aclose()
        return times

    times = run(go())
    assert all(0.04 <= t < 0.3 for t in times[:3]), times
    assert all(t < 0.01 for t in times[3:]), times  # breaker open: Redis is not called


def test_back_to_redis_after_it_restarts(redis_proc: RedisServer) -> None:
    clock = Clock()

    async def go() -> None:
        shared = RedisBuckets(connect(redis_proc.url, 0.5), prefix=unique_prefix("restart"), timeout_s=0.5)
        limiter = failover("deny", shared, clock)
        scope = [LimitScope.for_key("k", 5, None)]
        await limiter.admit(scope, 0)
        redis_proc.kill()
        for _ in range(4):
            with pytest.raises(ServiceUnavailableError):
                await limiter.admit(scope, 0)
        redis_proc.restart()
        with pytest.raises(ServiceUnavailableError):
            await limiter.admit(scope, 0)  # still cooling down
        clock.now += 5
        admission = await limiter.admit(scope, 0)  # the probe reaches the new (empty) Redis
        assert header_map(admission)["x-ratelimit-remaining-requests"] == "4"
        assert isinstance(limiter.store, FailoverBuckets) and limiter.store.guard.state == "closed"
        await limiter.aclose()

    run(go())


def test_wrongtype_in_redis_falls_back_without_a_500() -> None:
    server = shared_redis()
    prefix = unique_prefix("wrongtype")
    server.command("SET", prefix + "key:k:rpm", "x")

    async def go() -> Limiter:
        shared = RedisBuckets(connect(server.url, 0.5), prefix=prefix, timeout_s=0.5)
        limiter = failover("local", shared, Clock())
        for _ in range(5):
            await limiter.admit([LimitScope.for_key("k", 100, None)], 0)
        await limiter.aclose()
        return limiter

    limiter = run(go())
    assert (limiter.stats.backend_errors, limiter.stats.failure_mode_local) == (5, 5)


def test_two_limiters_share_redis_exactly() -> None:
    """Two gateway replicas (two limiters, two pools) against one Redis: 100 requests, 5 admitted."""
    server = shared_redis()
    name = unique_prefix("tenant")

    async def go() -> int:
        settings = redis_settings(server.url, "deny", timeout_s=2.0)
        a, b = build_limiter(settings), build_limiter(settings)
        scope = [LimitScope.for_tenant(name, 5, None)]
        results = await asyncio.gather(*(ok(a if i % 2 else b, scope) for i in range(100)))
        await a.aclose()
        await b.aclose()
        return sum(results)

    assert run(go()) == 5
