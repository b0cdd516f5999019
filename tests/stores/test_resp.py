"""The pipelining Redis client (stores/_resp.py) against real redis-servers, on asyncio's loop and on
uvloop (the loop `serve` runs): replies stay matched to their callers under concurrency, after errors,
after callers that gave up, across a restart; URLs select the database and authenticate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from ai_gateway.stores._resp import RespClient, _parse
from tests.redis_server import RedisServer, shared_redis, start_redis, unique_prefix
from tests.support import free_port

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[Any]], Any]]:
    loop = LOOPS[request.param]()

    def go(coro: Awaitable[Any]) -> Any:
        return loop.run_until_complete(coro)

    yield go
    loop.close()


@pytest.fixture(scope="module")
def server() -> RedisServer:
    return shared_redis()


def test_urls() -> None:
    a = _parse("redis://127.0.0.1:6390/3")
    assert (a.host, a.port, a.db, a.tls, a.password) == ("127.0.0.1", 6390, 3, False, None)
    b = _parse("rediss://user:p%40ss@cache.internal")
    assert (b.host, b.port, b.db, b.tls, b.username, b.password) == (
        "cache.internal",
        6379,
        0,
        True,
        "user",
        "p@ss",
    )
    assert _parse("redis://:secret@h/0").password == "secret"
    u = _parse("unix:///run/redis.sock?db=2")
    assert (u.path, u.db, u.host) == ("/run/redis.sock", 2, None)
    with pytest.raises(ValueError):
        _parse("http://h")
    with pytest.raises(ValueError):
        _parse("redis://h/x")


def test_concurrent_commands_get_their_own_replies(server: RedisServer, run: Any) -> None:
    prefix = unique_prefix("resp")

    async def go() -> None:
        client = RespClient(server.url, 2.0)
        await asyncio.gather(*(client.set(f"{prefix}{i}", f"v{i}", px=60_000) for i in range(500)))
        values = await asyncio.gather(*(client.get(f"{prefix}{i}") for i in range(500)))
        assert values == [f"v{i}".encode() for i in range(500)]
        assert await client.get(prefix + "missing") is None
        assert 0 < await client.execute_command("PTTL", f"{prefix}7") <= 60_000
        assert client.connects == 1  # one connection carried all of it
        await client.execute_command("DEL", *(f"{prefix}{i}" for i in range(500)))
        await client.aclose()

    run(go())


def test_refused_commands_raise_and_the_connection_carries_on(server: RedisServer, run: Any) -> None:
    key = unique_prefix("resp") + "list"

    async def go() -> None:
        client = RespClient(server.url, 2.0)
        await client.execute_command("RPUSH", key, "x")
        with pytest.raises(ResponseError, match=r"^WRONGTYPE"):
            await client.get(key)
        with pytest.raises(NoScriptError):
            await client.evalsha("0" * 40, 0)
        sha = await client.script_load("return {1, ARGV[1], KEYS[1]}")
        assert await client.evalsha(sha, 1, "k", 42) == [1, b"42", b"k"]
        assert await client.execute_command("LPOP", key) == b"x"
        await client.aclose()

    run(go())


def test_a_caller_that_gives_up_leaves_the_replies_in_step(server: RedisServer, run: Any) -> None:
    prefix = unique_prefix("resp")

    async def go() -> None:
        client = RespClient(server.url, 2.0)
        await client.set(prefix + "a", "A")
        # BLPOP holds the connection for 0.3 s; its caller stops waiting after 0.05 s.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.execute_command("BLPOP", prefix + "empty", "0.3")
        # Sent behind it on the same connection: answered after the BLPOP's late nil, and matched.
        assert await client.get(prefix + "a") == b"A"
        assert client.connects == 1
        await client.execute_command("DEL", prefix + "a")
        await client.aclose()

    run(go())


def test_a_restart_fails_what_waits_then_reconnects(run: Any) -> None:
    redis = start_redis()
    try:

        async def before() -> RespClient:
            client = RespClient(redis.url, 1.0)
            await client.set("k", "1")
            return client

        client = run(before())
        redis.kill()

        async def during() -> None:
            with pytest.raises(RedisConnectionError):
                await client.get("k")

        run(during())
        redis.restart()

        async def after() -> None:
            assert await client.get("k") is None  # a fresh, empty server
            await client.set("k", "2")
            assert await client.get("k") == b"2"
            assert client.connects == 2
            await client.aclose()

        run(after())
    finally:
        redis.stop()


def test_a_connection_that_stops_answering_is_replaced(server: RedisServer, run: Any) -> None:
    async def go() -> None:
        client = RespClient(server.url, 2.0, stale_after_s=0.1)
        blocked = asyncio.ensure_future(client.execute_command("BLPOP", unique_prefix("resp"), "5"))
        await asyncio.sleep(0.3)
        # The BLPOP has waited longer than stale_after_s: a new command drops that connection for a new one.
        assert await client.execute_command("PING") == b"PONG"
        assert client.connects == 2
        with pytest.raises(RedisConnectionError):
            await blocked
        await client.aclose()

    run(go())


def test_a_dead_port_fails_at_once(run: Any) -> None:
    async def go() -> None:
        client = RespClient(f"redis://127.0.0.1:{free_port()}/0", 1.0)
        for _ in range(3):  # refused each time, never a wait on the connect timeout
            with pytest.raises(RedisConnectionError, match="ConnectionRefusedError"):
                await client.get("k")
        assert client.connects == 0

    run(go())


def test_the_url_selects_the_database_and_authenticates(run: Any) -> None:
    redis = start_redis()
    try:
        assert redis.command("CONFIG", "SET", "requirepass", "s3cret").startswith(b"+OK")
        base = f"redis://:s3cret@127.0.0.1:{redis.port}"

        async def go() -> None:
            three = RespClient(base + "/3", 1.0)
            zero = RespClient(base + "/0", 1.0)
            await three.set("where", "db3")
            assert await three.get("where") == b"db3"
            assert await zero.get("where") is None
            wrong = RespClient(f"redis://:nope@127.0.0.1:{redis.port}/0", 1.0)
            with pytest.raises(ResponseError):
                await wrong.get("where")
            anonymous = RespClient(f"redis://127.0.0.1:{redis.port}/0", 1.0)
            with pytest.raises(ResponseError, match=r"^NOAUTH"):
                await anonymous.get("where")
            for c in (three, zero, wrong, anonymous):
                await c.aclose()

        run(go())
    finally:
        redis.stop()
