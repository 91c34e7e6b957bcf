-- patch.lua: PATCH /progress/{id} with a JSON merge patch
-- {"current": N, "message": "..."} on records that run.sh seeded beforehand
-- (a PATCH of a missing record is a 404), spread over BENCH_WRITE_IDS ids.
--
--   BENCH_WRITE_IDS        how many ids (default 1000)
--   BENCH_PATCH_ID_PREFIX  id prefix (default "bench-patch-"); ids are <prefix>0 … <prefix>N-1

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
require("report")

local ids = tonumber(os.getenv("BENCH_WRITE_IDS") or "1000")
local id_prefix = os.getenv("BENCH_PATCH_ID_PREFIX") or "bench-patch-"

wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/json"

prebuilt_writes("PATCH", id_prefix, ids, function(c)
  return string.format('{"current":%d,"message":"Processed %d of 480 segments"}', c, c)
end)
