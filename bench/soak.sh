#!/usr/bin/env bash
# bench/soak.sh: a steady load for SOAK_SECONDS with records that expire
# after a few seconds, sampling whether Redis keys and memory, PostgreSQL
# rows and progressd's RSS stay flat. See bench/README.md ("soak.sh").
#
# One progressd (release build) on the shared Redis with a unique key prefix
# and on a new database of the shared PostgreSQL (dropped at exit; the Redis
# keys under the prefix are deleted with SCAN + DEL at exit). The load and the
# sampler are bench/soak.py (standard library only): SOAK_RATE requests/s,
# open loop, 20 % PUT of a new id with ttl_seconds=SOAK_TTL, 40 % PATCH and
# 40 % GET of a recently created id; a sample every SOAK_INTERVAL seconds.
#
# Environment (all optional):
#   SOAK_SECONDS       how long the load runs (default 600)
#   SOAK_RATE          requests per second (default 300)
#   SOAK_TTL           ttl_seconds of every record (default 5; README: 1 or more)
#   SOAK_INTERVAL      seconds between samples (default 10)
#   SOAK_CLEANUP       PROGRESS_CLEANUP_INTERVAL_SECONDS (default 30, so that a
#                      short soak sees several cleanups; the server default is 300)
#   SOAK_WARMUP        seconds of samples the verdict leaves out (default
#                      SOAK_CLEANUP + 2 x SOAK_TTL)
#   BENCH_SKIP_BUILD   1: use the existing target/release/progressd
#   BENCH_BIN          another progressd binary
#   BENCH_LOG_LEVEL    server log level (default warn)
#   BENCH_PG_URL       PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL          Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every series stayed flat and at most 0.1 % of the
# requests failed; 1 otherwise; 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=soak
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

SECONDS_TOTAL="${SOAK_SECONDS:-600}"
RATE="${SOAK_RATE:-300}"
TTL="${SOAK_TTL:-5}"
INTERVAL="${SOAK_INTERVAL:-10}"
CLEANUP="${SOAK_CLEANUP:-30}"
WARMUP="${SOAK_WARMUP:-$((CLEANUP + 2 * TTL))}"
for v in SECONDS_TOTAL RATE TTL INTERVAL CLEANUP WARMUP; do require_count "${!v}" "$v"; done

need_tools curl psql python3 redis-cli cargo
redis() { redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning "$@"; }
[[ "$(redis PING 2>/dev/null || true)" == PONG ]] || die "Redis at ${SHARED_REDIS_URL%%@*} does not answer PING"

PREFIX="soak-${RUN_ID}:"
REDIS_PREFIXES+=("$PREFIX")
DB="progressd_soak_${RUN_ID//-/_}"

echo "== progressd soak: does anything grow under a steady load with short TTLs? =="
print_machine
echo "redis:       ${SHARED_REDIS_URL%%@*}, key prefix ${PREFIX}"
echo "database:    ${DB} (new, dropped at exit)"
echo "load:        ${RATE} requests/s for ${SECONDS_TOTAL} s: 20 % PUT (new id, ttl_seconds=${TTL}), 40 % PATCH, 40 % GET"
echo "server:      PROGRESS_CLEANUP_INTERVAL_SECONDS=${CLEANUP}, otherwise defaults; a sample every ${INTERVAL} s, verdict after ${WARMUP} s"
echo

build_release
create_database "$DB"
start_progressd main REDIS_URL="$SHARED_REDIS_URL" DATABASE_URL="$PG_SERVER_URL/$DB" \
  PROGRESS_KEY_PREFIX="$PREFIX" PROGRESS_CLEANUP_INTERVAL_SECONDS="$CLEANUP"
wait_migrated "$DB"

# Host, port and password of the Redis URL for soak.py's own RESP client.
read -r REDIS_HOST REDIS_PORT REDIS_PASSWORD < <(python3 - "$SHARED_REDIS_URL" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379, urllib.parse.unquote(u.password or "") or "-")
EOF
)
[[ "$REDIS_PASSWORD" == "-" ]] && REDIS_PASSWORD=""

status=0
SOAK_REDIS_PASSWORD="$REDIS_PASSWORD" python3 "$BENCH_DIR/soak.py" "$SERVER_BASE" "$SERVER_PID" "$REDIS_HOST" "$REDIS_PORT" \
  "$PREFIX" "$PG_SERVER_URL/$DB" "$SECONDS_TOTAL" "$RATE" "$TTL" "$INTERVAL" "$WARMUP" || status=$?
kill -0 "$SERVER_PID" 2>/dev/null || { log "soak: progressd exited during the run (log: $SERVER_LOG)"; status=1; }
exit "$status"
