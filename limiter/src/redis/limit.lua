-- floodwall-limiter: a batch of decisions, each for one key of one limit, decided in order,
-- atomically, on Redis time. A batch of one is a single decision.
--
-- Layout 2 (see src/redis/shards.rs): a GCRA limit keeps the states of a shard's keys as
-- fields of one hash (field: the key's encoded form; value: its TAT in us, packed as
-- `tat_of` reads it); the other algorithms keep one key per limited key. A hash also holds
-- three fields of its own, whose names no key's field can have (an encoded key holds no
-- ':'): ':c' the sweep's HSCAN cursor, ':d' when the next sweep step may start (us), ':x'
-- when the hash expires (us), and ':v', written when the hash is made: MARK, longer than a
-- listpack value may be, so Redis keeps the hash a hash table from its first write (a
-- listpack hash is scanned end to end on every lookup).
--
-- KEYS: each decision's keys, in order: its state key (GCRA: its shard's hash), then (sliding
--       log only) its member sequence. All keys of one call share a slot (on Cluster, one
--       hash tag). Or, for a batch of one Cluster node's decisions over several slots (run as
--       this script with the `allow-cross-slot-keys` flag): KEYS is the batch's first key
--       alone, which routes the call, and ARGV starts with 'X', n, then the n keys as above;
--       the decisions' fields follow. Each command then touches one key, and a key this node
--       does not serve (its slot moved) makes that decision's reply the string
--       'floodwall:elsewhere' (that decision, or its group, wrote nothing): the client sends
--       it again alone, and follows the redirect. A string, not an error reply: clients
--       turn a reply holding an error element into an error for the whole call.
-- ARGV: each decision's fields, in order:
--   op: algorithm (g = GCRA, f = fixed window, s = sliding counter, l = sliding log) then
--       mode (c = decide and consume, p = peek, r = refund);
--   GCRA (5 fields): op, cost, field, emission interval T (ns, an integer), burst b (an
--       integer); the script works in us: T / 1000, capacity b * T. A GCRA decision with the
--       same T and b as the GCRA decision before it in the call may be sent as 3 fields: op
--       with '=' for 'g' ('=c', '=p', '=r'), cost, field. Never inside a group, nor first
--       after one.
--   Others (5 fields): op, cost, limit, period (us), receipt (refunds only).
-- A group (one request's limits, all or nothing): ARGV 'G', n, then its n decisions' fields
-- (their keys in KEYS as usual). Each is first decided as a peek; only if every one admits
-- are they decided again as asked, so a denial takes nothing. Its reply element is the array
-- of its verdicts.
-- A lone GCRA decision that consumes: KEYS[1] its hash; ARGV T, b, cost, field (4 fields:
-- no other call has 4).
-- The short path (a batch of GCRA decisions that consume, each hash's with one T, b and
-- cost): KEYS (or the 'X' list) holds each hash once; ARGV 'F', then for each hash: its
-- index in the key list, T, b, cost, n, then its n decisions' fields. Verdicts come back hash
-- by hash, a hash's in order.
-- Reply: one element per decision or group, in order (a lone element bare):
--   GCRA: one integer, ceil(level) when allowed, -ceil(level) - 1 when denied, where
--         level = TAT' - now (us) and TAT' the TAT after the decision;
--   Others: {allowed, remaining, reset_after_us, retry_after_us (-1: none), receipt};
--   or a string: that decision's error, for it alone (a key of the wrong type, a corrupt
--   value). A string, not an error reply, so that clients see the other decisions' verdicts.
--
-- Decisions on the same key read it once and write it once: GCRA and counter state is read
-- on the key's first decision, kept in a table while the batch runs, and written once at the
-- end (a GCRA hash's fields with one HSET). Each decision sees exactly the state the
-- decisions before it in the batch left, as if each had been its own script call in the
-- batch's order. The sliding log works on its sorted set directly, one command per step.
--
-- A GCRA state whose TAT has passed equals an absent one. Such fields are removed by a sweep
-- that calls writing a hash run in steps: HSCAN from ':c' (SWEEP_COUNT fields), deleting
-- those whose TAT has passed. After a step the next waits
--   spacing = max(S * SWEEP_STEP, SWEEP_PASS / ceil(N / SWEEP_COUNT))
-- (S: the limit's shard count, in the hash's tag; N: the hash's field count at the step), so
-- a pass over the hash takes max(SWEEP_PASS, ceil(N / SWEEP_COUNT) * S * SWEEP_STEP): a small
-- hash is swept once a second, not scanned again and again, and a limit's sweep work does
-- not grow with its shards. So while a hash of N fields is written at least once per
-- spacing, a stale field is gone within two passes (the rest of the pass under way, and the
-- next): 2 s while a limit holds up to 64,000 states spread evenly over its shards, 3.1 s for
-- 100,000 of them whatever S. Written less often, a step comes with each write. The hash's
-- TTL is kept past its latest TAT: whenever a TAT goes past ':x', the hash expires at that
-- TAT plus its remaining time (at least 1 s), so a hash nobody writes any more expires
-- whole.
--
-- Written for speed on the server, where the batch's cost is: plain loops, and
-- `redis.pcall` (an error is a value, kept as that decision's reply) instead of `pcall`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The sweep of a GCRA hash's stale fields (see the header): a step reads SWEEP_COUNT fields,
-- steps of one hash come at least S * SWEEP_STEP apart, and a pass over every field takes at
-- least SWEEP_PASS (us).
local SWEEP_COUNT, SWEEP_STEP, SWEEP_PASS = 128, 2000, 1000000
-- A GCRA hash's ':v' (floodwall-redis-module's `gcra::MARK`, byte for byte).
local MARK = "floodwall-limiter rate-limit shard, layout 2: every field not starting with ':' is a key's GCRA TAT (us, 8-byte little-endian IEEE 754 double)"
-- The most fields or values one command is handed: Lua's stack bounds `unpack`.
local CHUNK = 1000

-- A GCRA state as stored: its TAT (us) as 8 bytes, a little-endian IEEE 754 double. Packing
-- costs the server far less than formatting a number (a number argument is printed with
-- 17 digits on every call). `tat_of` reads a stored value: 0 when absent (false), nil when
-- the value is not one of ours.
local pack, unpack_value = struct.pack, struct.unpack
local function tat_of(v)
  if not v then return 0 end
  if #v ~= 8 then return nil end
  local tat = unpack_value('<d', v)
  if tat ~= tat then return nil end
  return tat
end

-- One GCRA decision that consumes, alone (the call an idle connection sends): KEYS[1] its
-- hash; ARGV T, b, cost, field. The short path's work for one decision, reading the hash's
-- own fields only as far as it needs them. Decided here, before the functions a batch uses
-- are made (a closure each, on every call): a write that is due a sweep step or a longer TTL
-- is left to `store` below, with `lone` its packed TAT, the TAT and ':d', ':x' as read.
local lone
if #ARGV == 4 then
  local h, f = KEYS[1], ARGV[4]
  local v = redis.pcall('HMGET', h, ':d', ':x', f)
  if v.err then return v.err end
  local tat = tat_of(v[3])
  if tat == nil then return 'floodwall: the state of ' .. f .. ' in ' .. h .. ' is not a TAT' end
  local T = tonumber(ARGV[1]) / 1000
  if tat < now then tat = now end
  local new_tat = tat + tonumber(ARGV[3]) * T
  if new_tat - now > T * tonumber(ARGV[2]) + 0.0005 then return -math.ceil(tat - now) - 1 end
  local packed = pack('<d', new_tat)
  if now < (tonumber(v[1]) or 0) and new_tat <= (tonumber(v[2]) or 0) then
    redis.call('HSET', h, f, packed)
    return math.ceil(new_tat - now)
  end
  lone = {packed, new_tat, v[1], v[2]}
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

-- The shard count S of hash `h`, from its tag `{#2.<S>.…}` (1 for any other name): a hash's
-- sweep steps come at least S * SWEEP_STEP apart, so a limit's sweep work is the same whatever its
-- number of shards.
local function shards_of(h)
  return tonumber(string.match(h, '{#2%.(%d+)%.')) or 1
end

-- Hash `h`'s own fields (':c', ':d', ':x') then the fields `list[from..to]`, as HMGET
-- answers them (false: absent), or the error.
local function read(h, list, from, to)
  local vals = redis.pcall('HMGET', h, ':c', ':d', ':x', unpack(list, from, math.min(to, from + CHUNK - 1)))
  if vals.err then return vals end
  for s = from + CHUNK, to, CHUNK do
    local more = redis.pcall('HMGET', h, unpack(list, s, math.min(to, s + CHUNK - 1)))
    if more.err then return more end
    for i = 1, #more do vals[#vals + 1] = more[i] end
  end
  return vals
end

-- Runs `cmd` on `h` with `list`, CHUNK elements (`step` aligned) per command.
local function chunked(cmd, h, list, step)
  local per = CHUNK - CHUNK % step
  for s = 1, #list, per do
    redis.call(cmd, h, unpack(list, s, math.min(#list, s + per - 1)))
  end
end

-- Adds field `f` of hash `h` to `lists` (hash -> its fields in first-seen order, with a
-- `set` of them), once; `order` lists the hashes in first-seen order.
local function note_field(lists, order, h, f)
  local l = lists[h]
  if l == nil then
    l = {set = {}}
    lists[h] = l
    order[#order + 1] = h
  end
  if not l.set[f] then l.set[f] = true; l[#l + 1] = f end
end

-- Writes GCRA hash `h`'s decided states: `sets` (field, TAT pairs, each TAT in the future),
-- `dels` (fields whose state is now empty), `written` (field -> true, both kinds), `top` the
-- latest TAT of `sets` (0 if none), and the hash's own fields as read (false: absent). A
-- sweep step first, when one is due; the TTL follows the latest TAT (see the header).
local function store(h, sets, dels, written, top, c, d, x)
  c, d, x = c or '0', tonumber(d) or 0, tonumber(x) or 0
  if now >= d then
    local r = redis.call('HSCAN', h, c, 'COUNT', SWEEP_COUNT)
    local n = redis.call('HLEN', h)
    c = r[1]
    local found = r[2]
    for i = 1, #found, 2 do
      local f = found[i]
      -- 58: ':', the hash's own fields.
      if not written[f] and string.byte(f, 1) ~= 58 then
        local v = tat_of(found[i + 1])
        if v ~= nil and v <= now then
          written[f] = true
          dels[#dels + 1] = f
        end
      end
    end
    d = now + math.max(SWEEP_STEP * shards_of(h), SWEEP_PASS / math.max(1, math.ceil(n / SWEEP_COUNT)))
    sets[#sets + 1] = ':c'; sets[#sets + 1] = c
    sets[#sets + 1] = ':d'; sets[#sets + 1] = d
  end
  if #dels > 0 then chunked('HDEL', h, dels, 1) end
  local expire = top > x or x == 0
  -- A hash made now gets its mark: HSET makes it a hash table before adding any field.
  if x == 0 then sets[#sets + 1] = ':v'; sets[#sets + 1] = MARK end
  if expire then
    local last = math.max(top, now)
    x = last + math.max(last - now, 1000000)
    sets[#sets + 1] = ':x'; sets[#sets + 1] = x
  end
  chunked('HSET', h, sets, 2)
  if expire then redis.call('PEXPIRE', h, math.ceil((x - now) / 1000) + 1) end
end

-- The lone decision decided above, when its write is due a sweep step or a longer TTL: it
-- goes through `store` like any batch's.
if lone then
  local h, f = KEYS[1], ARGV[4]
  store(h, {f, lone[1]}, {}, {[f] = true}, lone[2], redis.call('HGET', h, ':c'), lone[3], lone[4])
  return math.ceil(lone[2] - now)
end

-- The short path (see the header): GCRA decisions that consume, hash by hash. The loop is
-- the server's cost per decision: globals are read once.
if ARGV[a] == 'F' then
  local argv, ceil = ARGV, math.ceil
  local out, o, i, nargs = {}, 0, a + 1, #argv
  while i <= nargs do
    local h = keys[tonumber(argv[i])]
    local T = tonumber(argv[i + 1]) / 1000
    -- GCRA as in the general path below: allowed iff new_TAT - now <= b * T.
    local cap = T * tonumber(argv[i + 2]) + 0.0005
    local step = tonumber(argv[i + 3]) * T
    local n = tonumber(argv[i + 4])
    local f0 = i + 5
    i = f0 + n
    local vals = read(h, argv, f0, i - 1)
    if vals.err then
      local e = failed(vals)
      for j = 1, n do out[o + j] = e end
      o = o + n
    else
      local tats, written, sets, m, top = {}, {}, {}, 0, 0
      for j = 1, n do
        local f = argv[f0 + j - 1]
        local tat = tats[f]
        if tat == nil then tat = tat_of(vals[j + 3]) end
        o = o + 1
        if tat == nil then
          out[o] = 'floodwall: the state of ' .. f .. ' in ' .. h .. ' is not a TAT'
        else
          if tat < now then tat = now end
          local new_tat = tat + step
          if new_tat - now > cap then
            tats[f] = tat
            out[o] = -ceil(tat - now) - 1
          else
            tats[f] = new_tat
            if not written[f] then
              written[f] = true
              m = m + 1
              sets[2 * m - 1] = f
            end
            if new_tat > top then top = new_tat end
            out[o] = ceil(new_tat - now)
          end
        end
      end
      if m > 0 then
        for j = 1, m do sets[2 * j] = pack('<d', tats[sets[2 * j - 1]]) end
        store(h, sets, {}, written, top, vals[1], vals[2], vals[3])
      end
    end
  end
  if o == 1 then return out[1] end
  return out
end

local tats = {}      -- GCRA: hash -> {field -> TAT (us), as read or as the batch left it}
local meta = {}      -- GCRA: hash -> its own fields as read
local gdirty = {}    -- GCRA: hashes to write at the end, in first-write order
local gfields = {}   -- GCRA: hash -> its fields to write (a list, and a set)
local counters = {}  -- fixed / sliding counter: key -> {w, c, p, ttl (ms) or false}
local dirty = {}     -- counter keys to write at the end, in first-write order
local is_dirty = {}
local replies = {}
local nargs = #ARGV
local k = 1

-- A batch reads each GCRA hash's fields up front, with one HMGET per hash instead of one
-- HGET per decision: each command a script runs costs the server far more than the reply's
-- bytes. A hash of another type, and a value that is not a TAT, are left to the
-- decision's own HGET, which reports them as that decision's error.
if not cross then
  local want, order = {}, {}
  local pa, pk = a, 1
  while pa <= nargs do
    local op = ARGV[pa]
    if op == 'G' then
      pa = pa + 2
    else
      local alg = string.sub(op, 1, 1)
      if alg == 'g' or alg == '=' then
        note_field(want, order, keys[pk], ARGV[pa + 2])
        pk = pk + 1
        if alg == 'g' then pa = pa + 5 else pa = pa + 3 end
      elseif alg == 'l' then
        pk, pa = pk + 2, pa + 5
      else
        pk, pa = pk + 1, pa + 5
      end
    end
  end
  for i = 1, #order do
    local h = order[i]
    local w = want[h]
    local vals = read(h, w, 1, #w)
    if not vals.err then
      meta[h] = vals
      local ht = {}
      for j = 1, #w do ht[w[j]] = tat_of(vals[j + 3]) end
      tats[h] = ht
    end
  end
end
-- GCRA with the previous GCRA decision's T and burst: '=c', '=p', '=r' carry op, cost, field.
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
    local f = ARGV[a + 2]
    local T, cap
    if same == nil then
      T = tonumber(ARGV[a + 3]) / 1000
      cap = T * tonumber(ARGV[a + 4])
      last_T, last_cap = T, cap
      k, a = k + 1, a + 5
    else
      T, cap = last_T, last_cap
      k, a = k + 1, a + 3
    end
    local ht = tats[key]
    local tat = ht and ht[f]
    if tat == nil then
      local v = redis.pcall('HGET', key, f)
      if type(v) == 'table' then
        reply = failed(v)
      else
        tat = tat_of(v)
        if tat == nil then
          reply = 'floodwall: the state of ' .. f .. ' in ' .. key .. ' is not a TAT'
        elseif ht == nil then
          ht = {}
          tats[key] = ht
        end
      end
    end
    if tat ~= nil then
      local write = false
      if op == 'gr' then
        ht[f] = tat - cost * T
        write = true
        reply = 0
      else
        ht[f] = tat
        if tat < now then tat = now end
        local new_tat = tat + cost * T
        if new_tat - now > cap + 0.0005 then
          reply = -math.ceil(tat - now) - 1
        else
          if op == 'gc' then
            ht[f] = new_tat
            write = true
          end
          reply = math.ceil(new_tat - now)
        end
      end
      if write then note_field(gfields, gdirty, key, f) end
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

for i = 1, #gdirty do
  local h = gdirty[i]
  local gd, ht = gfields[h], tats[h]
  local sets, dels, written, top = {}, {}, gd.set, 0
  for j = 1, #gd do
    local f = gd[j]
    local tat = ht[f]
    if tat > now then
      sets[#sets + 1] = f
      sets[#sets + 1] = pack('<d', tat)
      if tat > top then top = tat end
    else
      dels[#dels + 1] = f
    end
  end
  local m = meta[h] or redis.call('HMGET', h, ':c', ':d', ':x')
  store(h, sets, dels, written, top, m[1], m[2], m[3])
end
for i = 1, #dirty do
  local key = dirty[i]
  local s = counters[key]
  redis.call('HSET', key, 'w', s[1], 'c', s[2], 'p', s[3])
  if s[4] then redis.call('PEXPIRE', key, s[4]) end
end
-- A single decision's verdict goes back bare: a table reply costs the server more than the
-- decision itself.
if #replies == 1 then return replies[1] end
return replies
