#!/usr/bin/env bash
# bench/profile.sh: where the time goes on the GET and write paths of the
# release binary, against the local Redis.
#
# Two tools, each optional:
#
# - perf (sampling, wall clock under wrk load): `perf record` of the server
#   process for PROFILE_DURATION seconds per scenario while wrk drives it
#   (-t 2 -c 64, as bench/run.sh), then `perf report` by symbol, kernel
#   included. With inferno installed (`cargo install inferno`) it also writes
#   a flame graph (SVG) per scenario. The machine has no hardware counters in
#   a VM, so the samples are cpu-clock.
# - callgrind (exact instruction counts): the server runs under
#   `valgrind --tool=callgrind` with instrumentation off; for each scenario
#   it is warmed up with PROFILE_REQUESTS requests, then instrumentation is
#   switched on, curl sends PROFILE_REQUESTS requests (8 at a time on
#   kept-alive connections), instrumentation is switched off again and the
#   profile dumped. The number of requests the server answered in that
#   window is read from its own /metrics (http_requests_total). Redis's own work (the Lua scripts)
#   is not in these counts: see the Redis commandstats printed at the end.
#
# The binary is built with line tables (CARGO_PROFILE_RELEASE_DEBUG) into
# target/profiling, so target/release (bench/run.sh's) is left alone; the
# optimisation settings are the release profile's.
#
#   bench/profile.sh                       # both tools, scenarios healthz get patch put
#   PROFILE_TOOLS=callgrind bench/profile.sh patch
#
# Environment (all optional):
#   PROFILE_TOOLS       perf, callgrind or "perf callgrind" (default: both when installed)
#   PROFILE_DURATION    seconds of perf sampling per scenario (default 10)
#   PROFILE_REQUESTS    requests per scenario under callgrind (default 2000)
#   PROFILE_SKIP_BUILD  1: use the existing target/profiling/release/progressd
#   PROFILE_BIN         profile this binary instead of building one
#   PROFILE_OUT         where reports go (default: a new directory under /tmp)
#   PROFILE_CACHE_MAX_AGE_MS  passed to the server as PROGRESS_CACHE_MAX_AGE_MS (default: unset)
#   PROFILE_LOG_LEVEL   the server's PROGRESS_LOG_LEVEL (default warn, as bench/run.sh; the
#                       service's own default is info, which opens a span per request)
#   PROFILE_DATABASE_URL  a PostgreSQL database for the durable tier, as bench/run.sh
#                       uses one (default: none, Redis alone)
#   REDIS_URL           Redis to use (default redis://127.0.0.1:6379)
#
# Scenarios (arguments): healthz, get (cache hit), get_304 (the same with
# the record's ETag in If-None-Match: a 304), get_id (the same sending
# an X-Request-Id of its own, which the answer carries), get_off (a second
# instance with the read cache off: one Redis GET per request), patch, put,
# and get_auth, healthz_auth, put_auth, patch_auth (as get, healthz, put
# and patch on an instance with read and write tokens and a CORS origin,
# every request sending a token of its kind and an `Origin`; callgrind
# only), bare (the bare axum route of
# bench/bare_axum, PROFILE_BARE_BIN, default next to the binary:
# the limit; callgrind only) and bare_auth (the bare route sent the read
# token and `Origin` of the _auth scenarios, which it ignores: the limit
# of those; callgrind only).

set -Eeuo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DURATION="${PROFILE_DURATION:-10}"
REQUESTS="${PROFILE_REQUESTS:-2000}"
WRITE_IDS=1000
KEY_PREFIX="profile-$$-$(date +%s):"
OUT="${PROFILE_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/progressd-profile.XXXXXX")}"
mkdir -p "$OUT"
SCENARIOS=("$@")
(( ${#SCENARIOS[@]} > 0 )) || SCENARIOS=(healthz get patch put)

TOOLS="${PROFILE_TOOLS:-}"
if [[ -z "$TOOLS" ]]; then
  command -v perf >/dev/null 2>&1 && TOOLS="perf"
  command -v valgrind >/dev/null 2>&1 && TOOLS="$TOOLS callgrind"
fi
[[ -n "$TOOLS" ]] || { echo "profile: neither perf nor valgrind is installed (apt-get install linux-perf valgrind)" >&2; exit 2; }

log() { printf 'profile: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -u "$REDIS_URL" --no-auth-warning --scan --pattern "${KEY_PREFIX}*" 2>/dev/null \
      | xargs -r -d '\n' -n 500 redis-cli -u "$REDIS_URL" --no-auth-warning DEL >/dev/null 2>&1 || true
  fi
  log "reports in $OUT"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in wrk curl python3 redis-cli; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

# --- build -------------------------------------------------------------------

BIN="${PROFILE_BIN:-$ROOT/target/profiling/release/progressd}"
if [[ -z "${PROFILE_BIN:-}" && "${PROFILE_SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --locked (line tables, target/profiling)"
  (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/profiling" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
     cargo build --release --locked \
     && cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml) >&2 || die "the build failed"
fi
[[ -x "$BIN" ]] || die "$BIN does not exist"
BARE_BIN="${PROFILE_BARE_BIN:-$(dirname "$BIN")/bare_axum}"

# --- helpers -------------------------------------------------------------------

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start NAME [wrapper ...] [-- VAR=value ...]: starts the binary (under the
# wrapper command, if any) on a free port; prints "pid base".
start() {
  local name="$1" port; shift
  local wrapper=() env=()
  while (( $# > 0 )) && [[ "$1" != -- ]]; do wrapper+=("$1"); shift; done
  [[ "${1:-}" == -- ]] && shift
  env=("$@")
  port="$(free_port)"
  ( cd "$OUT" && exec env -u RUST_LOG PORT="$port" PROGRESS_HOST=127.0.0.1 REDIS_URL="$REDIS_URL" \
      PROGRESS_KEY_PREFIX="$KEY_PREFIX" PROGRESS_TTL_SECONDS=900 PROGRESS_LOG_LEVEL="${PROFILE_LOG_LEVEL:-warn}" \
      PROGRESS_REQUEST_TIMEOUT_SECONDS=120 PROGRESS_REDIS_TIMEOUT_MS=5000 PROGRESS_DATABASE_TIMEOUT_MS=10000 \
      ${PROFILE_DATABASE_URL:+DATABASE_URL=$PROFILE_DATABASE_URL} "${env[@]}" \
      "${wrapper[@]}" "${START_BIN:-$BIN}" ) >"$OUT/server-$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || die "the $name server exited: $(tail -n 5 "$OUT/server-$name.log")"
    if curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/${READY_PATH-healthz}"; then
      echo "$pid http://127.0.0.1:$port"
      return 0
    fi
    sleep 0.1
  done
  die "the $name server did not answer within 60 s"
}

json=(-H 'Content-Type: application/json')
AUTH_ORIGIN="https://dashboard.bench.example"
AUTH_ENV=(PROGRESS_READ_TOKENS=profile-read PROGRESS_WRITE_TOKENS=profile-write PROGRESS_CORS_ORIGINS="$AUTH_ORIGIN")
seed() {  # base [ids]; SEED_TOKEN: a write token to send
  local base="$1" ids="${2:-$WRITE_IDS}" h=("${json[@]}")
  [[ -z "${SEED_TOKEN:-}" ]] || h+=(-H "Authorization: Bearer $SEED_TOKEN")
  curl -fs -o /dev/null -X PUT "${h[@]}" --data-binary "@$BENCH_DIR/record.json" "$base/progress/bench-read"
  for prefix in bench-put- bench-patch-; do
    curl -fs -o /dev/null -X PUT "${h[@]}" --data-binary "@$BENCH_DIR/record.json" \
      "$base/progress/${prefix}[0-$((ids - 1))]"
  done
}

# The ETag of bench-read through base.
etag_of() {
  curl -fsI "$1/progress/bench-read" | tr -d '\r' | awk 'tolower($1) == "etag:" { print $2 }'
}

# wrk arguments of a scenario against base; $1 scenario, $2 base.
wrk_target() {
  case "$1" in
    healthz) echo "-s $BENCH_DIR/report.lua $2/healthz" ;;
    get|get_off) echo "-s $BENCH_DIR/report.lua $2/progress/bench-read" ;;
    get_304) echo "-H If-None-Match:$(etag_of "$2") -s $BENCH_DIR/report.lua $2/progress/bench-read" ;;
    get_id) echo "-H X-Request-Id:profile-0123456789abcdef -s $BENCH_DIR/report.lua $2/progress/bench-read" ;;
    patch) echo "-s $BENCH_DIR/patch.lua $2" ;;
    put) echo "-s $BENCH_DIR/put.lua $2" ;;
    *) die "unknown scenario $1" ;;
  esac
}
export BENCH_WRITE_IDS="$WRITE_IDS" BENCH_PUT_ID_PREFIX=bench-put- BENCH_PATCH_ID_PREFIX=bench-patch- \
  BENCH_RECORD_JSON="$BENCH_DIR/record.json"

# Requests the server answered so far (every route), from its /metrics.
answered() {  # (the bare route has no /metrics: 0, and every request is counted as sent)
  [[ "${ANSWERED_FIXED:-}" ]] && { echo "$ANSWERED_FIXED"; return; }
  curl -fs "$1/metrics" | awk '/^http_requests_total\{/ && !/route="\/metrics"/ {n += $NF} END {printf "%d\n", n}'
}

redis_stats() {  # title
  echo "== Redis commandstats ($1) =="
  redis-cli -u "$REDIS_URL" --no-auth-warning INFO commandstats | tr -d '\r' \
    | grep -E 'cmdstat_(get|evalsha|eval|publish|zadd|set|getrange):' || true
}

# --- perf --------------------------------------------------------------------

if [[ " $TOOLS " == *" perf "* ]]; then
  command -v perf >/dev/null 2>&1 || die "perf is not installed (apt-get install linux-perf)"
  read -r main_pid main_base < <(start perf-main)
  off_pid="" off_base=""
  if [[ " ${SCENARIOS[*]} " == *" get_off "* ]]; then
    read -r off_pid off_base < <(start perf-off -- PROGRESS_CACHE_MAX_AGE_MS=0)
  fi
  seed "$main_base"
  sleep 0.5
  for scenario in "${SCENARIOS[@]}"; do
    pid="$main_pid" base="$main_base"
    [[ "$scenario" == get_off ]] && pid="$off_pid" base="$off_base"
    log "perf: $scenario for ${DURATION}s"
    # shellcheck disable=SC2046
    wrk -t 2 -c 64 -d "$((DURATION + 2))s" $(wrk_target "$scenario" "$base") >"$OUT/perf-$scenario.wrk" 2>&1 &
    wrk_pid=$!
    sleep 1
    perf record -e cpu-clock -F 499 --call-graph dwarf,8192 -p "$pid" -o "$OUT/perf-$scenario.data" -- sleep "$DURATION" >/dev/null 2>&1 \
      || log "perf record failed for $scenario"
    wait "$wrk_pid" || true
    {
      echo "== $scenario: $(grep -m1 '^BENCH_RESULT' "$OUT/perf-$scenario.wrk" || true)"
      echo "== self time by symbol (cpu-clock, server process, kernel included) =="
      perf report -i "$OUT/perf-$scenario.data" --no-children --sort dso,symbol --percent-limit 0.5 --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed 's/ *-* *-* *$//' | cut -c1-220 | head -70 || true
      echo "== inclusive (self + callees), over 2% =="
      perf report -i "$OUT/perf-$scenario.data" --children --sort symbol --percent-limit 2 --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | sed 's/ *-* *-* *$//' | cut -c1-220 | head -90 || true
    } >"$OUT/perf-$scenario.txt"
    if command -v inferno-collapse-perf >/dev/null 2>&1 && command -v inferno-flamegraph >/dev/null 2>&1; then
      { perf script -i "$OUT/perf-$scenario.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
        >"$OUT/flame-$scenario.svg"; } 2>/dev/null || true
    fi
    log "perf: $OUT/perf-$scenario.txt"
  done
  for pid in "$main_pid" $off_pid; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
fi

# --- callgrind ---------------------------------------------------------------

if [[ " $TOOLS " == *" callgrind "* ]]; then
  command -v valgrind >/dev/null 2>&1 || die "valgrind is not installed"
  # A fixed number of requests, 8 at a time on kept-alive connections: curl
  # with a URL range. Writes go round-robin over CALLGRIND_IDS records: under
  # valgrind the server is some 50 times slower, and over 1000 ids (as under
  # wrk) each record would be written again only after the read cache's
  # max age, which is not what happens at full speed (every ~0.1 s).
  CALLGRIND_IDS=100
  fixed_requests() {  # scenario base
    local ids="[0-$((CALLGRIND_IDS - 1))]" rounds=$(( (REQUESTS + CALLGRIND_IDS - 1) / CALLGRIND_IDS ))
    local c=(curl -s -S --no-progress-meter -Z --parallel-max 8)
    case "$1" in
      healthz) "${c[@]}" "$2/healthz?[1-$REQUESTS]" ;;
      bare) "${c[@]}" "$2/?[1-$REQUESTS]" ;;
      bare_auth) "${c[@]}" -H "Authorization: Bearer profile-read" -H "Origin: $AUTH_ORIGIN" "$2/?[1-$REQUESTS]" ;;
      get|get_off) "${c[@]}" "$2/progress/bench-read?[1-$REQUESTS]" ;;
      get_304) "${c[@]}" -H "If-None-Match: $(etag_of "$2")" "$2/progress/bench-read?[1-$REQUESTS]" ;;
      get_id) "${c[@]}" -H "X-Request-Id: profile-0123456789abcdef" "$2/progress/bench-read?[1-$REQUESTS]" ;;
      get_auth|healthz_auth)
        local path=/progress/bench-read
        [[ "$1" == healthz_auth ]] && path=/healthz
        "${c[@]}" -H "Authorization: Bearer profile-read" -H "Origin: $AUTH_ORIGIN" "$2$path?[1-$REQUESTS]" ;;
      patch|put|patch_auth|put_auth)
        local r
        [[ "$1" == *_auth ]] && c+=(-H "Authorization: Bearer profile-write" -H "Origin: $AUTH_ORIGIN")
        for r in $(seq 1 "$rounds"); do
          if [[ "$1" == patch* ]]; then
            "${c[@]}" -X PATCH "${json[@]}" --data-binary "{\"current\":$r,\"message\":\"Processed $r of 480 segments\"}" \
              "$2/progress/bench-patch-$ids"
          else
            "${c[@]}" -X PUT "${json[@]}" --data-binary "@$BENCH_DIR/record.json" "$2/progress/bench-put-$ids"
          fi
        done ;;
    esac >/dev/null
  }
  callgrind_run() {  # scenario [VAR=value ...]
    local name="$1"; shift
    local pid base
    local bin="$BIN"
    [[ "$name" == bare* ]] && bin="$BARE_BIN"
    local ready=healthz
    [[ "$name" == bare* ]] && ready=""
    read -r pid base < <(READY_PATH="$ready" START_BIN="$bin" start "callgrind-$name" valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$OUT/callgrind-$name.out" -- "$@")
    local token=""
    [[ "$name" == *_auth ]] && token=profile-write
    [[ "$name" == bare* ]] || SEED_TOKEN="$token" seed "$base" "$CALLGRIND_IDS"
    # Warm up uncounted (connections, Redis script cache, read cache, metric handles).
    fixed_requests "$name" "$base"
    local before after
    [[ "$name" == bare* ]] && export ANSWERED_FIXED=0
    before="$(answered "$base")"
    callgrind_control -i on "$pid" >/dev/null
    fixed_requests "$name" "$base"
    callgrind_control -i off "$pid" >/dev/null
    [[ "$name" == bare* ]] && export ANSWERED_FIXED="$REQUESTS"
    after="$(answered "$base")"
    unset ANSWERED_FIXED
    callgrind_control -d "$pid" >/dev/null
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local n=$(( after - before ))  # /metrics itself is not counted
    local file total
    file="$(ls -t "$OUT"/callgrind-"$name".out.* | head -1)"
    total="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')"
    {
      echo "== $name: $n requests, $total instructions, $(( ${total:-0} / (n > 0 ? n : 1) )) instructions/request =="
      curl -fs "$base/metrics" >/dev/null 2>&1 || true
      callgrind_annotate --inclusive=yes "$file" 2>/dev/null | sed -n '/^Ir/,$p' | cut -c1-220 | head -150 || true
      echo
      echo "== self (exclusive) =="
      callgrind_annotate "$file" 2>/dev/null | sed -n '/^Ir/,$p' | cut -c1-220 | head -80 || true
    } >"$OUT/callgrind-$name.txt"
    head -1 "$OUT/callgrind-$name.txt"
  }
  redis_before="$(redis_stats before)"
  for scenario in "${SCENARIOS[@]}"; do
    case "$scenario" in
      get_off) callgrind_run "$scenario" PROGRESS_CACHE_MAX_AGE_MS=0 ;;
      *_auth) callgrind_run "$scenario" "${AUTH_ENV[@]}" ;;
      *) callgrind_run "$scenario" ${PROFILE_CACHE_MAX_AGE_MS:+PROGRESS_CACHE_MAX_AGE_MS=$PROFILE_CACHE_MAX_AGE_MS} ;;
    esac
  done
  { echo "$redis_before"; redis_stats after; } >"$OUT/redis-commandstats.txt"
fi

log "done"
