if redis.call('GETRANGE', KEYS[1], '0', ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7])
redis.call('PUBLISH', CHANNEL, ARGV[5])
return 1
