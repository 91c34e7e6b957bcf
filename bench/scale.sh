#!/usr/bin/env bash
# bench/scale.sh: do GET, listing, cleanup and start-up stay flat from 10,000
# to 1,000,000 records in Redis and PostgreSQL?
# See bench/README.md ("scale.sh") for what is measured and how to read it.
#
# The records are loaded directly, not through HTTP, in exactly the form
# progressd writes them: four template records (completed, running, failed,
# pending; 5 children, 5 stages where running ever ran) are written through
# the API, read back from Redis, and copied with their id and creation time
# changed: into Redis with redis-cli --pipe (the record key with its TTL and
# its members in the listing indexes, what the write script does), into
# PostgreSQL with one INSERT … SELECT (the same bytes in `record`, the same
# columns the write-behind fills). Record i is created i ms before the first,
# so the listing is newest first from record 0; 70 % are completed, 20 %
# running, 5 % failed, 5 % pending.
#
# The sizes grow in place (SCALE_SIZES, ascending): load up to the first size,
# measure, load up to the next one, measure again. At each size:
#   start-up   SCALE_STARTS (5) times: a fresh progressd (Redis + PostgreSQL,
#              default settings plus the admin token), the time from exec to
#              the first /readyz 200 with "status":"ok" (both tiers up,
#              migrations checked);
#   GET        wrk, random ids over all records: Redis + PostgreSQL with the
#              read cache off (every GET reads Redis), and PostgreSQL alone;
#   listing    wrk, GET /progress?limit=50, ?status=running&limit=50, and
#              ?limit=50&cursor=<the record halfway down the set>, on both;
#   cleanup    SCALE_EXPIRED expired records added to each tier (Redis: index
#              members whose key is gone, as expired keys leave them;
#              PostgreSQL: rows past expires_at), then POST /admin/cleanup,
#              timed, and its counts checked.
# At the end the keys are deleted (SCAN + UNLINK in batches of 1000) and Redis's
# INFO memory is shown before the load, at each size and after the delete.
#
# Environment (all optional):
#   SCALE_SIZES       record counts, ascending (default "10000 1000000")
#   SCALE_DURATION    seconds of each wrk run (default 5)
#   SCALE_STARTS      start-ups timed per size (default 5)
#   SCALE_EXPIRED     expired records per tier for the cleanup (default 1000)
#   SCALE_REDIS_URL   Redis to load (default redis://127.0.0.1:6379/9: the
#                     shared server, database 9, so that SCANs of other users
#                     of database 0 do not walk a million extra keys)
#   BENCH_SKIP_BUILD, BENCH_LOG_LEVEL, BENCH_PG_URL as for the other scripts
#
# Exit status: 0 when every request answered 2xx and the checks held; 1
# otherwise (the table is still printed); 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=scale
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

read -r -a SIZES <<<"${SCALE_SIZES:-10000 1000000}"
DURATION="${SCALE_DURATION:-5}"
STARTS="${SCALE_STARTS:-5}"
EXPIRED="${SCALE_EXPIRED:-1000}"
SCALE_REDIS_URL="${SCALE_REDIS_URL:-redis://127.0.0.1:6379/9}"
ADMIN_TOKEN=bench-admin
TTL_S=7200      # the loaded keys expire by themselves if this script is killed
prev=0
for n in "${SIZES[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] && (( n > prev )) || die "SCALE_SIZES must be ascending positive whole numbers"
  prev="$n"
done
for v in DURATION STARTS EXPIRED; do require_count "${!v}" "SCALE_$v"; done
need_tools curl awk psql python3 wrk redis-cli
# The loader compresses record bodies as progressd does (LZ4 blocks).
if ! python3 -c 'import lz4.block' 2>/dev/null; then
  log "$BENCH_NAME: installing the lz4 package for python3 (pip --user)"
  python3 -m pip install --quiet --user lz4 >/dev/null 2>&1 || die "python3's lz4 package is missing and pip could not install it"
fi
rds() { redis-cli -u "$SCALE_REDIS_URL" --no-auth-warning "$@"; }
[[ "$(rds PING 2>/dev/null || true)" == PONG ]] || die "Redis at ${SCALE_REDIS_URL%%@*} does not answer PING"
problems=()

PREFIX="bench-scale-${RUN_ID}:"
TPL_PREFIX="bench-scale-tpl-${RUN_ID}:"
ID_PREFIX="scale-"
DB="progressd_scale_${RUN_ID//-/_}"
LOADER="$BENCH_DIR/scale_load.py"
WRK_PID=""

# --- Redis keys: SCAN + UNLINK in batches, ours only ------------------------------

unlink_prefix() {  # prefix: prints how many keys it unlinked
  python3 "$LOADER" unlink "$SCALE_REDIS_URL" "$1" 2>/dev/null || echo "?"
}
keys_left() { python3 "$LOADER" unlink "$SCALE_REDIS_URL" "$1" --count-only 2>/dev/null || echo "?"; }
bench_cleanup_extra() {
  [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID" INT
  unlink_prefix "$TPL_PREFIX" >/dev/null
  unlink_prefix "$PREFIX" >/dev/null
  local left
  left="$(keys_left "$PREFIX")"
  [[ "$left" == 0 ]] || log "$BENCH_NAME: WARNING: ${left} keys under ${PREFIX} left in Redis (records expire within ${TTL_S} s, the index keys too)"
  return 0
}

mem_field() { rds INFO memory | tr -d '\r' | awk -F: -v k="$1" '$1 == k { print $2 }'; }
mem_line() { echo "used_memory $(mem_field used_memory_human), rss $(mem_field used_memory_rss_human), keys in db $(rds DBSIZE)"; }

echo "== progressd at scale: GET, listing, cleanup, start-up from ${SIZES[0]} to ${SIZES[-1]} records =="
print_machine
echo "redis:       ${SCALE_REDIS_URL%%@*} (Redis $(rds INFO server | tr -d '\r' | sed -n 's/^redis_version://p')), key prefix ${PREFIX}"
echo "database:    ${DB}"
echo "wrk:         ${DURATION} s per run; GET -t2 -c16, listing -t1 -c4"
echo

build_release

MEM_BEFORE="$(mem_line)"
MEM_BEFORE_BYTES="$(mem_field used_memory)"
create_database "$DB"
env "${UNSET_ENV[@]}" DATABASE_URL="$PG_SERVER_URL/$DB" "$BIN" migrate >"$WORK/migrate.log" 2>&1 \
  || die "progressd migrate failed: $(tail -n 3 "$WORK/migrate.log")"

# --- templates: four records written through the API ---------------------------------

start_progressd templates REDIS_URL="$SCALE_REDIS_URL" PROGRESS_KEY_PREFIX="$TPL_PREFIX"
TPL_PID="$SERVER_PID"
json=(-H 'Content-Type: application/json')
put() { curl -s -o /dev/null -w '%{http_code}' -X "$1" "${json[@]}" --data-binary "$3" "$SERVER_BASE/progress/$2"; }
BODY="$(tr -d '\n' <"$BENCH_DIR/record.json")"
for status in completed running failed pending; do
  id="tpl-$status"
  if [[ "$status" == pending ]]; then
    code="$(put PUT "$id" "${BODY/\"status\": \"running\"/\"status\": \"pending\"}")"
  else
    code="$(put PUT "$id" "$BODY")"
    for stage in mux package upload notify; do code+=" $(put PATCH "$id" "{\"stage\":\"$stage\"}")"; done
    case "$status" in
      completed) code+=" $(put PATCH "$id" '{"status":"completed","current":480,"result":{"url":"https://cdn.example.com/v/clip-8812/master.m3u8","bytes":734003200}}')" ;;
      failed)    code+=" $(put PATCH "$id" '{"status":"failed","error":{"code":"transcode_failed","message":"ffmpeg exited with status 1 at segment 212"}}')" ;;
    esac
  fi
  [[ "$code" =~ ^201( 200)*$ ]] || die "writing template $id answered $code"
  rds GET "${TPL_PREFIX}progress:$id" | python3 "$LOADER" template "$WORK/templates.jsonl" \
    || die "could not read template $id back from Redis"
done
stop_pid "$TPL_PID"
unlink_prefix "$TPL_PREFIX" >/dev/null
log "$BENCH_NAME: templates: $(python3 -c 'import json,sys; print(", ".join("%s %d bytes" % (t["status"], len(t["template"])) for t in map(json.loads, open(sys.argv[1]))))' "$WORK/templates.jsonl")"

NOW_MS=$(( $(now_us) / 1000 ))
BASE_MS=$(( NOW_MS - 1000 ))              # record i: created BASE_MS - i
X_MS=$(( NOW_MS + TTL_S * 1000 ))         # every loaded record expires then
python3 "$LOADER" sql "$WORK/templates.jsonl" "$X_MS" >"$WORK/templates.sql"

# ts_sql EXPR: the timestamptz of EXPR milliseconds since the epoch, exactly.
ts_sql() { echo "(to_timestamp(floor(($1) / 1000)) + (($1) % 1000) * interval '1 millisecond')"; }

# load_range FROM TO: records FROM..TO-1 into Redis and PostgreSQL.
load_range() {
  local from="$1" to="$2" t0 out
  t0=$(now_us)
  out="$(python3 "$LOADER" redis "$WORK/templates.jsonl" "$PREFIX" "$ID_PREFIX" "$from" "$to" "$BASE_MS" "$X_MS" \
           | rds --pipe 2>&1)" || die "redis-cli --pipe failed: $out"
  grep -q 'errors: 0,' <<<"$out" || die "loading Redis: $(tail -n 2 <<<"$out")"
  # As an instance does after its first cleanup: the records are indexed already.
  rds SET "${PREFIX}progressd:index-backfilled" 1 >/dev/null
  local key
  for key in index expiry index:completed index:running index:failed index:pending index-backfilled; do
    rds EXPIRE "${PREFIX}progressd:$key" "$TTL_S" >/dev/null  # only in case this script is killed
  done
  local redis_ms=$(( ($(now_us) - t0) / 1000 ))
  t0=$(now_us)
  psql_db "$DB" >/dev/null <<SQL || die "loading PostgreSQL failed"
CREATE TEMP TABLE tpl (status text, version bigint, updated_at timestamptz, template text);
INSERT INTO tpl VALUES $(cat "$WORK/templates.sql");
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
SELECT '${ID_PREFIX}' || g, t.version, t.status, c.ts, t.updated_at, $(ts_sql "$X_MS"),
       convert_to(replace(replace(replace(t.template,
         '@ID@', '${ID_PREFIX}' || g), '@C@', (${BASE_MS} - g)::text),
         '@CREATED@', to_char(c.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')), 'UTF8')
FROM generate_series(${from}, ${to} - 1) AS g
CROSS JOIN LATERAL (SELECT $(ts_sql "${BASE_MS} - g") AS ts) c
JOIN tpl t ON t.status = (ARRAY['completed','completed','completed','completed','completed','completed','completed',
                                'completed','completed','completed','completed','completed','completed','completed',
                                'running','running','running','running','failed','pending'])[g % 20 + 1];
SQL
  # Like after any bulk load: without VACUUM ANALYZE, autovacuum would start
  # on the new rows a minute later, during the measurements; CHECKPOINT
  # writes the load's dirty pages out now rather than during them.
  psql_db "$DB" -c "VACUUM ANALYZE progress" >/dev/null || die "VACUUM ANALYZE failed"
  psql_db "$DB" -c "CHECKPOINT" >/dev/null 2>&1 || log "$BENCH_NAME: CHECKPOINT failed (needs superuser); continuing"
  local pg_ms=$(( ($(now_us) - t0) / 1000 ))
  log "$BENCH_NAME: loaded records ${from}..$(( to - 1 )): Redis ${redis_ms} ms, PostgreSQL ${pg_ms} ms (with VACUUM ANALYZE, CHECKPOINT)"
  LOAD_NOTE+=("$(printf '%s..%s: Redis %.1f s, PostgreSQL %.1f s (with VACUUM ANALYZE, CHECKPOINT);' "$from" "$(( to - 1 ))" \
    "$(awk -v m="$redis_ms" 'BEGIN { print m / 1000 }')" "$(awk -v m="$pg_ms" 'BEGIN { print m / 1000 }')")")
}
LOAD_NOTE=()

# The loaded bytes must be what progressd serves: compare one record of each
# status through the API with PostgreSQL's copy and the template's shape.
check_loaded() {  # base n
  local i id got pg
  for i in 0 14 18 19 $(( $2 - 1 )); do
    id="${ID_PREFIX}$i"
    got="$(curl -s -o "$WORK/check.json" -w '%{http_code}' "$1/progress/$id")"
    if [[ "$got" != 200 ]]; then problems+=("GET /progress/$id answered $got after loading"); continue; fi
    pg="$(psql_db "$DB" -c "SELECT md5(record) FROM progress WHERE id = '$id'")"
    [[ "$pg" == "$(rds GET "${PREFIX}progress:$id" | python3 "$LOADER" plain | md5sum | cut -d' ' -f1)" ]] \
      || problems+=("record $id: PostgreSQL's bytes differ from Redis's")
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["id"] == sys.argv[2], r["id"]' "$WORK/check.json" "$id" \
      || problems+=("GET /progress/$id: not the record $id")
  done
}

# --- measuring ---------------------------------------------------------------------------

declare -A R=()     # "<size>.<row>.<field>"
ROWS=()             # row keys in print order
declare -A ROW_LABEL=()

add_row() { [[ -n "${ROW_LABEL[$1]:-}" ]] || ROWS+=("$1"); ROW_LABEL[$1]="$2"; }

cat >"$WORK/get.lua" <<'EOF'
local dir = os.getenv("BENCH_DIR")
package.path = dir .. "/?.lua;" .. package.path
require("report")
local n, prefix = tonumber(os.getenv("SCALE_N")), os.getenv("SCALE_ID_PREFIX")
local threads = 0
function setup(thread) thread:set("thread_no", threads); threads = threads + 1 end
function init(args) math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919) end
function request() return wrk.format("GET", "/progress/" .. prefix .. math.random(0, n - 1)) end
EOF
export BENCH_DIR SCALE_ID_PREFIX="$ID_PREFIX"

# run_wrk SIZE ROW THREADS CONNECTIONS URL [wrk args…]
run_wrk() {
  local size="$1" row="$2" t="$3" c="$4" url="$5" out line kv
  shift 5
  out="$WORK/wrk-$size-$row.txt"
  SCALE_N="$size" wrk -t "$t" -c "$c" -d "${DURATION}s" --latency --timeout 5s "$@" "$url" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || problems+=("$row at $size: wrk failed: $(tail -n 2 "$out" | tr '\n' ' ')")
  WRK_PID=""
  line="$(grep -m1 '^BENCH_RESULT ' "$out" || true)"
  if [[ -z "$line" ]]; then problems+=("$row at $size: wrk printed no result ($out)"); return; fi
  for kv in ${line#BENCH_RESULT }; do R[$size.$row.${kv%%=*}]="${kv#*=}"; done
  local errs=$(( R[$size.$row.connect] + R[$size.$row.read] + R[$size.$row.write] + R[$size.$row.timeout] + R[$size.$row.status] ))
  (( errs == 0 )) || problems+=("$row at $size: ${errs} socket errors or answers >= 400")
  (( R[$size.$row.requests] > 0 )) || problems+=("$row at $size: no request completed")
}

b64url() { printf '%s' "$1" | base64 -w0 | tr '+/' '-_' | tr -d '='; }

# check_page BASE QUERY WANT_STATUS: one page through curl: 50 items, newest
# first, of the status asked for.
check_page() {
  local got
  got="$(curl -s -H "Authorization: Bearer $ADMIN_TOKEN" -o "$WORK/page.json" -w '%{http_code}' "$1/progress?$2")"
  [[ "$got" == 200 ]] || { problems+=("GET /progress?$2 answered $got: $(head -c 200 "$WORK/page.json")"); return; }
  python3 - "$WORK/page.json" "$3" <<'EOF' || problems+=("GET /progress?$2: $(cat "$WORK/page.check")")
import json, sys
page = json.load(open(sys.argv[1]))
items = page["items"]
msg = None
if len(items) != 50: msg = f"{len(items)} items, expected 50"
elif sys.argv[2] and any(i["status"] != sys.argv[2] for i in items): msg = "an item of another status"
elif not page.get("next_cursor"): msg = "no next_cursor"
elif [i["created_at"] for i in items] != sorted((i["created_at"] for i in items), reverse=True): msg = "not newest first"
if msg:
    open(sys.argv[1].replace("page.json", "page.check"), "w").write(msg)
    sys.exit(1)
EOF
}

measure() {  # size
  local n="$1" k t0 t_ok code body base cursor deep
  log "$BENCH_NAME: measuring at $n records (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  R[$n.load]="$(cut -d' ' -f1-3 /proc/loadavg) ($(ps -eo comm= | grep -cE '^(cargo|rustc|sse_load|perf|addr2line)$' || true) cargo/rustc/perf/sse_load processes)"

  # Start-up: exec to the first /readyz 200 with status ok, SCALE_STARTS times.
  local starts=()
  for k in $(seq 1 "$STARTS"); do
    local port; port="$(free_port)"
    t0=$(now_us)
    ( cd "$WORK" && exec env "${UNSET_ENV[@]}" PORT="$port" PROGRESS_HOST=127.0.0.1 PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" \
        REDIS_URL="$SCALE_REDIS_URL" PROGRESS_KEY_PREFIX="$PREFIX" DATABASE_URL="$PG_SERVER_URL/$DB" \
        PROGRESS_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN" ) >>"$WORK/server-startup.log" 2>&1 &
    local pid=$!
    register_pid "$pid" "progressd (start-up $k)"
    t_ok=""
    for _ in $(seq 1 1500); do
      kill -0 "$pid" 2>/dev/null || break
      body="$(curl -s --max-time 1 -w ' %{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null || true)"
      if [[ "$body" == *'"status":"ok"'*' 200' ]]; then t_ok=$(now_us); break; fi
      sleep 0.01
    done
    stop_pid "$pid"
    if [[ -z "$t_ok" ]]; then problems+=("start-up $k at $n: no /readyz 200 ok within 15 s"); continue; fi
    starts+=("$(( (t_ok - t0) / 1000 ))")
  done
  if (( ${#starts[@]} > 0 )); then
    R[$n.startup.all]="${starts[*]}"
    R[$n.startup.median]="$(printf '%s\n' "${starts[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
    R[$n.startup.max]="$(printf '%s\n' "${starts[@]}" | sort -n | tail -n 1)"
  fi

  # The instances measured: Redis + PostgreSQL with the read cache off, and
  # PostgreSQL alone. Background cleanup off: only the script's call cleans.
  start_progressd "tiered-$n" REDIS_URL="$SCALE_REDIS_URL" PROGRESS_KEY_PREFIX="$PREFIX" DATABASE_URL="$PG_SERVER_URL/$DB" \
    PROGRESS_ADMIN_TOKEN="$ADMIN_TOKEN" PROGRESS_CACHE_MAX_AGE_MS=0 PROGRESS_CLEANUP_INTERVAL_SECONDS=100000
  local tiered_pid="$SERVER_PID" tiered="$SERVER_BASE"
  start_progressd "postgres-$n" DATABASE_URL="$PG_SERVER_URL/$DB" PROGRESS_ADMIN_TOKEN="$ADMIN_TOKEN" \
    PROGRESS_CLEANUP_INTERVAL_SECONDS=100000
  local pg_pid="$SERVER_PID" pg="$SERVER_BASE"
  for base in "$tiered" "$pg"; do  # both ready (PostgreSQL migrated check done)
    for _ in $(seq 1 300); do
      [[ "$(curl -s "$base/readyz")" == *'"status":"ok"'* ]] && break
      sleep 0.1
    done
  done
  check_loaded "$tiered" "$n"

  deep=$(( n / 2 ))
  cursor="$(b64url "1:$(( BASE_MS - deep )):${ID_PREFIX}${deep}")"
  local auth=(-H "Authorization: Bearer $ADMIN_TOKEN")
  for tier in redis postgres; do
    base="$tiered"; [[ "$tier" == postgres ]] && base="$pg"
    local label="Redis + PostgreSQL, cache off"; [[ "$tier" == postgres ]] && label="PostgreSQL only"
    add_row "get-$tier" "GET /progress/{random id} ($label)"
    run_wrk "$n" "get-$tier" 2 16 "$base" -s "$WORK/get.lua"
    check_page "$base" "limit=50" ""
    check_page "$base" "status=running&limit=50" running
    check_page "$base" "limit=50&cursor=$cursor" ""
    add_row "list-$tier" "GET /progress?limit=50 ($label)"
    run_wrk "$n" "list-$tier" 1 4 "$base/progress?limit=50" "${auth[@]}" -s "$BENCH_DIR/report.lua"
    add_row "list-status-$tier" "  ... &status=running ($label)"
    run_wrk "$n" "list-status-$tier" 1 4 "$base/progress?status=running&limit=50" "${auth[@]}" -s "$BENCH_DIR/report.lua"
    add_row "list-deep-$tier" "  ... &cursor=<record n/2> ($label)"
    run_wrk "$n" "list-deep-$tier" 1 4 "$base/progress?limit=50&cursor=$cursor" "${auth[@]}" -s "$BENCH_DIR/report.lua"
  done

  # Cleanup: EXPIRED expired records in each tier, then one POST /admin/cleanup.
  local gone="gone-$n-"
  python3 "$LOADER" gone "$PREFIX" "$gone" "$EXPIRED" completed "$(( BASE_MS - n - 10 ))" "$(( NOW_MS - 60000 ))" \
    | rds --pipe >/dev/null 2>&1 || problems+=("adding expired index members at $n failed")
  psql_db "$DB" -c "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
    SELECT '${gone}pg-' || g, 1, 'completed', now() - interval '2 hours', now() - interval '2 hours', now() - interval '1 hour', '\\x7b7d'::bytea
    FROM generate_series(1, ${EXPIRED}) g" >/dev/null || problems+=("inserting expired rows at $n failed")
  t0=$(now_us)
  code="$(curl -s --max-time 120 -o "$WORK/cleanup-$n.json" -w '%{http_code}' -X POST "${auth[@]}" "$tiered/admin/cleanup" || echo 000)"
  R[$n.cleanup.ms]="$(awk -v u="$(( $(now_us) - t0 ))" 'BEGIN { printf "%.1f", u / 1000 }')"
  R[$n.cleanup.body]="$(cat "$WORK/cleanup-$n.json")"
  [[ "$code" == 200 ]] || problems+=("POST /admin/cleanup at $n answered $code: ${R[$n.cleanup.body]}")
  [[ "${R[$n.cleanup.body]}" == *"\"postgres_expired_rows\":${EXPIRED}"* && "${R[$n.cleanup.body]}" == *"\"redis_orphaned_index_entries\":${EXPIRED}"* ]] \
    || problems+=("POST /admin/cleanup at $n: expected ${EXPIRED} expired rows and ${EXPIRED} index entries, got ${R[$n.cleanup.body]}")
  # A second cleanup right after: nothing to do.
  t0=$(now_us)
  curl -s --max-time 120 -o /dev/null -X POST "${auth[@]}" "$tiered/admin/cleanup" || true
  R[$n.cleanup2.ms]="$(awk -v u="$(( $(now_us) - t0 ))" 'BEGIN { printf "%.1f", u / 1000 }')"

  R[$n.mem]="$(mem_line)"
  R[$n.pgsize]="$(psql_db "$DB" -c "SELECT pg_size_pretty(pg_total_relation_size('progress'))")"
  R[$n.rss]="$(awk '$1 == "VmRSS:" { printf "%.1f", $2 / 1024 }' "/proc/$tiered_pid/status") / $(awk '$1 == "VmRSS:" { printf "%.1f", $2 / 1024 }' "/proc/$pg_pid/status")"
  stop_pid "$tiered_pid"
  stop_pid "$pg_pid"
}

loaded=0
for n in "${SIZES[@]}"; do
  load_range "$loaded" "$n"
  loaded="$n"
  measure "$n"
done

# --- delete, and see the memory come back ----------------------------------------------------

MEM_LOADED="$(mem_line)"
t0=$(now_us)
unlinked="$(unlink_prefix "$PREFIX")"
unlink_ms=$(( ($(now_us) - t0) / 1000 ))
for _ in $(seq 1 100); do  # UNLINK frees large values in a background thread
  [[ "$(rds INFO memory | tr -d '\r' | awk -F: '$1 == "lazyfree_pending_objects" { print $2 }')" == 0 ]] && break
  sleep 0.1
done
left="$(keys_left "$PREFIX")"
[[ "$left" == 0 ]] || problems+=("${left} keys under ${PREFIX} left after UNLINK")
MEM_DELETED="$(mem_line)"
MEM_DELETED_BYTES="$(mem_field used_memory)"
rds MEMORY PURGE >/dev/null 2>&1 || true  # jemalloc hands dirty pages back to the OS
sleep 1
MEM_PURGED="$(mem_line)"
freed_ok="$(awk -v a="$MEM_DELETED_BYTES" -v b="$MEM_BEFORE_BYTES" 'BEGIN { print (a - b < 50 * 1048576 ? "yes" : "NO") }')"
[[ "$freed_ok" == yes ]] || problems+=("used_memory after the delete is over 50 MB above its value before the load")

# --- table ------------------------------------------------------------------------------------

fmt_ms() { awk -v u="${1:-}" 'BEGIN { if (u == "") print "-"; else printf "%.2f", u / 1000 }'; }
echo
printf '%-58s' "measurement"
for n in "${SIZES[@]}"; do printf ' | %25s' "$(printf "%'d records" "$n")"; done
printf ' | %s\n' "p50 last/first"
printf '%-58s' ""
for n in "${SIZES[@]}"; do printf ' | %9s %7s %7s' "req/s" "p50 ms" "p99 ms"; done
printf ' |\n'
printf '%s\n' "$(printf '%.0s-' $(seq 1 $(( 61 + 28 * ${#SIZES[@]} + 16 ))))"
first="${SIZES[0]}"; last="${SIZES[-1]}"
for row in "${ROWS[@]}"; do
  printf '%-58s' "${ROW_LABEL[$row]}"
  for n in "${SIZES[@]}"; do
    printf ' | %9s %7s %7s' "$(printf '%.0f' "${R[$n.$row.rps]:-0}")" "$(fmt_ms "${R[$n.$row.p50_us]:-}")" "$(fmt_ms "${R[$n.$row.p99_us]:-}")"
  done
  printf ' | %s\n' "$(awk -v a="${R[$last.$row.p50_us]:-}" -v b="${R[$first.$row.p50_us]:-}" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }')"
done
printf '%-58s' "POST /admin/cleanup, ${EXPIRED} expired per tier (ms)"
for n in "${SIZES[@]}"; do printf ' | %25s' "${R[$n.cleanup.ms]:-}"; done
printf ' | %s\n' "$(awk -v a="${R[$last.cleanup.ms]:-}" -v b="${R[$first.cleanup.ms]:-}" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }')"
printf '%-58s' "  ... again, nothing expired (ms)"
for n in "${SIZES[@]}"; do printf ' | %25s' "${R[$n.cleanup2.ms]:-}"; done
printf ' |\n'
printf '%-58s' "start-up: exec -> /readyz 200 ok (ms, median; max)"
for n in "${SIZES[@]}"; do printf ' | %25s' "${R[$n.startup.median]:-?}; ${R[$n.startup.max]:-?}"; done
printf ' | %s\n' "$(awk -v a="${R[$last.startup.median]:-}" -v b="${R[$first.startup.median]:-}" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }')"
echo
echo "start-ups (ms):      $(for n in "${SIZES[@]}"; do printf '%s: %s   ' "$n" "${R[$n.startup.all]:-}"; done)"
echo "cleanup answers:     $(for n in "${SIZES[@]}"; do printf '%s: %s   ' "$n" "${R[$n.cleanup.body]:-}"; done)"
echo "progressd VmRSS MB:  $(for n in "${SIZES[@]}"; do printf '%s: %s   ' "$n" "${R[$n.rss]:-}"; done)(Redis+PostgreSQL instance / PostgreSQL-only instance, after its runs)"
echo "PostgreSQL table:    $(for n in "${SIZES[@]}"; do printf '%s: %s   ' "$n" "${R[$n.pgsize]:-}"; done)(with indexes)"
echo "loading:             ${LOAD_NOTE[*]}"
echo "load avg at start:   $(for n in "${SIZES[@]}"; do printf '%s: %s   ' "$n" "${R[$n.load]:-}"; done)"
echo
echo "Redis memory"
echo "  before the load:                  $MEM_BEFORE"
for n in "${SIZES[@]}"; do printf '  %-33s %s\n' "at $n records:" "${R[$n.mem]:-}"; done
echo "  after UNLINK of ${unlinked} keys ${PREFIX}* ($(awk -v m="$unlink_ms" 'BEGIN { printf "%.1f", m / 1000 }') s): $MEM_DELETED"
echo "  after MEMORY PURGE:               $MEM_PURGED"
echo "  used_memory back to within 50 MB of before: $freed_ok"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "PROBLEMS:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
exit 0
