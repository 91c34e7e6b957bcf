if current == 0 or current ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[6] == '0' then redis.call('DEL', KEYS[9]) else redis.call('SET', KEYS[9], ARGV[5], 'PX', ARGV[6]) end
unindex(member_of(created, ARGV[4]))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
