"""Hard money budgets per key and per tenant: hold the worst case before the upstream call, settle to
the real cost after (CONTRACT §6, issue 5).

    scopes = [BudgetScope("key:k1", 5 * NANOS_PER_USD, "day"), BudgetScope("tenant:t1", ..., "month")]
    reservation = await budgets.reserve(scopes, worst_case_nanos, request_id)  # or 429 budget_exceeded
    try:
        ...  # the upstream call
    finally:
        await budgets.settle(reservation, actual_nanos)  # 0 when the call failed

Semantics, the same for every backend (`stores/budgets_memory.py`, `stores/budgets_redis.py`):
- Money is integer nano-dollars. Windows are calendar UTC: `day:YYYY-MM-DD`, `month:YYYY-MM`, `total`.
- `reserve` is all-or-nothing across scopes. A scope admits a request when `spent + held < limit` and
  `spent + held + worst_case <= limit`; otherwise nothing is held anywhere and `RateLimitError`
  (`budget_exceeded`, `retry_after` = seconds until the window resets, None for `total`) is raised.
  Check and hold are one atomic step (in-process: no await between them; Redis: one Lua script), so
  concurrent requests cannot together pass a limit. Reserving the same request id twice holds once.
- `settle` releases the hold and adds the real cost, which may exceed the hold (a capped unknown price)
  or be 0 (a failure). It charges the window the hold was taken in, so a request that straddles
  midnight is billed to one day. It is idempotent per request id and never raises for a backend outage.
- A hold not settled within the backend's `reservation_ttl_s` (its replica died) is purged and the money
  released; the ledger's reconciler owns what such a request really cost.
- `spent(scope)` is the settled spend of the current window, holds excluded.
- A counter with no value yet (process start in embedded mode, a flushed Redis) starts from
  `seed(scope, window_start)`, which the app factory backs with a ledger SUM; it runs once per scope and
  window, never per request.

Overshoot bound: spend passes a limit only by what requests cost beyond their own holds; with honest
worst cases it never does, and after that every new request is refused until the window resets.

Failure mode when the shared backend (Redis) is down (its errors arrive as BackendUnavailableError):
`Budgets` switches to a local in-process backend and tries Redis again every `retry_s`. Each local
counter starts from the larger of the last spend this replica saw in Redis and `seed` (the ledger),
so a tenant already at budget stays blocked; the cost is that each replica may let a tenant spend what
was left when Redis went away. It is logged and counted in `stats`. Settles that cannot reach Redis are
queued and replayed (idempotent per request id) once it answers again. With neither a last known spend
nor a working seed, the request is refused with 503 `accounting_unavailable`: budgets never fail open.
If Redis comes back empty, counters are seeded from the ledger and the replayed settles add on top, so
they err high (a tenant blocked early), never low.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from ai_gateway.errors import BackendUnavailableError, RateLimitError, ServiceUnavailableError
from ai_gateway.policy.pricing import format_usd

__all__ = [
    "MAX_NANOS",
    "BudgetBackend",
    "BudgetScope",
    "Budgets",
    "BudgetsStats",
    "Hold",
    "Period",
    "Reservation",
    "SeedFn",
    "Window",
    "budget_exceeded",
    "seconds_left",
    "window_for",
]

log = logging.getLogger("ai_gateway.budgets")

Period = Literal["day", "month", "total"]
# Redis compares in Lua doubles: integers stay exact below 2**53 nano-dollars, about USD 9 million.
MAX_NANOS = 2**53 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BudgetScope:
    """One limit: `name` is `key:<id>` or `tenant:<id>`."""

    name: str
    limit_nanos: int
    period: Period

    def __post_init__(self) -> None:
        if not 0 <= self.limit_nanos <= MAX_NANOS:
            raise ValueError(f"budget {self.name}: limit must be within 0..{MAX_NANOS} nano-dollars")
        if self.period not in ("day", "month", "total"):
            raise ValueError(f"budget {self.name}: period must be day, month or total")


@dataclass(frozen=True, slots=True)
class Window:
    label: str  # "day:2026-11-27" | "month:2026-11" | "total"; part of the Redis key
    start: datetime
    end: datetime | None  # None for `total`


def window_for(period: Period, now: float) -> Window:
    """The calendar UTC window that contains `now` (epoch seconds)."""
    if period == "total":
        return Window("total", _EPOCH, None)
    at = datetime.fromtimestamp(math.floor(now), UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(f"day:{start:%Y-%m-%d}", start, start + timedelta(days=1))
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Window(f"month:{start:%Y-%m}", start, end)


@dataclass(frozen=True, slots=True)
class Hold:
    scope: BudgetScope
    window: Window


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `reserve` held; hand it back to `settle` exactly once."""

    request_id: str
    amount_nanos: int
    holds: tuple[Hold, ...]
    # The backend that holds it, stamped by `Budgets` to route settles made across a Redis outage.
    origin: BudgetBackend | None = field(default=None, compare=False, repr=False)


SeedFn = Callable[[BudgetScope, datetime], Awaitable[int]]


class BudgetBackend(Protocol):
    async def reserve(
        self, scopes: Sequence[BudgetScope], amount_nanos: int, request_id: str
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        """Release the hold if this backend has it, and add `actual_nanos` to every held window."""

    async def spent(self, scope: BudgetScope) -> int: ...

    def last_known(self, scope_name: str, window: str) -> int | None:
        """The settled spend last seen for a scope's window, without I/O (None if never seen)."""


def seconds_left(window: Window, now: float) -> float | None:
    """Until the window resets; None for `total`, which never does."""
    return None if window.end is None else window.end.timestamp() - now


def budget_exceeded(scope: BudgetScope, committed: int, retry_after_s: float | None) -> RateLimitError:
    """The one 429 every backend raises; `committed` is spent + held in the scope's window."""
    kind = scope.name.partition(":")[0] or "budget"
    period = {"day": "daily", "month": "monthly", "total": "total"}[scope.period]
    return RateLimitError(
        f"The {kind}'s {period} budget of ${format_usd(scope.limit_nanos)} is used up "
        f"(${format_usd(committed)} spent or reserved).",
        code="budget_exceeded",
        retry_after=None if retry_after_s is None else max(1, math.ceil(retry_after_s)),
    )


@dataclass(slots=True)
class BudgetsStats:
    degraded: bool = False
    degraded_entries: int = 0  # times the shared backend failed and the local one took over
    local_reservations: int = 0
    pending_settles: int = 0  # settles waiting for the shared backend to come back
    settles_replayed: int = 0


class Budgets:
    """The budget checks the pipeline calls; one backend, plus a local one while a shared one is down.

    `fallback` builds the local backend from a seed function (the app factory passes
    `lambda seed: MemoryBudgets(seed=seed)`); without it, a shared-backend outage refuses requests with
    503 `accounting_unavailable` (still never failing open). While degraded, the shared backend is tried
    again every `retry_s` with a real request, which waits at most `RedisBudgets(timeout_s=...)`.
    """

    def __init__(
        self,
        backend: BudgetBackend,
        *,
        fallback: Callable[[SeedFn], BudgetBackend] | None = None,
        seed: SeedFn | None = None,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._make_local = fallback
        self._seed = seed
        self._retry_s = retry_s
        self._clock = clock
        self._local: BudgetBackend | None = None
        self._retry_at = 0.0
        self._pending: deque[tuple[Reservation, int]] = deque()
        self._replay: asyncio.Task[None] | None = None
        self.stats = BudgetsStats()

    async def reserve(
        self, scopes: Sequence[BudgetScope], worst_case_nanos: int, request_id: str
    ) -> Reservation:
        if not 0 <= worst_case_nanos <= MAX_NANOS:
            raise ValueError(f"worst case must be within 0..{MAX_NANOS} nano-dollars")
        if not scopes:
            return Reservation(request_id, worst_case_nanos, ())
        local = self._degraded()
        if local is None:
            try:
                reservation = await self._backend.reserve(scopes, worst_case_nanos, request_id)
            except BackendUnavailableError as exc:
                local = self._degrade()
                if local is None:
                    raise ServiceUnavailableError(
                        "Spend accounting is unavailable; try again shortly.",
                        code="accounting_unavailable",
                        retry_after=1,
                    ) from exc
            else:
                if self._local is not None or self._pending:
                    self._recovered()
                return replace(reservation, origin=self._backend)
        self.stats.local_reservations += 1
        reservation = await local.reserve(scopes, worst_case_nanos, request_id)
        return replace(reservation, origin=local)

    async def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        if not 0 <= actual_nanos <= MAX_NANOS:
            raise ValueError(f"actual cost must be within 0..{MAX_NANOS} nano-dollars")
        if not reservation.holds:
            return
        origin, local = reservation.origin, self._degraded()
        if origin is not None and origin is not self._backend:
            await origin.settle(reservation, actual_nanos)  # held locally during an outage: release it
        if local is not None:
            if origin is not local:
                try:  # so the local view stays conservative; Redis gets it from the queue
                    await local.settle(reservation, actual_nanos)
                except ServiceUnavailableError:  # its seed failed
                    log.warning("budget settle of %s kept for replay only", reservation.request_id)
            self._queue(reservation, actual_nanos)
            return
        try:
            await self._backend.settle(reservation, actual_nanos)
        except BackendUnavailableError:
            self._retry_at = self._clock() + self._retry_s
            self._queue(reservation, actual_nanos)

    async def spent(self, scope: BudgetScope) -> int:
        local = self._degraded()
        if local is None:
            try:
                return await self._backend.spent(scope)
            except BackendUnavailableError as exc:
                local = self._degrade()
                if local is None:
                    raise ServiceUnavailableError(
                        "Spend accounting is unavailable; try again shortly.",
                        code="accounting_unavailable",
                        retry_after=1,
                    ) from exc
        return await local.spent(scope)

    async def aclose(self) -> None:
        """Graceful shutdown: finish replaying queued settles if the shared backend answers.

        What is still queued afterwards is lost to the counters, not to the ledger, whose rows the seed
        sums when a counter starts again."""
        if self._pending and self._degraded() is None and (self._replay is None or self._replay.done()):
            self._replay = asyncio.create_task(self._replay_pending())
        if self._replay is not None:
            await asyncio.shield(self._replay)
        if self._pending:
            log.warning("%d budget settles could not reach the budget store", len(self._pending))

    def _degraded(self) -> BudgetBackend | None:
        """The local backend while the shared one is considered down, else None."""
        if self._local is not None and self._clock() < self._retry_at:
            return self._local
        return None

    def _degrade(self) -> BudgetBackend | None:
        self._retry_at = self._clock() + self._retry_s
        if self._make_local is None:
            return None
        if self._local is None:
            self._local = self._make_local(self._local_seed)
            self.stats.degraded = True
            self.stats.degraded_entries += 1
            log.warning(
                "budget store unavailable: enforcing budgets in-process from the last known spend; "
                "retrying every %.0f s",
                self._retry_s,
            )
        return self._local

    def _recovered(self) -> None:
        if self._local is not None:
            log.warning("budget store reachable again: budgets are shared across replicas again")
        self._local = None
        self.stats.degraded = False
        if self._pending and (self._replay is None or self._replay.done()):
            self._replay = asyncio.create_task(self._replay_pending())

    def _queue(self, reservation: Reservation, actual_nanos: int) -> None:
        self._pending.append((reservation, actual_nanos))
        self.stats.pending_settles = len(self._pending)

    async def _replay_pending(self) -> None:
        while self._pending:
            reservation, actual = self._pending[0]
            try:
                await self._backend.settle(reservation, actual)  # idempotent per request id
            except BackendUnavailableError:
                return  # the next successful reserve starts another replay
            self._pending.popleft()
            self.stats.pending_settles = len(self._pending)
            self.stats.settles_replayed += 1

    async def _local_seed(self, scope: BudgetScope, window_start: datetime) -> int:
        """Where a local counter starts: the larger of the last spend seen in the shared backend and
        the ledger's sum, so a tenant at budget stays blocked; either alone if the other is missing."""
        label = window_for(scope.period, window_start.timestamp()).label
        known = self._backend.last_known(scope.name, label)
        if self._seed is None:
            return known or 0
        try:
            summed = await self._seed(scope, window_start)
        except Exception:
            if known is None:
                raise  # no starting point at all: MemoryBudgets refuses with 503
            log.warning("budget seed for %s failed; starting from the last known spend", scope.name)
            return known
        return max(summed, known or 0)
