-- `acquire`: KEYS[1] the key's holders (a sorted set: member = permit id, score = lease end,
-- ms of Redis time). ARGV: permit id, the most holders, lease ms.
-- Drops holders whose lease ended, then admits the id while fewer than the most hold the
-- key. Replies {1, holders now} or {0, holders now}. The key lives as long as the longest
-- lease it holds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return {1, n + 1}
