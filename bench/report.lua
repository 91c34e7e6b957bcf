-- report.lua: the done() hook shared by every bench scenario.
--
-- wrk calls done() once, after the run, in its main Lua state. It prints one
-- machine-readable line that bench/run.sh parses, so nothing depends on the
-- layout of wrk's human-readable text. Latencies are in microseconds.
-- Consumers read the line as key=value pairs, so keys may be added at the
-- end (p999_us, the 99.9th percentile, is used by bench/degraded.sh).
--
--   errors.status counts responses with a status of 400 or more (wrk's
--   "Non-2xx or 3xx responses"); connect/read/write/timeout are socket errors.

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  local rps = 0
  if seconds > 0 then rps = summary.requests / seconds end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d bytes=%d"
      .. " connect=%d read=%d write=%d timeout=%d status=%d p999_us=%d\n",
    summary.requests, summary.duration, rps,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max),
    summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    math.floor(latency:percentile(99.9))))
end

-- Spreads a write scenario over `ids` records so that writes seldom contend
-- on one record: defines wrk's setup() so each thread starts at a different
-- place in the id space (golden-ratio spacing), and returns a function that
-- gives (index of the next id, requests sent so far by this thread).
function spread_over(ids)
  local threads = 0
  setup = function(thread)
    thread:set("offset", math.floor(ids * ((threads * 0.6180339887) % 1)))
    threads = threads + 1
  end
  local n = 0
  return function()
    local i = ((offset or 0) + n) % ids
    n = n + 1
    return i, n
  end
end

-- The headers of a write: JSON, and the write token and Origin that
-- run.sh gives the server (BENCH_WRITE_TOKEN, BENCH_ORIGIN), when set.
function write_headers()
  local headers = { ["Content-Type"] = "application/json" }
  local token, origin = os.getenv("BENCH_WRITE_TOKEN"), os.getenv("BENCH_ORIGIN")
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  if origin and origin ~= "" then headers["Origin"] = origin end
  return headers
end

-- Writes round-robin over `ids` records (see spread_over) with requests
-- built once per thread, in init(): four per id, body_of(c) with a counter
-- c that differs between them, so that request() only picks one and
-- consecutive writes of a record differ. Building a 1 KB body and its
-- request per call (a gsub, then wrk.format) cost wrk 1.5-3 us of CPU per
-- request, which the server's share of the two CPUs paid for (/healthz
-- sends one request built once). Defines wrk's init() and request().
function prebuilt_writes(method, id_prefix, ids, body_of)
  local next_id = spread_over(ids)
  local variants = 4
  local requests = {}
  init = function(args)
    local headers = write_headers()
    for v = 0, variants - 1 do
      for i = 0, ids - 1 do
        local body = body_of((i + v * 97) % 481)
        requests[v * ids + i] = wrk.format(method, "/progress/" .. id_prefix .. i, headers, body)
      end
    end
  end
  request = function()
    local i, n = next_id()
    return requests[(math.floor(n / ids) % variants) * ids + i]
  end
end
