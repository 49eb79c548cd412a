-- Restores the namespace generation after Redis lost it: ARGV[1] the caller's generation. The
-- stored generation only grows; replies the generation now stored.
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local g = tonumber(ARGV[1])
if cur >= g then return cur end
redis.call('SET', KEYS[1], string.format('%d', g))
return g
