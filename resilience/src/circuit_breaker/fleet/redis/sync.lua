-- `sync`: KEYS[1] one fleet breaker's hash, KEYS[2] its members' lease ends (a sorted set:
-- member = instance id, score = ms of Redis time), both under one hash tag. Hash fields:
-- `f` = "until,opening" (the fleet's open wait ends at `until`, 0 = closed; `opening` =
-- consecutive openings), `g` = "id=end;…" (probe slots and when each is given to another),
-- `a` = "live,open,witnesses,calls,failures,slow,n" (running sums over the live members, `n`
-- syncs since they were last summed from scratch), `m:<id>` = "state,calls,failures,slow,
-- witness" per instance.
-- ARGV: 1 id, 2 state (0 closed, 1 open, 2 held, 3 probing, 4 probe passed, 5 probe failed,
-- 6 manual), 3 calls, 4 failures, 5 slow, 6 lease ms, 7 quorum count (0: share), 8 quorum
-- share, 9 minimum calls, 10 failure-rate threshold %, 11 slow-call-rate threshold %,
-- 12 first wait ms, 13 wait multiplier, 14 wait cap ms, 15 probers, 16 probe timeout ms.
-- The same rule as `fleet/rule.rs`: members whose lease ended leave the sums, the report
-- replaces its member's part, and the fleet decides on the sums: a closed fleet opens when a
-- quorum of live members is open on its own evidence, or the closed members' pooled window
-- crosses a threshold with enough calls and a quorum of witnesses; an open fleet whose wait
-- is over gives probe slots to open or held members; a slot holder's passed probes close it,
-- failed ones open it again. A sync costs O(1) plus the members that left; every 128th (or
-- when the sums are missing) sums the members afresh, so a lost or stale sum heals.
-- Replies {open, remaining ms, granted, live, open members, pooled calls, pooled failures,
-- witnesses, opening, quorum}. The keys live while the fleet is open plus two leases.
local K, Z = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local state = tonumber(ARGV[2])
local lease = tonumber(ARGV[6])
local fthr, sthr = tonumber(ARGV[10]), tonumber(ARGV[11])
local probers, probe_timeout = tonumber(ARGV[15]), tonumber(ARGV[16])
local function n(x) return string.format('%.0f', x) end

local function parse(v)
  local s, c, fl, sl, w = string.match(v or '', '^(%d+),(%d+),(%d+),(%d+),(%d)$')
  if not s then return nil end
  return {tonumber(s), tonumber(c), tonumber(fl), tonumber(sl), tonumber(w)}
end
-- a = {live, open, witnesses, calls, failures, slow, n}
local a = {0, 0, 0, 0, 0, 0, 0}
local function add(m, sign)
  a[1] = a[1] + sign
  if m[1] == 1 then a[2] = a[2] + sign end
  a[3] = a[3] + sign * m[5]
  if m[1] == 0 or m[1] == 4 then
    a[4], a[5], a[6] = a[4] + sign * m[2], a[5] + sign * m[3], a[6] + sign * m[4]
  end
end

local stored = redis.call('HGET', K, 'a')
local sums = stored and {string.match(stored, '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)$')}
if sums and #sums == 7 and tonumber(sums[7]) < 128 then
  for i = 1, 7 do a[i] = tonumber(sums[i]) end
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', Z, '-inf', now)) do
    local m = parse(redis.call('HGET', K, 'm:' .. gone))
    if m then add(m, -1) end
    redis.call('HDEL', K, 'm:' .. gone)
    redis.call('ZREM', Z, gone)
  end
else
  -- Sum the live members afresh (and drop the others).
  local all = redis.call('HGETALL', K)
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'm:' then
      local who = string.sub(f, 3)
      local ends = tonumber(redis.call('ZSCORE', Z, who) or '0')
      local m = parse(all[i + 1])
      if m and ends > now then
        add(m, 1)
      else
        redis.call('HDEL', K, f)
        redis.call('ZREM', Z, who)
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', now)
end

local calls, failures, slow = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local old = parse(redis.call('HGET', K, 'm:' .. id))
if old then add(old, -1) end
local w = 0
if state == 1 or (calls > 0 and (failures * 100 >= fthr * calls or slow * 100 >= sthr * calls)) then
  w = 1
end
local mine = {state, calls, failures, slow, w}
add(mine, 1)
redis.call('HSET', K, 'm:' .. id, n(state) .. ',' .. ARGV[3] .. ',' .. ARGV[4] .. ',' .. ARGV[5] .. ',' .. w)
redis.call('ZADD', Z, n(now + lease), id)
a[7] = a[7] + 1

local live, open_members, witnesses = a[1], a[2], a[3]
local pc, pf, ps = a[4], a[5], a[6]

local until_ms, opening = 0, 0
local fv = redis.call('HGET', K, 'f')
if fv then
  local u, o = string.match(fv, '^(%d+),(%d+)$')
  until_ms, opening = tonumber(u) or 0, tonumber(o) or 0
end
local grants, ngrants = {}, 0
for who, ends in string.gmatch(redis.call('HGET', K, 'g') or '', '([^=;]+)=(%d+)') do
  if tonumber(ends) > now then
    grants[who] = tonumber(ends)
    ngrants = ngrants + 1
  end
end

local q = tonumber(ARGV[7])
if q == 0 then
  q = math.ceil(math.min(math.max(tonumber(ARGV[8]), 0), 1) * live)
end
q = math.max(math.min(q, live), 2)

local held = grants[id] ~= nil
local function open_again()
  opening = opening + 1
  local grown = tonumber(ARGV[12]) * math.max(tonumber(ARGV[13]), 1) ^ math.min(opening - 1, 1024)
  until_ms = math.max(now + math.floor(math.min(tonumber(ARGV[14]), grown)), 1)
  grants, ngrants = {}, 0
end

if until_ms == 0 then
  local pooled = pc > 0 and pc >= tonumber(ARGV[9])
    and (pf * 100 >= fthr * pc or ps * 100 >= sthr * pc)
  if open_members >= q or (pooled and witnesses >= q) then open_again() end
elseif held and state == 4 then
  until_ms, opening = 0, 0
  grants, ngrants = {}, 0
elseif held and state == 5 then
  open_again()
elseif now >= until_ms and not held and (state == 1 or state == 2) and ngrants < probers then
  grants[id] = now + probe_timeout
  ngrants = ngrants + 1
end

local g = {}
for who, ends in pairs(grants) do g[#g + 1] = who .. '=' .. n(ends) end
redis.call('HSET', K, 'f', n(until_ms) .. ',' .. n(opening), 'g', table.concat(g, ';'),
  'a', n(a[1]) .. ',' .. n(a[2]) .. ',' .. n(a[3]) .. ',' .. n(a[4]) .. ',' .. n(a[5]) .. ','
    .. n(a[6]) .. ',' .. n(a[7]))
local remaining = 0
if until_ms > now then remaining = until_ms - now end
local ttl = n(remaining + 2 * lease + probe_timeout)
redis.call('PEXPIRE', K, ttl)
redis.call('PEXPIRE', Z, ttl)
local open, granted = 0, 0
if until_ms ~= 0 then
  open = 1
  if grants[id] then granted = 1 end
end
return {open, remaining, granted, live, open_members, pc, pf, witnesses, opening, q}
