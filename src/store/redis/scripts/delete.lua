local created = tonumber(string.match(redis.call('GETRANGE', KEYS[1], 0, 255), '^{"v":%d+[^\n]*"c":(%d+)'))
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then
  if ARGV[5] == '0' then redis.call('DEL', KEYS[9]) else redis.call('SET', KEYS[9], ARGV[4], 'PX', ARGV[5]) end
  if created then unindex(member_of(created, ARGV[3])) end
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return removed
