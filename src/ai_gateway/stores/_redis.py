"""The Redis client the limiter and the cache share, and the one place their redis errors are mapped.

Every call is bounded by one short timeout (research/reliability.md D1): a limiter that waits on a sick
Redis adds that wait to every request (traefik #12042). redis-py's own retries are off for the same
reason; the caller decides what a failure means. The client is `_resp.RespClient`: one pipelined
connection, hiredis packing and parsing.

The default is 250 ms, not the 50 ms D1 suggests, because the bound covers this process's own event loop
too: while a burst of requests is being parsed, a reply Redis sent in a millisecond waits its turn. A
burst of 100 simultaneous calls on 2 busy cores kept replies waiting 80-140 ms, so a 50 ms bound judged
a healthy Redis down exactly when limits matter most, and the failure mode then over-admitted (`local`,
`allow`) or refused (`deny`). A stalled Redis still costs at most 3 timeouts before the callers' breaker
leaves it alone (policy/_guard.py), and a dead one fails at once (connection refused).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from redis.exceptions import RedisError, ResponseError

from ai_gateway.errors import BackendUnavailableError
from ai_gateway.stores._resp import RespClient

__all__ = ["DEFAULT_TIMEOUT_S", "RespClient", "connect", "redis_errors"]

DEFAULT_TIMEOUT_S = 0.25


def connect(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> RespClient:
    """A pipelining client (stores/_resp.py) with a connection of its own; connecting is lazy, so this
    never fails on a dead Redis. A connect gets `timeout_s`, a reply whatever the caller's bound is."""
    return RespClient(url, timeout_s)


class redis_errors:  # lower case: used like the function it was, `async with redis_errors(...)`
    """Bound the block by `timeout_s` and turn any redis failure into BackendUnavailableError.

    The timeout covers the connect and the reply together, so a request never waits longer. A
    ResponseError is Redis refusing one command (WRONGTYPE at a key, OOM), not Redis being gone.
    A class, not an @asynccontextmanager: it wraps every Redis call, several per request.
    """

    __slots__ = ("_timeout", "timeout_s", "what")

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self._timeout = asyncio.timeout(timeout_s)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)  # our deadline's cancel becomes TimeoutError
        except TimeoutError as timeout:
            raise BackendUnavailableError(self._late()) from timeout
        if exc is None:
            return False
        if isinstance(exc, TimeoutError):
            raise BackendUnavailableError(self._late()) from exc
        if isinstance(exc, ResponseError):
            transient = str(exc).startswith(("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "READONLY"))
            # The reply's first word names the error (WRONGTYPE, OOM, ...); nothing else of it is kept.
            kind = str(exc).split(" ", 1)[0] or type(exc).__name__
            raise BackendUnavailableError(f"redis {self.what}: {kind}", transient=transient) from exc
        if isinstance(exc, RedisError | OSError):
            raise BackendUnavailableError(f"redis {self.what}: {type(exc).__name__}") from exc
        return False

    def _late(self) -> str:
        return f"redis {self.what}: no answer within {self.timeout_s * 1000:g} ms"
