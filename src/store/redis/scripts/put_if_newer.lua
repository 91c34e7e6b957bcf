local c, v = tonumber(ARGV[6]), tonumber(ARGV[1])
local same_too = ARGV[12] == '1'
if current ~= 0 and (created > c or (created == c and (current > v or (current == v and not same_too)))) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[9], ARGV[10], 'PX', ARGV[11])
index_write(ARGV[7], c, ARGV[8], ARGV[9])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
