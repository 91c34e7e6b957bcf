#!/usr/bin/env bash
# bench/scoped.sh: GET of a cached record with a scoped read token (an HS256
# JWT, issue 19) next to the same GET with a static read token, in one run.
# See bench/README.md ("Scoped tokens (bench/scoped.sh)").
#
# One release instance on the shared Redis (its own key prefix, deleted at
# exit), read cache on (the default), read and write tokens, a signing key,
# and a rate limit for scoped tokens far above the load (so every request
# pays the limiter's check but none is refused). One record; its id is the
# token's `sub`. Rows, each SCOPED_ROUNDS rounds, the rows of a round back to
# back with the order alternating between rounds, so they share the
# machine's noise:
#
#   static   Authorization: Bearer <read token>
#   jwt      Authorization: Bearer <scoped token>   (from `progressd token`)
#   query    ?access_token=<scoped token>            (as EventSource sends it)
#
# The table gives each row's median requests/s and p99, and the median of
# the rounds' jwt/static and query/static ratios (target: 0.9 or more); and,
# since a shared machine makes requests/s noisy, the server's CPU time per
# request (utime + stime of the process over the run, from /proc), which
# other processes' load disturbs far less.
#
# Environment (all optional):
#   SCOPED_ROUNDS       rounds (default 3)
#   SCOPED_DURATION     seconds of each wrk run (default 5)
#   SCOPED_WARMUP       seconds of wrk per row before the rounds, 0 to skip (default 1)
#   SCOPED_THREADS      wrk threads (default 2)
#   SCOPED_CONNECTIONS  wrk connections (default 64)
#   BENCH_SKIP_BUILD    1: use the existing target/release/progressd
#   BENCH_BIN           run this binary instead (implies no build)
#   BENCH_LOG_LEVEL     server log level (default warn)
#   REDIS_URL           the shared Redis (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every run answered only 200s with no socket errors;
# 1 otherwise (the table is still printed); 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=scoped
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

ROUNDS="${SCOPED_ROUNDS:-3}"
DURATION="${SCOPED_DURATION:-5}"
WARMUP="${SCOPED_WARMUP:-1}"
THREADS="${SCOPED_THREADS:-2}"
CONNECTIONS="${SCOPED_CONNECTIONS:-64}"
require_count "$ROUNDS" SCOPED_ROUNDS
require_count "$DURATION" SCOPED_DURATION
if ! command -v wrk >/dev/null 2>&1; then
  log "$BENCH_NAME: wrk not found; installing it with apt-get"
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y wrk >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y wrk >&2; }
fi
need_tools wrk curl python3 redis-cli

READ_TOKEN="bench-read-token-$RUN_ID"
WRITE_TOKEN="bench-write-token-$RUN_ID"
SIGNING_KEY="bench:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
ID="bench-scoped"
PREFIX="bench-scoped-$RUN_ID:"
REDIS_PREFIXES+=("$PREFIX")

build_release
echo "## Scoped tokens: GET with a JWT next to GET with a static read token"
echo
echo '```'
print_machine
echo "wrk:         ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} s per run, ${ROUNDS} rounds"
echo '```'

start_progressd main REDIS_URL="$SHARED_REDIS_URL" PROGRESS_KEY_PREFIX="$PREFIX" \
  PROGRESS_READ_TOKENS="$READ_TOKEN" PROGRESS_WRITE_TOKENS="$WRITE_TOKEN" \
  PROGRESS_SIGNING_KEYS="$SIGNING_KEY" \
  PROGRESS_SCOPED_RATE_PER_SECOND=10000000 PROGRESS_SCOPED_RATE_BURST=10000000
BASE="$SERVER_BASE"

curl -fsS -o /dev/null -X PUT "$BASE/progress/$ID" -H "Authorization: Bearer $WRITE_TOKEN" \
  -H 'Content-Type: application/json' --data-binary "@$BENCH_DIR/record.json" \
  || die "the PUT of the record failed"
JWT="$(env "${UNSET_ENV[@]}" PROGRESS_SIGNING_KEYS="$SIGNING_KEY" "$BIN" token --id "$ID" --ttl 3600 2>/dev/null)" \
  || die "progressd token failed"
check() {
  local status
  status="$(curl -s -o /dev/null -w '%{http_code}' "$@")"
  [[ "$status" == 200 ]] || die "a check GET answered $status, not 200"
}
check -H "Authorization: Bearer $READ_TOKEN" "$BASE/progress/$ID"
check -H "Authorization: Bearer $JWT" "$BASE/progress/$ID"
check "$BASE/progress/$ID?access_token=$JWT"

# run_row ROW DURATION OUT
run_row() {
  local row="$1" duration="$2" out="$3" args=()
  case "$row" in
    static) args=(-H "Authorization: Bearer $READ_TOKEN" "$BASE/progress/$ID") ;;
    jwt) args=(-H "Authorization: Bearer $JWT" "$BASE/progress/$ID") ;;
    query) args=("$BASE/progress/$ID?access_token=$JWT") ;;
  esac
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "${duration}s" --latency --timeout 5s -s "$BENCH_DIR/report.lua" \
    "${args[@]}" >"$out" 2>&1
}

# server_cpu_ticks: user + system CPU of the server so far, in clock ticks.
server_cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# value KEY FILE: the KEY=value of the BENCH_RESULT line.
value() { grep -o "BENCH_RESULT.*" "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

ROWS=(static jwt query)
if [[ "$WARMUP" != 0 ]]; then
  for row in "${ROWS[@]}"; do run_row "$row" "$WARMUP" "$WORK/warmup-$row.txt" || true; done
fi
problems=()
RAW="$WORK/raw.tsv"
: >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
  order=("${ROWS[@]}")
  (( round % 2 == 0 )) && order=(query jwt static)
  for row in "${order[@]}"; do
    out="$WORK/$row-$round.txt"
    cpu_before="$(server_cpu_ticks)"
    run_row "$row" "$DURATION" "$out" || problems+=("$row round $round: wrk failed")
    cpu_us=$(( ($(server_cpu_ticks) - cpu_before) * TICK_US ))
    if ! grep -q BENCH_RESULT "$out"; then
      problems+=("$row round $round: no result (see $out)")
      continue
    fi
    errors=$(( $(value status "$out") + $(value connect "$out") + $(value read "$out") + $(value write "$out") + $(value timeout "$out") ))
    (( errors == 0 )) || problems+=("$row round $round: $errors errors or non-200 answers")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$row" "$(value rps "$out")" "$(value p99_us "$out")" \
      "$cpu_us" "$(value requests "$out")" >>"$RAW"
  done
done

python3 - "$RAW" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, row, rps, p99, cpu_us, requests = line.split()
    rows.setdefault(row, {})[int(rnd)] = (float(rps), int(p99), int(cpu_us) / max(int(requests), 1))
print()
print("| row | requests/s (median) | p99 ms (median) | ÷ static (median of rounds) "
      "| server CPU µs/request (median) | static ÷ row, CPU |")
print("|---|---|---|---|---|---|")
for row, label in [("static", "GET, static read token"), ("jwt", "GET, scoped JWT (Authorization)"),
                   ("query", "GET, scoped JWT (?access_token=)")]:
    if row not in rows:
        continue
    rps = statistics.median(v[0] for v in rows[row].values())
    p99 = statistics.median(v[1] for v in rows[row].values()) / 1000
    ratios = [rows[row][r][0] / rows["static"][r][0] for r in rows[row] if r in rows.get("static", {})]
    ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "-"
    cpu = statistics.median(v[2] for v in rows[row].values())
    cpu_ratio = statistics.median(v[2] for v in rows["static"].values()) / cpu if "static" in rows else 0
    print(f"| {label} | {rps:,.0f} | {p99:.2f} | {ratio} | {cpu:.1f} | {cpu_ratio:.2f} |")
EOF

if (( ${#problems[@]} )); then
  printf '\nproblems:\n' >&2
  printf '  %s\n' "${problems[@]}" >&2
  exit 1
fi
