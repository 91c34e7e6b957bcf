-- put.lua: PUT /progress/{id} with a running record (bench/record.json),
-- spread over BENCH_WRITE_IDS ids so that writes do not contend on one record.
--
--   BENCH_WRITE_IDS      how many ids (default 1000)
--   BENCH_PUT_ID_PREFIX  id prefix (default "bench-put-"); ids are <prefix>0 … <prefix>N-1
--   BENCH_RECORD_JSON    body template (default: record.json next to this script)
--
-- The status stays "running": a PUT over a completed/failed/cancelled record is a 409.
-- Consecutive writes of a record carry a different top-level "current".

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
require("report")

local ids = tonumber(os.getenv("BENCH_WRITE_IDS") or "1000")
local id_prefix = os.getenv("BENCH_PUT_ID_PREFIX") or "bench-put-"
local body_file = os.getenv("BENCH_RECORD_JSON") or (dir .. "/record.json")

local f = assert(io.open(body_file, "r"))
-- JSON strings cannot hold raw newlines, so dropping them (and the indentation) is safe.
local template = f:read("*a"):gsub("\n%s*", "")
f:close()
assert(template:find('"current":%s*%d+'), body_file .. " needs a top-level \"current\"")

wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"

local next_id = spread_over(ids)

-- The requests are built once per thread, in init(): VARIANTS bodies per id
-- (each with its own "current"), so that request() only picks one. Building
-- a 1 KB body and its request per call (a gsub over the template, then
-- wrk.format) cost wrk 1.5-3 us of CPU per request, which the server's
-- share of the two CPUs paid for (healthz sends one request built once).
local VARIANTS = 4
local requests = {}

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for v = 0, VARIANTS - 1 do
    for i = 0, ids - 1 do
      local body = (template:gsub('("current":%s*)%d+', "%1" .. ((i + v * 97) % 481), 1))
      requests[v * ids + i] = wrk.format("PUT", "/progress/" .. id_prefix .. i, headers, body)
    end
  end
end

-- Each pass over the ids takes the next variant, so consecutive writes of a
-- record differ.
function request()
  local i, n = next_id()
  return requests[(math.floor(n / ids) % VARIANTS) * ids + i]
end
