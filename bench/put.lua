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

prebuilt_writes("PUT", id_prefix, ids, function(c)
  return (template:gsub('("current":%s*)%d+', "%1" .. c, 1))
end)
