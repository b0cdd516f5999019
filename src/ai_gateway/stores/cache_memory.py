"""The in-process response cache: least recently used out first, bounded by bytes and by entries.

Each entry is charged its value and key sizes plus a fixed overhead for the bookkeeping, so a flood of
tiny entries cannot outgrow the bound either. Expired entries are dropped when met and when space is
needed. Per process: with several workers each has its own (`limits.startup_warning`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ENTRY_OVERHEAD", "MemoryCache"]

ENTRY_OVERHEAD = 200  # bytes: the OrderedDict node, the tuple and the key object, roughly
_SWEEP_INTERVAL_S = 1.0


class MemoryCache:
    def __init__(
        self,
        max_bytes: int = 64 * 1024 * 1024,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expires, value)
        self.size = 0  # bytes charged, as defined above
        self._swept_at = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        cost = _cost(key, value)
        if key in self._entries:
            self._drop(key)
        if cost > self.max_bytes or ttl_s <= 0:
            return  # it would evict everything and still not fit
        # An exact-size copy: `orjson.dumps` hands back bytes inside a buffer of at least 4 KiB, so a
        # kept 600-byte answer would hold 4 KiB and the byte bound would understate memory ~6x.
        self._entries[key] = (self._clock() + ttl_s, bytes(memoryview(value)))
        self.size += cost
        if self.size > self.max_bytes or len(self._entries) > self.max_entries:
            self._evict()

    async def aclose(self) -> None:
        self._entries.clear()
        self.size = 0

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= _cost(key, value)

    def _evict(self) -> None:
        # Sweeping expired entries is a full scan: at most once a second, or a full cache would pay it
        # on every put (O(entries) per request). In between, the least recently used go first.
        now = self._clock()
        if now - self._swept_at >= _SWEEP_INTERVAL_S:
            self._swept_at = now
            for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                self._drop(key)
        while self.size > self.max_bytes or len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))


def _cost(key: str, value: bytes) -> int:
    return len(value) + len(key) + ENTRY_OVERHEAD
