#!/usr/bin/env bash
# bench/cleanup.sh: what POST /admin/cleanup costs the live traffic while it
# purges a large backlog of expired PostgreSQL rows.
# See bench/README.md ("cleanup.sh") for what is measured and how to read it.
#
# On a new database: CLEANUP_ROWS expired rows inserted with SQL, CLEANUP_LIVE
# live records created through the API (PUT). Then, with the same load before
# and during the cleanup:
#   GET    wrk -t1 -c8 --latency, round-robin over the live records;
#   PATCH  sequential curl PATCHes to live records, each one timed.
# "before" is CLEANUP_BASELINE seconds of that load without cleanup; "during"
# runs from just before POST /admin/cleanup to its answer.
#
# Environment (all optional):
#   CLEANUP_ROWS       expired rows inserted (default 1000000)
#   CLEANUP_LIVE       live records created with PUT (default 1000)
#   CLEANUP_BASELINE   seconds of load measured before the cleanup (default 5)
#   CLEANUP_PATCH_MS   PATCH threshold reported on (default 100)
#   BENCH_SKIP_BUILD   1: never build (default: build only when the binary is
#                      missing or older than the sources)
#   BENCH_LOG_LEVEL    server log level (default warn)
#   BENCH_PG_URL       PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL          Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when the cleanup answered 200 and purged every expired row
# and every GET/PATCH answered 2xx; 1 otherwise; 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=cleanup
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

ROWS="${CLEANUP_ROWS:-1000000}"
LIVE="${CLEANUP_LIVE:-1000}"
BASELINE="${CLEANUP_BASELINE:-5}"
PATCH_MS="${CLEANUP_PATCH_MS:-100}"
ADMIN_TOKEN=bench-admin
require_count "$ROWS" CLEANUP_ROWS
require_count "$LIVE" CLEANUP_LIVE
require_count "$BASELINE" CLEANUP_BASELINE

need_tools curl awk psql python3 wrk redis-cli
problems=()

# Background loads started by this script; stopped (by PID) before the
# common trap stops the server.
WRK_PID=""
PATCH_PID=""
bench_cleanup_extra() {
  [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID" INT
  [[ -n "$PATCH_PID" ]] && { touch "$WORK/patch.stop"; stop_pid "$PATCH_PID"; }
  return 0
}

echo "== progressd POST /admin/cleanup under load =="
print_machine
echo "rows:        ${ROWS} expired rows (SQL), ${LIVE} live records (PUT)"
echo

# --- build only when needed ------------------------------------------------------

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  if [[ ! -x "$BIN" ]] || [[ -n "$(find "$ROOT/src" "$ROOT/migrations" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
                                       "$ROOT/build.rs" -newer "$BIN" -print -quit 2>/dev/null)" ]]; then
    log "$BENCH_NAME: the release binary is missing or older than the sources: cargo build --release --locked"
    need_tools cargo
    (cd "$ROOT" && cargo build --release --locked) >&2 || die "the release build failed"
  else
    log "$BENCH_NAME: $BIN is up to date; not building"
  fi
fi
[[ -x "$BIN" ]] || die "$BIN does not exist"

# --- database, server ------------------------------------------------------------

DB="progressd_cleanup_${RUN_ID//-/_}"
PREFIX="cleanup-${RUN_ID}:"
create_database "$DB"
REDIS_PREFIXES+=("$PREFIX")
echo "database:    $DB"
echo "redis:       ${SHARED_REDIS_URL%%@*}, key prefix ${PREFIX}"

start_progressd main REDIS_URL="$SHARED_REDIS_URL" PROGRESS_KEY_PREFIX="$PREFIX" \
  DATABASE_URL="$PG_SERVER_URL/$DB" PROGRESS_ADMIN_TOKEN="$ADMIN_TOKEN" \
  PROGRESS_CLEANUP_INTERVAL_SECONDS=100000
BASE="$SERVER_BASE"
echo "progressd:   pid $SERVER_PID on $BASE (log $SERVER_LOG)"

# Migrated once a PUT of a new id reaches table progress (the create is
# synchronous); at most 30 s.
migrated=0
for i in $(seq 1 300); do
  curl -s -o /dev/null --max-time 2 -X PUT -H 'Content-Type: application/json' \
    --data-binary '{"status":"running"}' "$BASE/progress/cleanup-probe-$i" || true
  if [[ "$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE id = 'cleanup-probe-$i'" 2>/dev/null || true)" == 1 ]]; then
    migrated=1
    break
  fi
  sleep 0.1
done
(( migrated )) || die "no PUT reached table progress within 30 s (log: $SERVER_LOG)"

# --- data ----------------------------------------------------------------------------

t0=$(now_us)
psql_db "$DB" -c "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
  SELECT 'old-'||g, 1, 'completed', now()-interval '2 days', now()-interval '2 days', now()-interval '1 day', '\\x7b7d'::bytea
  FROM generate_series(1, $ROWS) g" >/dev/null || die "the INSERT of expired rows failed"
psql_db "$DB" -c "ANALYZE progress" >/dev/null
insert_ms=$(( ($(now_us) - t0) / 1000 ))
inserted="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE id LIKE 'old-%'")"

# Live records through the API: 8 curls at a time.
export BASE
seq 0 $(( LIVE - 1 )) | xargs -P 8 -I{} curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' -X PUT \
  -H 'Content-Type: application/json' --data-binary '{"status":"running","current":0,"total":100}' \
  "$BASE/progress/live-{}" >"$WORK/put.codes" || true
put_ok="$(grep -c '^2' "$WORK/put.codes" || true)"
live_pg="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE id LIKE 'live-%'")"
(( put_ok == LIVE )) || problems+=("only ${put_ok} of ${LIVE} live PUTs answered 2xx")

echo "inserted:    ${inserted} expired rows in ${insert_ms} ms (INSERT + ANALYZE)"
echo "live:        ${put_ok}/${LIVE} PUTs answered 2xx; ${live_pg} live rows in PostgreSQL"
echo "table:       $(psql_db "$DB" -c "SELECT pg_size_pretty(pg_total_relation_size('progress'))") (with indexes)"
echo

# --- load ----------------------------------------------------------------------------

cat >"$WORK/get.lua" <<EOF
local n, i = ${LIVE}, -1
request = function()
  i = (i + 1) % n
  return wrk.format("GET", "/progress/live-" .. i)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d"
      .. " connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.requests, summary.duration, math.floor(latency:percentile(50)),
    math.floor(latency:percentile(99)), math.floor(latency.max),
    e.connect, e.read, e.write, e.timeout, e.status))
end
EOF

# start_load PHASE: wrk (until SIGINT) and the PATCH loop (until PHASE.stop).
start_load() {
  local phase="$1"
  wrk -t1 -c8 -d3600s --latency -s "$WORK/get.lua" "$BASE" >"$WORK/wrk-$phase.out" 2>&1 &
  WRK_PID=$!
  register_pid "$WRK_PID" "wrk ($phase)"
  rm -f "$WORK/patch.stop"
  (
    trap - EXIT INT TERM ERR
    set +e
    k=0
    while [[ ! -e "$WORK/patch.stop" ]]; do
      id="live-$(( (k * 7) % LIVE ))"
      r="$(curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' -X PATCH \
             -H 'Content-Type: application/json' --data-binary "{\"current\":$(( k % 100 ))}" \
             "$BASE/progress/$id")" || r="000 ${r#* }"
      echo "$(now_us) $r" >>"$WORK/patch-$phase.txt"
      k=$(( k + 1 ))
    done
  ) &
  PATCH_PID=$!
  register_pid "$PATCH_PID" "PATCH loop ($phase)"
}

stop_load() {
  touch "$WORK/patch.stop"
  stop_pid "$WRK_PID" INT; WRK_PID=""
  local _
  for _ in $(seq 1 120); do kill -0 "$PATCH_PID" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$PATCH_PID"; PATCH_PID=""
}

wrk_field() { grep '^BENCH_RESULT' "$WORK/wrk-$1.out" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
ms() { awk -v u="${1:-0}" 'BEGIN { printf "%.2f", u / 1000 }'; }

# patch_stats PHASE: "count non2xx max_ms over_threshold"
patch_stats() {
  awk -v lim="$PATCH_MS" '{ n++; if ($2 !~ /^2/) bad++; t = $3 * 1000; if (t > max) max = t; if (t > lim) over++ }
    END { printf "%d %d %.1f %d\n", n, bad, max, over }' "$WORK/patch-$1.txt" 2>/dev/null || echo "0 0 0 0"
}

# --- before ----------------------------------------------------------------------------

log "$BENCH_NAME: baseline: ${BASELINE} s of GET + PATCH load, no cleanup"
start_load before
sleep "$BASELINE"
stop_load

# --- during ------------------------------------------------------------------------------

log "$BENCH_NAME: POST /admin/cleanup under the same load"
start_load during
sleep 0.5
c0=$(now_us)
resp="$(curl -s --max-time 900 -o "$WORK/cleanup.json" -w '%{http_code}' -X POST \
          -H "Authorization: Bearer $ADMIN_TOKEN" "$BASE/admin/cleanup")" || resp="000"
c1=$(now_us)
# The work runs to completion even if the request timed out: wait for the
# expired rows to be gone (or to stop going) so the load covers all of it.
if [[ "$resp" != 200 ]]; then
  log "$BENCH_NAME: cleanup answered $resp; waiting for the purge to finish"
  prev=-1
  while :; do
    left_now="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE expires_at <= now()")"
    [[ "$left_now" == 0 || "$left_now" == "$prev" ]] && break
    prev="$left_now"; sleep 2
  done
  c1=$(now_us)
fi
stop_load
cleanup_ms=$(( (c1 - c0) / 1000 ))

reported="$(sed -n 's/.*"postgres_expired_rows":\([0-9null]*\).*/\1/p' "$WORK/cleanup.json" 2>/dev/null || true)"
left_old="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE id LIKE 'old-%'")"
left_expired="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE expires_at <= now()")"
left_live="$(psql_db "$DB" -c "SELECT count(*) FROM progress WHERE id LIKE 'live-%'")"

[[ "$resp" == 200 ]] || problems+=("POST /admin/cleanup answered ${resp}: $(head -c 300 "$WORK/cleanup.json" 2>/dev/null)")
[[ "$left_expired" == 0 ]] || problems+=("${left_expired} expired rows left after the cleanup")
[[ "$left_live" == "$live_pg" ]] || problems+=("live rows went from ${live_pg} to ${left_live}")

# --- report --------------------------------------------------------------------------------

echo "cleanup:     HTTP ${resp} after ${cleanup_ms} ms (client side)"
echo "  response:  $(cat "$WORK/cleanup.json" 2>/dev/null)"
echo "  reported:  postgres_expired_rows = ${reported:-?} (inserted ${inserted})"
echo "  left:      ${left_old} old-* rows, ${left_expired} expired rows, ${left_live}/${live_pg} live rows"
echo
printf '%-34s %10s %9s %9s %9s %9s %8s\n' "GET /progress/{id} (wrk -t1 -c8)" requests "req/s" "p50 ms" "p99 ms" "max ms" errors
for phase in before during; do
  req="$(wrk_field "$phase" requests)"; dur="$(wrk_field "$phase" duration_us)"
  errs=0
  for f in connect read write timeout status; do v="$(wrk_field "$phase" "$f" || true)"; errs=$(( errs + ${v:-0} )); done
  (( errs == 0 )) || problems+=("GET ($phase): ${errs} errors or non-2xx answers")
  printf '%-34s %10s %9s %9s %9s %9s %8s\n' "  $phase cleanup" "${req:-?}" \
    "$(awk -v r="${req:-0}" -v d="${dur:-1}" 'BEGIN { printf "%.0f", r / (d / 1e6) }')" \
    "$(ms "$(wrk_field "$phase" p50_us)")" "$(ms "$(wrk_field "$phase" p99_us)")" "$(ms "$(wrk_field "$phase" max_us)")" "$errs"
done
echo
printf '%-34s %10s %9s %14s %8s\n' "PATCH /progress/{id} (sequential)" requests "max ms" "> ${PATCH_MS} ms" non-2xx
for phase in before during; do
  read -r n bad max over <<<"$(patch_stats "$phase")"
  (( bad == 0 )) || problems+=("PATCH ($phase): ${bad} non-2xx answers")
  printf '%-34s %10s %9s %14s %8s\n' "  $phase cleanup" "$n" "$max" "$over" "$bad"
done
read -r _ _ pmax pover <<<"$(patch_stats during)"
echo
if (( pover > 0 )); then
  echo "PATCH blocked > ${PATCH_MS} ms during the cleanup: YES (${pover} times, longest ${pmax} ms)"
else
  echo "PATCH blocked > ${PATCH_MS} ms during the cleanup: no (longest ${pmax} ms)"
fi

if (( ${#problems[@]} > 0 )); then
  echo
  echo "PROBLEMS:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
exit 0
