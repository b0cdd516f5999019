"""Budgets shared by every replica through Redis (`policy/budgets.py` states the semantics).

Each operation is one Lua script (`_budgets_lua.py`), run by hash (EVALSHA) and loaded again when Redis
answers NOSCRIPT (restarted or flushed). Reserve checks spent + live holds + the new hold against every
scope's limit and takes all holds or none, in one atomic step across replicas; the window comes from
Redis `TIME`. Holds carry an expiry and are purged inside the script, so a replica that dies before
settling leaks nothing for longer than `reservation_ttl_s` (keep it above the longest request: the
server deadline plus a margin). Window keys expire a few days after their window ends.

Redis errors (connection, timeout, a refused command) become BackendUnavailableError in the shared
`_redis.redis_errors`, bounded by `timeout_s`; `Budgets` then falls back to its local backend. A seed
that fails is a 503 `accounting_unavailable`: without a starting point a budget cannot be enforced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import NoScriptError

from ai_gateway.errors import ServiceUnavailableError
from ai_gateway.policy.budgets import (
    BudgetScope,
    Hold,
    Period,
    Reservation,
    SeedFn,
    Window,
    budget_exceeded,
    window_for,
)
from ai_gateway.stores import _budgets_lua as lua
from ai_gateway.stores._redis import RespClient, redis_errors

__all__ = ["RedisBudgets"]

log = logging.getLogger("ai_gateway.budgets")

_GRACE_S = 3 * 86_400  # window keys outlive the window, so late settles and reports still find them
_MARKER_MIN_S = 3_600  # settle markers: long enough for a settle replayed after a Redis outage
_LAST_KNOWN_CAP = 100_000


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


_RESERVE, _SETTLE, _SEED, _PEEK = (_Script.of(s) for s in (lua.RESERVE, lua.SETTLE, lua.SEED, lua.PEEK))


class RedisBudgets:
    def __init__(
        self,
        client: RespClient,
        *,
        prefix: str = "aigw:budget:",
        seed: SeedFn | None = None,
        reservation_ttl_s: float = 600.0,
        timeout_s: float = 0.25,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`timeout_s` bounds each script call; a bit above the limiter's, since a false alarm sends
        budgets to per-replica enforcement for a while. `clock` replaces Redis `TIME` (epoch seconds):
        tests only, to cross midnight on demand."""
        self._client = client
        self._timeout_s = timeout_s
        self.script_loads = 0  # NOSCRIPT reloads: a metric, and for tests
        self._prefix = prefix
        self._seed = seed
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._marker_ms = max(self._ttl_ms, _MARKER_MIN_S * 1000)
        self._clock = clock
        self._seeding: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._last_known: dict[tuple[str, str], int] = {}

    async def reserve(self, scopes: Sequence[BudgetScope], amount_nanos: int, request_id: str) -> Reservation:
        args = [
            request_id,
            str(amount_nanos),
            str(self._ttl_ms),
            self._now(),
            str(_GRACE_S),
            str(len(scopes)),
        ]
        for scope in scopes:
            args += [self._prefix + scope.name, str(scope.limit_nanos), scope.period]
        for _ in range(3):  # seeding, then a window that rolled over meanwhile, then give up
            reply = await self._run(_RESERVE, args)
            tag = _text(reply[0])
            if tag == "ok":
                holds = []
                for i, scope in enumerate(scopes):
                    label = _text(reply[1 + 2 * i])
                    self._remember(scope.name, label, int(reply[2 + 2 * i]))
                    holds.append(Hold(scope, _window(scope.period, label)))
                return Reservation(request_id, amount_nanos, tuple(holds))
            if tag == "exceeded":
                scope = scopes[int(reply[1]) - 1]
                retry = int(reply[2])
                spent, held = int(reply[3]), int(reply[4])
                self._remember(scope.name, _text(reply[5]), spent)
                raise budget_exceeded(scope, spent + held, None if retry < 0 else retry)
            await asyncio.gather(
                *(
                    self._seed_once(scopes[int(reply[i]) - 1], _text(reply[i + 1]), int(reply[i + 2]))
                    for i in range(1, len(reply), 4)
                )
            )
        raise ServiceUnavailableError(
            "Budget counters could not be initialised; try again shortly.",
            code="accounting_unavailable",
            retry_after=1,
        )

    async def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        rid = reservation.request_id
        keys = [self._key(h.scope.name, h.window.label) for h in reservation.holds]
        marker = f"{self._prefix}settled:{rid}"
        reply = await self._run(
            _SETTLE, [rid, str(actual_nanos), marker, str(self._marker_ms), str(len(keys)), *keys]
        )
        # Keep the last known spend fresh: it is where the local fallback starts if Redis goes away.
        for hold, spent in zip(reservation.holds, reply[1:], strict=False):
            if spent is not None:
                self._remember(hold.scope.name, hold.window.label, int(spent))

    async def spent(self, scope: BudgetScope) -> int:
        for _ in range(3):
            reply = await self._run(_PEEK, [self._prefix + scope.name, scope.period, self._now()])
            label = _text(reply[0])
            if reply[3] is not None:
                value = int(reply[3])
                self._remember(scope.name, label, value)
                return value
            await self._seed_once(scope, label, int(reply[1]))
        raise ServiceUnavailableError(
            "Budget counters could not be initialised; try again shortly.",
            code="accounting_unavailable",
            retry_after=1,
        )

    def last_known(self, scope_name: str, window: str) -> int | None:
        return self._last_known.get((scope_name, window))

    def _key(self, scope_name: str, label: str) -> str:
        return f"{self._prefix}{scope_name}:{label}"

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    def _remember(self, scope_name: str, label: str, spent: int) -> None:
        if len(self._last_known) >= _LAST_KNOWN_CAP:
            self._last_known.clear()
        self._last_known[(scope_name, label)] = spent

    async def _seed_once(self, scope: BudgetScope, label: str, start_s: int) -> None:
        # Concurrent first requests of a window on this replica share one seed query; across replicas,
        # HSETNX lets the first one win and the others' values are dropped.
        key = (scope.name, label)
        task = self._seeding.get(key)
        if task is None:
            task = asyncio.create_task(self._load_seed(scope, label, start_s))
            self._seeding[key] = task
            task.add_done_callback(lambda _: self._seeding.pop(key, None))
        await asyncio.shield(task)

    async def _load_seed(self, scope: BudgetScope, label: str, start_s: int) -> None:
        value = 0
        if self._seed is not None:
            try:
                value = max(0, int(await self._seed(scope, datetime.fromtimestamp(start_s, UTC))))
            except Exception as exc:
                log.warning("budget seed for %s %s failed: %r", scope.name, label, exc)
                raise ServiceUnavailableError(
                    "Spend accounting is unavailable; try again shortly.",
                    code="accounting_unavailable",
                    retry_after=1,
                ) from exc
        end = _window(scope.period, label).end
        now = time.time() if self._clock is None else self._clock()
        ttl = -1 if end is None else int(end.timestamp() - now) + _GRACE_S
        await self._run(_SEED, [self._key(scope.name, label), str(value), str(ttl)])

    async def _run(self, script: _Script, args: Sequence[str]) -> list[Any]:
        """Run a script by hash; redis errors become BackendUnavailableError in `_redis.redis_errors`."""
        async with redis_errors("budget", self._timeout_s):
            try:
                reply = await self._client.evalsha(script.sha, 0, *args)
            except NoScriptError:
                # A restarted or flushed Redis forgot the script: load it, then run it by hash again.
                self.script_loads += 1
                await self._client.script_load(script.source)
                reply = await self._client.evalsha(script.sha, 0, *args)
        return reply if isinstance(reply, list) else [reply]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _window(period: Period, label: str) -> Window:
    """The Window a label written by the Lua script names (the same labels as `window_for`)."""
    if period == "total":
        return window_for("total", 0)
    date = label.partition(":")[2] + ("-01" if period == "month" else "")
    start = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    return window_for(period, start.timestamp())
