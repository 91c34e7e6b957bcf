local now, kp = tonumber(ARGV[1]), ARGV[3]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local pruned = 0
for _, member in ipairs(due) do
  local key = kp .. string.sub(member, 17)
  local head = redis.call('GETRANGE', key, 0, 255)
  local c = string.match(head, '^{[^\n]*"c":(%d+)')
  if c and tonumber(c) == tonumber(string.sub(member, 1, 15)) then
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 then redis.call('ZADD', KEYS[2], now + ttl + 1, member) else redis.call('ZADD', KEYS[2], '+inf', member) end
  else
    unindex(member)
    pruned = pruned + 1
  end
end
return {pruned, #due}
