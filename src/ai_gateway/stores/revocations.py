"""Key changes (revocations, edits, the first key) carried between replicas over Redis (CONTRACT §5).

Two paths, so that one lost message cannot keep a revoked key alive:
- a version counter: every change INCRs a Redis key, and each replica reads it every `poll_interval_s`
  (250 ms); a version it has not accounted for drops its whole auth cache;
- pub/sub: the replica that changed a key then publishes "<version> <key id>"; every replica drops that
  key within milliseconds and, when the version follows the last one it saw, counts it as accounted for,
  so the poller does not also drop everything. A gap in versions (a missed message) drops everything.

Channel and counter are namespaced by the database's installation id, so replicas share them exactly
when they share keys. Redis errors are absorbed here, once: logged (once per outage), then retried;
after a reconnect the cache is dropped, since messages may have been missed meanwhile. Auth itself never
waits on Redis: a replica that cannot reach it keeps serving from a cache whose entries expire anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["ALL_KEYS", "RedisRevocations"]

log = logging.getLogger("ai_gateway.auth")

ALL_KEYS = "*"  # the message that means "drop every cached key" (a key was created, or state is unknown)
_RETRY_S = 0.5


class RedisRevocations:
    def __init__(self, url: str, namespace: str, poll_interval_s: float = 0.25) -> None:
        # Short socket timeouts: a stalled Redis must not hold an admin request for long.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._channel = f"aigw:{namespace}:auth:changes"
        self._version_key = f"aigw:{namespace}:auth:version"
        self._poll = poll_interval_s
        self._down = False
        self._seen: int | None = None  # the last version whose change this replica has applied

    async def publish(self, key_id: str) -> bool:
        """Tell every replica; False if Redis could not be reached (the change is still in the database)."""
        try:
            version = await self._redis.incr(self._version_key)
            await self._redis.publish(self._channel, f"{version} {key_id}")
        except (RedisError, OSError) as exc:
            log.error(
                "could not broadcast a key change over Redis (%s); other replicas will see it when "
                "their auth cache expires (AIGW_AUTH_CACHE_TTL_S)",
                type(exc).__name__,
            )
            return False
        return True

    async def watch(self, on_change: Callable[[str], None]) -> None:
        """Run until cancelled, calling `on_change(key_id or ALL_KEYS)` for each change seen."""
        await asyncio.gather(self._subscribe(on_change), self._poll_version(on_change))

    async def close(self) -> None:
        await self._redis.aclose()

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._down:
            log.warning("Redis unavailable for %s (%s); retrying", what, type(exc).__name__)
        self._down = True

    def _recovered(self, on_change: Callable[[str], None]) -> None:
        if self._down:
            log.info("Redis reachable again; dropping the auth cache in case a change was missed")
            self._down = False
            on_change(ALL_KEYS)

    async def _subscribe(self, on_change: Callable[[str], None]) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._recovered(on_change)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._apply(message["data"], on_change)
            except (RedisError, OSError) as exc:
                self._failed("key-change messages", exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(_RETRY_S)

    def _apply(self, data: bytes | str, on_change: Callable[[str], None]) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        version_text, _, key_id = text.partition(" ")
        try:
            version = int(version_text)
        except ValueError:
            on_change(ALL_KEYS)  # not ours to parse: assume the worst
            return
        if self._seen is not None and version == self._seen + 1:
            self._seen = version
            on_change(key_id or ALL_KEYS)
        elif self._seen is not None and version <= self._seen:
            on_change(key_id or ALL_KEYS)  # the poller got there first and already dropped everything
        else:
            self._seen = version  # a gap: some change was missed
            on_change(ALL_KEYS)

    async def _poll_version(self, on_change: Callable[[str], None]) -> None:
        first = True
        while True:
            try:
                raw = await self._redis.get(self._version_key)
            except (RedisError, OSError) as exc:
                self._failed("the key-change version", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            version = int(raw or 0)
            # Any difference counts, a smaller number too: Redis lost its data and started over.
            if not first and version != self._seen:
                on_change(ALL_KEYS)
            self._seen, first = version, False
            await asyncio.sleep(self._poll)
