#!/usr/bin/env bash
# bench/run.sh: load-test progressd with wrk against a real Redis and print
# one table. See bench/README.md for what is measured and how to read it.
#
# The release binary runs in the default configuration (read cache on),
# plus read and write tokens and one CORS origin (every request carries a
# token and that Origin), on
# Redis (and, unless BENCH_POSTGRES=0, a new PostgreSQL database as the
# durable tier) and serves every row but the "(cache off)" ones. Those are
# served by a second instance on the same Redis, key prefix and database,
# started with PROGRESS_CACHE_MAX_AGE_MS=0 (its GETs always go to Redis) for
# those rows only: every instance hears every change notice and holds its
# share of the two CPUs, so it would take from whatever else is measured.
# Each row runs BENCH_ROUNDS times, each right after its own /healthz run.
#
# Environment (all optional):
#   BENCH_DURATION     seconds (or wrk duration such as 30s, 1m) per scenario and round (default 5)
#   BENCH_ROUNDS       how many times each row runs (each right after its own /healthz run);
#                      the round with the median ratio is reported, the others give its range (default 3)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_CONNECTIONS  wrk connections (default 64)
#   BENCH_WARMUP       warm-up seconds before measuring, 0 to skip (default 2)
#   BENCH_WRITE_IDS    ids the PUT and PATCH scenarios spread over (default 1000)
#   BENCH_MIX_IDS      records of the 90 % GET / 10 % PATCH mix (default 10000)
#   BENCH_RATE         requests/s of the fixed-rate mix run (default 5000; 0 skips it)
#   BENCH_RATE_DURATION  seconds of each round of the fixed-rate run (default 10)
#   BENCH_RATE_WARMUP  seconds before them, at the same rate, not counted (default 2)
#   BENCH_OHA          the oha binary for the fixed-rate run (default: oha on PATH,
#                      else ~/.cargo/bin/oha; install with `cargo install oha --locked`)
#   BENCH_POSTGRES     1 (default): Redis over PostgreSQL (a new database, dropped
#                      at exit); 0: Redis alone
#   BENCH_PG_URL       PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#   BENCH_TARGET       wanted GET /progress/{id} ÷ GET /healthz ratio in the default
#                      configuration, cache on (default 0.60)
#   BENCH_WRITE_TARGET wanted PUT and PATCH ÷ GET /healthz ratio (default 0.30)
#   BENCH_P99_TARGET_MS  wanted p99 of the fixed-rate mix, in ms (default 2)
#   BENCH_STRICT       1: also exit non-zero when a target is missed
#   BENCH_PAIRED       1 (default): /healthz is measured again right before every
#                      other row, for as long, and the row's ratio is to that
#                      measurement; 0: every ratio is to the /healthz row
#   BENCH_SCENARIOS    run only these rows, by name (space-separated, of: get get_304
#                      get_off get_304_off put patch mix rate; /healthz always runs,
#                      since the ratios are to it); default: every row
#   BENCH_SKIP_BUILD   1: use the existing target/release/progressd
#   BENCH_BIN          run this binary instead of target/release/progressd (implies no build)
#   BENCH_LOG_LEVEL    server log level (default warn)
#   REDIS_URL          Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every scenario answered only the expected statuses with
# no socket errors; 1 otherwise (the table is still printed); 2 on set-up errors.

set -Eeuo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"

DURATION="${BENCH_DURATION:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "bench: BENCH_ROUNDS must be a whole number from 1 to 99, not '$ROUNDS'" >&2; exit 2; }
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
WARMUP="${BENCH_WARMUP:-2}"
[[ "$WARMUP" =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
WRITE_IDS="${BENCH_WRITE_IDS:-1000}"
MIX_IDS="${BENCH_MIX_IDS:-10000}"
RATE="${BENCH_RATE:-5000}"
RATE_DURATION="${BENCH_RATE_DURATION:-10}"
RATE_WARMUP="${BENCH_RATE_WARMUP:-2}"
POSTGRES="${BENCH_POSTGRES:-1}"
PG_SERVER_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
PG_SERVER_URL="${PG_SERVER_URL%/}"
TARGET="${BENCH_TARGET:-0.60}"
WRITE_TARGET="${BENCH_WRITE_TARGET:-0.30}"
P99_TARGET_MS="${BENCH_P99_TARGET_MS:-2}"
INSTANCES=1  # instances running now: 2 while the cache-off one serves its rows
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
KEY_PREFIX="bench-$$-$(date +%s):"
READ_ID="bench-read"
export BENCH_WRITE_IDS="$WRITE_IDS"
export BENCH_PUT_ID_PREFIX="bench-put-"
export BENCH_PATCH_ID_PREFIX="bench-patch-"
export BENCH_RECORD_JSON="$BENCH_DIR/record.json"
export BENCH_MIX_IDS="$MIX_IDS"
export BENCH_MIX_ID_PREFIX="bench-mix-"
DB=""
[[ "$POSTGRES" == 1 ]] && DB="progressd_bench_$$_$(date +%s)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/progressd-bench.XXXXXX")"
# Production layers on: both instances take read and write tokens and allow
# one browser origin (CORS), and every request carries a token and that
# Origin, as a dashboard polling from another origin would: GETs the read
# token (the wrk rows, oha), writes the write token (bench/report.lua's
# prebuilt writes, mix.lua's PATCHes, oha's PATCHes), every curl here the
# write token (which reads too) through a curlrc of its own. /healthz is
# public, but gets the same headers, so that its CORS work is paid too.
export BENCH_READ_TOKEN="bench-read-$$"
export BENCH_WRITE_TOKEN="bench-write-$$"
export BENCH_ORIGIN="https://dashboard.bench.example"
printf 'header = "Authorization: Bearer %s"\nheader = "Origin: %s"\n' "$BENCH_WRITE_TOKEN" "$BENCH_ORIGIN" >"$WORK/.curlrc"
export CURL_HOME="$WORK"
# Main instance: default configuration (read cache on).
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
BASE=""
# Second instance: same Redis and key prefix, PROGRESS_CACHE_MAX_AGE_MS=0.
NOCACHE_LOG="$WORK/server-cache-off.log"
NOCACHE_PID=""
NOCACHE_BASE=""
WRK_PID=""
OHA_PIDS=()
SAMPLER_PID=""

log() { printf '%s\n' "$*" >&2; }
die() { log "bench: $*"; exit 2; }

# --- clean-up: our Redis keys, then our server (by its own PID) -----------

redis() { redis-cli -u "$REDIS_URL" --no-auth-warning "$@"; }

delete_keys() {
  if command -v redis-cli >/dev/null 2>&1 && ! redis PING >/dev/null 2>&1; then
    log "bench: cannot reach Redis at ${REDIS_URL%%@*} to delete keys under ${KEY_PREFIX} (records expire within 15 minutes; the ${KEY_PREFIX}progressd:* index keys do not: delete them by hand)"
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
      log "bench: WARNING: ${left} keys under ${KEY_PREFIX} are left in Redis (records expire within 15 minutes; the ${KEY_PREFIX}progressd:* index keys do not: delete them by hand)"
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
    curl -s -o /dev/null -X DELETE "$base/progress/${BENCH_MIX_ID_PREFIX}[0-$((MIX_IDS - 1))]" || true
    log "bench: redis-cli not found; deleted the bench records through the API"
  fi
}

psql_admin() { psql "$PG_SERVER_URL/postgres" -XAtq -v ON_ERROR_STOP=1 "$@"; }
DB_CREATED=0
drop_database() {
  (( DB_CREATED )) || return 0
  # WITH (FORCE) ends the connections to this database only (ours).
  if psql_admin -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1; then
    log "bench: dropped database $DB"
  else
    log "bench: WARNING: could not drop database $DB; drop it by hand"
  fi
  DB_CREATED=0
}

# Instances, each by its own PID (never by name): SIGTERM to each, up to
# 5 s for them to finish, then SIGKILL to any that is still there.
stop_pids() {
  local pids=() pid _
  for pid in "$@"; do
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
}
stop_servers() {
  stop_pids "$SERVER_PID" "$NOCACHE_PID"
  SERVER_PID=""
  NOCACHE_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
  local pid
  for pid in "${OHA_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ -n "$SAMPLER_PID" ]]; then kill -TERM "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
  delete_keys
  stop_servers
  drop_database
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
[[ "$POSTGRES" == 0 ]] || command -v psql >/dev/null 2>&1 || die "psql is required (or BENCH_POSTGRES=0)"
OHA="${BENCH_OHA:-$(command -v oha || true)}"
[[ -n "$OHA" || ! -x "$HOME/.cargo/bin/oha" ]] || OHA="$HOME/.cargo/bin/oha"

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
echo "wrk:         $( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}'), ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} per scenario and round, ${ROUNDS} rounds"
echo "redis:       ${REDIS_URL%%@*}$([[ "$REDIS_URL" == *@* ]] && echo '@…') ${redis_version:+(Redis $redis_version)}, key prefix ${KEY_PREFIX}"
if [[ "$POSTGRES" == 1 ]]; then
  echo "postgres:    ${PG_SERVER_URL%%@*}@… ($(psql_admin -c 'SHOW server_version' 2>/dev/null || echo '?')), new database ${DB} (the durable tier)"
else
  echo "postgres:    none (BENCH_POSTGRES=0: Redis alone)"
fi
echo "fixed rate:  $([[ "$RATE" == 0 ]] && echo "skipped (BENCH_RATE=0)" || echo "${RATE} requests/s for ${RATE_DURATION} s, ${ROUNDS} rounds, ${OHA:-oha not found}")"
# Other heavy processes now (by process name; the numbers move with them).
busy="$( { ps -eo comm= | grep -E '^(sse_load|cargo|rustc|wrk|oha|perf|progressd)$' || true; } | sort | uniq -c \
        | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')"
echo "busy:        ${busy:-none} (other heavy processes at the start, by name)"
echo

# --- build the way the Dockerfile does ---------------------------------------

BIN="${BENCH_BIN:-$ROOT/target/release/progressd}"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_BIN:-}" ]]; then
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
  local database=(-u DATABASE_URL)
  [[ -z "$DB" ]] || database=(DATABASE_URL="$PG_SERVER_URL/$DB")
  # `exec` keeps the PID: $! is the server itself, not a wrapper shell.
  ( cd "$WORK" && exec env -u RUST_LOG "${inherited_progress_vars[@]}" "${database[@]}" \
      PORT="$port" PROGRESS_HOST=127.0.0.1 REDIS_URL="$REDIS_URL" PROGRESS_KEY_PREFIX="$KEY_PREFIX" \
      PROGRESS_TTL_SECONDS=900 PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" \
      PROGRESS_READ_TOKENS="$BENCH_READ_TOKEN" PROGRESS_WRITE_TOKENS="$BENCH_WRITE_TOKEN" PROGRESS_CORS_ORIGINS="$BENCH_ORIGIN" "$@" \
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

if [[ -n "$DB" ]]; then
  psql_admin -c "CREATE DATABASE \"$DB\"" >/dev/null || die "cannot create database $DB on ${PG_SERVER_URL%%@*}@…"
  DB_CREATED=1
fi

# Ready means every configured tier is up: with PostgreSQL, its migrations
# have run (until then the durable tier's breaker is open and creates would
# go to the write-behind backlog instead of PostgreSQL).
wait_ready() {  # base
  local _
  for _ in $(seq 1 300); do
    if [[ "$(curl -s --max-time 2 "$1/readyz" || true)" == *'"status":"ok"'* ]]; then return 0; fi
    sleep 0.1
  done
  die "$1/readyz did not say ok within 30 s: $(curl -s --max-time 2 "$1/readyz" || true)"
}

start_with_retries main
log "bench: progressd (pid $SERVER_PID, default configuration: read cache on; tokens and a CORS origin set) is up at $BASE"
wait_ready "$BASE"

# Resident memory of an instance, from /proc/PID/status: "VmRSS VmHWM" in MB.
rss_of() {
  awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 } END { printf "%.1f %.1f\n", r / 1024, h / 1024 }' "/proc/$1/status" 2>/dev/null \
    || echo "? ?"
}
sleep 1  # idle: up, ready, listeners subscribed, nothing asked yet
read -r RSS_IDLE_MAIN _ < <(rss_of "$SERVER_PID")
RSS_IDLE_OFF="-" RSS_AFTER_OFF="-" HWM_OFF="-"  # set while the cache-off instance runs

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
# The mix's records: 16 requests at a time (curl -Z), each a create.
bad="$(curl -s -Z --parallel-max 16 -X PUT "${json[@]}" --data-binary "@$BENCH_RECORD_JSON" \
        -o /dev/null -w '%{http_code}\n' "$BASE/progress/${BENCH_MIX_ID_PREFIX}[0-$((MIX_IDS - 1))]" 2>/dev/null \
      | grep -cvE '^20[01]$' || true)"
[[ "$bad" == 0 ]] || die "seeding ${BENCH_MIX_ID_PREFIX}* : $bad of $MIX_IDS PUTs did not answer 200/201"
log "bench: seeded $READ_ID (ETag $ETAG), 2 × $WRITE_IDS write records and $MIX_IDS mix records"
# The seeding inserted ~12,000 rows into an empty table: without this,
# autovacuum (VACUUM and ANALYZE of the new rows) starts on its own a minute
# later, in the middle of a measured scenario.
if [[ -n "$DB" ]]; then
  psql "$PG_SERVER_URL/$DB" -XAtq -c "VACUUM ANALYZE progress" >/dev/null 2>&1 || log "bench: VACUUM ANALYZE progress failed"
fi

# The main instance's read cache is live only while its change listener is
# subscribed; otherwise its GETs go to Redis and the "cache on" rows would not
# measure the default configuration. Every instance with Redis subscribes (the
# notices also carry live updates), so at least $INSTANCES subscribers are
# expected; fewer means some instance's listener is down. The prefix is this
# run's own, so nobody else subscribes to the channel. (Needs redis-cli;
# skipped without it.)
CHANGES_CHANNEL="${KEY_PREFIX}progress:changes"
subscribers() { redis PUBSUB NUMSUB "$CHANGES_CHANNEL" 2>/dev/null | sed -n 2p | tr -d '\r' || true; }
check_listener() {  # when
  command -v redis-cli >/dev/null 2>&1 || return 0
  local n
  n="$(subscribers)"
  [[ "$n" =~ ^[0-9]+$ ]] && (( n >= INSTANCES )) || \
    problems+=("change listeners $1: ${n:-?} subscribers on $CHANGES_CHANNEL, expected at least $INSTANCES (one per instance); the cache-on rows may not have measured the cache")
}
wait_listeners() {  # the listeners subscribe in the background after start-up
  command -v redis-cli >/dev/null 2>&1 || return 0
  local n _
  for _ in $(seq 1 50); do
    n="$(subscribers)"
    [[ "$n" =~ ^[0-9]+$ ]] && (( n >= INSTANCES )) && return 0
    sleep 0.1
  done
}
wait_listeners
check_listener "before the run"

# --- scenarios ----------------------------------------------------------------
# name | expected status | wrk arguments. Reads first: the writes never touch
# $READ_ID, so its ETag stays valid for the 304 scenarios. The *_off scenarios
# run against the second instance (PROGRESS_CACHE_MAX_AGE_MS=0); every other
# one, /healthz included, against the main instance (default configuration).
# The mix runs last among the wrk scenarios, then the fixed-rate mix (oha).

NAMES=(healthz get get_304 get_off get_304_off put patch mix)
if [[ -n "${BENCH_SCENARIOS:-}" ]]; then
  chosen=(healthz)
  for name in "${NAMES[@]:1}"; do [[ " $BENCH_SCENARIOS " == *" $name "* ]] && chosen+=("$name"); done
  [[ " $BENCH_SCENARIOS " == *" rate "* ]] || RATE=0
  NAMES=("${chosen[@]}")
fi
declare -A LABEL=(
  [healthz]="GET /healthz"
  [get]="GET /progress/{id}"
  [get_304]="GET /progress/{id} (304)"
  [get_off]="GET /progress/{id} (cache off)"
  [get_304_off]="GET /progress/{id} (304, cache off)"
  [put]="PUT /progress/{id}"
  [patch]="PATCH /progress/{id}"
  [mix]="mix 90% GET / 10% PATCH, ${MIX_IDS} ids"
  [rate]="same mix at ${RATE}/s (fixed rate)"
)
declare -A EXPECT=([healthz]=200 [get]=200 [get_304]=304 [get_off]=200 [get_304_off]=304 [put]=200 [patch]=200 [mix]=200)
wrk_args() {
  case "$1" in
    healthz)     echo "-s $BENCH_DIR/report.lua $BASE/healthz" ;;
    get)         echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;
    get_304)     echo "-s $BENCH_DIR/report.lua $BASE/progress/$READ_ID" ;;  # + If-None-Match below
    get_off)     echo "-s $BENCH_DIR/report.lua $NOCACHE_BASE/progress/$READ_ID" ;;
    get_304_off) echo "-s $BENCH_DIR/report.lua $NOCACHE_BASE/progress/$READ_ID" ;;  # + If-None-Match below
    put)         echo "-s $BENCH_DIR/put.lua $BASE" ;;
    patch)       echo "-s $BENCH_DIR/patch.lua $BASE" ;;
    mix)         echo "-s $BENCH_DIR/mix.lua $BASE" ;;
  esac
}
extra_headers() {
  printf '%s\n' "Authorization: Bearer $BENCH_READ_TOKEN" "Origin: $BENCH_ORIGIN"
  [[ "$1" == get_304 || "$1" == get_304_off ]] && printf '%s\n' "If-None-Match: $ETAG"
  return 0
}

MIX_PATCH_BODY='{"current":1,"message":"Processed 1 of 480 segments"}'
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
    mix)     # 9 GETs and 1 PATCH: the status of any that is not 200, the mean size
             { for _ in 1 2 3 4 5 6 7 8 9; do probe "$BASE/progress/${BENCH_MIX_ID_PREFIX}0"; done
               probe -X PATCH "${json[@]}" --data-binary "$MIX_PATCH_BODY" "$BASE/progress/${BENCH_MIX_ID_PREFIX}0"; } \
               | awk '{ if ($1 != 200) code = $1; size += $2 } END { print (code ? code : 200), int(size / NR) }' ;;
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
  log "bench: warming up ($WARMUP each on healthz and get)"
  run_wrk healthz "$WARMUP" "$WORK/warmup-healthz.txt" || true
  run_wrk get "$WARMUP" "$WORK/warmup-get.txt" || true
fi

# The version of $READ_ID as Redis holds it (the header line of the stored
# value, read directly): what every ETag check compares with.
stored_etag() {
  command -v redis-cli >/dev/null 2>&1 || { echo "$ETAG"; return 0; }
  redis GETRANGE "${KEY_PREFIX}progress:$READ_ID" 0 63 2>/dev/null | grep -oE '^\{"v":[0-9]+' | sed 's/.*:/"/; s/$/"/' || true
}

# The cache-off instance runs only for its own rows. Every instance hears
# every change notice (one more Redis PUBLISH delivery, one more process
# waking per write) and holds its share of two CPUs even when idle, so while
# it runs it takes from whatever else is measured; the other rows measure
# the main instance alone, as /healthz does.
start_cache_off() {
  start_with_retries cache-off PROGRESS_CACHE_MAX_AGE_MS=0
  log "bench: progressd (pid $NOCACHE_PID, PROGRESS_CACHE_MAX_AGE_MS=0: read cache off) is up at $NOCACHE_BASE"
  wait_ready "$NOCACHE_BASE"
  sleep 1
  read -r RSS_IDLE_OFF _ < <(rss_of "$NOCACHE_PID")
  INSTANCES=2
  wait_listeners
  check_listener "with the cache-off instance"
  local etag_off
  etag_off="$(etag_of "$NOCACHE_BASE" "$READ_ID")"
  [[ "$etag_off" == "$ETAG" ]] || \
    problems+=("GET /progress/$READ_ID: the cache-off instance answered ETag '${etag_off}', the main instance $ETAG")
  [[ "$WARMUP" == 0s ]] || run_wrk get_off "$WARMUP" "$WORK/warmup-get_off.txt" || true
}
stop_cache_off() {
  [[ -n "$NOCACHE_PID" ]] || return 0
  local etag_after
  etag_after="$(etag_of "$NOCACHE_BASE" "$READ_ID")"
  [[ "$etag_after" == "$ETAG" ]] || \
    problems+=("GET /progress/$READ_ID via the cache-off instance: ETag moved from $ETAG to '${etag_after}' during its rows")
  read -r RSS_AFTER_OFF HWM_OFF < <(rss_of "$NOCACHE_PID")
  stop_pids "$NOCACHE_PID"
  NOCACHE_PID=""
  INSTANCES=1
  log "bench: stopped the cache-off instance"
}

# With PostgreSQL, the write rows leave a write-behind backlog that is
# flushed up to 10 s later (PROGRESS_PERSIST_INTERVAL_SECONDS): wait until the
# main instance's backlog is empty (its /metrics gauge), at most 20 s, so that
# a scenario does not pay for the previous one's flushes.
backlog() { curl -s --max-time 2 "$BASE/metrics" | awk '$1 == "progressd_write_behind_backlog" { print $2 }'; }
drain_backlog() {
  [[ -n "$DB" ]] || return 0
  local b=""
  for _ in $(seq 1 80); do
    b="$(backlog)"
    [[ "$b" == 0 || -z "$b" ]] && return 0
    sleep 0.25
  done
  log "bench: the write-behind backlog still holds ${b} records after 20 s"
}

# Other people's load: once a second, the heavy processes (by name) that are
# not this script's children, with their command names. Each row then reports
# the most seen during its run ("others" column): 0 means nobody else's
# wrk/cargo/rustc/oha/perf/valgrind/sse_load/progressd was running.
HEAVY='^(wrk|cargo|rustc|sse_load|oha|perf|valgrind|callgrind-amd64|addr2line|progressd)$'
(
  trap - EXIT INT TERM ERR
  while :; do
    n="$(ps -eo ppid=,comm= | awk -v me="$$" -v re="$HEAVY" '$1 != me && $2 ~ re { n++; names = names " " $2 } END { print n + 0, names }')"
    echo "$(date +%s) $n"
    sleep 1
  done
) >"$WORK/others.log" 2>/dev/null &
SAMPLER_PID=$!
# The share of CPU time the hypervisor gave to other guests ("steal", from
# /proc/stat) between two snapshots: on a shared VM the rows that lost more
# of it are the slower ones, whatever the code did.
cpu_snapshot() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
steal_since() {  # "steal total" of an earlier snapshot → percent since
  local now
  now="$(cpu_snapshot)"
  awk -v a="$1" -v b="$now" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.1f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}
# Rounds are lines "<value> <round> ...". middle_round lower|upper: the line
# of the median value (with an even count, the lower or the upper of the two
# middle ones). value_range SCALE FORMAT: "lo-hi/n" of value ÷ SCALE, in
# FORMAT (auto: two decimals below 10, none above).
middle_round() {
  sort -g | awk -v upper="$([[ "$1" == upper ]] && echo 1 || echo 0)" \
    '{ r[NR] = $0 } END { print r[upper ? int(NR / 2) + 1 : int((NR + 1) / 2)] }'
}
value_range() {
  awk -v s="$1" -v f="$2" '{ v = $1 / s; if (NR == 1 || v < lo) lo = v; if (NR == 1 || v > hi) hi = v }
    END { if (f == "auto") f = (hi < 10 ? "%.2f-%.2f/%d" : "%.0f-%.0f/%d"); printf f, lo, hi, NR }'
}
others_between() {  # from to: most foreign heavy processes seen, and their names
  awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $2 >= n { n = $2; $1 = ""; $2 = ""; names = $0 } END { print n + 0 }' "$WORK/others.log"
}

declare -A R=()
for name in "${NAMES[@]}"; do
  if [[ "$name" == *_off ]]; then
    [[ -n "$NOCACHE_PID" ]] || start_cache_off
  else
    stop_cache_off
  fi
  drain_backlog
  read -r pcode psize < <(probe_scenario "$name")
  if [[ "$pcode" != "${EXPECT[$name]}" ]]; then
    problems+=("${LABEL[$name]}: a probe request answered $pcode, expected ${EXPECT[$name]}")
  fi
  # The machine's speed drifts over minutes (other tenants of the host):
  # /healthz right before the row, for as long, is what the row is divided
  # by; and the pair runs $ROUNDS times, the round with the median ratio
  # being the one reported (the other rounds give the row's range).
  paired=0
  [[ "$name" != healthz && "${BENCH_PAIRED:-1}" == 1 ]] && paired=1
  t_start=$(date +%s)
  cpu_start="$(cpu_snapshot)"
  rounds=()  # "<ratio, or requests/s when unpaired> <round> <healthz requests/s>"
  for round in $(seq 1 "$ROUNDS"); do
    (( round == 1 )) || drain_backlog
    base="-"
    if (( paired )); then
      run_wrk healthz "$DURATION" "$WORK/$name.$round.healthz.txt" || true
      line="$(grep -m1 '^BENCH_RESULT ' "$WORK/$name.$round.healthz.txt" || true)"
      for kv in ${line#BENCH_RESULT }; do [[ "${kv%%=*}" == rps ]] && base="${kv#*=}"; done
      if [[ "$base" == - ]]; then
        problems+=("${LABEL[$name]}: the /healthz run before round $round printed no result (see $WORK/$name.$round.healthz.txt)")
        continue
      fi
    fi
    log "bench: ${LABEL[$name]} for $DURATION, round $round of $ROUNDS (load avg $(cut -d' ' -f1 /proc/loadavg))"
    out="$WORK/$name.$round.txt"
    if ! run_wrk "$name" "$DURATION" "$out"; then
      problems+=("${LABEL[$name]}: wrk failed in round $round: $(tail -n 2 "$out" | tr '\n' ' ')")
    fi
    line="$(grep -m1 '^BENCH_RESULT ' "$out" || true)"
    if [[ -z "$line" ]]; then
      problems+=("${LABEL[$name]}: wrk printed no result in round $round (see $out)")
      continue
    fi
    rps=""
    for kv in ${line#BENCH_RESULT }; do [[ "${kv%%=*}" == rps ]] && rps="${kv#*=}"; done
    rounds+=("$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b == "-") print a; else printf "%.4f", a / b }') $round $base")
  done
  R[$name.others]="$(others_between "$t_start" "$(date +%s)")"
  R[$name.steal]="$(steal_since "$cpu_start")"
  (( ${#rounds[@]} > 0 )) || continue
  # With an even number of rounds, the lower of the two middle ones.
  read -r _ round base < <(printf '%s\n' "${rounds[@]}" | middle_round lower)
  line="$(grep -m1 '^BENCH_RESULT ' "$WORK/$name.$round.txt")"
  for kv in ${line#BENCH_RESULT }; do R[$name.${kv%%=*}]="${kv#*=}"; done
  [[ "$base" == - ]] || R[$name.base]="$base"
  R[$name.rounds]="$(printf '%s\n' "${rounds[@]}" | value_range 1 auto)"
  R[$name.probe_size]="$psize"
done

# --- fixed rate: the mix at RATE requests/s, open loop -----------------------------
# wrk is closed-loop: each connection waits for its answer before it sends
# again, so a slow answer delays the requests behind it and they are never
# timed (coordinated omission). oha -q sends on a schedule, and with
# --latency-correction times each request from when it was due. oha sends one
# method per process, so two run at once: GETs at 90 % of the rate and PATCHes
# at 10 %, each over its own shuffled list of the mix's URLs; their
# per-request CSVs are merged and the percentiles computed over every request.
RATE_DONE=0
if [[ "$RATE" != 0 ]]; then
  if [[ -z "$OHA" || ! -x "$OHA" ]]; then
    problems+=("fixed-rate run skipped: oha not found (cargo install oha --locked, or BENCH_OHA=/path/to/oha; BENCH_RATE=0 skips it)")
  else
    python3 "$BENCH_DIR/rate_mix.py" urls "$BASE" "$BENCH_MIX_ID_PREFIX" "$MIX_IDS" "$WORK"
    get_rate=$(( RATE * 9 / 10 ))
    patch_rate=$(( RATE - get_rate ))
    # The floor of this measurement on this machine: GET /healthz through the
    # same two oha processes at the same rates and connections (so the same
    # load generator CPU and scheduling), right before the mix.
    for n in $(seq 1 100); do echo "$BASE/healthz"; done >"$WORK/rate-healthz.urls"
    # oha_pair TAG GET-URLS OTHER-URLS PATCH: oha at get_rate over GET-URLS and,
    # at the same time, at patch_rate over OTHER-URLS (PATCHes when PATCH is 1,
    # else GETs); the merged summary goes to $WORK/TAG.result.
    oha_pair() {
      local tag="$1" get_urls="$2" other_urls="$3" method=() pid failed=0
      local read_headers=(-H "Authorization: Bearer $BENCH_READ_TOKEN" -H "Origin: $BENCH_ORIGIN")
      local other_headers=("${read_headers[@]}")
      [[ "$4" == 1 ]] && method=(-m PATCH -T application/json -d "$MIX_PATCH_BODY") \
        && other_headers=(-H "Authorization: Bearer $BENCH_WRITE_TOKEN" -H "Origin: $BENCH_ORIGIN")
      # When the pair started (Unix seconds): oha's CSV times count from here,
      # so slow requests can be matched against the server log's times.
      date +%s.%N >"$WORK/$tag.started"
      # The hypervisor's steal, sampled every 10 ms, to tell the requests it
      # stalled from those the server did.
      python3 "$BENCH_DIR/rate_mix.py" steal "$WORK/$tag.steal" "$((RATE_WARMUP + RATE_DURATION + 1))" &
      local sampler=$!
      "$OHA" --no-tui -q "$get_rate" -z "$((RATE_WARMUP + RATE_DURATION))s" -c 32 --latency-correction --urls-from-file "$get_urls" \
        "${read_headers[@]}" -t 5s --output-format csv -o "$WORK/$tag-a.csv" >"$WORK/$tag-a.log" 2>&1 &
      OHA_PIDS+=($!)
      "$OHA" --no-tui -q "$patch_rate" -z "$((RATE_WARMUP + RATE_DURATION))s" -c 8 --latency-correction --urls-from-file "$other_urls" \
        "${method[@]}" "${other_headers[@]}" -t 5s --output-format csv -o "$WORK/$tag-b.csv" >"$WORK/$tag-b.log" 2>&1 &
      OHA_PIDS+=($!)
      for pid in "${OHA_PIDS[@]}"; do wait "$pid" || failed=1; done
      OHA_PIDS=()
      wait "$sampler" || true
      (( ! failed )) || problems+=("${LABEL[rate]}: oha failed ($tag): $(tail -q -n 2 "$WORK/$tag"-*.log | tr '\n' ' ')")
      python3 "$BENCH_DIR/rate_mix.py" summary "$WORK/$tag-a.csv" "$WORK/$tag-b.csv" "$RATE_DURATION" "$RATE_WARMUP" \
        "$(cat "$WORK/$tag.started")" "$WORK/$tag.steal" >"$WORK/$tag.result" 2>>"$WORK/$tag-a.log" || true
    }
    # result_field FILE KEY: one number of a BENCH_RESULT line.
    result_field() { grep -m1 -oE " $2=[0-9]+" "$1" 2>/dev/null | cut -d= -f2 || true; }
    p99_of() { result_field "$1" p99_us; }
    # Like the wrk rows, $ROUNDS rounds of floor then mix; the round with the
    # median mix p99 is reported, the others give its range.
    t_start=$(date +%s)
    rate_rounds=()  # "<mix p99 us> <round> <floor p99 us>"
    cpu_start="$(cpu_snapshot)"
    for round in $(seq 1 "$ROUNDS"); do
      drain_backlog
      round_start="$(cpu_snapshot)"
      log "bench: /healthz at ${RATE}/s through the same harness for ${RATE_DURATION}s, round $round of $ROUNDS"
      oha_pair "rate-healthz-$round" "$WORK/rate-healthz.urls" "$WORK/rate-healthz.urls" 0
      drain_backlog
      log "bench: ${LABEL[rate]} for ${RATE_DURATION}s: GET ${get_rate}/s + PATCH ${patch_rate}/s, round $round of $ROUNDS (load avg $(cut -d' ' -f1 /proc/loadavg))"
      oha_pair "rate-$round" "$WORK/rate-get.urls" "$WORK/rate-patch.urls" 1
      mix_p99="$(p99_of "$WORK/rate-$round.result")"
      if [[ -z "$mix_p99" ]]; then
        problems+=("${LABEL[rate]}: no result in round $round (see $WORK/rate-$round-*.log)")
        continue
      fi
      rate_rounds+=("$mix_p99 $round $(p99_of "$WORK/rate-healthz-$round.result") $(steal_since "$round_start")\
 $(result_field "$WORK/rate-$round.result" slow_n) $(result_field "$WORK/rate-$round.result" slow_stolen)\
 $(result_field "$WORK/rate-$round.result" stolen_max_ms)")
    done
    R[rate.others]="$(others_between "$t_start" "$(date +%s)")"
    R[rate.steal]="$(steal_since "$cpu_start")"
    if (( ${#rate_rounds[@]} > 0 )); then
      # With an even number of rounds, the slower of the two middle ones.
      read -r _ round _ < <(printf '%s\n' "${rate_rounds[@]}" | middle_round upper)
      line="$(cat "$WORK/rate-$round.result")"
      for kv in ${line#BENCH_RESULT }; do R[rate.${kv%%=*}]="${kv#*=}"; done
      line="$(cat "$WORK/rate-healthz-$round.result" 2>/dev/null || true)"
      for kv in ${line#BENCH_RESULT }; do R[rate_healthz.${kv%%=*}]="${kv#*=}"; done
      R[rate.rounds]="$(printf '%s\n' "${rate_rounds[@]}" | sort -n -k2 | awk '{ printf "%s%.2f (floor %.2f, steal %s %%; %s over 2 ms, %s of them during steal; at most %s ms stolen in 100 ms)", (NR > 1 ? ", " : ""), $1 / 1000, $3 / 1000, $4, $5, $6, $7 }')"
      R[rate.range]="$(printf '%s\n' "${rate_rounds[@]}" | value_range 1000 "%.1f-%.1fms/%d")"
      RATE_DONE=1
      R[rate.probe_size]="${R[mix.probe_size]:-}"
      # Requests that the schedule asked for but that never finished are
      # missing from the CSVs: the achieved rate tells.
      if awk -v a="${R[rate.rps]}" -v w="$RATE" 'BEGIN { exit !(a < 0.97 * w) }'; then
        problems+=("${LABEL[rate]}: only ${R[rate.rps]} requests/s completed of ${RATE} asked for (round $round)")
      fi
    fi
  fi
fi

stop_cache_off
# The record must not have changed during the reads, or the 304 runs measured
# 200s. Asked through the main instance and of Redis itself (the cache-off
# instance was asked after its rows).
etag_after="$(etag_of "$BASE" "$READ_ID")"
[[ "$etag_after" == "$ETAG" ]] || \
  problems+=("GET /progress/$READ_ID: ETag moved from $ETAG to '${etag_after}' during the run")
etag_after="$(stored_etag)"
[[ "$etag_after" == "$ETAG" ]] || \
  problems+=("$READ_ID in Redis: version moved from $ETAG to '${etag_after}' during the run")
check_listener "after the run"
read -r RSS_AFTER_MAIN HWM_MAIN < <(rss_of "$SERVER_PID")

# --- table ----------------------------------------------------------------------

get() { echo "${R[$1]:-}"; }
health_rps="$(get healthz.rps)"
ratio() {  # row → its requests/s ÷ the /healthz requests/s it is compared with
  local base="${R[$1.base]:-$health_rps}"
  awk -v a="$(get "$1.rps")" -v b="$base" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && a != "-" && b != "" && a + 0 >= b + 0) }'; }

# The target of each row, and whether it was met (PASS / MISS).
declare -A TGT=() VERDICT=()
TGT[get]=">= ${TARGET}x"
if at_least "$(ratio get)" "$TARGET"; then VERDICT[get]=PASS; else VERDICT[get]=MISS; fi
TGT[get_304]=">= GET"
# Each against the /healthz run beside it, so that a drift of the machine
# between the two rows does not decide it.
ratio_304="$(awk -v a="$(ratio get_304)" -v b="$(ratio get)" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }')"
if at_least "$ratio_304" 1; then VERDICT[get_304]=PASS; else VERDICT[get_304]=MISS; fi
for w in put patch; do
  TGT[$w]=">= ${WRITE_TARGET}x"
  if at_least "$(ratio "$w")" "$WRITE_TARGET"; then VERDICT[$w]=PASS; else VERDICT[$w]=MISS; fi
done
ROW_NAMES=("${NAMES[@]}")
if [[ "$RATE" != 0 ]]; then
  ROW_NAMES+=(rate)
  TGT[rate]="p99 < ${P99_TARGET_MS} ms"
  if (( RATE_DONE )) && awk -v p="$(get rate.p99_us)" -v t="$P99_TARGET_MS" 'BEGIN { exit !(p < t * 1000) }'; then
    VERDICT[rate]=PASS
  else
    VERDICT[rate]=MISS
  fi
fi

echo
printf '%-38s %10s %8s %8s %8s %8s %6s %9s %16s  %-16s %9s %6s %7s\n' \
  "scenario" "requests/s" "p50 us" "p99 us" "p99.9 us" "non-2xx" "sock" "/ healthz" "rounds: range/n" "target" "bytes/req" "others" "steal %"
printf '%-38s %10s %8s %8s %8s %8s %6s %9s %16s  %-16s %9s %6s %7s\n' \
  "--------------------------------------" "----------" "------" "------" "--------" "-------" "----" "---------" "----------------" "----------------" "---------" "------" "-------"
for name in "${ROW_NAMES[@]}"; do
  if [[ -z "$(get "$name.requests")" ]]; then
    printf '%-38s %10s\n' "${LABEL[$name]}" "(no result)"
    continue
  fi
  req="$(get "$name.requests")"
  sock=$(( $(get "$name.connect") + $(get "$name.read") + $(get "$name.write") + $(get "$name.timeout") ))
  status="$(get "$name.status")"
  bpr="$(awk -v b="$(get "$name.bytes")" -v n="$req" 'BEGIN { printf "%d", (n > 0 ? b / n : 0) }')"
  target="${TGT[$name]:-}"
  [[ -z "$target" ]] || target="$target ${VERDICT[$name]}"
  range="$(get "$name.rounds")"
  [[ "$name" != rate ]] || range="$(get rate.range)"
  printf '%-38s %10.0f %8d %8d %8d %8d %6d %9s %16s  %-16s %9d %6s %7s\n' \
    "${LABEL[$name]}" "$(get "$name.rps")" "$(get "$name.p50_us")" "$(get "$name.p99_us")" "$(get "$name.p999_us")" \
    "$status" "$sock" "$([[ "$name" == rate ]] && echo - || ratio "$name")" "${range:--}" "$target" "$bpr" "$(get "$name.others")" "$(get "$name.steal")"

  if (( req == 0 )); then problems+=("${LABEL[$name]}: no request completed"); fi
  if (( status > 0 )); then problems+=("${LABEL[$name]}: $status responses with status ≥ 400"); fi
  if (( sock > 0 )); then
    problems+=("${LABEL[$name]}: socket errors connect $(get "$name.connect"), read $(get "$name.read"), write $(get "$name.write"), timeout $(get "$name.timeout")")
  fi
  # wrk counts 4xx/5xx only. A 200 where a 304 was expected (or an error body
  # where a record was expected) shows up as a different response size. oha's
  # CSV counts body bytes only, so the fixed-rate row is not compared.
  psize="$(get "$name.probe_size")"
  if [[ "$name" != rate ]] && (( req > 0 )) && [[ -n "$psize" ]] && \
     awk -v a="$bpr" -v b="$psize" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d > 0.25 * b + 16) }'; then
    problems+=("${LABEL[$name]}: responses average $bpr bytes, but a ${EXPECT[$name]:-200} response is $psize bytes: other statuses were answered")
  fi
done
echo
if (( RATE_DONE )); then
  echo "fixed rate, rounds:   mix p99 in ms by round: $(get rate.rounds); the table shows the median round"
  echo "fixed rate, floor:    /healthz through the same two oha processes: $(get rate_healthz.requests) requests, p50/p99/p99.9" \
       "$(get rate_healthz.p50_us)/$(get rate_healthz.p99_us)/$(get rate_healthz.p999_us) us"
  echo "fixed rate, by kind:  GET $(get rate.get_n) requests, p50/p99/p99.9 $(get rate.get_p50_us)/$(get rate.get_p99_us)/$(get rate.get_p999_us) us;" \
       "PATCH $(get rate.patch_n), $(get rate.patch_p50_us)/$(get rate.patch_p99_us)/$(get rate.patch_p999_us) us; slowest $(get rate.max_us) us"
  echo "fixed rate, warm-up:  the first ${RATE_WARMUP} s, not counted: $(get rate.warmup_n) requests of the mix, p99 $(get rate.warmup_p99_us) us" \
       "(floor: $(get rate_healthz.warmup_n), p99 $(get rate_healthz.warmup_p99_us) us)"
fi
bases="$(for name in "${NAMES[@]:1}"; do get "$name.base"; echo; done | awk 'NF { n++; if (!n0 || $1 < lo) lo = $1; if ($1 > hi) hi = $1; n0 = 1 } END { if (n) printf "%.0f-%.0f requests/s over %d runs", lo, hi, n }')"
[[ -z "$bases" ]] || echo "healthz beside rows:  $bases (each row's ratio is to the run right before it)"
echo "targets:              GET ÷ healthz $(ratio get) (>= ${TARGET}): ${VERDICT[get]};" \
     "304 ÷ GET $ratio_304 (>= 1): ${VERDICT[get_304]};" \
     "PUT $(ratio put) and PATCH $(ratio patch) (>= ${WRITE_TARGET}): ${VERDICT[put]}, ${VERDICT[patch]}"
if [[ "$RATE" != 0 ]]; then
  echo "                      mix p99 at ${RATE}/s: $( ((RATE_DONE)) && awk -v p="$(get rate.p99_us)" 'BEGIN { printf "%.2f ms", p / 1000 }' || echo "not measured") (< ${P99_TARGET_MS} ms): ${VERDICT[rate]}"
fi
echo "cache off:            GET ÷ healthz $(ratio get_off) (PROGRESS_CACHE_MAX_AGE_MS=0: every read goes to Redis; for comparison, no target)"
echo "progressd VmRSS (MB): main instance idle ${RSS_IDLE_MAIN} (target <= 30), after the run ${RSS_AFTER_MAIN}, peak (VmHWM) ${HWM_MAIN};" \
     "cache-off instance idle ${RSS_IDLE_OFF}, after ${RSS_AFTER_OFF}, peak ${HWM_OFF}"
echo "load avg at the end:  $(cut -d' ' -f1-3 /proc/loadavg)"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  echo "  (wrk and oha output: $WORK; server log: $SERVER_LOG)"
  exit 1
fi
if [[ "${BENCH_STRICT:-0}" == 1 ]]; then
  for name in get get_304 put patch rate; do
    [[ -z "${VERDICT[$name]:-}" || "${VERDICT[$name]}" == PASS ]] || exit 1
  done
fi
exit 0
