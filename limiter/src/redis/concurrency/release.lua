-- `release`: KEYS[1] the key's holders; ARGV: permit id. Frees the id's slot. Replies 1, or
-- 0 when it held none.
return redis.call('ZREM', KEYS[1], ARGV[1])
