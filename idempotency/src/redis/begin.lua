-- `begin`: ARGV fingerprint hex, lease µs, in-progress TTL ms.
-- Replies `{'n', token}`, `{'c', record}`, `{'i', lease left µs}` or `{'m'}`.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 's', 'fp', 'lu', 'r', 'f')
local s = h[1]
if s == 'c' then
  if h[2] ~= ARGV[1] then return {'m'} end
  return {'c', h[4]}
end
if s == 'p' and tonumber(h[3]) > now then
  if h[2] ~= ARGV[1] then return {'m'} end
  return {'i', string.format('%.0f', tonumber(h[3]) - now)}
end
local tok = math.max(tonumber(h[5] or '0') + 1, now)
local ftok = string.format('%.0f', tok)
redis.call('HSET', KEYS[1], 's', 'p', 'fp', ARGV[1], 'lu', string.format('%.0f', now + tonumber(ARGV[2])), 'f', ftok)
redis.call('HDEL', KEYS[1], 'r')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'n', ftok}
