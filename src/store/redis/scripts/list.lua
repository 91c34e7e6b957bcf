local limit, budget, prefix, kp = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n = #KEYS
local chunk = limit + 1
if prefix ~= '' then chunk = math.min(budget, math.max(chunk, 256)) end
local bufs, pos, bounds, done = {}, {}, {}, {}
for i = 1, n do bufs[i], pos[i], bounds[i], done[i] = {}, 1, ARGV[1], false end
local function head(i)
  if pos[i] > #bufs[i] then
    if done[i] then return nil end
    local got = redis.call('ZREVRANGEBYLEX', KEYS[i], bounds[i], '-', 'LIMIT', 0, chunk)
    bufs[i], pos[i] = got, 1
    if #got < chunk then done[i] = true end
    if #got == 0 then return nil end
    bounds[i] = '(' .. got[#got]
  end
  return bufs[i][pos[i]]
end
local function greater(a, b)
  local la, lb = #a, #b
  for j = 1, math.min(la, lb) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x > y end
  end
  return la > lb
end
local out, taken, examined, last = {''}, 0, 0, ''
while true do
  local best = nil
  for i = 1, n do
    local h = head(i)
    if h and (best == nil or (h ~= best and greater(h, best))) then best = h end
  end
  if best == nil then return out end
  if taken >= limit or examined >= budget then
    out[1] = last
    return out
  end
  for i = 1, n do
    if head(i) == best then pos[i] = pos[i] + 1 end
  end
  examined = examined + 1
  last = best
  local id = string.sub(best, 17)
  if prefix == '' or string.sub(id, 1, #prefix) == prefix then
    local value = redis.call('GET', kp .. id)
    if value then
      local c = string.match(value, '^{[^\n]*"c":(%d+)')
      if c and tonumber(c) == tonumber(string.sub(best, 1, 15)) then
        out[#out + 1] = best
        out[#out + 1] = value
        taken = taken + 1
      end
    end
  end
end
