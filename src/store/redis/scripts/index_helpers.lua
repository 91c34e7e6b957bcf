local STATUS_KEY = {pending = IX + 2, running = IX + 3, completed = IX + 4, failed = IX + 5, cancelled = IX + 6}
local function member_of(c, id) return string.format('%015d', c) .. ':' .. id end
local function unindex(member)
  for i = IX, IX + 6 do redis.call('ZREM', KEYS[i], member) end
end
