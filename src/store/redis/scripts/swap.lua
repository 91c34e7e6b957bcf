local expected = ARGV[1]
if expected == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif redis.call('GETRANGE', KEYS[1], '0', ARGV[7]) ~= expected then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[6], ARGV[8], 'PX', ARGV[9])
local member = ARGV[5]
if expected == '' then
  redis.call('ZADD', KEYS[2], '0', member)
  redis.call('ZADD', KEYS[5], '0', member)
elseif KEYS[4] ~= KEYS[5] then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZADD', KEYS[5], '0', member)
end
if ARGV[6] ~= '0' then redis.call('ZADD', KEYS[3], ARGV[6], member) end
redis.call('PUBLISH', CHANNEL, ARGV[4])
return 1
