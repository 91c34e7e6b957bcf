#!/usr/bin/env bash
# bench/redis_cost.sh: Redis's own instructions per PUT and PATCH.
#
# Redis's share of a write (the Lua compare-and-set) does not show in
# bench/profile.sh, which counts progressd's instructions only, and its
# wall-clock share moves with the machine's noise. This script starts a
# redis-server of its own under `valgrind --tool=callgrind` on a free port
# (instrumentation off), the release binary on it, drives each scenario
# with wrk (1 thread, 8 connections) for REDIS_COST_SECONDS with
# instrumentation on, and prints what Redis executed divided by the
# requests wrk completed: exact and repeatable for the same binaries and
# record, whatever else the machine is doing.
#
#   bench/redis_cost.sh              # put patch create
#   bench/redis_cost.sh put
#
# Scenarios: put and patch (bench/put.lua, bench/patch.lua) over 100 ids
# written beforehand: the steady write of a running job; create: PUTs of
# ids never written before.
#
# Environment (all optional):
#   REDIS_COST_SECONDS   seconds of each measured run (default 5; each after a 2 s warm-up)
#   BENCH_BIN            run this binary instead of building target/release/progressd
#   BENCH_SKIP_BUILD     1: use the existing target/release/progressd

set -Eeuo pipefail

BENCH_NAME=redis_cost
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECONDS_EACH="${REDIS_COST_SECONDS:-5}"
require_count "$SECONDS_EACH" REDIS_COST_SECONDS
SCENARIOS=("$@")
(( ${#SCENARIOS[@]} > 0 )) || SCENARIOS=(put patch create)
for scenario in "${SCENARIOS[@]}"; do
  [[ "$scenario" =~ ^(put|patch|create)$ ]] || die "no scenario $scenario (put, patch, create)"
done
IDS=100

need_tools valgrind callgrind_control redis-server redis-cli wrk curl python3
build_release

REDIS_PORT="$(free_port)"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/redis.%p" \
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
register_pid "$REDIS_PID" "redis-server under callgrind"
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 || die "redis-server under valgrind did not start (log: $WORK/redis.log)"
start_progressd main REDIS_URL="redis://127.0.0.1:$REDIS_PORT" PROGRESS_REDIS_TIMEOUT_MS=5000
BASE="$SERVER_BASE"

export BENCH_WRITE_IDS="$IDS" BENCH_PUT_ID_PREFIX="w-" BENCH_PATCH_ID_PREFIX="w-"
drive() { wrk -t1 -c8 -d"$2" -s "$BENCH_DIR/$1.lua" "$BASE/"; }

# create: PUTs of ids never written before (a record and its index
# entries added), CREATE_IDS of them, more than the measured run completes.
CREATE_IDS=20000

printf '%-8s %10s %22s\n' scenario requests "Redis instructions/req"
for scenario in "${SCENARIOS[@]}"; do
  # Every steady id has been written before counting: what put and patch
  # measure is the steady write of a running job.
  drive put 2s >/dev/null
  ids="$IDS" prefix="w-" script="$scenario"
  case "$scenario" in
    put) ;;
    patch) drive patch 2s >/dev/null ;;
    create) ids="$CREATE_IDS" prefix="c-$RANDOM-" script=put ;;
  esac
  callgrind_control -z "$REDIS_PID" >/dev/null 2>&1
  callgrind_control -i on "$REDIS_PID" >/dev/null 2>&1
  report="$(BENCH_WRITE_IDS="$ids" BENCH_PUT_ID_PREFIX="$prefix" drive "$script" "${SECONDS_EACH}s")"
  callgrind_control -d "$scenario" "$REDIS_PID" >/dev/null 2>&1
  callgrind_control -i off "$REDIS_PID" >/dev/null 2>&1
  requests="$(awk '/requests in/ {print $1}' <<<"$report")"
  if grep -q 'Non-2xx' <<<"$report"; then die "$scenario: wrk saw answers other than 2xx: $report"; fi
  if [[ "$scenario" == create ]] && (( requests > CREATE_IDS )); then
    die "create: $requests requests over $CREATE_IDS ids, so some were not creates; lower REDIS_COST_SECONDS"
  fi
  dump="$(ls -t "$WORK"/redis.*.* | head -1)"
  total="$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")"
  printf '%-8s %10s %22s\n' "$scenario" "$requests" "$(( total / requests ))"
done
