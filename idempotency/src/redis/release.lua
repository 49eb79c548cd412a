-- `abort` by release: ARGV token, fence TTL ms. Keeps the last token for a while so the
-- next claim's token is larger. Replies 1 or 0 (fenced). Idempotent for the holder: the same
-- token finding its own release replies 1 again.
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[2] ~= ARGV[1] then return 0 end
if h[1] == 'x' then return 1 end
if h[1] ~= 'p' then return 0 end
redis.call('HSET', KEYS[1], 's', 'x')
redis.call('HDEL', KEYS[1], 'r', 'lu', 'fp')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
