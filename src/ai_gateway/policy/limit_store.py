"""What the limiter does when its shared store (Redis) cannot decide: `limits.on_backend_error`.

- `local` (default): decide on per-process buckets holding 1/`limits.expected_replicas` of each limit,
  so N replicas together stay near the configured limit while Redis is away;
- `allow`: admit without limits (Envoy's and Kong's default), and say so in `failure_mode_allowed`;
- `deny`: refuse with 503 `rate_limiter_unavailable` and a Retry-After.

A failed or slow Redis costs one timeout (`limits.backend_timeout_s`) per request only until a breaker
opens: after 3 consecutive failures Redis is left alone for 5 s, then one request probes it
(research/reliability.md D1, K13; policy/_guard.py). A reply that rejects one key (WRONGTYPE) takes the
same failure path for that request but does not open the breaker, since Redis itself is fine. Outages
are logged when they start and when they end, not per request; the counters in `LimiterStats` say how
many they touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from ai_gateway.errors import ServiceUnavailableError
from ai_gateway.policy._guard import COOLDOWN_S, FAILURES, StoreGuard
from ai_gateway.stores.buckets import Bucket, BucketStore, Decision

__all__ = ["FailoverBuckets", "LimiterStats", "ScaledBuckets"]

log = logging.getLogger("ai_gateway.limits")

FailureMode = Literal["local", "allow", "deny"]


@dataclass(slots=True)
class LimiterStats:
    """Counters for metrics (`ratelimit_<name>_total`)."""

    backend_errors: int = 0  # calls to the shared store that failed or timed out
    breaker_skips: int = 0  # decisions that did not call the shared store because its breaker was open
    failure_mode_allowed: int = 0  # requests admitted unchecked (mode `allow`)
    failure_mode_local: int = 0  # requests decided on per-process buckets (mode `local`)
    failure_mode_denied: int = 0  # requests refused with 503 (mode `deny`)
    rejected: int = 0  # 429s
    settle_errors: int = 0


class ScaledBuckets:
    """A store whose buckets hold 1/`share` of each limit: one replica's part of a shared limit."""

    def __init__(self, store: BucketStore, share: int) -> None:
        self._store = store
        self._share = max(1, share)

    def _scale(self, bucket: Bucket, clamp: bool) -> Bucket:
        capacity = max(1, bucket.capacity // self._share)
        per_minute = max(1, bucket.per_minute // self._share) if bucket.per_minute else 0
        cost = min(bucket.cost, capacity) if clamp else bucket.cost
        return replace(bucket, capacity=capacity, per_minute=per_minute, cost=cost)

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        decision = await self._store.admit([self._scale(b, clamp=True) for b in buckets])
        return replace(decision, store=self)

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        # Settled amounts are real tokens, charged whole: a replica's share is of the limit, not of
        # the usage. (An estimate above the share was clamped at admit, so that settle charges a
        # little less than the usage: the local mode is an approximation while Redis is away.)
        await self._store.adjust([self._scale(b, clamp=False) for b in buckets])

    async def aclose(self) -> None:
        await self._store.aclose()


class FailoverBuckets:
    """The shared store, guarded: on failure the configured mode decides instead."""

    def __init__(
        self,
        shared: BucketStore,
        local: BucketStore,
        mode: FailureMode,
        stats: LimiterStats | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        failures: int = FAILURES,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self._shared = shared
        self._local = local
        self._mode = mode
        self.stats = stats if stats is not None else LimiterStats()
        self.guard = StoreGuard(
            f"rate limiter backend (on_backend_error={mode})",
            self.stats,
            log,
            clock=clock,
            failures=failures,
            cooldown_s=cooldown_s,
        )

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        decision = await self.guard.call(lambda: self._shared.admit(buckets))
        if decision is not None:
            return replace(decision, store=self)
        if self._mode == "local":
            self.stats.failure_mode_local += 1
            return await self._local.admit(buckets)
        if self._mode == "allow":
            self.stats.failure_mode_allowed += 1
            return Decision(True, (), None)
        self.stats.failure_mode_denied += 1
        raise ServiceUnavailableError(
            "The rate limiter is unavailable, so the request was not admitted; try again shortly.",
            code="rate_limiter_unavailable",
            retry_after=1.0,
        )

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        """Settle on the shared store; skipped (the reservation stands) while it is unreachable."""

        async def adjust() -> bool:
            await self._shared.adjust(buckets)
            return True

        await self.guard.call(adjust)

    async def aclose(self) -> None:
        await self._shared.aclose()
        await self._local.aclose()
