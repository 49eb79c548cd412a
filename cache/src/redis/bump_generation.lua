-- Bumps the namespace generation: ARGV[1] the highest generation the caller has seen. The new
-- generation is above the stored one, above the caller's, and at least Redis's time in ms, so
-- after Redis lost the key (restart without persistence, FLUSHALL, failover to a lagging
-- replica) a bump still moves past every generation any instance used before the loss.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local g = math.max(cur + 1, tonumber(ARGV[1]) + 1, now_ms)
redis.call('SET', KEYS[1], string.format('%d', g))
return g
