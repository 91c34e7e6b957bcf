if current == 0 or created > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[9])
unindex(member_of(created, ARGV[4]))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
