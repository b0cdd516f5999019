"""The shared response cache: one Redis string per entry, `<prefix><key>`, expiring with its TTL.

Redis bounds the memory (`maxmemory` with an eviction policy is the operator's choice); the gateway only
sets the TTL. Errors become BackendUnavailableError (stores/_redis.py); the cache policy turns them into
misses.
"""

from __future__ import annotations

import math

from ai_gateway.stores._redis import DEFAULT_TIMEOUT_S, RespClient, redis_errors

__all__ = ["DEFAULT_PREFIX", "RedisCache"]

DEFAULT_PREFIX = "aigw:cache:"


class RedisCache:
    def __init__(
        self,
        client: RespClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        close_client: bool = True,
    ) -> None:
        self._redis = client
        self._close_client = close_client  # False when the client is shared with other stores
        self._prefix = prefix
        self._timeout_s = timeout_s

    async def get(self, key: str) -> bytes | None:
        async with redis_errors("cache get", self._timeout_s):
            value = await self._redis.get(self._prefix + key)
        return None if value is None else bytes(value)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = math.ceil(ttl_s * 1000)
        if ttl_ms <= 0:
            return
        async with redis_errors("cache put", self._timeout_s):
            await self._redis.set(self._prefix + key, value, px=ttl_ms)

    async def aclose(self) -> None:
        if self._close_client:
            await self._redis.aclose()
