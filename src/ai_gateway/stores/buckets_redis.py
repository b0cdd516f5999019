"""Token buckets in Redis, exact across replicas: one Lua script per decision, on Redis's clock.

The script reads, refills, checks and charges every bucket of a decision in one atomic step, so two
replicas can never both spend the last token; and it takes the time from Redis `TIME`, so a replica
with a skewed clock cannot refill a bucket early (research/reliability.md A3, L-04). Single Redis or
Sentinel only: the keys of one decision may live in different Cluster slots.

Each bucket is a hash `<prefix><bucket key>` with `l` (level in ticks) and `t` (last update, ms). A
full bucket is deleted (missing means full); any other expires once it would have refilled, so Redis
holds only buckets in use. Scripts are called by SHA (`EVALSHA`); after a restart or `SCRIPT FLUSH`
Redis answers NOSCRIPT and the script is loaded again, once, transparently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from ai_gateway.stores._redis import DEFAULT_TIMEOUT_S, RespClient, redis_errors
from ai_gateway.stores.buckets import TICKS_PER_TOKEN, Bucket, Decision, bucket_state

__all__ = ["DEFAULT_PREFIX", "SCRIPT", "RedisBuckets"]

DEFAULT_PREFIX = "aigw:rl:"

# KEYS[i]: bucket i. ARGV[1]: "admit" (all-or-nothing) or "adjust" (settle: charge or refund, no
# check); then per bucket: capacity (ticks), refill (ticks per ms = the per-minute limit), cost (ticks).
# Reply: {1 if admitted else 0, level after the decision of bucket 1, ..., of bucket n}.
# Lua numbers are doubles: every sum below stays an integer under 2**53 (see stores/buckets.py).
SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local admit = ARGV[1] == 'admit'
local n = #KEYS
local caps, rates, costs, levels, lasts = {}, {}, {}, {}, {}
local ok = 1
for i = 1, n do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local saved = redis.call('HMGET', KEYS[i], 'l', 't')
  local level, last = tonumber(saved[1]), tonumber(saved[2])
  if level == nil or last == nil then
    level, last = cap, now
  elseif now > last and level < cap and rate > 0 then
    -- a product too large to be exact is far above cap - level, so the comparison still holds
    local added = (now - last) * rate
    if added >= cap - level then level = cap else level = level + added end
  end
  if admit and cost > level then ok = 0 end
  caps[i], rates[i], costs[i], levels[i], lasts[i] = cap, rate, cost, level, math.max(now, last)
end
if admit and ok == 0 then
  return {0, unpack(levels)}
end
for i = 1, n do
  local level = levels[i] - costs[i]
  if level > caps[i] then level = caps[i] end
  if level < -caps[i] then level = -caps[i] end
  levels[i] = level
  if level >= caps[i] then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'l', string.format('%d', level), 't', string.format('%d', lasts[i]))
    if rates[i] > 0 then
      redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - level) / rates[i]) + 1000)
    else
      redis.call('PERSIST', KEYS[i])
    end
  end
end
return {1, unpack(levels)}
"""
_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisBuckets:
    """Buckets in one Redis; each instance (replica) may have its own client and pool."""

    def __init__(
        self,
        client: RespClient,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        close_client: bool = True,
    ) -> None:
        self._redis = client
        self._close_client = close_client  # False when the client is shared with other stores
        self._prefix = prefix
        self._timeout_s = timeout_s
        self.script_loads = 0  # how often NOSCRIPT made us load the script (a metric, and for tests)

    async def admit(self, buckets: Sequence[Bucket]) -> Decision:
        reply = await self._run("admit", buckets)
        levels = [int(level) for level in reply[1:]]
        states = tuple(bucket_state(b, level) for b, level in zip(buckets, levels, strict=True))
        return Decision(bool(reply[0]), states, self)

    async def adjust(self, buckets: Sequence[Bucket]) -> None:
        await self._run("adjust", buckets)

    async def aclose(self) -> None:
        if self._close_client:
            await self._redis.aclose()

    async def _run(self, mode: str, buckets: Sequence[Bucket]) -> list[int]:
        keys = [self._prefix + b.key for b in buckets]
        args: list[str | int] = [mode]
        for b in buckets:
            args += [b.capacity * TICKS_PER_TOKEN, b.per_minute, b.cost * TICKS_PER_TOKEN]
        async with redis_errors(f"rate limit {mode}", self._timeout_s):
            try:
                reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
            except NoScriptError:
                self.script_loads += 1
                await self._redis.script_load(SCRIPT)
                reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
        return [int(x) for x in reply]
