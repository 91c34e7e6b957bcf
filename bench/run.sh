#!/usr/bin/env bash
# bench/run.sh: load-test progressd with wrk against a real Redis and print
# one table. See bench/README.md for what is measured and how to read it.
#
# Environment (all optional):
#   BENCH_DURATION     seconds (or wrk duration such as 30s, 1m) per scenario (default 10)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_CONNECTIONS  wrk connections (default 64)
#   BENCH_WARMUP       warm-up seconds before measuring, 0 to skip (default 2)
#   BENCH_WRITE_IDS    ids the PUT and PATCH scenarios spread over (default 1000)
#   BENCH_TARGET       wanted GET /progress/{id} ÷ GET /healthz ratio (default 0.60)
#   BENCH_STRICT       1: also exit non-zero when the GET ratio is below target
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
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
WRK_PID=""
PORT=""
BASE=""

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
  elif [[ -n "$BASE" && -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    # No redis-cli: delete the records we created through the API.
    curl -s -o /dev/null -X DELETE "$BASE/progress/$READ_ID" || true
    curl -s -o /dev/null -X DELETE "$BASE/progress/${BENCH_PUT_ID_PREFIX}[0-$((WRITE_IDS - 1))]" || true
    curl -s -o /dev/null -X DELETE "$BASE/progress/${BENCH_PATCH_ID_PREFIX}[0-$((WRITE_IDS - 1))]" || true
    log "bench: redis-cli not found; deleted the bench records through the API"
  fi
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "bench: server ${SERVER_PID} ignored SIGTERM for 5 s; sending SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
  delete_keys
  stop_server
  log "bench: wrk output and server log kept in $WORK"
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

start_server() {
  PORT="$(free_port)" || die "no free port found"
  BASE="http://127.0.0.1:$PORT"
  env -u RUST_LOG -u PROGRESS_CONFIG \
    PORT="$PORT" PROGRESS_HOST=127.0.0.1 REDIS_URL="$REDIS_URL" PROGRESS_KEY_PREFIX="$KEY_PREFIX" \
    PROGRESS_TTL_SECONDS=900 PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" \
    "$BIN" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      return 1
    fi
    if curl -fs -o /dev/null --max-time 1 "$BASE/healthz"; then return 0; fi
    sleep 0.1
  done
  die "the server did not answer $BASE/healthz within 30 s (log: $SERVER_LOG)"
}

started=""
for _ in 1 2 3; do  # a port taken between free_port and bind: try another
  if start_server; then started=1; break; fi
  log "bench: the server exited at start-up: $(tail -n 3 "$SERVER_LOG")"
done
[[ -n "$started" ]] || die "the server would not start (log: $SERVER_LOG)"
log "bench: progressd (pid $SERVER_PID) is up at $BASE"

# --- seed ---------------------------------------------------------------------

# curl a request; prints "<status> <response bytes>" (headers + body, as wrk counts them).
probe() {
  curl -s -o /dev/null -w '%{http_code} %{size_header} %{size_download}\n' "$@" \
    | awk '{print $1, $2 + $3}'
}

json=(-H 'Content-Type: application/json')
read -r code _ < <(probe -X PUT "${json[@]}" --data-binary "@$BENCH_RECORD_JSON" "$BASE/progress/$READ_ID")
[[ "$code" == 200 || "$code" == 201 ]] || die "seeding PUT /progress/$READ_ID answered $code (is Redis reachable? log: $SERVER_LOG)"

etag_of() {
  curl -s -D - -o /dev/null "$BASE/progress/$1" | tr -d '\r' | awk 'tolower($1) == "etag:" {print $2}'
}
ETAG="$(etag_of "$READ_ID")"
[[ "$ETAG" =~ ^\"[0-9]+\"$ ]] || die "GET /progress/$READ_ID has no ETag like \"<version>\" (got '${ETAG}')"

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

# --- scenarios ----------------------------------------------------------------
# name | expected status | wrk arguments. Reads first: the writes never touch
# $READ_ID, so its ETag stays valid for the 304 scenario.

NAMES=(healthz get get_304 put patch)
declare -A LABEL=(
  [healthz]="GET /healthz"
  [get]="GET /progress/{id}"
  [get_304]="GET /progress/{id} (304)"
  [put]="PUT /progress/{id}"
  [patch]="PATCH /progress/{id}"
)
declare -A EXPECT=([healthz]=200 [get]=200 [get_304]=304 [put]=200 [patch]=200)
wrk_args() {
  case "$1" in
    healthz) echo "-s $BENCH_DIR/report.lua $BASE/healthz" ;;
    get)     echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;
    get_304) echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;  # + If-None-Match below
    put)     echo "-s $BENCH_DIR/put.lua $BASE" ;;
    patch)   echo "-s $BENCH_DIR/patch.lua $BASE" ;;
  esac
}
extra_headers() {
  [[ "$1" == get_304 ]] && printf '%s\n' "If-None-Match: $ETAG"
  return 0
}

# One request of each kind through curl: the status wrk should see, and the
# response size that wrk's bytes/request should come close to.
probe_scenario() {
  case "$1" in
    healthz) probe "$BASE/healthz" ;;
    get)     probe "$BASE/progress/$READ_ID" ;;
    get_304) probe -H "If-None-Match: $ETAG" "$BASE/progress/$READ_ID" ;;
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

case "$BASE$BENCH_DIR" in *' '*) die "paths with spaces are not supported ($BENCH_DIR)";; esac

if [[ "$WARMUP" != 0s ]]; then
  log "bench: warming up ($WARMUP each on healthz and get)"
  run_wrk healthz "$WARMUP" "$WORK/warmup-healthz.txt" || true
  run_wrk get "$WARMUP" "$WORK/warmup-get.txt" || true
fi

declare -A R=()
problems=()
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

# The record must not have changed during the reads, or the 304 run measured 200s.
etag_after="$(etag_of "$READ_ID")"
[[ "$etag_after" == "$ETAG" ]] || problems+=("GET /progress/$READ_ID: ETag moved from $ETAG to $etag_after during the run")

# --- table ----------------------------------------------------------------------

get() { echo "${R[$1]:-}"; }
health_rps="$(get healthz.rps)"
ratio() {  # rps → ratio to healthz
  awk -v a="$1" -v b="$health_rps" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

echo
printf '%-26s %11s %9s %9s %12s %11s %10s %10s\n' \
  "scenario" "requests/s" "p50 us" "p99 us" "non-2xx/3xx" "socket err" "/ healthz" "bytes/req"
printf '%-26s %11s %9s %9s %12s %11s %10s %10s\n' \
  "--------------------------" "----------" "------" "------" "-----------" "----------" "---------" "---------"
for name in "${NAMES[@]}"; do
  if [[ -z "$(get "$name.requests")" ]]; then
    printf '%-26s %11s\n' "${LABEL[$name]}" "(no result)"
    continue
  fi
  req="$(get "$name.requests")"
  sock=$(( $(get "$name.connect") + $(get "$name.read") + $(get "$name.write") + $(get "$name.timeout") ))
  status="$(get "$name.status")"
  bpr="$(awk -v b="$(get "$name.bytes")" -v n="$req" 'BEGIN { printf "%d", (n > 0 ? b / n : 0) }')"
  printf '%-26s %11.0f %9d %9d %12d %11d %10s %10d\n' \
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
echo "GET /progress/{id} / GET /healthz requests/s = ${get_ratio}  (target >= ${TARGET}): ${verdict}"

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
