local head = redis.call('GETRANGE', KEYS[1], 0, 511)
local current = 0
local created = 0
local old_status = nil
if head ~= '' then
  current = tonumber(string.match(head, '^{"v":(%d+)'))
  if current == nil then return -1 end
  local nl = string.find(head, '\n', 1, true)
  local header = nl and string.sub(head, 1, nl - 1) or head
  created = tonumber(string.match(header, '"c":(%d+)')) or 0
  old_status = string.match(header, '"t":"(%a+)"')
  if nl and not old_status then old_status = string.match(head, '^{"id":"[^"]*","version":%d+,"status":"(%a+)"', nl + 1) end
end
