"""Token buckets in this process: the embedded default, and the fallback when Redis is down.

A decision runs without an `await`, so on one event loop it is atomic by construction. Each worker
process has its own buckets: N workers admit up to N times the limit (`limits.startup_warning`).
Full buckets are forgotten (a missing bucket is a full one), so memory follows the active keys only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ai_gateway.stores.buckets import TICKS_PER_TOKEN, Bucket, Decision, bucket_state, refill

__all__ = ["MemoryBuckets", "monotonic_ms"]

_MIN_SWEEP = 1024
_NEVER = 2**62


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MemoryBuckets:
    def __init__(self, clock: Callable[[], int] = monotonic_ms) -> None:
        self._clock = clock
        # key -> (level in ticks, last update in ms, when it will be full again in ms)
        self._levels: dict[str, tuple[int, int, int]] = {}
        self._sweep_at = _MIN_SWEEP
        self._latest = 0  # the latest time seen: a clock that steps back never rewinds this store

    def _now(self) -> int:
        self._latest = max(self._latest, self._clock())
        return self._latest

    def __len__(self) -> int:
        return len(self._levels)

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        # One loop, `_level` inlined (the refill itself stays in `refill`): this runs on every request
        # for every bucket (key and tenant, requests and tokens), and the method calls showed.
        now = self._now()
        saved = self._levels
        levels: list[int] = []
        admitted = True
        for b in buckets:
            capacity = b.capacity * TICKS_PER_TOKEN
            entry = saved.get(b.key)
            level = capacity if entry is None else refill(entry[0], entry[1], now, capacity, b.per_minute)
            levels.append(level)
            if b.cost * TICKS_PER_TOKEN > level:
                admitted = False
        if admitted:
            levels = [level - b.cost * TICKS_PER_TOKEN for b, level in zip(buckets, levels, strict=True)]
            self._store(buckets, levels, now)
        return Decision(admitted, tuple(map(bucket_state, buckets, levels)), self)

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        now = self._now()
        levels = []
        for b in buckets:
            capacity = b.capacity * TICKS_PER_TOKEN
            level = self._level(b, now) - b.cost * TICKS_PER_TOKEN
            levels.append(max(-capacity, min(capacity, level)))
        self._store(buckets, levels, now)

    async def aclose(self) -> None:
        self._levels.clear()

    def _level(self, bucket: Bucket, now: int) -> int:
        capacity = bucket.capacity * TICKS_PER_TOKEN
        saved = self._levels.get(bucket.key)
        if saved is None:
            return capacity
        level, last, _ = saved
        return refill(level, last, now, capacity, bucket.per_minute)

    def _store(self, buckets: Sequence[Bucket], levels: Sequence[int], now: int) -> None:
        for b, level in zip(buckets, levels, strict=True):
            capacity = b.capacity * TICKS_PER_TOKEN
            if level >= capacity:
                self._levels.pop(b.key, None)
                continue
            last = now
            full_at = last + -(-(capacity - level) // b.per_minute) if b.per_minute else _NEVER
            self._levels[b.key] = (level, last, full_at)
        if len(self._levels) > self._sweep_at:
            self._sweep(now)

    def _sweep(self, now: int) -> None:
        """Forget buckets that have refilled; amortised O(1) because the threshold doubles."""
        for key in [k for k, (_, _, full_at) in self._levels.items() if full_at <= now]:
            del self._levels[key]
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._levels))
