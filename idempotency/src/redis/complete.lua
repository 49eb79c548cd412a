-- `complete` / record a failure: ARGV token, record, retention ms. Replies 1 or 0 (fenced).
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'lu')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
