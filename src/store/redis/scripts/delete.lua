local created = tonumber(string.match(redis.call('GETRANGE', KEYS[1], 0, 255), '^{"v":%d+[^\n]*"c":(%d+)'))
local removed = redis.call('DEL', KEYS[1])
if removed > 0 then
  if created then unindex(member_of(created, ARGV[3])) end
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return removed
