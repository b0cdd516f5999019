"""Token buckets: the shared vocabulary of the in-process and Redis bucket stores.

A bucket holds up to `capacity` tokens and refills at `per_minute` tokens per minute, continuously
(`per_minute / 60` per second); a full bucket lets a burst of `capacity` through at once. One decision
covers several buckets (a key's and its tenant's, requests and tokens) and is all-or-nothing: either
every bucket can pay its cost and all of them are charged, or none is touched.

Arithmetic is integer-exact: levels are kept in *ticks*, 1/60000 of a token, the amount a limit of
one per minute refills in one millisecond. Time is whole milliseconds, so a refill is
`elapsed_ms * per_minute` ticks, with no rounding to drift on. The Redis script does the same sums in
Lua doubles, which are exact below 2**53 ticks: limits up to `MAX_LIMIT` per minute.

`adjust` settles a reservation afterwards: a negative cost refunds, a positive one charges extra. Extra
charges may take a bucket into debt, down to `-capacity` (so one oversized answer delays later ones
by at most one more refill period), and refunds never lift it above `capacity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "MAX_LIMIT",
    "TICKS_PER_TOKEN",
    "Bucket",
    "BucketState",
    "BucketStore",
    "Decision",
    "bucket_state",
    "refill",
]

TICKS_PER_TOKEN = 60_000
MAX_LIMIT = 10_000_000_000  # 2 * MAX_LIMIT * TICKS_PER_TOKEN stays below 2**53


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket and what this decision costs it (tokens; signed for `adjust`)."""

    key: str
    capacity: int
    per_minute: int
    cost: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.capacity <= MAX_LIMIT or not 0 <= self.per_minute <= MAX_LIMIT:
            raise ValueError(f"bucket {self.key}: capacity and per_minute must be within 1..{MAX_LIMIT}")


@dataclass(slots=True)  # not frozen: a frozen init costs 3x, and one is made per bucket per request
class BucketState:
    """A bucket as the decision left it, in the units clients see."""

    limit: int
    remaining: int  # whole tokens left, never negative
    reset_s: float | None  # until the bucket is full again; None if it never refills
    retry_s: float | None  # until it could pay this decision's cost; 0 if it can now, None if never


@dataclass(slots=True)  # not frozen, as BucketState
class Decision:
    admitted: bool
    states: tuple[BucketState, ...]  # one per bucket, in the order given
    # Where the reservation lives, to settle it; None when no limiter decided (failure mode `allow`).
    store: BucketStore | None


class BucketStore(Protocol):
    """Decides for several buckets at once, atomically."""

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        """Charge every bucket its cost if all can pay, else none; raise BackendUnavailableError."""
        ...

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        """Charge (cost > 0) or refund (cost < 0) without checking; raise BackendUnavailableError."""
        ...

    async def aclose(self) -> None: ...


def refill(level: int, last_ms: int, now_ms: int, capacity: int, per_minute: int) -> int:
    """The level in ticks at `now_ms`; a clock that went backwards refills nothing."""
    if now_ms <= last_ms or level >= capacity or per_minute == 0:
        return level
    added = (now_ms - last_ms) * per_minute
    return capacity if added >= capacity - level else level + added


def bucket_state(bucket: Bucket, level: int) -> BucketState:
    """Client-facing view of a bucket at `level` ticks, for headers and Retry-After."""
    capacity = bucket.capacity * TICKS_PER_TOKEN
    rate = bucket.per_minute  # ticks per millisecond
    return BucketState(
        bucket.capacity,
        max(0, level // TICKS_PER_TOKEN),
        _wait_s(level, capacity, rate, capacity),
        _wait_s(level, max(0, bucket.cost) * TICKS_PER_TOKEN, rate, capacity),
    )


def _wait_s(level: int, target: int, rate: int, capacity: int) -> float | None:
    """Seconds until the bucket holds `target` ticks: 0 if it does now, None if it never will."""
    if level >= target:
        return 0.0
    if rate == 0 or target > capacity:
        return None
    return math.ceil((target - level) / rate) / 1000
