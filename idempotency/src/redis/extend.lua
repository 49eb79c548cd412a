-- `extend` (the holder's heartbeat): ARGV token, lease µs, in-progress TTL ms. Renews the
-- claim's lease to `lease` from now if the token still holds it. Replies 1 or 0 (fenced).
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('HSET', KEYS[1], 'lu', string.format('%.0f', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
