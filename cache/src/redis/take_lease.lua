-- Takes the load lease KEYS[1] for this instance (ARGV[1]) for ARGV[2] ms.
-- 1: this instance holds it now — newly, or because an earlier take of its own whose reply
--    was lost (the call timed out on the client, Redis applied it afterwards) left the lease
--    this instance's: an instance never waits on itself. Its length starts again.
-- 0: another instance holds it.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
