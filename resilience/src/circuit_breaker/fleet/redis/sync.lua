-- `sync`: KEYS[1] one fleet breaker's hash: field `f` = "until,opening" (the fleet's open
-- wait ends at `until`, ms of Redis time, 0 = closed; `opening` = consecutive openings),
-- `m:<id>` = "state,calls,failures,slow,expires" per instance, `p:<id>` = when instance
-- <id>'s probe slot is given to another.
-- ARGV: 1 id, 2 state (0 closed, 1 open, 2 held, 3 probing, 4 probe passed, 5 probe failed,
-- 6 manual), 3 calls, 4 failures, 5 slow, 6 lease ms, 7 quorum count (0: share), 8 quorum
-- share, 9 minimum calls, 10 failure-rate threshold %, 11 slow-call-rate threshold %,
-- 12 first wait ms, 13 wait multiplier, 14 wait cap ms, 15 probers, 16 probe timeout ms.
-- The same rule as `fleet/rule.rs`: expired members and probe slots are dropped, the
-- report stored; a closed fleet opens when a quorum of live members is open on its own
-- evidence, or the closed members' pooled window crosses a threshold with enough calls and a
-- quorum of witnesses; an open fleet whose wait is over gives probe slots to open or held
-- members; a slot holder's passed probes close it, failed ones open it again.
-- Replies {open, remaining ms, granted, live, open members, pooled calls, pooled failures,
-- witnesses, opening, quorum}. The key lives while the fleet is open plus two leases.
local K = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local state = tonumber(ARGV[2])
local lease = tonumber(ARGV[6])
local fthr, sthr = tonumber(ARGV[10]), tonumber(ARGV[11])
local probers, probe_timeout = tonumber(ARGV[15]), tonumber(ARGV[16])
local function n(x) return string.format('%.0f', x) end

local until_ms, opening = 0, 0
local members = {}
local grants, ngrants = {}, 0
local all = redis.call('HGETALL', K)
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local kind, name = string.sub(f, 1, 2), string.sub(f, 3)
  if f == 'f' then
    local a, b = string.match(v, '^(%d+),(%d+)$')
    until_ms, opening = tonumber(a) or 0, tonumber(b) or 0
  elseif kind == 'm:' then
    local s, c, fl, sl, e = string.match(v, '^(%d+),(%d+),(%d+),(%d+),(%d+)$')
    if e == nil or tonumber(e) <= now then
      redis.call('HDEL', K, f)
    else
      members[name] = {tonumber(s), tonumber(c), tonumber(fl), tonumber(sl)}
    end
  elseif kind == 'p:' then
    if (tonumber(v) or 0) <= now then
      redis.call('HDEL', K, f)
    else
      grants[name] = true
      ngrants = ngrants + 1
    end
  else
    redis.call('HDEL', K, f)
  end
end

members[id] = {state, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
redis.call('HSET', K, 'm:' .. id,
  n(state) .. ',' .. ARGV[3] .. ',' .. ARGV[4] .. ',' .. ARGV[5] .. ',' .. n(now + lease))

local live, open_members, witnesses, calls, failures, slow = 0, 0, 0, 0, 0, 0
for _, m in pairs(members) do
  local s, c, fl, sl = m[1], m[2], m[3], m[4]
  live = live + 1
  if s == 1 then open_members = open_members + 1 end
  if s == 1 or (c > 0 and (fl * 100 >= fthr * c or sl * 100 >= sthr * c)) then
    witnesses = witnesses + 1
  end
  if s == 0 or s == 4 then
    calls, failures, slow = calls + c, failures + fl, slow + sl
  end
end

local q = tonumber(ARGV[7])
if q == 0 then
  q = math.ceil(math.min(math.max(tonumber(ARGV[8]), 0), 1) * live)
end
q = math.max(math.min(q, live), 2)

local mine = grants[id] == true
local function clear_grants()
  for g in pairs(grants) do redis.call('HDEL', K, 'p:' .. g) end
  grants, ngrants = {}, 0
end
local function open_again()
  opening = opening + 1
  local grown = tonumber(ARGV[12]) * math.max(tonumber(ARGV[13]), 1) ^ math.min(opening - 1, 1024)
  until_ms = math.max(now + math.floor(math.min(tonumber(ARGV[14]), grown)), 1)
  clear_grants()
end

if until_ms == 0 then
  local pooled = calls > 0 and calls >= tonumber(ARGV[9])
    and (failures * 100 >= fthr * calls or slow * 100 >= sthr * calls)
  if open_members >= q or (pooled and witnesses >= q) then open_again() end
elseif mine and state == 4 then
  until_ms, opening = 0, 0
  clear_grants()
elseif mine and state == 5 then
  open_again()
elseif now >= until_ms and not mine and (state == 1 or state == 2) and ngrants < probers then
  redis.call('HSET', K, 'p:' .. id, n(now + probe_timeout))
  grants[id] = true
  ngrants = ngrants + 1
end

redis.call('HSET', K, 'f', n(until_ms) .. ',' .. n(opening))
local remaining = 0
if until_ms > now then remaining = until_ms - now end
redis.call('PEXPIRE', K, n(remaining + 2 * lease + probe_timeout))
local open, granted = 0, 0
if until_ms ~= 0 then
  open = 1
  if grants[id] then granted = 1 end
end
return {open, remaining, granted, live, open_members, calls, failures, witnesses, opening, q}
