#!/usr/bin/env bash
# bench/sse.sh: live updates over GET /progress/{id}/events (Server-Sent
# Events): the memory of one instance holding many open streams, and the
# delay from a PUT to its event at the subscribers.
# See bench/README.md ("Live updates (SSE)") for what is measured and how to
# read it.
#
# The load generator is examples/sse_load.rs (one TCP connection per
# subscriber, writes from the same process, one monotonic clock).
#
# Scenarios, for each store (memory, then Redis):
#   rss     a fresh progressd; SSE_RSS_SUBSCRIBERS streams spread over each of
#           SSE_RSS_RECORDS records; VmRSS/VmHWM of the server idle, with the
#           streams open, after one update of every record, after they
#           disconnect, and after 1000 GET /healthz;
#   delay   one progressd (Redis: two, A and B, same prefix); one subscriber
#           on one record (the floor), then SSE_SUBSCRIBERS subscribers over
#           each of SSE_DELAY_RECORDS records while SSE_WRITES PUTs go out at
#           SSE_RATE a second, round-robin over the records; with Redis also
#           across instances (subscribers on B, PUTs to A, the change crossing
#           Redis pub/sub).
#
# Environment (all optional):
#   SSE_STORES            stores to run, in order (default "memory redis")
#   SSE_RSS_SUBSCRIBERS   streams held in the rss scenarios (default 10000)
#   SSE_RSS_RECORDS       record counts of the rss scenarios (default "1000 10000")
#   SSE_SUBSCRIBERS       subscribers in the delay scenarios (default 1000)
#   SSE_DELAY_RECORDS     record counts of the delay scenarios (default "1 100")
#   SSE_WRITES            PUTs per delay scenario (default 200)
#   SSE_RATE              PUTs per second (default 20)
#   SSE_REPEAT            runs of each delay scenario (default 1)
#   SSE_RSS_TARGET_MB     target for the rss scenarios (default 300)
#   SSE_P99_TARGET_MS     target p99 delay (default 50)
#   SSE_STRICT            1: also exit 1 when a target is missed or an event is missing
#   BENCH_SKIP_BUILD      1: use the existing release binary and example
#   BENCH_LOG_LEVEL       server log level (default warn)
#   REDIS_URL             Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every scenario ran and its numbers are valid (whether
# or not they meet the targets, unless SSE_STRICT=1); 1 otherwise; 2 on
# set-up errors (missing tool, Redis not answering, open-files limit too low).

set -Eeuo pipefail

BENCH_NAME=sse
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

read -r -a STORES <<<"${SSE_STORES:-memory redis}"
RSS_SUBS="${SSE_RSS_SUBSCRIBERS:-10000}"
read -r -a RSS_RECORDS <<<"${SSE_RSS_RECORDS:-1000 10000}"
DELAY_SUBS="${SSE_SUBSCRIBERS:-1000}"
read -r -a DELAY_RECORDS <<<"${SSE_DELAY_RECORDS:-1 100}"
WRITES="${SSE_WRITES:-200}"
RATE="${SSE_RATE:-20}"
REPEAT="${SSE_REPEAT:-1}"
RSS_TARGET_MB="${SSE_RSS_TARGET_MB:-300}"
P99_TARGET_MS="${SSE_P99_TARGET_MS:-50}"
LOADER="$ROOT/target/release/examples/sse_load"

for v in RSS_SUBS DELAY_SUBS WRITES REPEAT RSS_TARGET_MB P99_TARGET_MS; do
  require_count "${!v}" "$v"
done
[[ "$RATE" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v r="$RATE" 'BEGIN { exit !(r > 0) }' || die "SSE_RATE must be a positive number, not '$RATE'"
for r in "${RSS_RECORDS[@]}" "${DELAY_RECORDS[@]}"; do
  [[ "$r" =~ ^[1-9][0-9]*$ ]] || die "record counts must be positive whole numbers, not '$r'"
done
for r in "${RSS_RECORDS[@]}"; do (( r <= RSS_SUBS )) || die "SSE_RSS_RECORDS: $r records is more than $RSS_SUBS subscribers"; done
for r in "${DELAY_RECORDS[@]}"; do (( r <= DELAY_SUBS )) || die "SSE_DELAY_RECORDS: $r records is more than $DELAY_SUBS subscribers"; done
USE_REDIS=0
for s in "${STORES[@]}"; do
  case "$s" in
    memory) ;;
    redis) USE_REDIS=1 ;;
    *) die "SSE_STORES: unknown store '$s' (memory, redis)" ;;
  esac
done

# --- refuse to run rather than measure something else -----------------------------

[[ -r /proc/self/status && -d /proc/self/fd ]] || die "needs Linux /proc (VmRSS, open files)"
need_tools cargo curl python3 awk
if (( USE_REDIS )); then
  need_tools redis-cli
  [[ "$(redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning PING 2>/dev/null || true)" == PONG ]] || \
    die "Redis at ${SHARED_REDIS_URL%%@*}… does not answer PING; start it, set REDIS_URL, or run SSE_STORES=memory bench/sse.sh"
fi

# One socket per stream on each side (server and loader), plus their own files.
MOST_SUBS=$(( RSS_SUBS > DELAY_SUBS ? RSS_SUBS : DELAY_SUBS ))
NEED_FILES=$(( MOST_SUBS + 256 ))
hard="$(ulimit -Hn)"
want=65536
if [[ "$hard" != unlimited ]] && (( hard < want )); then want="$hard"; fi
ulimit -n "$want" 2>/dev/null || die "cannot raise the open-files limit to $want (ulimit -n)"
(( $(ulimit -n) >= NEED_FILES )) || \
  die "the open-files limit is $(ulimit -n) (hard limit $hard); $MOST_SUBS streams need $NEED_FILES in the server and in the loader: raise the hard limit (e.g. /etc/security/limits.conf, or run as root with ulimit -Hn), or lower SSE_RSS_SUBSCRIBERS"
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
(( port_hi - port_lo > MOST_SUBS + 1000 )) || \
  die "the local port range ($port_lo-$port_hi) is too small for $MOST_SUBS connections to one port"

# --- build ---------------------------------------------------------------------------

build_release
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "sse: cargo build --release --locked --example sse_load"
  (cd "$ROOT" && cargo build --release --locked --example sse_load) >&2 || die "the load generator did not build"
fi
[[ -x "$LOADER" ]] || die "$LOADER does not exist (cargo build --release --example sse_load)"

RUN_PREFIX="bench-sse-$RUN_ID:"
CHANGES_CHANNEL="${RUN_PREFIX}progress:changes"
if (( USE_REDIS )); then REDIS_PREFIXES+=("$RUN_PREFIX"); fi

echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
cpu_model="$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
echo "machine:     $(nproc) CPUs, ${cpu_model:-unknown CPU model}, $(uname -sr); server(s) and load generator share them"
echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg)"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit+=" (plus uncommitted changes)"
echo "commit:      $commit"
(( USE_REDIS )) && echo "redis:       $(redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p'), key prefix $RUN_PREFIX"
echo "open files:  $(ulimit -n) (server and loader)"
echo

# --- helpers -------------------------------------------------------------------------

problems=()
declare -A R=()   # "<scenario>.<key>" -> value, from the SSE_RESULT lines
RSS_ROWS=()
DELAY_ROWS=()

# wait_listeners N: until N instances listen to this run's change channel.
wait_listeners() {
  local n _
  for _ in $(seq 1 100); do
    n="$(redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning PUBSUB NUMSUB "$CHANGES_CHANNEL" 2>/dev/null | sed -n 2p | tr -d '\r' || true)"
    [[ "$n" == "$1" ]] && return 0
    sleep 0.1
  done
  die "expected $1 progressd instance(s) subscribed to $CHANGES_CHANNEL, found ${n:-?}"
}

# start_store NAME STORE: a progressd on STORE; sets SERVER_PID, SERVER_BASE.
# Its connection cap leaves room for the writers beside the streams.
start_store() {
  local cap="PROGRESS_MAX_CONNECTIONS=$(( MOST_SUBS + 1000 ))"
  if [[ "$2" == redis ]]; then
    start_progressd "$1" "$cap" REDIS_URL="$SHARED_REDIS_URL" PROGRESS_KEY_PREFIX="$RUN_PREFIX"
  else
    start_progressd "$1" "$cap"
  fi
}

# run_loader KEY -- ARGS...: runs the loader, keeps its output, records its
# SSE_RESULT line under KEY. Fails (a problem, not an exit) when it did.
run_loader() {
  local key="$1" out err status=0 line kv
  shift 2
  out="$WORK/$key.out"
  err="$WORK/$key.err"
  R[$key.load]="$(cut -d' ' -f1 /proc/loadavg)"
  log "sse: $key: sse_load $*"
  "$LOADER" --id-prefix "sse-$key" "$@" >"$out" 2>"$err" || status=$?
  line="$(grep -m1 '^SSE_RESULT ' "$out" || true)"
  if [[ -z "$line" ]]; then
    problems+=("$key: the load generator printed no result (exit $status): $(tail -n 2 "$err" | tr '\n' ' ')")
    return 1
  fi
  for kv in ${line#SSE_RESULT }; do R[$key.${kv%%=*}]="${kv#*=}"; done
  if (( status != 0 )); then
    problems+=("$key: the load generator exited $status (failed subscribers or writes): $(grep -v '^sse_load: [0-9]* of' "$err" | tail -n 2 | tr '\n' ' ')")
    return 1
  fi
  return 0
}

get() { echo "${R[$1]:-}"; }
display_name() { local n="${1#delay-}"; echo "${n/redis_A-B/redis A->B}"; }
mbs() { awk -v k="$1" 'BEGIN { if (k == "") print "-"; else printf "%.0f", k / 1024 }'; }
msf() { awk -v u="$1" 'BEGIN { if (u == "") print "-"; else printf "%.1f", u / 1000 }'; }

# --- rss scenarios: a fresh server each ------------------------------------------------

for store in "${STORES[@]}"; do
  for records in "${RSS_RECORDS[@]}"; do
    key="rss-$store-$records"
    start_store "$key" "$store"
    [[ "$store" == redis ]] && wait_listeners 1
    pid="$SERVER_PID"
    if run_loader "$key" -- --mode hold --url "$SERVER_BASE" --subscribers "$RSS_SUBS" --records "$records" \
        --server-pid "$pid" --label "$key"; then
      RSS_ROWS+=("$key")
      if (( $(get "$key.connected_fds") < RSS_SUBS )); then
        problems+=("$key: the server had $(get "$key.connected_fds") open files with $RSS_SUBS streams open")
      fi
    fi
    stop_pid "$pid"
  done
done

# --- delay scenarios ---------------------------------------------------------------------

for store in "${STORES[@]}"; do
  start_store "delay-$store" "$store"
  pid_a="$SERVER_PID"
  base_a="$SERVER_BASE"
  pids=(--server-pid "$pid_a")
  if [[ "$store" == redis ]]; then
    start_store "delay-$store-b" "$store"
    pid_b="$SERVER_PID"
    base_b="$SERVER_BASE"
    pids+=(--server-pid "$pid_b")
    wait_listeners 2
  fi
  runs=("$store|1|1|$base_a|$base_a")
  for records in "${DELAY_RECORDS[@]}"; do
    for (( i = 1; i <= REPEAT; i++ )); do runs+=("$store|$DELAY_SUBS|$records|$base_a|$base_a|$i"); done
  done
  if [[ "$store" == redis ]]; then
    runs+=("redis A->B|1|1|$base_b|$base_a")
    for records in "${DELAY_RECORDS[@]}"; do
      for (( i = 1; i <= REPEAT; i++ )); do runs+=("redis A->B|$DELAY_SUBS|$records|$base_b|$base_a|$i"); done
    done
  fi
  for run in "${runs[@]}"; do
    IFS='|' read -r label subs records sub_url write_url rep <<<"$run"
    key="delay-${label// /_}-${subs}x${records}"
    key="${key//>/}"
    if [[ -n "${rep:-}" && "$REPEAT" != 1 ]]; then key+="-r$rep"; fi
    if run_loader "$key" -- --mode delay --url "$sub_url" --write-url "$write_url" --subscribers "$subs" \
        --records "$records" --writes "$WRITES" --rate "$RATE" "${pids[@]}" --label "$key"; then
      DELAY_ROWS+=("$key")
      for k in unmatched duplicates out_of_order; do
        (( $(get "$key.$k") == 0 )) || problems+=("$key: $(get "$key.$k") events $k (a version that no write produced, or sent twice, or backwards)")
      done
    fi
  done
  for p in "${pids[@]}"; do [[ "$p" == --server-pid ]] || stop_pid "$p"; done
done

# --- tables --------------------------------------------------------------------------------

echo
echo "Memory of one progressd holding $RSS_SUBS event streams (VmRSS in MB; target <= $RSS_TARGET_MB MB with the streams open)"
printf '%-16s %7s %7s %5s %9s %8s %12s %9s %8s %9s %9s %8s %5s  %s\n' \
  scenario streams records idle connected "1 update" disconnected "+1000 GET" "peak HWM" "KB/stream" "connect s" "update s" load verdict
printf '%-16s %7s %7s %5s %9s %8s %12s %9s %8s %9s %9s %8s %5s  %s\n' \
  ---------------- ------- ------- ----- --------- -------- ------------ --------- -------- --------- --------- -------- ----- -------
rss_verdict_all=PASS
for key in "${RSS_ROWS[@]}"; do
  connected_mb="$(mbs "$(get "$key.connected_rss_kb")")"
  peak_mb="$(mbs "$(get "$key.hwm_kb")")"
  verdict=PASS
  if (( peak_mb > RSS_TARGET_MB || connected_mb > RSS_TARGET_MB )); then verdict="ABOVE TARGET"; rss_verdict_all="ABOVE TARGET"; fi
  printf '%-16s %7s %7s %5s %9s %8s %12s %9s %8s %9s %9s %8s %5s  %s\n' \
    "${key#rss-}" "$(get "$key.subs")" "$(get "$key.records")" "$(mbs "$(get "$key.idle_rss_kb")")" "$connected_mb" \
    "$(mbs "$(get "$key.updated_rss_kb")")" "$(mbs "$(get "$key.after_rss_kb")")" "$(mbs "$(get "$key.traffic_rss_kb")")" \
    "$peak_mb" "$(get "$key.per_sub_kb")" "$(get "$key.connect_s")" "$(get "$key.update_s")" "$(get "$key.load")" "$verdict"
done
(( ${#RSS_ROWS[@]} > 0 )) || rss_verdict_all="NOT MEASURED"

echo
echo "Delay from PUT to event at the subscriber, ms ($WRITES PUTs at $RATE/s round-robin over the records; target p99 < $P99_TARGET_MS ms)"
printf '%-30s %5s %7s %8s %8s %7s %6s %6s %6s %6s %8s %8s %7s %7s %7s %5s  %s\n' \
  scenario subs records expected received missing p50 p90 p99 max "1st p50" "last p50" "PUT p50" "srv cpu" "ldr cpu" load verdict
printf '%-30s %5s %7s %8s %8s %7s %6s %6s %6s %6s %8s %8s %7s %7s %7s %5s  %s\n' \
  ------------------------------ ----- ------- -------- -------- ------- ------ ------ ------ ------ -------- -------- ------- ------- ------- ----- -------
delay_verdict_all=PASS
missing_total=0
notes=()
for key in "${DELAY_ROWS[@]}"; do
  p99="$(get "$key.p99_us")"
  verdict=PASS
  if (( p99 >= P99_TARGET_MS * 1000 )); then verdict="ABOVE TARGET"; delay_verdict_all="ABOVE TARGET"; fi
  missing="$(get "$key.missing")"
  missing_total=$(( missing_total + missing ))
  if (( missing > 0 )); then
    verdict+=", events missing"
    notes+=("$(display_name "$key"): $missing events missing: $(get "$key.writes_missed_by_all") writes reached none of their subscribers (the server's re-read already found a newer version), $(get "$key.writes_missed_by_some") reached only some (those streams were not polled before the next version)")
  fi
  if (( $(get "$key.late_writes") > 0 )); then
    notes+=("$(display_name "$key"): $(get "$key.late_writes") PUTs went out more than 5 ms behind the schedule (the writer waited for a slow PUT; writes stay >= 1/rate apart)")
  fi
  printf '%-30s %5s %7s %8s %8s %7s %6s %6s %6s %6s %8s %8s %7s %7s %7s %5s  %s\n' \
    "$(display_name "$key")" "$(get "$key.subs")" "$(get "$key.records")" "$(get "$key.expected")" "$(get "$key.received")" "$missing" \
    "$(msf "$(get "$key.p50_us")")" "$(msf "$(get "$key.p90_us")")" "$(msf "$p99")" "$(msf "$(get "$key.max_us")")" \
    "$(msf "$(get "$key.first_p50_us")")" "$(msf "$(get "$key.last_p50_us")")" "$(msf "$(get "$key.put_p50_us")")" \
    "$(get "$key.server_cpu_pct")%" "$(get "$key.loader_cpu_pct")%" "$(get "$key.load")" "$verdict"
done
(( ${#DELAY_ROWS[@]} > 0 )) || delay_verdict_all="NOT MEASURED"
if (( ${#notes[@]} > 0 )); then printf '  - %s\n' "${notes[@]}"; fi

echo
echo "memory with $RSS_SUBS streams open (target <= $RSS_TARGET_MB MB): $rss_verdict_all"
echo "delay p99 (target < $P99_TARGET_MS ms): $delay_verdict_all; events missing in all: $missing_total"
echo "load avg at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  echo "  (loader output and server logs: $WORK)"
  exit 1
fi
if [[ "${SSE_STRICT:-0}" == 1 ]] && [[ "$rss_verdict_all" != PASS || "$delay_verdict_all" != PASS || "$missing_total" != 0 ]]; then
  exit 1
fi
exit 0
