-- `complete` / record a failure: ARGV token, record, retention ms. Replies 1 or 0 (fenced).
-- Idempotent for the holder: the same token finding its own completion replies 1 again.
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[2] ~= ARGV[1] then return 0 end
if h[1] == 'c' then return 1 end
if h[1] ~= 'p' then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'lu')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
