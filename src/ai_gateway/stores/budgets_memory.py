"""Budgets in process memory: embedded mode, and the stand-in while Redis is down (`policy/budgets.py`
states the semantics).

Atomicity comes from the event loop: seeding a counter may await, but the check and the hold run with
no await between them, so no other request interleaves. Holds expire after `reservation_ttl_s` like the
Redis ones; here that only guards against a settle the pipeline forgot, since holds die with the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ai_gateway.errors import ServiceUnavailableError
from ai_gateway.policy.budgets import (
    BudgetScope,
    Hold,
    Reservation,
    SeedFn,
    budget_exceeded,
    seconds_left,
    window_for,
)

__all__ = ["MemoryBudgets"]

log = logging.getLogger("ai_gateway.budgets")

# Counters outlive their window by this much, so a settle after midnight still finds yesterday's.
_GRACE_S = 3 * 86_400
_SWEEP_EVERY_S = 60.0
# Request ids remembered to make settle idempotent; a repeat comes seconds later, not a million
# requests later.
_SETTLED_MEMORY = 65_536


@dataclass(slots=True)
class _Counter:
    spent: int
    held: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # request id -> (amount, expiry)
    expires_at: float | None = None

    def purge(self, now: float) -> None:
        # Every hold gets the same ttl, so insertion order is expiry order: the expired ones lead.
        while self.holds:
            request_id, (amount, expiry) = next(iter(self.holds.items()))
            if expiry > now:
                return
            del self.holds[request_id]
            self.held -= amount


class MemoryBudgets:
    def __init__(
        self,
        *,
        seed: SeedFn | None = None,
        reservation_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._seed = seed
        self._ttl = reservation_ttl_s
        self._clock = clock
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._seeding: dict[tuple[str, str], asyncio.Task[int]] = {}
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._next_sweep = 0.0

    async def reserve(self, scopes: Sequence[BudgetScope], amount_nanos: int, request_id: str) -> Reservation:
        while True:  # seeding awaits; a window may roll over meanwhile, so look again
            now = self._clock()
            holds = tuple(Hold(s, window_for(s.period, now)) for s in scopes)
            if not await self._ensure(holds):
                break
        # No await from here on: the check and the hold are one step for the event loop.
        counters = [self._counters[(h.scope.name, h.window.label)] for h in holds]
        for hold, counter in zip(holds, counters, strict=True):
            counter.purge(now)
            if request_id in counter.holds:
                continue  # a repeated reserve of the same request holds once
            committed = counter.spent + counter.held
            limit = hold.scope.limit_nanos
            if committed >= limit or committed + amount_nanos > limit:
                raise budget_exceeded(hold.scope, committed, seconds_left(hold.window, now))
        expiry = now + self._ttl
        for counter in counters:
            if request_id not in counter.holds:
                counter.holds[request_id] = (amount_nanos, expiry)
                counter.held += amount_nanos
        self._sweep(now)
        return Reservation(request_id, amount_nanos, holds)

    async def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        # A reservation this backend never held (made in Redis) is a plain charge: seed, then add.
        await self._ensure(reservation.holds)
        request_id = reservation.request_id
        if request_id in self._settled:
            return
        self._settled[request_id] = None
        if len(self._settled) > _SETTLED_MEMORY:
            self._settled.popitem(last=False)
        for hold in reservation.holds:
            counter = self._counters[(hold.scope.name, hold.window.label)]
            held = counter.holds.pop(request_id, None)
            if held is not None:
                counter.held -= held[0]
            counter.spent += actual_nanos

    async def spent(self, scope: BudgetScope) -> int:
        hold = Hold(scope, window_for(scope.period, self._clock()))
        await self._ensure((hold,))
        return self._counters[(scope.name, hold.window.label)].spent

    def last_known(self, scope_name: str, window: str) -> int | None:
        counter = self._counters.get((scope_name, window))
        return None if counter is None else counter.spent

    async def _ensure(self, holds: Sequence[Hold]) -> bool:
        """Create the missing counters from the seed; True if it had to await."""
        missing = [h for h in holds if (h.scope.name, h.window.label) not in self._counters]
        if not missing:
            return False
        values = await asyncio.gather(*(self._seed_once(h) for h in missing))
        for hold, value in zip(missing, values, strict=True):
            key = (hold.scope.name, hold.window.label)
            if key not in self._counters:
                end = hold.window.end
                self._counters[key] = _Counter(
                    value, expires_at=None if end is None else end.timestamp() + _GRACE_S
                )
        return True

    async def _seed_once(self, hold: Hold) -> int:
        # Concurrent first requests of a scope share one seed query instead of each running it.
        key = (hold.scope.name, hold.window.label)
        task = self._seeding.get(key)
        if task is None:
            task = asyncio.create_task(self._load(hold))
            self._seeding[key] = task
            task.add_done_callback(lambda _: self._seeding.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, hold: Hold) -> int:
        if self._seed is None:
            return 0
        try:
            value = await self._seed(hold.scope, hold.window.start)
        except Exception as exc:
            log.warning("budget seed for %s %s failed: %r", hold.scope.name, hold.window.label, exc)
            raise ServiceUnavailableError(
                "Spend accounting is unavailable; try again shortly.",
                code="accounting_unavailable",
                retry_after=1,
            ) from exc
        return max(0, int(value))

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        stale = [k for k, c in self._counters.items() if c.expires_at is not None and c.expires_at < now]
        for key in stale:
            del self._counters[key]
