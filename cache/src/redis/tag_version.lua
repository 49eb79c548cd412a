-- A cache tag's version: KEYS[1] the tag's key, ARGV[1] the caller's version of it, ARGV[2]
-- the key's TTL in ms (refreshed). A tag Redis does not hold (never used, or lost: restart,
-- FLUSHALL, TTL) is made at max(Redis's time in ms, the caller's + 1): a version no entry
-- written before can carry, so a loss invalidates and never revives. A stored version below
-- the caller's (a failover to a lagging replica) is raised to it. Replies {version, made}.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if not cur then
  local g = math.max(now_ms, mine + 1)
  redis.call('SET', KEYS[1], string.format('%d', g), 'PX', ARGV[2])
  return {g, 1}
end
cur = tonumber(cur) or 0
if cur < mine then
  redis.call('SET', KEYS[1], string.format('%d', mine), 'PX', ARGV[2])
  return {mine, 0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {cur, 0}
