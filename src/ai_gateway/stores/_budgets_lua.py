"""The Lua scripts behind `budgets_redis.py`; each runs atomically in Redis.

Keys, per scope and window (`<base>` = prefix + scope name + ":" + window label, e.g.
`aigw:budget:tenant:t1:day:2026-11-27`):
    <base>       hash: `spent` (settled nano-dollars; absent = not seeded yet), `held` (sum of live holds)
    <base>:res   zset: request id -> expiry (ms since epoch, Redis clock)
    <base>:amt   hash: request id -> held amount
    <prefix>settled:<request id>   marker that makes settle idempotent, with a short ttl

The window is chosen inside the script from Redis `TIME`, so replicas with skewed clocks agree on
"today". Amounts travel as decimal strings and are only ever added with HINCRBY (exact 64-bit); Lua
compares them as doubles, exact below 2**53 (budgets.MAX_NANOS). Keys are computed in the script, so
this needs standalone Redis (or Sentinel), not Cluster, with `maxmemory-policy noeviction`: an
evicted counter would be seeded again from the ledger, which lags it.
"""

from __future__ import annotations

__all__ = ["PEEK", "RESERVE", "SEED", "SETTLE"]

_PRELUDE = """
-- Howard Hinnant's civil-from-days and days-from-civil, in floored integer arithmetic.
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- label, start (s), end (s; -1 for total): the same labels as budgets.window_for
local function window(period, now_s)
  if period == 'total' then return 'total', 0, -1 end
  local days = math.floor(now_s / 86400)
  local y, m, d = civil(days)
  if period == 'day' then
    return string.format('day:%04d-%02d-%02d', y, m, d), days * 86400, (days + 1) * 86400
  end
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('month:%04d-%02d', y, m), days_from_civil(y, m, 1) * 86400,
    days_from_civil(ny, nm, 1) * 86400
end

local function now_ms(override)
  if override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drop one hold. `held` never goes below 0, even if the hash was evicted without its holds.
local function release(state, res, amt, id)
  local a = redis.call('HGET', amt, id)
  if a then
    redis.call('HDEL', amt, id)
    if a ~= '0' and redis.call('HINCRBY', state, 'held', '-' .. a) < 0 then
      redis.call('HSET', state, 'held', '0')
    end
  end
  redis.call('ZREM', res, id)
end

-- Release holds whose replica never settled them (it died); bounded per call to keep the script short.
local function purge(state, res, amt, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', res, '-inf', now, 'LIMIT', 0, 200)) do
    release(state, res, amt, id)
  end
end
"""

# ARGV: request id, amount, hold ttl ms, now ms override ('' = TIME), grace s, n,
#       then n x (base key without window, limit, period).
# -> {'seed', i, label, start_s, end_s, ...} when some counter has no value yet (nothing changed)
# -> {'exceeded', i, retry_s (-1 = never), spent, held, label} (nothing held)
# -> {'ok', label_1, spent_1, ..., label_n, spent_n}
RESERVE = (
    _PRELUDE
    + """
local rid, amount, ttl, grace = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local now = now_ms(ARGV[4])
local now_s = math.floor(now / 1000)
local want = tonumber(amount)
local n = tonumber(ARGV[6])
local scopes, seed = {}, {}
for i = 1, n do
  local o = 6 + (i - 1) * 3
  local label, start_s, end_s = window(ARGV[o + 3], now_s)
  local state = ARGV[o + 1] .. ':' .. label
  scopes[i] = {state = state, res = state .. ':res', amt = state .. ':amt',
               limit = tonumber(ARGV[o + 2]), label = label, end_s = end_s}
  if redis.call('HEXISTS', state, 'spent') == 0 then
    for _, v in ipairs({i, label, start_s, end_s}) do seed[#seed + 1] = v end
  end
end
if #seed > 0 then
  table.insert(seed, 1, 'seed')
  return seed
end
for i = 1, n do
  local s = scopes[i]
  purge(s.state, s.res, s.amt, now)
  if redis.call('HEXISTS', s.amt, rid) == 0 then
    local spent = redis.call('HGET', s.state, 'spent')
    local held = redis.call('HGET', s.state, 'held') or '0'
    local committed = tonumber(spent) + tonumber(held)
    if committed >= s.limit or committed + want > s.limit then
      local retry = -1
      if s.end_s >= 0 then retry = s.end_s - now_s end
      return {'exceeded', i, retry, spent, held, s.label}
    end
  end
end
local out = {'ok'}
for i = 1, n do
  local s = scopes[i]
  if redis.call('HEXISTS', s.amt, rid) == 0 then
    redis.call('HINCRBY', s.state, 'held', amount)
    redis.call('HSET', s.amt, rid, amount)
    redis.call('ZADD', s.res, now + ttl, rid)
  end
  if s.end_s >= 0 then  -- relative to `now`, so a test clock far from the real one works too
    for _, k in ipairs({s.state, s.res, s.amt}) do redis.call('EXPIRE', k, s.end_s - now_s + grace) end
  end
  out[#out + 1] = s.label
  out[#out + 1] = redis.call('HGET', s.state, 'spent')
end
return out
"""
)

# ARGV: request id, actual, marker key, marker ttl ms, n, then n x window key (`<base>`).
# -> {1, spent_1, ..., spent_n} applied (spent false for a vanished counter), {0} already settled
SETTLE = (
    _PRELUDE
    + """
local rid, actual = ARGV[1], ARGV[2]
if not redis.call('SET', ARGV[3], '1', 'NX', 'PX', ARGV[4]) then return {0} end
local out = {1}
for i = 1, tonumber(ARGV[5]) do
  local state = ARGV[5 + i]
  release(state, state .. ':res', state .. ':amt', rid)
  -- A counter that vanished (flushed Redis) is left to its seed, which sums this request's ledger row.
  if actual ~= '0' and redis.call('HEXISTS', state, 'spent') == 1 then
    redis.call('HINCRBY', state, 'spent', actual)
  end
  out[#out + 1] = redis.call('HGET', state, 'spent')
end
return out
"""
)

# ARGV: window key, value, ttl s (-1 = never). SETNX semantics: the first replica's seed wins.
SEED = """
local set = redis.call('HSETNX', ARGV[1], 'spent', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', ARGV[1], ARGV[3]) end
return set
"""

# ARGV: base key without window, period, now ms override. -> {label, start_s, end_s, spent or false}
PEEK = (
    _PRELUDE
    + """
local now_s = math.floor(now_ms(ARGV[3]) / 1000)
local label, start_s, end_s = window(ARGV[2], now_s)
return {label, start_s, end_s, redis.call('HGET', ARGV[1] .. ':' .. label, 'spent')}
"""
)
