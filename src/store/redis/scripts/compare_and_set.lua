if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[9], ARGV[10], 'PX', ARGV[11])
index_write(ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
