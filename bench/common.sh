# bench/common.sh: helpers shared by the bench scripts other than run.sh
# (persist.sh, degraded.sh, cleanup.sh, memory.sh, redis_cost.sh, scale.sh,
# soak.sh, sse.sh).
# Sourced, not run. bench/run.sh is self-contained and does not use it.
#
# Everything a script starts is registered here (register_pid) and stopped
# by its own PID from the EXIT trap; databases it creates are dropped there,
# and Redis keys under its prefix deleted (never FLUSHALL: Redis is shared).
#
# The sourcing script sets BENCH_NAME (used in names and log lines) before
# sourcing, and may define bench_cleanup_extra (runs first in the trap).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BIN="${BENCH_BIN:-$ROOT/target/release/progressd}"

# PostgreSQL server (no database path) and the database to connect to for
# CREATE/DROP DATABASE. Trust auth on the shared server: no password.
PG_SERVER_URL="${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}"
PG_SERVER_URL="${PG_SERVER_URL%/}"
PG_ADMIN_URL="$PG_SERVER_URL/postgres"
SHARED_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

RUN_ID="$$-$(date +%s)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/progressd-${BENCH_NAME}.XXXXXX")"

PIDS=()            # every process we started, stopped in reverse order
declare -A PID_NAME=()
DATABASES=()       # databases we created, dropped at exit
REDIS_PREFIXES=()  # key prefixes we used on the shared Redis

log() { printf '%s\n' "$*" >&2; }
die() { log "$BENCH_NAME: $*"; exit 2; }
# require_count VALUE NAME: VALUE must be a whole number ≥ 1 (NAME: the setting, for the message).
require_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "$2 must be a whole number ≥ 1 (got '$1')"; }

# --- processes ---------------------------------------------------------------

register_pid() { PIDS+=("$1"); PID_NAME[$1]="$2"; }

# stop_pid PID [SIGNAL]: SIGNAL (default TERM) to that one process, up to
# 5 s for it to exit, then SIGKILL. Never by name. Sets STOP_STATUS to its
# exit status (127 when it was not our child or was already reaped).
stop_pid() {
  local pid="$1" sig="${2:-TERM}" _
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$BENCH_NAME: ${PID_NAME[$pid]:-process} ${pid} ignored SIG$sig for 5 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  STOP_STATUS=0
  wait "$pid" 2>/dev/null || STOP_STATUS=$?
}

# --- PostgreSQL --------------------------------------------------------------

psql_admin() { psql "$PG_ADMIN_URL" -XAtq -v ON_ERROR_STOP=1 "$@"; }
psql_db() { local db="$1"; shift; psql "$PG_SERVER_URL/$db" -XAtq -v ON_ERROR_STOP=1 "$@"; }

# create_database NAME: a new, empty database, dropped by the EXIT trap.
create_database() {
  psql_admin -c "CREATE DATABASE \"$1\"" >/dev/null || die "cannot create database $1 on ${PG_SERVER_URL}"
  DATABASES+=("$1")
}

drop_databases() {
  local db
  for db in "${DATABASES[@]}"; do
    # WITH (FORCE) ends connections to this database only (ours).
    if psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1; then
      log "$BENCH_NAME: dropped database $db"
    else
      log "$BENCH_NAME: WARNING: could not drop database $db; drop it by hand"
    fi
  done
  DATABASES=()
}

# wait_migrated DB: until progressd has applied its migrations in DB (its
# PostgreSQL breaker half-opens right after), at most 30 s.
wait_migrated() {
  local _
  for _ in $(seq 1 300); do
    if [[ "$(psql_db "$1" -c "SELECT count(*) FROM progressd_schema_history" 2>/dev/null || true)" =~ ^[1-9] ]]; then
      sleep 0.5
      return 0
    fi
    sleep 0.1
  done
  die "progressd did not migrate database $1 within 30 s"
}

# --- Redis ---------------------------------------------------------------------

delete_redis_keys() {  # on the shared Redis, our prefixes only
  local prefix left
  command -v redis-cli >/dev/null 2>&1 || return 0
  for prefix in "${REDIS_PREFIXES[@]}"; do
    redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning --scan --pattern "${prefix}*" 2>/dev/null \
      | xargs -r -d '\n' -n 500 redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning DEL >/dev/null 2>&1 || true
    left="$(redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning --scan --pattern "${prefix}*" 2>/dev/null | wc -l || echo '?')"
    if [[ "$left" == 0 ]]; then
      log "$BENCH_NAME: deleted the Redis keys under ${prefix}"
    else
      log "$BENCH_NAME: WARNING: ${left} keys under ${prefix} left in Redis (they expire within 15 minutes)"
    fi
  done
}

# --- clean-up ------------------------------------------------------------------

cleanup() {
  local status=$? i
  trap - EXIT INT TERM
  if declare -F bench_cleanup_extra >/dev/null; then bench_cleanup_extra || true; fi
  for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do stop_pid "${PIDS[$i]}"; done
  delete_redis_keys
  drop_databases
  log "$BENCH_NAME: logs kept in $WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "$BENCH_NAME: failed at line $LINENO: $BASH_COMMAND"' ERR

# --- tools, machine, build ---------------------------------------------------------

need_tools() {
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || die "$tool is required"; done
}

print_machine() {
  local cpu_model commit dirty=""
  cpu_model="$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
  commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    dirty=" (plus uncommitted changes in the working tree)"
  fi
  echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine:     $(nproc) CPUs, ${cpu_model:-unknown CPU model}, $(uname -sr)"
  echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
  echo "commit:      ${commit}${dirty}"
  echo "postgres:    ${PG_SERVER_URL%%@*}@… ($(psql_admin -c 'SHOW server_version' 2>/dev/null || echo '?'))"
}

build_release() {
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_BIN:-}" ]]; then
    log "$BENCH_NAME: cargo build --release --locked"
    (cd "$ROOT" && cargo build --release --locked) >&2 || die "the release build failed"
  fi
  [[ -x "$BIN" ]] || die "$BIN does not exist"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- progressd ---------------------------------------------------------------------

# The server's settings come from here only: inherited PROGRESS_* (and
# RUST_LOG, REDIS_URL, DATABASE_URL) are unset, and it runs in $WORK so that
# no progressd.toml is read.
UNSET_ENV=(-u RUST_LOG -u REDIS_URL -u DATABASE_URL)
while IFS= read -r v; do
  [[ "$v" == PROGRESS_* ]] && UNSET_ENV+=(-u "$v")
done < <(compgen -e)

# start_progressd NAME [VAR=value ...]: starts the release binary on a free
# port with the given settings (plus PROGRESS_HOST=127.0.0.1, TTL 900 s and
# log level warn unless given) and waits for /healthz. Sets SERVER_PID,
# SERVER_BASE and SERVER_LOG.
start_progressd() {
  local name="$1" port pid attempt _
  shift
  SERVER_LOG="$WORK/server-$name.log"
  for attempt in 1 2 3; do  # a port taken between free_port and bind: try another
    port="$(free_port)" || die "no free port found"
    ( cd "$WORK" && exec env "${UNSET_ENV[@]}" PORT="$port" PROGRESS_HOST=127.0.0.1 \
        PROGRESS_TTL_SECONDS=900 PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" "$@" "$BIN" ) >>"$SERVER_LOG" 2>&1 &
    pid=$!
    register_pid "$pid" "progressd ($name)"
    SERVER_PID="$pid"
    SERVER_BASE="http://127.0.0.1:$port"
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      if curl -fs -o /dev/null --max-time 1 "$SERVER_BASE/healthz"; then return 0; fi
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "progressd ($name) did not answer /healthz within 30 s (log: $SERVER_LOG)"
    wait "$pid" 2>/dev/null || true
    log "$BENCH_NAME: progressd ($name) exited at start-up (attempt $attempt): $(tail -n 3 "$SERVER_LOG")"
  done
  die "progressd ($name) would not start (log: $SERVER_LOG)"
}

# Microseconds since the epoch, without a fork.
now_us() { local t="$EPOCHREALTIME"; echo "${t/./}"; }

# sleep_until_us T: sleeps until the epoch time T (microseconds), if ahead.
sleep_until_us() {
  local d=$(( $1 - $(now_us) ))
  (( d > 0 )) && sleep "$(printf '%d.%06d' $((d / 1000000)) $((d % 1000000)))"
  return 0
}
