-- `renew` (the holder's heartbeat): KEYS[1] the key's holders; ARGV: permit id, lease ms.
-- Extends the id's lease to `lease` from now if it still holds a slot. Replies 1, or 0 when
-- the slot was lost (its lease ended and it was dropped).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
