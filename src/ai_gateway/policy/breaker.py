"""A circuit breaker per upstream target.

Closed: calls flow; `failure_threshold` consecutive failures open it. Open: calls are skipped for
`cooldown_s`. Then half-open: one probe is let through; success closes it, failure re-opens it.
Only failures that say something about the target count (not the client's own 400s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Breaker", "BreakerBoard"]


@dataclass(slots=True)
class Breaker:
    threshold: int
    cooldown_s: float
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at < self.cooldown_s or self.probing:
            return False
        self.probing = True  # half-open: exactly one probe at a time
        return True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = now
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing else "open"


class BreakerBoard:
    """All breakers of one process, keyed by target label (`provider/model`)."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    def get(self, key: str) -> Breaker:
        b = self._breakers.get(key)
        if b is None:
            b = self._breakers[key] = Breaker(self._threshold, self._cooldown_s)
        return b

    def allow(self, key: str) -> bool:
        return self.get(key).allow(self._clock())

    def success(self, key: str) -> None:
        b = self._breakers.get(key)
        if b is not None and (b.failures or b.opened_at is not None):
            b.record_success()

    def failure(self, key: str) -> None:
        self.get(key).record_failure(self._clock())

    def release_probe(self, key: str) -> None:
        """A probe that ended without a verdict (e.g. the client left) frees the half-open slot."""
        b = self._breakers.get(key)
        if b is not None:
            b.probing = False

    def states(self) -> dict[str, str]:
        return {k: b.state for k, b in self._breakers.items()}
