"""Exact-match response cache, per tenant, served as a live-looking answer in any dialect.

Public API, in the order the pipeline calls it: after auth, the model scope check and the limits'
admit, so nobody can probe another key's or tenant's entries (research/reliability.md D7, K8)::

    cache = build_response_cache(settings)           # None when `cache.enabled` is false
    directive = cache_directive(headers.get("cache-control"))   # no-cache: no lookup; no-store: neither
    key = cache.key(cache_namespace(tenant_id, settings.cache), route, request)
    hit = await cache.get(key) if directive.lookup else None    # CacheHit | None; never raises
    if hit: render hit.response (non-stream) or replay_events(hit.response) (stream);  x-aigw-cache: hit
    else:   live call;  x-aigw-cache: miss (bypass when the lookup was skipped)
            if directive.store: await cache.put(key, response, provider, model)   # never raises
            (streams: feed every event to a StreamRecorder; put recorder.response() if not None)

The key is a SHA-256 over the namespace, the route and a canonical JSON form of every field of the
request that can change the answer: messages, tools, tool_choice, response_format, sampling
parameters, stop sequences, seed and provider-specific extras. Left out are the stream flag,
`include_usage` and the end-user id (`user`), none of which changes the answer; the API key and the
request id never reach it. Canonical means dict key order does not matter. The namespace is the
tenant, so tenants never share an entry unless `cache.shared_across_tenants` says so.

Only complete, successful answers are stored (`cacheable`), as versioned JSON (never pickle). A store
that fails or times out makes the cache miss and skip the write, counted in `CacheStats`; after 3
consecutive failures it is left alone for 5 s. Serialising and replaying live in `cache_codec.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ai_gateway.policy._guard import StoreGuard
from ai_gateway.policy.cache_codec import (
    CacheHit,
    StreamRecorder,
    cacheable,
    canonical_json,
    canonical_request,
    decode_entry,
    encode_entry,
    replay_events,
)
from ai_gateway.settings import CacheSettings, Settings
from ai_gateway.stores._redis import DEFAULT_TIMEOUT_S, RespClient, connect
from ai_gateway.stores.cache_memory import MemoryCache
from ai_gateway.stores.cache_redis import RedisCache
from ai_gateway.types import ChatRequest, ChatResponse

__all__ = [
    "CacheDirective",
    "CacheHit",
    "CacheStats",
    "CacheStore",
    "ResponseCache",
    "StreamRecorder",
    "build_response_cache",
    "cache_directive",
    "cache_namespace",
    "cacheable",
    "replay_events",
]

log = logging.getLogger("ai_gateway.cache")

_KEY_VERSION = 1
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheDirective:
    lookup: bool = True
    store: bool = True

    @property
    def bypass(self) -> bool:
        return not self.lookup


def cache_directive(cache_control: str | None) -> CacheDirective:
    """Read a request's `Cache-Control`: `no-cache` skips the lookup, `no-store` skips both."""
    if not cache_control:
        return CacheDirective()
    tokens = {t.strip().split("=", 1)[0].lower() for t in cache_control.split(",")}
    if "no-store" in tokens:
        return CacheDirective(lookup=False, store=False)
    return CacheDirective(lookup="no-cache" not in tokens)


def cache_namespace(tenant_id: str | None, settings: CacheSettings) -> str:
    """Whose entries a request may see: its tenant's, or everyone's when configured. Callers with no
    tenant (the master key, open mode) are the operator and share one namespace of their own."""
    if settings.shared_across_tenants:
        return "shared"
    return "operator" if tenant_id is None else f"tenant:{tenant_id}"


@dataclass(slots=True)
class CacheStats:
    """Counters for metrics (`cache_<name>_total`)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    not_cacheable: int = 0  # answers not stored: incomplete, failed or too large
    corrupt: int = 0  # entries that could not be read back (counted as misses too)
    backend_errors: int = 0
    breaker_skips: int = 0


class ResponseCache:
    def __init__(
        self,
        store: CacheStore,
        ttl_s: float,
        *,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.stats = CacheStats()
        self._max_entry_bytes = max_entry_bytes
        self.guard = StoreGuard("response cache store", self.stats, log, clock=clock)

    def key(self, namespace: str, route: str, request: ChatRequest) -> str:
        try:
            blob = canonical_json([_KEY_VERSION, namespace, route], request)
        except TypeError:
            # Integers beyond 64 bits (a tool schema may hold any JSON number): the slower encoder,
            # marked so its output can never equal another payload's orjson form.
            payload = [_KEY_VERSION, namespace, route, canonical_request(request)]
            blob = b"json:" + json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    async def get(self, key: str) -> CacheHit | None:
        raw = await self.guard.call(lambda: self.store.get(key))
        hit = None
        if raw is not None:
            try:
                hit = decode_entry(raw)
            except ValueError as exc:
                self.stats.corrupt += 1
                log.warning("unreadable cache entry %s…: %s", key[:12], exc)
        if hit is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return hit

    async def put(
        self, key: str, response: ChatResponse, provider: str, model: str, ttl_s: float | None = None
    ) -> bool:
        """Store a complete answer; False when it was not stored (not cacheable, too large, store down)."""
        if not cacheable(response):
            self.stats.not_cacheable += 1
            return False
        try:
            value = encode_entry(response, provider, model)
        except TypeError:  # something JSON cannot hold (an integer beyond 64 bits in a native block)
            self.stats.not_cacheable += 1
            return False
        if len(value) > self._max_entry_bytes:
            self.stats.not_cacheable += 1
            return False
        ttl = self.ttl_s if ttl_s is None else ttl_s

        async def write() -> bool:
            await self.store.put(key, value, ttl)
            return True

        stored = await self.guard.call(write) is not None
        self.stats.stores += stored
        return stored

    async def aclose(self) -> None:
        await self.store.aclose()


def build_response_cache(settings: Settings, client: RespClient | None = None) -> ResponseCache | None:
    """The configured cache: Redis (sharing `client` if given) when AIGW_REDIS_URL is set, else memory."""
    cache = settings.cache
    if not cache.enabled:
        return None
    store: CacheStore
    if settings.redis_url is not None or client is not None:
        own = client is None
        store = RedisCache(client or connect(settings.redis_url or "", DEFAULT_TIMEOUT_S), close_client=own)
    else:
        store = MemoryCache(max_bytes=cache.max_bytes, max_entries=cache.max_entries)
    return ResponseCache(store, cache.ttl_s)
