#!/usr/bin/env bash
# bench/address.sh: GET of one record without a token (reads open, the
# embedded store), the per-address rate limit off (the default) next to on
# (PROGRESS_ADDRESS_RATE_PER_SECOND and _BURST at 10^6, so every request pays
# the check and none is refused). Two release instances on ports 18931 (off)
# and 18932 (on); wrk, 2 threads, 64 connections, ROUNDS rounds of DURATION
# seconds, the order of the two rows alternating between rounds. Prints per
# run requests/s, p99, the server's CPU µs per request (utime + stime from
# /proc) and non-2xx answers. See bench/README.md ("Per-address rate limit").
#
#   cargo build --release && ROUNDS=6 DURATION=5 bench/address.sh
set -euo pipefail
BIN=${BIN:-target/release/progressd}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}
env -u REDIS_URL -u DATABASE_URL PROGRESS_HOST=127.0.0.1 PORT=18931 PROGRESS_LOG_LEVEL=warn "$BIN" & OFF=$!
env -u REDIS_URL -u DATABASE_URL PROGRESS_HOST=127.0.0.1 PORT=18932 PROGRESS_LOG_LEVEL=warn \
  PROGRESS_ADDRESS_RATE_PER_SECOND=1000000 PROGRESS_ADDRESS_RATE_BURST=1000000 "$BIN" & ON=$!
trap 'kill $OFF $ON' EXIT
sleep 1
for port in 18931 18932; do
  curl -sf -X PUT -H 'content-type: application/json' -d '{"status":"running","current":3,"total":10}' \
    "http://127.0.0.1:$port/progress/bench-1" >/dev/null
  wrk -t2 -c64 -d1s "http://127.0.0.1:$port/progress/bench-1" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  order="18931 18932"; (( round % 2 == 0 )) && order="18932 18931"
  for port in $order; do
    name=off; [[ $port == 18932 ]] && name=on
    pid=$OFF; [[ $port == 18932 ]] && pid=$ON
    t0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out=$(wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/progress/bench-1")
    t1=$(awk '{print $14+$15}' /proc/$pid/stat)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(python3 -c "print(round(($t1-$t0)*1e6/$(getconf CLK_TCK)/$reqs, 1))")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "round $round $name rps=$rps p99=$p99 cpu_us_per_req=$cpu non2xx=${non2xx:-0}"
  done
done
