"""A lean Redis client for the request path: one connection per client, every command pipelined.

The limiter, the cache and the budgets send a few small commands per request (EVALSHA, GET, SET). With
redis-py each is a pool checkout, a Python-level packer and parser, and a round trip of its own; in
shared mode that was a quarter of the gateway's CPU (README "Benchmark"). Here each command is packed
and each reply parsed by hiredis (C), the commands of one event-loop turn leave in one write, and
replies are matched to callers in order, so concurrent requests share one connection without waiting
for each other's round trips.

It speaks the subset the stores use (`get`, `set ... px`, `evalsha`, `script_load`, `aclose`, and
`execute_command` for the rest) with redis-py's exception types, so `_redis.redis_errors` maps its
failures like redis-py's: a refused command raises ResponseError (NoScriptError for NOSCRIPT), a lost or
refused connection raises ConnectionError. URLs: `redis://[[user]:password@]host[:port][/db]`,
`rediss://` (TLS), `unix:///path?db=N`.

Timeouts are the caller's (`redis_errors` wraps every call in one). A caller that gives up leaves its
reply to be read and dropped when it comes, so later replies stay matched. A connection whose oldest
command has waited `stale_after_s` without a reply is dropped and the next command reconnects: a
silently dead peer is not waited on forever.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["RespClient"]

Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class _Address:
    host: str | None
    port: int
    path: str | None  # a unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int


def _parse(url: str) -> _Address:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL scheme: {parts.scheme!r}")
    query = parse_qs(parts.query)
    db_text = (query.get("db") or [""])[0]
    if parts.scheme != "unix" and parts.path.strip("/"):
        db_text = parts.path.strip("/")
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ValueError(f"Redis database must be a number, got {db_text!r}") from None
    return _Address(
        host=None if parts.scheme == "unix" else (parts.hostname or "localhost"),
        port=parts.port or 6379,
        path=parts.path if parts.scheme == "unix" else None,
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=db,
    )


def _pack(args: tuple[Arg, ...]) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; it takes any number of arguments.
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Connection(asyncio.Protocol):
    """One socket: commands go out in order, replies come back in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outbox: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.closed = False

    # --- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.abort()
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step, start afresh
                self.abort()
                return
            future, _ = waiting.popleft()
            if future.done():  # its caller gave up (timeout, cancellation): drop the late reply
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all()

    def _fail_all(self) -> None:
        self.closed = True
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError("the connection to Redis was lost"))

    # --- calls -----------------------------------------------------------------------------------------
    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed:
            raise RedisConnectionError("the connection to Redis is closed")
        future = self._loop.create_future()
        self._waiting.append((future, self._loop.time()))
        if not self._outbox:
            self._loop.call_soon(self._flush)  # everything sent in this loop turn leaves in one write
        self._outbox.append(packed)
        return future

    def oldest_wait(self, now: float) -> float:
        return now - self._waiting[0][1] if self._waiting else 0.0

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if self._transport is not None and not self.closed and out:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def abort(self) -> None:
        """Close now: whatever still waits fails at once, and the next command opens a new connection."""
        self._fail_all()
        if self._transport is not None:
            self._transport.abort()


class RespClient:
    """A Redis client for a handful of commands; connects lazily (never fails at construction)."""

    def __init__(self, url: str, connect_timeout_s: float, *, stale_after_s: float | None = None) -> None:
        self._address = _parse(url)
        self._connect_timeout_s = connect_timeout_s
        self._stale_after_s = stale_after_s if stale_after_s is not None else max(1.0, 10 * connect_timeout_s)
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self.connects = 0  # connections opened: a metric, and for tests

    # --- the commands the stores use -------------------------------------------------------------------
    async def get(self, name: str) -> bytes | None:
        reply: bytes | None = await self.execute_command("GET", name)
        return reply

    async def set(self, name: str, value: Arg, px: int | None = None) -> Any:
        if px is None:
            return await self.execute_command("SET", name, value)
        return await self.execute_command("SET", name, value, "PX", px)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Arg) -> Any:
        return await self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str) -> str:
        reply = await self.execute_command("SCRIPT", "LOAD", script)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def execute_command(self, *args: Arg) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        elif connection.oldest_wait(asyncio.get_running_loop().time()) > self._stale_after_s:
            connection.abort()  # no reply for too long: the peer is gone without saying so
            connection = await self._connect()
        return await connection.send(_pack(args))

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.abort()
            self._connection = None

    # --- connecting ------------------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # callers arriving meanwhile share the one new connection
            current = self._connection
            if current is not None and not current.closed:
                return current
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    connection = await self._open()
            except TimeoutError:
                raise RedisConnectionError("connecting to Redis timed out") from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis ({type(exc).__name__})") from None
            self._connection = connection
            self.connects += 1
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        a = self._address
        if a.path is not None:
            _, connection = await loop.create_unix_connection(lambda: _Connection(loop), a.path)
        else:
            assert a.host is not None
            context = ssl.create_default_context() if a.tls else None
            _, connection = await loop.create_connection(
                lambda: _Connection(loop), a.host, a.port, ssl=context
            )
        try:
            if a.password is not None:
                auth: tuple[Arg, ...] = (
                    ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
                )
                await connection.send(_pack(auth))
            if a.db:
                await connection.send(_pack(("SELECT", a.db)))
        except BaseException:
            connection.abort()
            raise
        return connection
