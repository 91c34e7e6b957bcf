#!/usr/bin/env bash
# bench/bare.sh: progressd against the limit (issue 23). Every row is
# reported as a ratio to a bare axum route (bench/bare_axum: the same
# axum, hyper, tokio and allocator, the same release profile, a static
# 400-byte JSON body, no layers) and to progressd's own `/healthz`, all
# measured in the same run.
#
# Rows: the bare route, and the bare route answering the seeded record's
# bytes as progressd's GET answers them (about 1,160 B against 400: the GET
# rows are also given against it, below the table, which tells the size of
# the answer from the work of giving it); and the least a write can cost
# (bench/bare_axum's bare_write: the bare route plus the one Redis script
# progressd runs for a write, nothing parsed or built) for PUT and PATCH,
# the same with the writes that arrive together batched into one script
# call (group commit), and with a plain SET, SET, PUBLISH and no script
# (not a compare-and-set: what the script costs). The write rows are also given
# against the script row, below the table. Per progressd binary: `/healthz`,
# a cached `GET /progress/{id}`,
# PUT and PATCH (bench/put.lua, bench/patch.lua over 1,000 records), against
# Redis over PostgreSQL (a new database per instance, dropped at exit; a key
# prefix of its own on the shared Redis, deleted at exit), no tokens. With
# BARE_AUTH=1 each binary also runs a second instance with read and write
# tokens and a CORS origin, and its rows send the token and an `Origin`.
#
# wrk, 1 thread, 32 connections (the issue's set-up), BARE_ROUNDS rounds of
# BARE_DURATION seconds; in each round every row runs once, the order
# reversed every other round. Reported per row: requests/s (median of the
# rounds), × bare and × healthz (medians of the rounds' ratios: each ratio
# is taken within one round), p99, and the server's CPU time per request
# (utime + stime from /proc over the run), steadier than requests/s on a
# shared machine; beside it the shared Redis's CPU time per request and the
# whole machine's busy time per request (wrk and the kernel included),
# which show what a ratio leaves the server: at a ratio r to the bare
# route, the machine has (bare's machine µs/req) ÷ r for each request.
#
#   cargo build --release --locked --bin progressd
#   cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml --target-dir target
#   bench/bare.sh
#   BARE_BINS="before=/tmp/progressd-before after=target/release/progressd" BARE_AUTH=1 bench/bare.sh
#
# Environment (all optional):
#   BARE_BINS      label=path pairs of progressd binaries (default: progressd=target/release/progressd)
#   BARE_BARE_BIN  the bare axum binary (default target/release/bare_axum)
#   BARE_WRITE_BIN the bare write server (default: bare_write beside BARE_BARE_BIN)
#   BARE_ROUNDS    rounds (default 3)
#   BARE_DURATION  seconds per wrk run (default 5)
#   BARE_AUTH      1: also the instances with tokens and a CORS origin, and the bare
#                  route sent their headers (its "× bare, same headers" column)
#   BARE_POSTGRES  0: Redis alone (default 1: Redis over PostgreSQL)
#   BARE_WRK       wrk threads and connections (default "-t1 -c32")

set -Eeuo pipefail
BENCH_NAME=bare
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ROUNDS="${BARE_ROUNDS:-3}"
DURATION="${BARE_DURATION:-5}"
require_count "$ROUNDS" BARE_ROUNDS
require_count "$DURATION" BARE_DURATION
read -r -a WRK_ARGS <<<"${BARE_WRK:--t1 -c32}"
BARE_BIN="${BARE_BARE_BIN:-$ROOT/target/release/bare_axum}"
WRITE_BIN="${BARE_WRITE_BIN:-$(dirname "$BARE_BIN")/bare_write}"
read -r -a BINS <<<"${BARE_BINS:-progressd=$ROOT/target/release/progressd}"
need_tools wrk curl python3 redis-cli psql
[[ -x "$BARE_BIN" ]] || die "$BARE_BIN does not exist (cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml --target-dir target)"
[[ -x "$WRITE_BIN" ]] || die "$WRITE_BIN does not exist (cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml --target-dir target)"

READ_TOKEN="bench-read-$RUN_ID"
WRITE_TOKEN="bench-write-$RUN_ID"
ORIGIN="https://dashboard.bench.example"
export BENCH_WRITE_IDS=1000 BENCH_PUT_ID_PREFIX=bench-put- BENCH_PATCH_ID_PREFIX=bench-patch- \
  BENCH_RECORD_JSON="$BENCH_DIR/record.json"

# --- servers ---------------------------------------------------------------------

declare -A BASE=() PID=()
INSTANCES=()

seed() {  # base [auth]
  local h=(-H 'Content-Type: application/json')
  [[ -z "${2:-}" ]] || h+=(-H "Authorization: Bearer $WRITE_TOKEN")
  curl -fs -o /dev/null -X PUT "${h[@]}" --data-binary "@$BENCH_DIR/record.json" "$1/progress/bench-read"
  local prefix
  for prefix in bench-put- bench-patch-; do
    curl -fs -o /dev/null -X PUT "${h[@]}" --data-binary "@$BENCH_DIR/record.json" \
      "$1/progress/${prefix}[0-$((BENCH_WRITE_IDS - 1))]"
  done
}

n=0
for pair in "${BINS[@]}"; do
  label="${pair%%=*}" path="${pair#*=}"
  [[ "$path" == /* ]] || path="$ROOT/$path"
  [[ -x "$path" ]] || die "$path does not exist"
  variants=(open)
  [[ "${BARE_AUTH:-0}" == 1 ]] && variants+=(auth)
  for variant in "${variants[@]}"; do
    name="$label"
    [[ "$variant" == auth ]] && name="$label+auth"
    n=$((n + 1))
    prefix="bench-bare-$RUN_ID-$n:"
    REDIS_PREFIXES+=("$prefix")
    settings=(REDIS_URL="$SHARED_REDIS_URL" PROGRESS_KEY_PREFIX="$prefix")
    if [[ "${BARE_POSTGRES:-1}" == 1 ]]; then
      db="progressd_bench_bare_${RUN_ID//-/_}_$n"
      create_database "$db"
      settings+=(DATABASE_URL="$PG_SERVER_URL/$db")
    fi
    [[ "$variant" == auth ]] && settings+=(PROGRESS_READ_TOKENS="$READ_TOKEN" PROGRESS_WRITE_TOKENS="$WRITE_TOKEN"
      PROGRESS_CORS_ORIGINS="$ORIGIN")
    BIN="$path" start_progressd "$name" "${settings[@]}"
    [[ "${BARE_POSTGRES:-1}" == 1 ]] && wait_migrated "$db"
    seed "$SERVER_BASE" "$([[ "$variant" == auth ]] && echo 1)"
    BASE[$name]="$SERVER_BASE" PID[$name]="$SERVER_PID"
    INSTANCES+=("$name")
  done
done

# The bare route, started once the records are seeded: it also answers the
# record's bytes, as the first instance's GET answers them (`/file`), so the
# GET rows can be read against the same answer from a bare route.
RECORD_BODY="$WORK/record-body.json"
curl -fs -o "$RECORD_BODY" "${BASE[${INSTANCES[0]}]}/progress/bench-read" || die "the seeded record could not be read"
port="$(free_port)"
( cd "$WORK" && exec env PORT="$port" BODY_FILE="$RECORD_BODY" "$BARE_BIN" ) >"$WORK/server-bare.log" 2>&1 &
register_pid "$!" "bare axum"
PID[bare]=$!
BASE[bare]="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -fs -o /dev/null "${BASE[bare]}/" && break; sleep 0.1; done
curl -fs -o /dev/null "${BASE[bare]}/" || die "the bare axum server did not answer"
curl -fs -o /dev/null "${BASE[bare]}/file" || die "the bare axum server did not answer /file (an older build without BODY_FILE?)"

# The least a write can cost: the bare route plus progressd's write script
# (`script`), the same batched (`batch`), and plus a plain SET, SET, PUBLISH
# (`set`), each named by its WRITE mode, with a key prefix of its own on the
# shared Redis.
for inst in script batch set; do
  port="$(free_port)" prefix="bench-bare-$RUN_ID-$inst:"
  REDIS_PREFIXES+=("$prefix")
  ( cd "$WORK" && exec env PORT="$port" REDIS_URL="$SHARED_REDIS_URL" BARE_KEY_PREFIX="$prefix" \
      BODY_FILE="$RECORD_BODY" WRITE="$inst" "$WRITE_BIN" ) \
    >"$WORK/server-$inst.log" 2>&1 &
  register_pid "$!" "bare $inst"
  PID[$inst]=$!
  BASE[$inst]="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary '{}' "${BASE[$inst]}/progress/probe")" == 200 ]] && break
    sleep 0.1
  done
  code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary '{}' "${BASE[$inst]}/progress/probe")"
  [[ "$code" == 200 ]] || die "the bare $inst server answered $code (log: $WORK/server-$inst.log)"
done

# --- rows ----------------------------------------------------------------------------

ROWS=(bare bare+record)
declare -A ROW_INSTANCE=([bare]=bare [bare+record]=bare) ROW_KIND=([bare]=bare [bare+record]=bare_record)
# With BARE_AUTH=1, the bare route again, sent the same two headers as the
# +auth rows (a read token and an `Origin`, which it ignores): what parsing
# them costs any server, the limit of those rows.
if [[ "${BARE_AUTH:-0}" == 1 ]]; then
  ROWS+=(bare+headers)
  ROW_INSTANCE[bare+headers]=bare ROW_KIND[bare+headers]=bare
fi
ROWS+=(script/put script/patch batch/put set/put)
ROW_INSTANCE+=([script/put]=script [script/patch]=script [batch/put]=batch [set/put]=set)
ROW_KIND+=([script/put]=put [script/patch]=patch [batch/put]=put [set/put]=put)
for name in "${INSTANCES[@]}"; do
  for kind in healthz get put patch; do
    ROWS+=("$name/$kind")
    ROW_INSTANCE[$name/$kind]="$name" ROW_KIND[$name/$kind]="$kind"
  done
done

# wrk_run ROW FILE: one wrk run of ROW; appends "rps p99_us cpu_us_per_request non2xx" to FILE.
wrk_run() {
  local row="$1" inst="${ROW_INSTANCE[$1]}" kind="${ROW_KIND[$1]}"
  local base="${BASE[$inst]}" pid="${PID[$inst]}" args=() hdr=()
  if [[ "$inst" == *+auth || "$row" == bare+headers ]]; then
    export BENCH_WRITE_TOKEN="$WRITE_TOKEN" BENCH_ORIGIN="$ORIGIN"
    hdr=(-H "Authorization: Bearer $READ_TOKEN" -H "Origin: $ORIGIN")
  else
    export BENCH_WRITE_TOKEN="" BENCH_ORIGIN=""
  fi
  case "$kind" in
    bare) args=("${hdr[@]}" -s "$BENCH_DIR/report.lua" "$base/") ;;
    bare_record) args=(-s "$BENCH_DIR/report.lua" "$base/file") ;;
    healthz) args=("${hdr[@]}" -s "$BENCH_DIR/report.lua" "$base/healthz") ;;
    get) args=("${hdr[@]}" -s "$BENCH_DIR/report.lua" "$base/progress/bench-read") ;;
    put) args=(-s "$BENCH_DIR/put.lua" "$base") ;;
    patch) args=(-s "$BENCH_DIR/patch.lua" "$base") ;;
  esac
  local t0 t1 r0 r1 m0 m1 out
  t0="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  r0="$(redis_ticks)" m0="$(busy_ticks)"
  out="$(wrk "${WRK_ARGS[@]}" -d "${DURATION}s" "${args[@]}" 2>&1)"
  t1="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  r1="$(redis_ticks)" m1="$(busy_ticks)"
  echo "$out" >>"$WORK/wrk-${row//\//_}.txt"
  python3 - "$t0" "$t1" "$r0" "$r1" "$m0" "$m1" "$(getconf CLK_TCK)" "$(grep -m1 '^BENCH_RESULT' <<<"$out")" <<'PY' >>"$2"
import sys
t0, t1, r0, r1, m0, m1, tck = (float(a) for a in sys.argv[1:8])
kv = dict(p.split("=", 1) for p in sys.argv[8].split()[1:])
reqs = int(kv["requests"])
per = lambda a, b: (b - a) * 1e6 / tck / reqs if reqs else 0
print(kv["rps"], kv["p99_us"], f"{per(t0, t1):.2f}", kv["status"], f"{per(r0, r1):.2f}", f"{per(m0, m1):.2f}")
PY
}

# The shared Redis's CPU ticks (utime + stime), 0 when it is not a local process.
REDIS_PID="$(redis-cli -u "$SHARED_REDIS_URL" info server 2>/dev/null | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')"
redis_ticks() {
  if [[ -n "$REDIS_PID" && -r "/proc/$REDIS_PID/stat" ]]; then awk '{print $14 + $15}' "/proc/$REDIS_PID/stat"; else echo 0; fi
}
# The whole machine's busy ticks: user, nice, system, irq, softirq and steal (not idle or iowait).
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# Warm up: every row for 1 s.
for row in "${ROWS[@]}"; do
  DURATION=1 wrk_run "$row" /dev/null
done

RAW="$WORK/raw.tsv"
: >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
  order=("${ROWS[@]}")
  if (( round % 2 == 0 )); then
    order=()
    for (( i = ${#ROWS[@]} - 1; i >= 0; i-- )); do order+=("${ROWS[$i]}"); done
  fi
  log "bare: round $round of $ROUNDS (${#ROWS[@]} runs of ${DURATION}s)"
  for row in "${order[@]}"; do
    tmp="$WORK/one"
    : >"$tmp"
    wrk_run "$row" "$tmp"
    printf '%s\t%s\t%s\n' "$round" "$row" "$(cat "$tmp")" >>"$RAW"
  done
done

# --- table -------------------------------------------------------------------------------

{
  print_machine
  echo "wrk:         $({ wrk -v 2>&1 || true; } | head -1 | cut -d' ' -f1-2), ${WRK_ARGS[*]}, ${DURATION}s per run, $ROUNDS rounds"
  echo "store:       Redis over $([[ "${BARE_POSTGRES:-1}" == 1 ]] && echo 'PostgreSQL (a new database per instance)' || echo 'nothing (Redis alone)')"
  for pair in "${BINS[@]}"; do echo "binary:      $pair"; done
  echo "bare:        $BARE_BIN"
  echo
  RECORD_BYTES="$(wc -c <"$RECORD_BODY")" python3 - "$RAW" "${ROWS[@]}" <<'PY'
import os, statistics as st, sys
raw, rows = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(raw):
    rnd, row, rps, p99, cpu, non2xx, redis, machine = line.split()
    runs.setdefault(row, {})[int(rnd)] = (float(rps), int(p99), float(cpu), int(non2xx), float(redis), float(machine))
names = {"bare": "bare axum, static 400 B", "healthz": "/healthz", "get": "GET /progress/{id} (cached)",
         "put": "PUT /progress/{id}", "patch": "PATCH /progress/{id}"}
headed = "bare+headers" in rows
print("| row | req/s | × bare | " + ("× bare, same headers | " if headed else "")
      + "× healthz | p99 ms | CPU µs/req | bare CPU ÷ row CPU | Redis µs/req | machine µs/req | non-2xx |")
print("|---|---:|---:|" + ("---:|" if headed else "") + "---:|---:|---:|---:|---:|---:|---:|")
med = lambda xs: st.median(xs) if xs else float("nan")
for row in rows:
    inst, _, kind = row.rpartition("/") if "/" in row else ("", "", row)
    if row in ("bare+headers", "bare+record"):
        kind = "bare"
    r = runs.get(row, {})
    bare = runs.get("bare", {})
    # The +auth rows (and the bare route sent their headers) against the bare route sent the same.
    same = runs.get("bare+headers", {}) if (inst.endswith("+auth") or row == "bare+headers") else bare
    hz = runs.get(f"{inst}/healthz", {}) if inst else {}
    x_bare = med([r[k][0] / bare[k][0] for k in r if k in bare])
    x_hz = med([r[k][0] / hz[k][0] for k in r if k in hz]) if hz else float("nan")
    cpu = med([v[2] for v in r.values()])
    bare_cpu = med([v[2] for v in bare.values()])
    x_same = med([r[k][0] / same[k][0] for k in r if k in same])
    label = names[kind] + (f" ({inst})" if inst else "") + (" (a read token and an Origin sent)" if row == "bare+headers" else "")
    if inst in ("script", "batch", "set"):
        label = names[kind] + {"script": ", the least: the bare route + progressd's script",
                               "batch": ", the least, batched: writes that arrive together in one script call",
                               "set": ", no script: the bare route + SET, SET, PUBLISH"}[inst]
    if row == "bare+record":
        label = f"bare axum, the record's {int(os.environ['RECORD_BYTES']):,} B as GET answers it"
    print(f"| {label} | {med([v[0] for v in r.values()]):,.0f} | {x_bare:.2f} | "
          + (f"{x_same:.2f} | " if headed else "")
          + ("—" if kind == "bare" or not hz else f"{x_hz:.2f}")
          + f" | {med([v[1] for v in r.values()]) / 1000:.2f} | {cpu:.1f} | {bare_cpu / cpu if cpu else 0:.2f}"
          + f" | {med([v[4] for v in r.values()]):.1f} | {med([v[5] for v in r.values()]):.1f} | {sum(v[3] for v in r.values())} |")
print()
# The GET rows against the bare route answering the same bytes: the work of
# a cached GET apart from the size of its answer.
same_body = runs.get("bare+record", {})
for row in rows:
    if row.endswith("/get") and same_body:
        r = runs[row]
        print(f"{row}: {med([r[k][0] / same_body[k][0] for k in r if k in same_body]):.2f} × the bare route answering the record's bytes")
# The write rows against the least a write costs (the bare route plus the
# same script): the work of a write apart from Redis's.
for row in rows:
    kind = row.rpartition("/")[2]
    least = runs.get(f"script/{kind}", {})
    if kind in ("put", "patch") and not row.startswith(("script/", "batch/", "set/")) and least:
        r = runs[row]
        print(f"{row}: {med([r[k][0] / least[k][0] for k in r if k in least]):.2f} × the least a {kind.upper()} costs")
print()
print("req/s, p99 and CPU: medians of the rounds; × bare and × healthz: medians of the rounds' ratios (each within one round).")
print("CPU: the server's own; Redis: the shared redis-server's (0 when it is not local); machine: every busy CPU")
print("of the machine (wrk, the kernel, PostgreSQL, Redis and the server), per request.")
if headed:
    print("× bare, same headers: the +auth rows against the bare route sent the same read token and Origin.")
PY
  echo
  echo "load avg at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "raw: $RAW"
} | tee "$WORK/summary.md"
