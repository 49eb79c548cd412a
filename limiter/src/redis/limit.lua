-- floodwall-limiter: a batch of decisions, each for one key of one limit, decided in order,
-- atomically, on Redis time. A batch of one is a single decision.
--
-- KEYS: each decision's keys, in order: its state key, then (sliding log only) its member
--       sequence. All keys of one call share a slot (on Cluster, one hash tag).
--       Or, for a batch of one Cluster node's decisions over several slots (run as this
--       script with the `allow-cross-slot-keys` flag): KEYS is the batch's first key alone,
--       which routes the call, and ARGV starts with 'X', n, then the n keys as above; the
--       decisions' fields follow. Each command then touches one key, and a key this node
--       does not serve (its slot moved) makes that decision's reply the string
--       'floodwall:elsewhere' (that decision, or its group, wrote nothing): the client sends
--       it again alone, and follows the redirect. A string, not an error reply: clients
--       turn a reply holding an error element into an error for the whole call.
-- ARGV: each decision's fields, in order:
--   op: algorithm (g = GCRA, f = fixed window, s = sliding counter, l = sliding log) then
--       mode (c = decide and consume, p = peek, r = refund);
--   GCRA (4 fields): op, cost, emission interval T (ns, an integer), burst b (an integer);
--       the script works in us: T / 1000, capacity b * T. A GCRA decision with the same T
--       and b as the GCRA decision before it in the call may be sent as 2 fields: op with
--       '=' for 'g' ('=c', '=p', '=r'), cost. Never inside a group, nor first after one.
--   Others (5 fields): op, cost, limit, period (us), receipt (refunds only).
-- A group (one request's limits, all or nothing): ARGV 'G', n, then its n decisions' fields
-- (their keys in KEYS as usual). Each is first decided as a peek; only if every one admits
-- are they decided again as asked, so a denial takes nothing. Its reply element is the array
-- of its verdicts.
-- Reply: one element per decision or group, in order (a lone element bare):
--   GCRA: one integer, ceil(level) when allowed, -ceil(level) - 1 when denied, where
--         level = TAT' - now (us) and TAT' the TAT after the decision;
--   Others: {allowed, remaining, reset_after_us, retry_after_us (-1: none), receipt};
--   or a string: that decision's error, for it alone (a key of the wrong type, a corrupt
--   value). A string, not an error reply, so that clients see the other decisions' verdicts.
--
-- Decisions on the same key read it once and write it once: GCRA and counter state is read
-- on the key's first decision, kept in a table while the batch runs, and written (with its
-- TTL) once at the end. Each decision sees exactly the state the decisions before it in the
-- batch left, as if each had been its own script call in the batch's order. The sliding log
-- works on its sorted set directly, one command per step.
--
-- Written for speed on the server, where the batch's cost is: one plain loop, no closures,
-- and `redis.pcall` (an error is a value, kept as that decision's reply) instead of `pcall`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- One GCRA decision alone, the call an idle connection sends: the general path below,
-- step for step, without its tables.
if #ARGV == 4 and ARGV[1] == 'gc' then
  local key = KEYS[1]
  local v = redis.pcall('GET', key)
  if type(v) == 'table' then return v.err end
  local tat = tonumber(v or 0)
  if tat == nil then return 'floodwall: the value at ' .. key .. ' is not a number' end
  local T = tonumber(ARGV[3]) / 1000
  if tat < now then tat = now end
  local new_tat = tat + tonumber(ARGV[2]) * T
  if new_tat - now > T * tonumber(ARGV[4]) + 0.0005 then return -math.ceil(tat - now) - 1 end
  if new_tat > now then
    redis.call('SET', key, new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
  else
    redis.call('DEL', key)
  end
  return math.ceil(new_tat - now)
end

-- The decisions' keys: KEYS, or (a node's batch over several slots) ARGV's 'X' list.
local keys, a, cross = KEYS, 1, false
if ARGV[1] == 'X' then
  local n = tonumber(ARGV[2])
  keys, a, cross = {}, n + 3, true
  for i = 1, n do keys[i] = ARGV[i + 2] end
end
-- A decision's read failed with `e` (a `redis.pcall` error): its reply. On a node's batch
-- over several slots, a key this node does not serve is sent again alone.
local ELSEWHERE = 'floodwall:elsewhere'
local function failed(e)
  if cross and string.find(e.err, 'non local key', 1, true) then return ELSEWHERE end
  return e.err
end

local tats = {}      -- GCRA: key -> TAT (us), as read or as the batch left it
local counters = {}  -- fixed / sliding counter: key -> {w, c, p, ttl (ms) or false}
local dirty = {}     -- keys to write at the end, in first-write order
local is_dirty = {}
local replies = {}
local nargs = #ARGV
local k = 1

-- A batch reads its GCRA keys up front, with one MGET (and one EXISTS) per 256 keys instead
-- of one GET per key: each command a script runs costs the server far more than the reply's
-- bytes. MGET answers nil for a missing key and for a key of another type alike; EXISTS
-- tells them apart by count. When every key MGET found nothing for is missing (the counts
-- agree), those keys start empty; otherwise they are left to the decision's own GET, which
-- reports the wrong type as that decision's error. A value that is not a number is left to
-- the GET path too, which reports it.
if not cross then
  local seen, uniq = {}, {}
  local pa, pk = 1, 1
  while pa <= nargs do
    local op = ARGV[pa]
    if op == 'G' then
      pa = pa + 2
    else
      local alg = string.sub(op, 1, 1)
      if alg == 'g' or alg == '=' then
        local key = keys[pk]
        if not seen[key] then seen[key] = true; uniq[#uniq + 1] = key end
        pk = pk + 1
        if alg == 'g' then pa = pa + 4 else pa = pa + 2 end
      elseif alg == 'l' then
        pk, pa = pk + 2, pa + 5
      else
        pk, pa = pk + 1, pa + 5
      end
    end
  end
  if #uniq > 1 then
    for from = 1, #uniq, 256 do
      local to = math.min(from + 255, #uniq)
      local vals = redis.call('MGET', unpack(uniq, from, to))
      local found, absent = 0, {}
      for i = from, to do
        local v = vals[i - from + 1]
        if v then
          found = found + 1
          tats[uniq[i]] = tonumber(v)
        else
          absent[#absent + 1] = uniq[i]
        end
      end
      if #absent > 0 and redis.call('EXISTS', unpack(uniq, from, to)) == found then
        for i = 1, #absent do tats[absent[i]] = 0 end
      end
    end
  end
end
-- GCRA with the previous GCRA decision's T and burst: '=c', '=p', '=r' carry only op and cost.
local same_params = {['=c'] = 'gc', ['=p'] = 'gp', ['=r'] = 'gr'}
local last_T, last_cap = nil, nil
-- A group being decided: decisions left in this pass, the pass (1: peeks, 2: as asked), where
-- it starts, whether every peek admitted, its verdicts.
local g_left, g_pass, g_a, g_k, g_all, g_out, g_moved = 0, 0, 0, 0, true, nil, nil

while a <= nargs do
  local op = ARGV[a]
  if op == 'G' and g_left == 0 then
    g_left, g_pass, g_all, g_out, g_moved = tonumber(ARGV[a + 1]), 1, true, {}, nil
    a = a + 2
    g_a, g_k = a, k
    op = ARGV[a]
  end
  if g_pass == 1 then op = string.sub(op, 1, 1) .. 'p' end
  local key = keys[k]
  local cost = tonumber(ARGV[a + 1])
  local reply
  local same = same_params[op]
  if same ~= nil then op = same end
  if op == 'gc' or op == 'gp' or op == 'gr' then
    -- GCRA is the Lua twin of the Rust decision in src/gcra.rs (`Params::evaluate`), whose
    -- module docs state the formula and invariant: base = max(TAT, now);
    -- new_TAT = base + cost * T; allowed iff new_TAT - now <= b * T (allowed exactly at the
    -- earliest time). Only the units differ: Redis time is in microseconds, T kept
    -- fractional. Change one, change both: the test
    -- limiter/tests/redis.rs::redis_decides_like_the_memory_store compares them.
    local T, cap
    if same == nil then
      T = tonumber(ARGV[a + 2]) / 1000
      cap = T * tonumber(ARGV[a + 3])
      last_T, last_cap = T, cap
      k, a = k + 1, a + 4
    else
      T, cap = last_T, last_cap
      k, a = k + 1, a + 2
    end
    local tat = tats[key]
    if tat == nil then
      local v = redis.pcall('GET', key)
      if type(v) == 'table' then
        reply = failed(v)
      else
        tat = tonumber(v or 0)
        if tat == nil then reply = 'floodwall: the value at ' .. key .. ' is not a number' end
      end
    end
    if tat ~= nil then
      if op == 'gr' then
        tats[key] = tat - cost * T
        if not is_dirty[key] then is_dirty[key] = true; dirty[#dirty + 1] = key end
        reply = 0
      else
        tats[key] = tat
        if tat < now then tat = now end
        local new_tat = tat + cost * T
        if new_tat - now > cap + 0.0005 then
          reply = -math.ceil(tat - now) - 1
        else
          if op == 'gc' then
            tats[key] = new_tat
            if not is_dirty[key] then is_dirty[key] = true; dirty[#dirty + 1] = key end
          end
          reply = math.ceil(new_tat - now)
        end
      end
    end
  else
    local alg, mode = string.sub(op, 1, 1), string.sub(op, 2, 2)
    local limit, period, receipt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
      tonumber(ARGV[a + 4])
    a = a + 5
    if alg == 'f' or alg == 's' then
      k = k + 1
      local s = counters[key]
      if s == nil then
        local h = redis.pcall('HMGET', key, 'w', 'c', 'p')
        if h.err then
          reply = failed(h)
        else
          s = {tonumber(h[1]) or -1, tonumber(h[2]) or 0, tonumber(h[3]) or 0, false}
          counters[key] = s
        end
      end
      if s ~= nil then
        local cw, cur, prev = s[1], s[2], s[3]
        if mode == 'r' then
          if cw == receipt then
            s[2] = math.max(cur - cost, 0)
            if not is_dirty[key] then is_dirty[key] = true; dirty[#dirty + 1] = key end
          elseif cw == receipt + 1 then
            s[3] = math.max(prev - cost, 0)
            if not is_dirty[key] then is_dirty[key] = true; dirty[#dirty + 1] = key end
          end
          reply = {1, 0, 0, -1, 0}
        else
          local w = math.floor(now / period)
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
            local ttl = to_end
            if alg == 's' then ttl = to_end + period end
            s[1], s[2], s[3], s[4] = w, cur + cost, prev, math.ceil(ttl / 1000) + 1
            if not is_dirty[key] then is_dirty[key] = true; dirty[#dirty + 1] = key end
          end
          reply = {allowed and 1 or 0, remaining, reset, retry, w}
        end
      end
    elseif alg == 'l' then
      local seqkey = keys[k + 1]
      k = k + 2
      if mode == 'r' then
        for i = 0, cost - 1 do
          redis.pcall('ZREM', key, string.format('%.0f', receipt + i))
        end
        reply = {1, 0, 0, -1, 0}
      else
        local e = redis.pcall('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.0f', now - period + 1))
        if type(e) == 'table' then
          reply = failed(e)
        else
          local used = redis.call('ZCARD', key)
          local allowed = used + cost <= limit
          local first = 0
          if allowed and mode == 'c' then
            local last = redis.pcall('INCRBY', seqkey, cost)
            if type(last) == 'table' then
              reply = last.err
            else
              first = last - cost + 1
              for i = 0, cost - 1 do
                redis.call('ZADD', key, now, string.format('%.0f', first + i))
              end
              local ttl = math.ceil(period / 1000) + 1
              redis.call('PEXPIRE', key, ttl)
              redis.call('PEXPIRE', seqkey, ttl)
            end
          end
          if reply == nil then
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
              local oldest = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
              retry = tonumber(oldest[2]) + period - now
            end
            reply = {allowed and 1 or 0, math.max(limit - used_after, 0), reset, retry, first}
          end
        end
      end
    else
      return redis.error_reply('floodwall: unknown operation ' .. tostring(op))
    end
  end
  if g_left == 0 then
    replies[#replies + 1] = reply
  else
    -- Within a group: its verdicts are kept together; a denial (or an error) in the peek
    -- pass ends it with nothing taken, else the decisions run again as asked.
    g_out[#g_out + 1] = reply
    -- A key not on this node: the whole group is sent again alone.
    if reply == ELSEWHERE then g_moved = reply end
    if g_pass == 1 then
      local admits = (type(reply) == 'number' and reply >= 0)
        or (type(reply) == 'table' and reply[1] == 1)
      g_all = g_all and admits
    end
    g_left = g_left - 1
    if g_left == 0 then
      if g_pass == 1 and g_all and string.sub(ARGV[g_a], 2, 2) ~= 'p' then
        g_left, g_pass, g_out = #g_out, 2, {}
        a, k = g_a, g_k
      else
        replies[#replies + 1] = g_moved or g_out
        g_pass = 0
      end
    end
  end
end

local ttl_text = {}
for i = 1, #dirty do
  local key = dirty[i]
  local tat = tats[key]
  if tat ~= nil then
    if tat > now then
      -- The TTL as a string, formatted once per distinct value: a number argument is
      -- formatted on every call.
      local ms = math.ceil((tat - now) / 1000) + 1
      local px = ttl_text[ms]
      if px == nil then px = tostring(ms); ttl_text[ms] = px end
      redis.call('SET', key, tat, 'PX', px)
    else
      redis.call('DEL', key)
    end
  else
    local s = counters[key]
    redis.call('HSET', key, 'w', s[1], 'c', s[2], 'p', s[3])
    if s[4] then redis.call('PEXPIRE', key, s[4]) end
  end
end
-- A single decision's verdict goes back bare: a table reply costs the server more than the
-- decision itself.
if #replies == 1 then return replies[1] end
return replies
