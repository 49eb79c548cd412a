-- Bumps the namespace generation (or a cache tag's version): ARGV[1] the highest the caller
-- has seen, ARGV[2] (tags only) the key's TTL in ms. The new
-- generation is above the stored one, above the caller's, and at least Redis's time in ms, so
-- after Redis lost the key (restart without persistence, FLUSHALL, failover to a lagging
-- replica) a bump still moves past every generation any instance used before the loss.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local g = math.max(cur + 1, tonumber(ARGV[1]) + 1, now_ms)
if ARGV[2] then
  redis.call('SET', KEYS[1], string.format('%d', g), 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], string.format('%d', g))
end
return g
