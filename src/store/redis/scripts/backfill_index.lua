local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local head = redis.call('GETRANGE', key, 0, 511)
  local nl = string.find(head, '\n', 1, true)
  if nl and string.match(head, '^{"v":%d+') then
    local header = string.sub(head, 1, nl - 1)
    local c = tonumber(string.match(header, '"c":(%d+)'))
    local x = tonumber(string.match(header, '"x":(%d+)')) or 0
    local status = string.match(header, '"t":"(%a+)"')
      or string.match(head, '^{"id":"[^"]*","version":%d+,"status":"(%a+)"', nl + 1)
    if c and status and STATUS_KEY[status] then
      local member = member_of(c, id)
      redis.call('ZADD', KEYS[1], 'NX', 0, member)
      redis.call('ZADD', KEYS[STATUS_KEY[status]], 'NX', 0, member)
      redis.call('ZADD', KEYS[2], 'NX', x, member)
      n = n + 1
    end
  end
end
return n
