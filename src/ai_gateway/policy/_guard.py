"""Calls to a shared store (Redis) that may be down: bounded, counted, logged once, and paused.

After `failures` consecutive transient failures the store is not called for `cooldown_s`; then one
call probes it (policy/breaker.py). Errors that reject one key rather than the store (WRONGTYPE) are
counted but do not open the breaker. An outage is logged when it starts and when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from ai_gateway.errors import BackendUnavailableError
from ai_gateway.policy.breaker import Breaker

__all__ = ["StoreGuard"]

T = TypeVar("T")
FAILURES = 3
COOLDOWN_S = 5.0


class _Counters(Protocol):
    backend_errors: int
    breaker_skips: int


class StoreGuard:
    def __init__(
        self,
        what: str,
        stats: _Counters,
        log: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        failures: int = FAILURES,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self._what = what
        self._stats = stats
        self._log = log
        self._clock = clock
        self._breaker = Breaker(failures, cooldown_s)
        self._down = False

    @property
    def state(self) -> str:
        """`closed` (calling the store), `open` (pausing) or `half_open` (probing)."""
        return self._breaker.state

    async def call(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The store's answer, or None if it failed or is being left alone."""
        if not self._breaker.allow(self._clock()):
            self._stats.breaker_skips += 1
            return None
        probe = self._breaker.probing
        try:
            result = await call()
        except BackendUnavailableError as exc:
            self._stats.backend_errors += 1
            self._failed(exc)
            return None
        finally:
            if probe:  # also when cancelled mid-probe (the client left): free the half-open slot
                self._breaker.probing = False
        if self._down or self._breaker.failures:
            self._breaker.record_success()
            if self._down:
                self._down = False
                self._log.info("%s reachable again", self._what)
        return result

    def _failed(self, exc: BackendUnavailableError) -> None:
        if not self._down:
            self._down = True
            self._log.warning("%s unavailable: %s", self._what, exc)
        if exc.transient:
            was_open = self._breaker.opened_at is not None
            self._breaker.record_failure(self._clock())
            if not was_open and self._breaker.opened_at is not None:
                self._log.warning(
                    "%s: %d consecutive failures; not calling it for %g s",
                    self._what,
                    self._breaker.failures,
                    self._breaker.cooldown_s,
                )
