"""Response cache stores: the in-process LRU bounded by bytes, and Redis with TTLs and a prefix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from ai_gateway.errors import BackendUnavailableError
from ai_gateway.stores._redis import connect
from ai_gateway.stores.cache_memory import ENTRY_OVERHEAD, MemoryCache
from ai_gateway.stores.cache_redis import RedisCache
from tests.redis_server import shared_redis, unique_prefix
from tests.support import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def entry_cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


def test_memory_evicts_least_recently_used_by_bytes() -> None:
    async def go() -> None:
        value = b"x" * 1000
        cache = MemoryCache(max_bytes=3 * entry_cost("k0", value), max_entries=100)
        for key in ("k0", "k1", "k2"):
            await cache.put(key, value, 60)
        assert await cache.get("k0") == value  # k0 is now the most recently used
        await cache.put("k3", value, 60)
        assert await cache.get("k1") is None  # the least recently used went
        assert [await cache.get(k) for k in ("k0", "k2", "k3")] == [value] * 3
        assert cache.size == 3 * entry_cost("k0", value)

    run(go())


def test_memory_one_big_entry_pushes_out_several_small_ones() -> None:
    async def go() -> None:
        cache = MemoryCache(max_bytes=10_000, max_entries=100)
        for i in range(8):
            await cache.put(f"s{i}", b"x" * 500, 60)
        await cache.put("big", b"y" * 6000, 60)
        assert cache.size <= 10_000
        assert await cache.get("big") is not None
        assert len(cache) < 9

    run(go())


def test_memory_bounds_entries_too() -> None:
    async def go() -> None:
        cache = MemoryCache(max_bytes=10**9, max_entries=2)
        for key in ("a", "b", "c"):
            await cache.put(key, b"v", 60)
        assert len(cache) == 2 and await cache.get("a") is None

    run(go())


def test_memory_ttl_and_replacement() -> None:
    async def go() -> None:
        clock = Clock()
        cache = MemoryCache(max_bytes=10_000, clock=clock)
        await cache.put("k", b"old", 10)
        await cache.put("k", b"newer", 10)  # replaces, and the size follows
        assert cache.size == entry_cost("k", b"newer")
        clock.now += 9.9
        assert await cache.get("k") == b"newer"
        clock.now += 0.2
        assert await cache.get("k") is None
        assert cache.size == 0

    run(go())


def test_memory_never_stores_what_cannot_fit() -> None:
    async def go() -> None:
        cache = MemoryCache(max_bytes=1000)
        await cache.put("small", b"s", 60)
        await cache.put("huge", b"h" * 2000, 60)
        assert await cache.get("huge") is None
        assert await cache.get("small") == b"s"  # and nothing was evicted for it

    run(go())


def test_redis_get_put_ttl_and_prefix() -> None:
    server = shared_redis()
    prefix = unique_prefix("cache")

    async def go() -> None:
        cache = RedisCache(connect(server.url, 2.0), prefix=prefix, timeout_s=2.0)
        other = RedisCache(connect(server.url, 2.0), prefix=unique_prefix("cache"), timeout_s=2.0)
        try:
            assert await cache.get("k") is None
            await cache.put("k", b"value", 30)
            assert await cache.get("k") == b"value"
            assert await other.get("k") is None  # another prefix, another cache
            pttl = int(server.command("PTTL", prefix + "k").split(b"\r\n")[0][1:])
            assert 29_000 < pttl <= 30_000
            await cache.put("short", b"v", 0.05)
            await asyncio.sleep(0.15)
            assert await cache.get("short") is None
        finally:
            await cache.aclose()
            await other.aclose()

    run(go())


def test_redis_errors_become_backend_errors() -> None:
    server = shared_redis()
    prefix = unique_prefix("cache")
    server.command("HSET", prefix + "k", "f", "v")

    async def go() -> tuple[BackendUnavailableError, BackendUnavailableError]:
        cache = RedisCache(connect(server.url, 2.0), prefix=prefix, timeout_s=2.0)
        dead = RedisCache(connect(f"redis://127.0.0.1:{free_port()}/0"))
        try:
            with pytest.raises(BackendUnavailableError) as wrongtype:
                await cache.get("k")
            with pytest.raises(BackendUnavailableError) as refused:
                await dead.put("k", b"v", 10)
            return wrongtype.value, refused.value
        finally:
            await cache.aclose()
            await dead.aclose()

    wrongtype, refused = run(go())
    assert "WRONGTYPE" in str(wrongtype) and not wrongtype.transient
    assert refused.transient
