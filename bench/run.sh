#!/usr/bin/env bash
# bench/run.sh: load-test progressd with wrk against a real Redis and print
# one table. See bench/README.md for what is measured and how to read it.
#
# Two instances of the release binary run on the same Redis and key prefix:
# the main one in the default configuration (read cache on), which serves
# every row but the "(cache off)" ones, and a second one started with
# PROGRESS_CACHE_MAX_AGE_MS=0, so that its GETs always go to Redis.
#
# Environment (all optional):
#   BENCH_DURATION     seconds (or wrk duration such as 30s, 1m) per scenario (default 10)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_CONNECTIONS  wrk connections (default 64)
#   BENCH_WARMUP       warm-up seconds before measuring, 0 to skip (default 2)
#   BENCH_WRITE_IDS    ids the PUT and PATCH scenarios spread over (default 1000)
#   BENCH_TARGET       wanted GET /progress/{id} ÷ GET /healthz ratio in the default
#                      configuration, cache on (default 0.60)
#   BENCH_STRICT       1: also exit non-zero when that (cache-on) GET ratio is below target
#   BENCH_SKIP_BUILD   1: use the existing target/release/progressd
#   BENCH_LOG_LEVEL    server log level (default warn)
#   REDIS_URL          Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every scenario answered only the expected statuses with
# no socket errors; 1 otherwise (the table is still printed); 2 on set-up errors.

set -Eeuo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${BENCH_DURATION:-10}"
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
WARMUP="${BENCH_WARMUP:-2}"
[[ "$WARMUP" =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
WRITE_IDS="${BENCH_WRITE_IDS:-1000}"
TARGET="${BENCH_TARGET:-0.60}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
KEY_PREFIX="bench-$$-$(date +%s):"
READ_ID="bench-read"
export BENCH_WRITE_IDS="$WRITE_IDS"
export BENCH_PUT_ID_PREFIX="bench-put-"
export BENCH_PATCH_ID_PREFIX="bench-patch-"
export BENCH_RECORD_JSON="$BENCH_DIR/record.json"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/progressd-bench.XXXXXX")"
# Main instance: default configuration (read cache on).
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
BASE=""
# Second instance: same Redis and key prefix, PROGRESS_CACHE_MAX_AGE_MS=0.
NOCACHE_LOG="$WORK/server-cache-off.log"
NOCACHE_PID=""
NOCACHE_BASE=""
WRK_PID=""

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 2; }

# --- clean-up: our Redis keys, then our server (by its own PID) -----------

redis() { redis-cli -u "$REDIS_URL" --no-auth-warning "$@"; }

delete_keys() {
  if command -v redis-cli >/dev/null 2>&1 && ! redis PING >/dev/null 2>&1; then
    log "bench: cannot reach Redis at ${REDIS_URL%%@*} to delete keys under ${KEY_PREFIX} (they expire within 15 minutes)"
  elif command -v redis-cli >/dev/null 2>&1; then
    # SCAN + DEL on our unique prefix only (never FLUSHALL: Redis is shared).
    # The prefix is [A-Za-z0-9:-], so it has no glob characters to escape.
    redis --scan --pattern "${KEY_PREFIX}*" 2>/dev/null \
      | xargs -r -d '\n' -n 500 redis-cli -u "$REDIS_URL" --no-auth-warning DEL >/dev/null 2>&1 || true
    local left
    if ! left="$(redis --scan --pattern "${KEY_PREFIX}*" 2>/dev/null | wc -l)"; then left="?"; fi
    if [[ "$left" == "0" ]]; then
      log "bench: deleted the Redis keys under ${KEY_PREFIX}"
    else
      log "bench: WARNING: ${left} keys under ${KEY_PREFIX} are left in Redis (they expire within 15 minutes)"
    fi
  else
    # No redis-cli: delete the records we created through the API of either instance.
    local base=""
    if [[ -n "$BASE" && -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
      base="$BASE"
    elif [[ -n "$NOCACHE_BASE" && -n "$NOCACHE_PID" ]] && kill -0 "$NOCACHE_PID" 2>/dev/null; then
      base="$NOCACHE_BASE"
    fi
    [[ -n "$base" ]] || return 0
    curl -s -o /dev/null -X DELETE "$base/progress/$READ_ID" || true
    curl -s -o /dev/null -X DELETE "$base/progress/${BENCH_PUT_ID_PREFIX}[0-$((WRITE_IDS - 1))]" || true
    curl -s -o /dev/null -X DELETE "$base/progress/${BENCH_PATCH_ID_PREFIX}[0-$((WRITE_IDS - 1))]" || true
    log "bench: redis-cli not found; deleted the bench records through the API"
  fi
}

# Both instances, each by its own PID (never by name): SIGTERM to both, up to
# 5 s for them to finish, then SIGKILL to any that is still there.
stop_servers() {
  local pids=() pid _
  for pid in "$SERVER_PID" "$NOCACHE_PID"; do
    [[ -n "$pid" ]] || continue
    pids+=("$pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  (( ${#pids[@]} > 0 )) || return 0
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "bench: server ${pid} ignored SIGTERM for 5 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  SERVER_PID=""
  NOCACHE_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
  delete_keys
  stop_servers
  log "bench: wrk output and server logs kept in $WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "bench: failed at line $LINENO: $BASH_COMMAND"' ERR

# --- tools ------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
  log "bench: wrk not found; installing it with apt-get"
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y wrk >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y wrk >&2; }
fi
for tool in wrk curl awk cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

# --- what we run on -----------------------------------------------------------

cpu_model="$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=""
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  dirty=" (plus uncommitted changes in the working tree)"
fi
redis_version="$(redis INFO server 2>/dev/null | tr -d '\r' | awk -F: '/^redis_version:/ {print $2}' || true)"
echo "== progressd benchmark =="
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:     $(nproc) CPUs, ${cpu_model:-unknown CPU model}, $(uname -sr)"
echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "commit:      ${commit}${dirty}"
echo "wrk:         $( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}'), ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} per scenario"
echo "redis:       ${REDIS_URL%%@*}$([[ "$REDIS_URL" == *@* ]] && echo '@…') ${redis_version:+(Redis $redis_version)}, key prefix ${KEY_PREFIX}"
echo

# --- build the way the Dockerfile does ---------------------------------------

BIN="$ROOT/target/release/progressd"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "bench: cargo build --release --locked"
  (cd "$ROOT" && cargo build --release --locked) >&2 || die "the release build failed"
fi
[[ -x "$BIN" ]] || die "$BIN does not exist"

# --- start the server on a free port ------------------------------------------

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return; fi
  done
  return 1
}

# The settings of both instances come from here only: inherited PROGRESS_* and
# RUST_LOG are unset, and the server runs in $WORK so that no progressd.toml
# in the caller's directory is read. "Default configuration" then means it.
inherited_progress_vars=()
while IFS= read -r v; do
  [[ "$v" == PROGRESS_* ]] && inherited_progress_vars+=(-u "$v")
done < <(compgen -e)

# start_instance main|cache-off [VAR=value ...]: starts one instance on a free
# port and waits for its /healthz. Sets SERVER_PID/BASE (main) or
# NOCACHE_PID/NOCACHE_BASE (cache-off) as soon as the process exists, so the
# EXIT trap can stop it. Returns 1 if the process exited at start-up.
start_instance() {
  local which="$1" port base logfile pid
  shift
  port="$(free_port)" || die "no free port found"
  base="http://127.0.0.1:$port"
  case "$which" in
    main)      logfile="$SERVER_LOG" ;;
    cache-off) logfile="$NOCACHE_LOG" ;;
  esac
  # `exec` keeps the PID: $! is the server itself, not a wrapper shell.
  ( cd "$WORK" && exec env -u RUST_LOG "${inherited_progress_vars[@]}" \
      PORT="$port" PROGRESS_HOST=127.0.0.1 REDIS_URL="$REDIS_URL" PROGRESS_KEY_PREFIX="$KEY_PREFIX" \
      PROGRESS_TTL_SECONDS=900 PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" "$@" \
      "$BIN" ) >"$logfile" 2>&1 &
  pid=$!
  case "$which" in
    main)      SERVER_PID=$pid; BASE="$base" ;;
    cache-off) NOCACHE_PID=$pid; NOCACHE_BASE="$base" ;;
  esac
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      case "$which" in
        main)      SERVER_PID="" ;;
        cache-off) NOCACHE_PID="" ;;
      esac
      return 1
    fi
    if curl -fs -o /dev/null --max-time 1 "$base/healthz"; then return 0; fi
    sleep 0.1
  done
  die "the $which instance did not answer $base/healthz within 30 s (log: $logfile)"
}

start_with_retries() {  # same arguments as start_instance
  local logfile="$SERVER_LOG"
  [[ "$1" == main ]] || logfile="$NOCACHE_LOG"
  for _ in 1 2 3; do  # a port taken between free_port and bind: try another
    if start_instance "$@"; then return 0; fi
    log "bench: the $1 instance exited at start-up: $(tail -n 3 "$logfile")"
  done
  die "the $1 instance would not start (log: $logfile)"
}

start_with_retries main
log "bench: progressd (pid $SERVER_PID, default configuration: read cache on) is up at $BASE"
start_with_retries cache-off PROGRESS_CACHE_MAX_AGE_MS=0
log "bench: progressd (pid $NOCACHE_PID, PROGRESS_CACHE_MAX_AGE_MS=0: read cache off) is up at $NOCACHE_BASE"

# --- seed ---------------------------------------------------------------------

# curl a request; prints "<status> <response bytes>" (headers + body, as wrk counts them).
probe() {
  curl -s -o /dev/null -w '%{http_code} %{size_header} %{size_download}\n' "$@" \
    | awk '{print $1, $2 + $3}'
}

json=(-H 'Content-Type: application/json')
read -r code _ < <(probe -X PUT "${json[@]}" --data-binary "@$BENCH_RECORD_JSON" "$BASE/progress/$READ_ID")
[[ "$code" == 200 || "$code" == 201 ]] || die "seeding PUT /progress/$READ_ID answered $code (is Redis reachable? log: $SERVER_LOG)"

etag_of() {  # base id
  curl -s -D - -o /dev/null "$1/progress/$2" | tr -d '\r' | awk 'tolower($1) == "etag:" {print $2}'
}
ETAG="$(etag_of "$BASE" "$READ_ID")"
[[ "$ETAG" =~ ^\"[0-9]+\"$ ]] || die "GET /progress/$READ_ID has no ETag like \"<version>\" (got '${ETAG}')"
problems=()
etag_off="$(etag_of "$NOCACHE_BASE" "$READ_ID")"
[[ "$etag_off" == "$ETAG" ]] || \
  problems+=("GET /progress/$READ_ID: the cache-off instance answered ETag '${etag_off}', the main instance $ETAG")

# The write scenarios start from existing records: PATCH needs them, and PUT then
# measures replacing (200) rather than creating (201). curl's [a-b] globbing sends
# them all over one kept-alive connection.
seed_range() {
  local bad
  bad="$(curl -s -X PUT "${json[@]}" --data-binary "@$BENCH_RECORD_JSON" \
          -o /dev/null -w '%{http_code}\n' "$BASE/progress/$1[0-$((WRITE_IDS - 1))]" \
        | grep -cvE '^20[01]$' || true)"
  [[ "$bad" == 0 ]] || die "seeding $1* : $bad of $WRITE_IDS PUTs did not answer 200/201"
}
seed_range "$BENCH_PUT_ID_PREFIX"
seed_range "$BENCH_PATCH_ID_PREFIX"
log "bench: seeded $READ_ID (ETag $ETAG) and 2 × $WRITE_IDS write records"

# The main instance's read cache is live only while its change listener is
# subscribed; otherwise its GETs go to Redis and the "cache on" rows would not
# measure the default configuration. Exactly one subscriber is expected: the
# cache-off instance has no listener. (Needs redis-cli; skipped without it.)
CHANGES_CHANNEL="${KEY_PREFIX}progress:changes"
check_listener() {  # when
  command -v redis-cli >/dev/null 2>&1 || return 0
  local n
  n="$(redis PUBSUB NUMSUB "$CHANGES_CHANNEL" 2>/dev/null | sed -n 2p | tr -d '\r' || true)"
  [[ "$n" == 1 ]] || problems+=("change listener $1: ${n:-?} subscribers on $CHANGES_CHANNEL, expected 1 (the main instance's); the cache-on rows may not have measured the cache")
}
if command -v redis-cli >/dev/null 2>&1; then
  for _ in $(seq 1 50); do  # the listener subscribes in the background after start-up
    [[ "$(redis PUBSUB NUMSUB "$CHANGES_CHANNEL" 2>/dev/null | sed -n 2p | tr -d '\r' || true)" == 1 ]] && break
    sleep 0.1
  done
fi
check_listener "before the run"

# --- scenarios ----------------------------------------------------------------
# name | expected status | wrk arguments. Reads first: the writes never touch
# $READ_ID, so its ETag stays valid for the 304 scenarios. The *_off scenarios
# run against the second instance (PROGRESS_CACHE_MAX_AGE_MS=0); every other
# one, /healthz included, against the main instance (default configuration).

NAMES=(healthz get get_304 get_off get_304_off put patch)
declare -A LABEL=(
  [healthz]="GET /healthz"
  [get]="GET /progress/{id}"
  [get_304]="GET /progress/{id} (304)"
  [get_off]="GET /progress/{id} (cache off)"
  [get_304_off]="GET /progress/{id} (304, cache off)"
  [put]="PUT /progress/{id}"
  [patch]="PATCH /progress/{id}"
)
declare -A EXPECT=([healthz]=200 [get]=200 [get_304]=304 [get_off]=200 [get_304_off]=304 [put]=200 [patch]=200)
wrk_args() {
  case "$1" in
    healthz)     echo "-s $BENCH_DIR/report.lua $BASE/healthz" ;;
    get)         echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;
    get_304)     echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;  # + If-None-Match below
    get_off)     echo "-s $BENCH_DIR/report.lua $NOCACHE_BASE/progress/$READ_ID" ;;
    get_304_off) echo "-s $BENCH_DIR/report.lua $NOCACHE_BASE/progress/$READ_ID" ;;  # + If-None-Match below
    put)         echo "-s $BENCH_DIR/put.lua $BASE" ;;
    patch)       echo "-s $BENCH_DIR/patch.lua $BASE" ;;
  esac
}
extra_headers() {
  [[ "$1" == get_304 || "$1" == get_304_off ]] && printf '%s\n' "If-None-Match: $ETAG"
  return 0
}

# One request of each kind through curl: the status wrk should see, and the
# response size that wrk's bytes/request should come close to.
probe_scenario() {
  case "$1" in
    healthz) probe "$BASE/healthz" ;;
    get)     probe "$BASE/progress/$READ_ID" ;;
    get_304) probe -H "If-None-Match: $ETAG" "$BASE/progress/$READ_ID" ;;
    get_off) probe "$NOCACHE_BASE/progress/$READ_ID" ;;
    get_304_off) probe -H "If-None-Match: $ETAG" "$NOCACHE_BASE/progress/$READ_ID" ;;
    put)     probe -X PUT "${json[@]}" --data-binary "@$BENCH_RECORD_JSON" "$BASE/progress/${BENCH_PUT_ID_PREFIX}0" ;;
    patch)   probe -X PATCH "${json[@]}" --data-binary '{"current":1,"message":"Processed 1 of 480 segments"}' \
               "$BASE/progress/${BENCH_PATCH_ID_PREFIX}0" ;;
  esac
}

run_wrk() {  # name duration outfile
  local name="$1" duration="$2" out="$3" hdr=()
  local h
  while IFS= read -r h; do [[ -n "$h" ]] && hdr+=(-H "$h"); done < <(extra_headers "$name")
  # shellcheck disable=SC2046  # wrk_args is split on purpose (no spaces in its paths/URLs)
  # In the background + wait, so that a signal runs the clean-up trap at once.
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$duration" --latency --timeout 5s "${hdr[@]}" $(wrk_args "$name") >"$out" 2>&1 &
  WRK_PID=$!
  local rc=0
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  return "$rc"
}

case "$BASE$NOCACHE_BASE$BENCH_DIR" in *' '*) die "paths with spaces are not supported ($BENCH_DIR)";; esac

if [[ "$WARMUP" != 0s ]]; then
  log "bench: warming up ($WARMUP each on healthz, get and get with the cache off)"
  run_wrk healthz "$WARMUP" "$WORK/warmup-healthz.txt" || true
  run_wrk get "$WARMUP" "$WORK/warmup-get.txt" || true
  run_wrk get_off "$WARMUP" "$WORK/warmup-get_off.txt" || true
fi

declare -A R=()
for name in "${NAMES[@]}"; do
  read -r pcode psize < <(probe_scenario "$name")
  if [[ "$pcode" != "${EXPECT[$name]}" ]]; then
    problems+=("${LABEL[$name]}: a probe request answered $pcode, expected ${EXPECT[$name]}")
  fi
  log "bench: ${LABEL[$name]} for $DURATION"
  out="$WORK/$name.txt"
  if ! run_wrk "$name" "$DURATION" "$out"; then
    problems+=("${LABEL[$name]}: wrk failed: $(tail -n 2 "$out" | tr '\n' ' ')")
  fi
  line="$(grep -m1 '^BENCH_RESULT ' "$out" || true)"
  if [[ -z "$line" ]]; then
    problems+=("${LABEL[$name]}: wrk printed no result (see $out)")
    continue
  fi
  for kv in ${line#BENCH_RESULT }; do R[$name.${kv%%=*}]="${kv#*=}"; done
  R[$name.probe_size]="$psize"
done

# The record must not have changed during the reads, or the 304 runs measured
# 200s. Asked through both instances: the cache-off one reads Redis itself.
for base in "$BASE" "$NOCACHE_BASE"; do
  etag_after="$(etag_of "$base" "$READ_ID")"
  [[ "$etag_after" == "$ETAG" ]] || \
    problems+=("GET /progress/$READ_ID via $base: ETag moved from $ETAG to '${etag_after}' during the run")
done
check_listener "after the run"

# --- table ----------------------------------------------------------------------

get() { echo "${R[$1]:-}"; }
health_rps="$(get healthz.rps)"
ratio() {  # rps → ratio to healthz
  awk -v a="$1" -v b="$health_rps" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

echo
printf '%-35s %11s %9s %9s %12s %11s %10s %10s\n' \
  "scenario" "requests/s" "p50 us" "p99 us" "non-2xx/3xx" "socket err" "/ healthz" "bytes/req"
printf '%-35s %11s %9s %9s %12s %11s %10s %10s\n' \
  "-----------------------------------" "----------" "------" "------" "-----------" "----------" "---------" "---------"
for name in "${NAMES[@]}"; do
  if [[ -z "$(get "$name.requests")" ]]; then
    printf '%-35s %11s\n' "${LABEL[$name]}" "(no result)"
    continue
  fi
  req="$(get "$name.requests")"
  sock=$(( $(get "$name.connect") + $(get "$name.read") + $(get "$name.write") + $(get "$name.timeout") ))
  status="$(get "$name.status")"
  bpr="$(awk -v b="$(get "$name.bytes")" -v n="$req" 'BEGIN { printf "%d", (n > 0 ? b / n : 0) }')"
  printf '%-35s %11.0f %9d %9d %12d %11d %10s %10d\n' \
    "${LABEL[$name]}" "$(get "$name.rps")" "$(get "$name.p50_us")" "$(get "$name.p99_us")" \
    "$status" "$sock" "$(ratio "$(get "$name.rps")")" "$bpr"

  if (( req == 0 )); then problems+=("${LABEL[$name]}: no request completed"); fi
  if (( status > 0 )); then problems+=("${LABEL[$name]}: $status responses with status ≥ 400"); fi
  if (( sock > 0 )); then
    problems+=("${LABEL[$name]}: socket errors connect $(get "$name.connect"), read $(get "$name.read"), write $(get "$name.write"), timeout $(get "$name.timeout")")
  fi
  # wrk counts 4xx/5xx only. A 200 where a 304 was expected (or an error body
  # where a record was expected) shows up as a different response size.
  psize="$(get "$name.probe_size")"
  if (( req > 0 )) && [[ -n "$psize" ]] && \
     awk -v a="$bpr" -v b="$psize" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d > 0.25 * b + 16) }'; then
    problems+=("${LABEL[$name]}: responses average $bpr bytes, but a ${EXPECT[$name]} response is $psize bytes: other statuses were answered")
  fi
done
echo

get_ratio="$(ratio "$(get get.rps)")"
verdict="BELOW TARGET"
if [[ "$get_ratio" != "-" ]] && awk -v r="$get_ratio" -v t="$TARGET" 'BEGIN { exit !(r >= t) }'; then
  verdict="PASS"
fi
off_ratio="$(ratio "$(get get_off.rps)")"
echo "GET ratio, default configuration (read cache on):   GET /progress/{id} ÷ GET /healthz = ${get_ratio}  (target >= ${TARGET}): ${verdict}"
echo "GET ratio, cache off (PROGRESS_CACHE_MAX_AGE_MS=0): GET /progress/{id} ÷ GET /healthz = ${off_ratio}  (every read goes to Redis; for comparison, not the target)"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  echo "  (wrk output: $WORK; server log: $SERVER_LOG)"
  exit 1
fi
if [[ "$verdict" != PASS && "${BENCH_STRICT:-0}" == 1 ]]; then
  exit 1
fi
exit 0
