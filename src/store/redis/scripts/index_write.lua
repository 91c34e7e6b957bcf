-- After storing record `id` created at `c` with `status`, expiring at `x`:
-- what the previous value (`current`, `created`, `old_status`) needs changed.
local function index_write(id, c, status, x)
  local member = member_of(c, id)
  local fresh = current == 0
  if current ~= 0 and created ~= c then
    unindex(member_of(created, id))
    fresh = true
  end
  if fresh then
    redis.call('ZADD', KEYS[IX], 0, member)
    redis.call('ZADD', KEYS[STATUS_KEY[status]], 0, member)
  elseif old_status ~= status then
    local old = STATUS_KEY[old_status or '']
    if old then redis.call('ZREM', KEYS[old], member) end
    redis.call('ZADD', KEYS[STATUS_KEY[status]], 0, member)
  end
  redis.call('ZADD', KEYS[IX + 1], x, member)
end
