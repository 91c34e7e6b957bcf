#!/usr/bin/env bash
# bench/degraded.sh: GET /progress/{id} latency when Redis is gone, against
# the healthy stack and against a PostgreSQL-only deployment, in one run.
# See bench/README.md ("degraded.sh") for what is measured and how to read it.
#
#   (a) Redis + PostgreSQL, both up: the reference (default settings, so
#       the read cache is on);
#   (b) the same process after its Redis was killed (SIGKILL) and its Redis
#       breaker opened: every read goes to PostgreSQL;
#   (c) PostgreSQL only (no REDIS_URL), same database;
#   (d) Redis black-holed (bench/blackhole.py stops answering, connections
#       stay open): the first requests, each waiting for the Redis timeout
#       until the breaker opens, then the same wrk run as the others.
# Every Redis here is a redis-server this script starts on a free port; the
# shared Redis is not used. The database is created for the run and dropped.
#
# Environment (all optional):
#   DEGRADED_DURATION     seconds per wrk run (default 10)
#   DEGRADED_THREADS      wrk threads (default 2)
#   DEGRADED_CONNECTIONS  wrk connections (default 32)
#   DEGRADED_WARMUP       warm-up seconds before each wrk run, 0 to skip (default 2)
#   DEGRADED_TARGET_MS    allowed p50 difference between (b) and (c) (default 1)
#   DEGRADED_PROBES       sequential GETs after the black hole opens (default 8)
#   BENCH_SKIP_BUILD      1: use the existing target/release/progressd
#   BENCH_LOG_LEVEL       server log level (default warn)
#   BENCH_PG_URL          PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#
# Exit status: 0 when every run answered only 200s without socket errors and
# every check held (whether or not the target is met); 1 otherwise; 2 on
# set-up errors.

set -Eeuo pipefail

BENCH_NAME=degraded
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

DURATION="${DEGRADED_DURATION:-10}"
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
WARMUP="${DEGRADED_WARMUP:-2}"
[[ "$WARMUP" =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"
THREADS="${DEGRADED_THREADS:-2}"
CONNECTIONS="${DEGRADED_CONNECTIONS:-32}"
TARGET_MS="${DEGRADED_TARGET_MS:-1}"
PROBES="${DEGRADED_PROBES:-8}"
REDIS_TIMEOUT_MS=100   # PROGRESS_REDIS_TIMEOUT_MS: the server default, not set
BREAKER_FAILURES=3     # PROGRESS_BREAKER_FAILURES: the server default, not set

need_tools wrk curl awk psql python3 redis-server redis-cli cargo
problems=()
DB="progressd_degraded_${RUN_ID//-/_}"
PREFIX="degraded-$RUN_ID:"
READ_ID="degraded-read"
RECORD_JSON="$BENCH_DIR/record.json"
json=(-H 'Content-Type: application/json')

echo "== progressd degraded modes: GET /progress/{id} latency =="
print_machine
echo "wrk:         $( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}'), ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} per run (${WARMUP} warm-up), --latency"
echo "redis:       own redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on free ports (the shared one is not used)"
echo "settings:    defaults (PROGRESS_REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS}, PROGRESS_BREAKER_FAILURES=${BREAKER_FAILURES}, read cache on), log format json"
echo

build_release
create_database "$DB"
DATABASE_URL="$PG_SERVER_URL/$DB"

# --- helpers ---------------------------------------------------------------------

# start_redis NAME: a redis-server of our own on a free port, no persistence.
# Sets REDIS_PID and REDIS_PORT.
start_redis() {
  local port pid _
  port="$(free_port)"
  ( exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --logfile "$WORK/redis-$1.log" ) >/dev/null 2>&1 &
  pid=$!
  register_pid "$pid" "redis-server ($1)"
  for _ in $(seq 1 100); do
    if [[ "$(redis-cli -p "$port" PING 2>/dev/null)" == PONG ]]; then
      REDIS_PID="$pid"; REDIS_PORT="$port"; return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  die "redis-server ($1) did not start (log: $WORK/redis-$1.log)"
}

# breaker_opened LOG: whether the server logged its Redis breaker opening.
breaker_opened() { grep 'circuit breaker open' "$1" 2>/dev/null | grep -q '"tier":"redis"'; }

# timed_get BASE ID: "<status> <milliseconds>" of one GET.
timed_get() {
  curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}\n' "$1/progress/$2" \
    | awk '{ printf "%s %.1f\n", $1, $2 * 1000 }' || echo "000 -"
}

# wait_get_200 BASE ID: until GET answers 200, at most 15 s.
wait_get_200() {
  local _
  for _ in $(seq 1 150); do
    [[ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1/progress/$2" || true)" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

WRK_PID=""
bench_cleanup_extra() { [[ -z "$WRK_PID" ]] || stop_pid "$WRK_PID"; }

declare -A R=()
# measure KEY LABEL BASE: warm-up, then wrk on GET BASE/progress/READ_ID; keeps
# the BENCH_RESULT fields in R[KEY.*].
measure() {
  local key="$1" label="$2" base="$3" out="$WORK/wrk-$1.txt" rc=0 line kv
  if [[ "$WARMUP" != 0s ]]; then
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$WARMUP" --timeout 5s "$base/progress/$READ_ID" >/dev/null 2>&1 &
    WRK_PID=$!; wait "$WRK_PID" || true; WRK_PID=""
  fi
  log "$BENCH_NAME: ($key) $label: wrk for $DURATION"
  # In the background + wait, so that a signal runs the clean-up trap at once.
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency --timeout 5s -s "$BENCH_DIR/report.lua" \
    "$base/progress/$READ_ID" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  (( rc == 0 )) || problems+=("($key) wrk failed: $(tail -n 2 "$out" | tr '\n' ' ')")
  line="$(grep -m1 '^BENCH_RESULT ' "$out" || true)"
  if [[ -z "$line" ]]; then problems+=("($key) wrk printed no result (see $out)"); return 0; fi
  for kv in ${line#BENCH_RESULT }; do R[$key.${kv%%=*}]="${kv#*=}"; done
  R[$key.label]="$label"
  local sock=$(( R[$key.connect] + R[$key.read] + R[$key.write] + R[$key.timeout] ))
  (( R[$key.requests] > 0 )) || problems+=("($key) no request completed")
  (( R[$key.status] == 0 )) || problems+=("($key) ${R[$key.status]} responses with status >= 400")
  (( sock == 0 )) || problems+=("($key) $sock socket errors")
  # wrk counts only statuses >= 400: a different body size would betray 304s or the like.
  local bpr=$(( R[$key.bytes] / (R[$key.requests] > 0 ? R[$key.requests] : 1) ))
  R[$key.bpr]="$bpr"
  (( bpr > 1000 )) || problems+=("($key) responses average $bpr bytes; the record is ~1.2 kB")
}

# --- (a) and (b): one process, Redis killed in between -------------------------------

start_redis a
REDIS_A_PID="$REDIS_PID"
start_progressd tiered REDIS_URL="redis://127.0.0.1:$REDIS_PORT" DATABASE_URL="$DATABASE_URL" \
  PROGRESS_KEY_PREFIX="$PREFIX" PROGRESS_LOG_FORMAT=json
TIERED_PID="$SERVER_PID"; TIERED_BASE="$SERVER_BASE"; TIERED_LOG="$SERVER_LOG"
wait_migrated "$DB"
log "$BENCH_NAME: progressd (pid $TIERED_PID) at $TIERED_BASE on redis-server :$REDIS_PORT (pid $REDIS_A_PID) and database $DB"

code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT "${json[@]}" --data-binary "@$RECORD_JSON" "$TIERED_BASE/progress/$READ_ID")"
[[ "$code" == 201 || "$code" == 200 ]] || die "seeding PUT /progress/$READ_ID answered $code (log: $TIERED_LOG)"
[[ "$(psql_db "$DB" -c "SELECT version FROM progress WHERE id = '$READ_ID'")" == 1 ]] || \
  die "the seeded record is not in PostgreSQL: (b) and (c) would read nothing (log: $TIERED_LOG)"

measure a "Redis + PostgreSQL (reference)" "$TIERED_BASE"

log "$BENCH_NAME: killing redis-server (pid $REDIS_A_PID) with SIGKILL"
stop_pid "$REDIS_A_PID" KILL 2>/dev/null  # (no "Killed" job notice from bash)
dead_probes=()
for (( i = 1; i <= 20; i++ )); do
  dead_probes+=("$(timed_get "$TIERED_BASE" "$READ_ID")")
  if breaker_opened "$TIERED_LOG"; then break; fi
  sleep 0.05
done
if ! breaker_opened "$TIERED_LOG"; then
  problems+=("(b) the Redis breaker did not open after ${#dead_probes[@]} requests (log: $TIERED_LOG)")
fi
measure b "Redis dead, breaker open" "$TIERED_BASE"
if grep -q 'half-open' "$TIERED_LOG"; then
  problems+=("(b) the Redis breaker half-opened during the run, although Redis stayed dead (log: $TIERED_LOG)")
fi
stop_pid "$TIERED_PID"

# --- (c): PostgreSQL only -----------------------------------------------------------

start_progressd postgres DATABASE_URL="$DATABASE_URL" PROGRESS_LOG_FORMAT=json
PG_PID="$SERVER_PID"; PG_BASE="$SERVER_BASE"
wait_get_200 "$PG_BASE" "$READ_ID" || die "(c) GET /progress/$READ_ID did not answer 200 within 15 s (log: $SERVER_LOG)"
measure c "PostgreSQL only (no REDIS_URL)" "$PG_BASE"
stop_pid "$PG_PID"

# --- (d): Redis black-holed ---------------------------------------------------------

start_redis d
PROXY_PORT="$(free_port)"
python3 -u "$BENCH_DIR/blackhole.py" "$PROXY_PORT" 127.0.0.1 "$REDIS_PORT" >"$WORK/blackhole.log" 2>&1 &
PROXY_PID=$!
register_pid "$PROXY_PID" "blackhole proxy"
for _ in $(seq 1 50); do grep -q '^listening' "$WORK/blackhole.log" && break; sleep 0.1; done
grep -q '^listening' "$WORK/blackhole.log" || die "bench/blackhole.py did not start (log: $WORK/blackhole.log)"
start_progressd blackhole REDIS_URL="redis://127.0.0.1:$PROXY_PORT" DATABASE_URL="$DATABASE_URL" \
  PROGRESS_KEY_PREFIX="$PREFIX" PROGRESS_LOG_FORMAT=json
BH_PID="$SERVER_PID"; BH_BASE="$SERVER_BASE"; BH_LOG="$SERVER_LOG"
wait_get_200 "$BH_BASE" "$READ_ID" || die "(d) GET /progress/$READ_ID did not answer 200 within 15 s (log: $BH_LOG)"
# Records never read through this instance, so its read cache cannot answer
# for them: each first GET has to ask Redis.
for (( i = 0; i < PROBES; i++ )); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT "${json[@]}" --data-binary "@$RECORD_JSON" "$BH_BASE/progress/degraded-probe-$i")"
  [[ "$code" == 201 ]] || die "(d) seeding PUT /progress/degraded-probe-$i answered $code (log: $BH_LOG)"
done
[[ "$(redis-cli -p "$REDIS_PORT" EXISTS "${PREFIX}progress:degraded-probe-0")" == 1 ]] || \
  problems+=("(d) the probe records did not reach Redis through the proxy")
log "$BENCH_NAME: black-holing Redis (proxy pid $PROXY_PID)"
kill -USR1 "$PROXY_PID"
for _ in $(seq 1 20); do grep -q '^blackhole on' "$WORK/blackhole.log" && break; sleep 0.05; done
bh_probes=()
bh_opened_at=""
for (( i = 0; i < PROBES; i++ )); do
  bh_probes+=("$(timed_get "$BH_BASE" "degraded-probe-$i")")
  if [[ -z "$bh_opened_at" ]] && breaker_opened "$BH_LOG"; then bh_opened_at=$(( i + 1 )); fi
done
[[ -n "$bh_opened_at" ]] || problems+=("(d) the Redis breaker did not open within $PROBES requests (log: $BH_LOG)")
measure d "Redis black-holed, breaker open" "$BH_BASE"
stop_pid "$BH_PID"

# --- report -----------------------------------------------------------------------------

ms() { awk -v u="$1" 'BEGIN { if (u == "") print "-"; else printf "%.2f", u / 1000 }'; }

echo "GET /progress/{id} (${THREADS} threads, ${CONNECTIONS} connections, ${DURATION}; latencies in ms)"
printf '%-36s %11s %8s %8s %8s %8s %10s\n' "configuration" "requests/s" "p50" "p99" "p99.9" "max" "bytes/req"
printf '%-36s %11s %8s %8s %8s %8s %10s\n' "------------------------------------" "----------" "------" "------" "------" "------" "---------"
for key in a b c d; do
  if [[ -z "${R[$key.requests]:-}" ]]; then printf '%-36s %11s\n' "($key) ?" "(no result)"; continue; fi
  printf '%-36s %11.0f %8s %8s %8s %8s %10d\n' "($key) ${R[$key.label]}" "${R[$key.rps]}" \
    "$(ms "${R[$key.p50_us]}")" "$(ms "${R[$key.p99_us]}")" "$(ms "${R[$key.p999_us]}")" "$(ms "${R[$key.max_us]}")" "${R[$key.bpr]}"
done
echo

if [[ -n "${R[b.p50_us]:-}" && -n "${R[c.p50_us]:-}" ]]; then
  diff_us=$(( R[b.p50_us] - R[c.p50_us] ))
  verdict="PASS"
  awk -v d="$diff_us" -v t="$TARGET_MS" 'BEGIN { if (d < 0) d = -d; exit !(d <= t * 1000) }' || verdict="MISSED"
  echo "p50 (b) - (c) = $(ms "$diff_us") ms   (target: within ${TARGET_MS} ms at p50): ${verdict}"
  echo "p99 (b) - (c) = $(ms $(( R[b.p99_us] - R[c.p99_us] ))) ms, p99.9 (b) - (c) = $(ms $(( R[b.p999_us] - R[c.p999_us] ))) ms (no target)"
fi
echo

echo "(b) after SIGKILL of Redis: sequential GETs of ${READ_ID} until the breaker opened"
i=0
for p in "${dead_probes[@]}"; do
  i=$((i + 1))
  printf '    #%-2d %s  %8s ms%s\n' "$i" "${p% *}" "${p#* }" "$( (( i == ${#dead_probes[@]} )) && breaker_opened "$TIERED_LOG" && echo '  <- breaker open after this one')"
done
echo

echo "(d) after black-holing Redis: sequential GETs of records not read before through this instance"
i=0; slow_over=0
for p in "${bh_probes[@]}"; do
  i=$((i + 1))
  printf '    #%-2d %s  %8s ms%s\n' "$i" "${p% *}" "${p#* }" "$( [[ "$i" == "$bh_opened_at" ]] && echo '  <- breaker open after this one')"
  [[ "${p% *}" == 200 ]] || problems+=("(d) probe #$i answered ${p% *}")
  if awk -v m="${p#* }" -v t="$REDIS_TIMEOUT_MS" 'BEGIN { exit !(m + 0 > t + 250) }'; then slow_over=$((slow_over + 1)); fi
done
echo "    each should take at most PROGRESS_REDIS_TIMEOUT_MS (${REDIS_TIMEOUT_MS} ms) plus a PostgreSQL read until the breaker opens"
echo "    (after ${BREAKER_FAILURES} consecutive failures), then about the (c) latency; over ${REDIS_TIMEOUT_MS} + 250 ms: ${slow_over}"
(( slow_over == 0 )) || problems+=("(d) $slow_over requests took longer than the Redis timeout + 250 ms")

if (( ${#problems[@]} > 0 )); then
  echo
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  echo "  (wrk output and logs: $WORK)"
  exit 1
fi
exit 0
