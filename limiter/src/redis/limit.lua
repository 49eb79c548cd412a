-- floodwall-limiter: one decision for one key of one limit, atomically, on Redis time.
-- KEYS[1] state key; KEYS[2] (sliding log only) its member sequence. Both share a hash tag.
-- ARGV[1] operation: algorithm (g = GCRA, f = fixed window, s = sliding counter,
--         l = sliding log) then mode (c = decide and consume, p = peek, r = refund)
-- GCRA:   ARGV 2 cost, 3 emission interval T (ns, an integer), 4 burst b (an integer);
--         the script works in us: T / 1000, capacity b * T.
--         Reply: one integer, ceil(level) when allowed, -ceil(level) - 1 when denied, where
--         level = TAT' - now (us) and TAT' the TAT after the decision.
-- Others: ARGV 2 cost, 3 limit, 4 period (us), 5 receipt (refunds only).
--         Reply: {allowed, remaining, reset_after_us, retry_after_us (-1: none), receipt}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op = ARGV[1]
local key = KEYS[1]
local cost = tonumber(ARGV[2])

-- GCRA is the Lua twin of the Rust decision in src/gcra.rs (`Params::evaluate`), whose module
-- docs state the formula and invariant: base = max(TAT, now); new_TAT = base + cost * T;
-- allowed iff new_TAT - now <= b * T (allowed exactly at the earliest time). Only the units
-- differ: Redis time is in microseconds, T kept fractional. Change one, change both: the test
-- limiter/tests/redis.rs::redis_decides_like_the_memory_store compares them.
if op == 'gc' or op == 'gp' or op == 'gr' then
  local T = tonumber(ARGV[3]) / 1000
  local cap = T * tonumber(ARGV[4])
  local tat = tonumber(redis.call('GET', key) or 0)
  if op == 'gr' then
    tat = tat - cost * T
    if tat > now then
      redis.call('SET', key, tat, 'PX', math.ceil((tat - now) / 1000) + 1)
    else
      redis.call('DEL', key)
    end
    return 0
  end
  if tat < now then tat = now end
  local new_tat = tat + cost * T
  if new_tat - now > cap + 0.0005 then
    return -math.ceil(tat - now) - 1
  end
  if op == 'gc' then
    redis.call('SET', key, new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
  end
  return math.ceil(new_tat - now)
end

local alg, mode = string.sub(op, 1, 1), string.sub(op, 2, 2)
local limit, period = tonumber(ARGV[3]), tonumber(ARGV[4])

if alg == 'f' or alg == 's' then
  local w = math.floor(now / period)
  local h = redis.call('HMGET', key, 'w', 'c', 'p')
  local cw, cur, prev = tonumber(h[1]) or -1, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if mode == 'r' then
    local r = tonumber(ARGV[5])
    if cw == r then
      redis.call('HSET', key, 'c', math.max(cur - cost, 0))
    elseif cw == r + 1 then
      redis.call('HSET', key, 'p', math.max(prev - cost, 0))
    end
    return {1, 0, 0, -1, 0}
  end
  if cw ~= w then
    if cw == w - 1 then prev = cur else prev = 0 end
    cur = 0
  end
  local to_end = (w + 1) * period - now
  local allowed, remaining, reset, retry
  if alg == 'f' then
    allowed = cur + cost <= limit
    local used = cur
    if allowed then used = cur + cost end
    remaining = limit - used
    reset = 0
    if used > 0 then reset = to_end end
    retry = -1
    if not allowed then retry = to_end end
  else
    local room = limit * period
    local est = prev * to_end + cur * period
    allowed = est + cost * period <= room
    local c2 = cur
    if allowed then c2 = cur + cost end
    remaining = math.floor((room - (prev * to_end + c2 * period)) / period)
    if remaining < 0 then remaining = 0 end
    reset = to_end
    if c2 > 0 then reset = to_end + period end
    retry = -1
    if not allowed then
      if (cur + cost) * period > room then
        local fits = math.floor((room - cost * period) / cur)
        retry = to_end + (period - math.min(fits, period))
      else
        local slack = math.floor((room - cur * period - cost * period) / math.max(prev, 1))
        retry = to_end - math.min(slack, to_end)
      end
    end
  end
  if allowed and mode == 'c' then
    redis.call('HSET', key, 'w', w, 'c', cur + cost, 'p', prev)
    local ttl = to_end
    if alg == 's' then ttl = to_end + period end
    redis.call('PEXPIRE', key, math.ceil(ttl / 1000) + 1)
  end
  return {allowed and 1 or 0, remaining, reset, retry, w}
end

if alg == 'l' then
  local seqkey = KEYS[2]
  if mode == 'r' then
    local first = tonumber(ARGV[5])
    for i = 0, cost - 1 do
      redis.call('ZREM', key, string.format('%.0f', first + i))
    end
    return {1, 0, 0, -1, 0}
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.0f', now - period + 1))
  local used = redis.call('ZCARD', key)
  local allowed = used + cost <= limit
  local receipt = 0
  if allowed and mode == 'c' then
    local last = redis.call('INCRBY', seqkey, cost)
    receipt = last - cost + 1
    for i = 0, cost - 1 do
      redis.call('ZADD', key, now, string.format('%.0f', receipt + i))
    end
    local ttl = math.ceil(period / 1000) + 1
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', seqkey, ttl)
  end
  local used_after = used
  if allowed then used_after = used + cost end
  local reset = 0
  if allowed and mode ~= 'c' then
    reset = period
  else
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if newest[2] then reset = tonumber(newest[2]) + period - now end
  end
  local retry = -1
  if not allowed then
    local need = used + cost - limit
    local e = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
    retry = tonumber(e[2]) + period - now
  end
  return {allowed and 1 or 0, math.max(limit - used_after, 0), reset, retry, receipt}
end

return redis.error_reply('floodwall: unknown operation ' .. tostring(op))
