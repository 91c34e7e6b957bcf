-- mix.lua: 90 % GET / 10 % PATCH of /progress/{id}, each request on a record
-- chosen at random among BENCH_MIX_IDS records that run.sh seeded beforehand
-- (a PATCH of a missing record is a 404).
--
--   BENCH_MIX_IDS        how many ids (default 10000)
--   BENCH_MIX_ID_PREFIX  id prefix (default "bench-mix-"); ids are <prefix>0 … <prefix>N-1
--   BENCH_MIX_PATCH_EVERY  one request in this many is a PATCH (default 10: 10 %)
--
-- Every tenth request of a connection's thread is the PATCH (so the share is
-- exact, not drawn), and every id is drawn uniformly with a generator seeded
-- per thread: with 10,000 records two concurrent PATCHes seldom meet on one
-- record, so the run measures reads and writes, not compare-and-set retries.
-- The GETs carry no If-None-Match: each one that finds the record answers 200
-- with the body, from the read cache when the record was read (and not
-- written) within PROGRESS_CACHE_MAX_AGE_MS, else from Redis.

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
require("report")

local ids = tonumber(os.getenv("BENCH_MIX_IDS") or "10000")
local id_prefix = os.getenv("BENCH_MIX_ID_PREFIX") or "bench-mix-"
local every = tonumber(os.getenv("BENCH_MIX_PATCH_EVERY") or "10")

local threads = 0
function setup(thread)
  thread:set("thread_no", threads)
  threads = threads + 1
end

local n = 0
local patch_headers = write_headers()

function init(args)
  -- os.time() alone would give every thread the same sequence.
  math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919 + math.floor((os.clock() * 1e6) % 1000))
  n = (thread_no or 0) -- threads start at different places in the GET/PATCH cycle
end

function request()
  n = n + 1
  local path = "/progress/" .. id_prefix .. math.random(0, ids - 1)
  if n % every == 0 then
    local c = n % 481
    return wrk.format("PATCH", path, patch_headers,
      string.format('{"current":%d,"message":"Processed %d of 480 segments"}', c, c))
  end
  return wrk.format("GET", path)
end
