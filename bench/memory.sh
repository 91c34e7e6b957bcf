#!/usr/bin/env bash
# bench/memory.sh: what a typical record costs in Redis, and the resident
# memory of progressd idle and with records written through it.
# See bench/README.md ("memory.sh") for what is measured and how to read it.
#
# One progressd (default configuration, read cache on) on the shared Redis
# with a unique key prefix. MEMORY_RECORDS records are written through its
# API, each like bench/record.json (running, 5 children, metadata) and moved
# through 5 stages (PUT, then 4 PATCHes that change `stage`), so every record
# holds 5 `stages` entries. Then:
#   per record key      MEMORY USAGE <key> SAMPLES 0 of every record key (mean,
#                       min, max) and STRLEN (the stored bytes);
#   per record, indexes the listing indexes under {prefix}progressd: (the
#                       index, the status set, the expiry set): their MEMORY
#                       USAGE summed and divided by the number of records;
#   used_memory delta   INFO memory used_memory after minus before, divided by
#                       the number of records (includes everything: record
#                       keys, their TTL entries, indexes; but also whatever
#                       any other user of the shared Redis did meanwhile);
#   progressd RSS       VmRSS/VmHWM from /proc/<pid>/status right after start
#                       (healthz answers, change listener subscribed, 1 s
#                       later), and after the records were written and read
#                       once.
#
# Environment (all optional):
#   MEMORY_RECORDS          records written (default 10000)
#   MEMORY_TARGET_BYTES     Redis bytes per record target (default 1536 = 1.5 KB)
#   MEMORY_RSS_TARGET_MB    idle RSS target (default 30)
#   BENCH_SKIP_BUILD        1: use the existing target/release/progressd
#   BENCH_LOG_LEVEL         server log level (default warn)
#   REDIS_URL               Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every write answered 2xx and the numbers were measured
# (targets met or not); 1 otherwise; 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=memory
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

N="${MEMORY_RECORDS:-10000}"
TARGET_BYTES="${MEMORY_TARGET_BYTES:-1536}"
RSS_TARGET_MB="${MEMORY_RSS_TARGET_MB:-30}"
require_count "$N" MEMORY_RECORDS
need_tools curl awk python3 redis-cli
redis() { redis-cli -u "$SHARED_REDIS_URL" --no-auth-warning "$@"; }
[[ "$(redis PING 2>/dev/null || true)" == PONG ]] || die "Redis at ${SHARED_REDIS_URL%%@*} does not answer PING"
problems=()

PREFIX="bench-mem-${RUN_ID}:"
REDIS_PREFIXES+=("$PREFIX")
ID_PREFIX="mem-"

echo "== progressd memory: Redis bytes per record, progressd RSS =="
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
cpu_model="$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
echo "machine:     $(nproc) CPUs, ${cpu_model:-unknown CPU model}, $(uname -sr)"
echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg)"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit+=" (plus uncommitted changes)"
echo "commit:      $commit"
echo "redis:       ${SHARED_REDIS_URL%%@*} (Redis $(redis INFO server | tr -d '\r' | sed -n 's/^redis_version://p'), $(redis INFO memory | tr -d '\r' | sed -n 's/^mem_allocator://p')), key prefix ${PREFIX}"
echo "records:     ${N}, each bench/record.json (5 children) through 5 stages (PUT + 4 PATCHes)"
echo

build_release

# proc_kb PID FIELD: a field of /proc/PID/status in kB.
proc_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
used_memory() { redis INFO memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }

start_progressd main REDIS_URL="$SHARED_REDIS_URL" PROGRESS_KEY_PREFIX="$PREFIX"
BASE="$SERVER_BASE"
PID="$SERVER_PID"
for _ in $(seq 1 50); do  # the change listener subscribes in the background
  [[ "$(redis PUBSUB NUMSUB "${PREFIX}progress:changes" | sed -n 2p | tr -d '\r')" -ge 1 ]] 2>/dev/null && break
  sleep 0.1
done
sleep 1
idle_rss="$(proc_kb "$PID" VmRSS)"
idle_hwm="$(proc_kb "$PID" VmHWM)"
echo "progressd:   pid $PID on $BASE; idle: VmRSS $(mb "$idle_rss") MB, VmHWM $(mb "$idle_hwm") MB"

# --- write the records ---------------------------------------------------------------

# The body: record.json as is (stage "transcode"), then 4 stage changes.
BODY="$WORK/record.json"
tr -d '\n' <"$BENCH_DIR/record.json" >"$BODY"
STAGES=(mux package upload notify)

before="$(used_memory)"
# curl_all METHOD BODY: one request per id, 16 at a time; prints the status codes.
curl_all() {
  curl -s -Z --parallel-max 16 -X "$1" -H 'Content-Type: application/json' --data-binary "$2" \
    -o /dev/null -w '%{http_code}\n' "$BASE/progress/${ID_PREFIX}[0-$((N - 1))]" 2>/dev/null
}
t0=$(now_us)
bad="$(curl_all PUT "@$BODY" | grep -cvE '^20[01]$' || true)"
(( bad == 0 )) || problems+=("PUT: ${bad} of ${N} did not answer 200/201")
current=212
for stage in "${STAGES[@]}"; do
  current=$(( current + 50 ))
  bad="$(curl_all PATCH "{\"stage\":\"$stage\",\"current\":$current,\"message\":\"stage $stage\"}" | grep -cv '^200$' || true)"
  (( bad == 0 )) || problems+=("PATCH stage $stage: ${bad} of ${N} did not answer 200")
done
write_ms=$(( ($(now_us) - t0) / 1000 ))
after="$(used_memory)"
log "$BENCH_NAME: wrote ${N} records (5 requests each) in ${write_ms} ms"

# Every record read once (through the read cache), as a dashboard would.
curl -s -Z --parallel-max 16 -o /dev/null -w '%{http_code}\n' "$BASE/progress/${ID_PREFIX}[0-$((N - 1))]" 2>/dev/null \
  | { grep -cv '^200$' || true; } >"$WORK/get.bad"
(( $(cat "$WORK/get.bad") == 0 )) || problems+=("GET: $(cat "$WORK/get.bad") of ${N} did not answer 200")
loaded_rss="$(proc_kb "$PID" VmRSS)"
loaded_hwm="$(proc_kb "$PID" VmHWM)"

# A sample record, as stored.
sample_key="${PREFIX}progress:${ID_PREFIX}0"
stages_n="$(curl -s "$BASE/progress/${ID_PREFIX}0" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r["stages"]), len(r["children"]))')"

# MEMORY USAGE of every key under the prefix, by kind.
redis --scan --pattern "${PREFIX}*" >"$WORK/keys.txt"
python3 - "$WORK/keys.txt" "$PREFIX" "$WORK/usage.cmds" <<'EOF'
import sys
keys = [k for k in open(sys.argv[1]).read().split("\n") if k]
with open(sys.argv[3], "w") as out:
    for k in keys:
        # One command per line for redis-cli; keys have no spaces or quotes.
        out.write(f"MEMORY USAGE {k} SAMPLES 0\n")
        if k.startswith(sys.argv[2] + "progress:"):
            out.write(f"STRLEN {k}\n")
EOF
redis <"$WORK/usage.cmds" >"$WORK/usage.out"
read -r rec_n rec_mean rec_min rec_max len_mean idx_total idx_keys < <(python3 - "$WORK/keys.txt" "$PREFIX" "$WORK/usage.out" <<'EOF'
import sys
keys = [k for k in open(sys.argv[1]).read().split("\n") if k]
vals = [int(v) for v in open(sys.argv[3]).read().split()]
prefix = sys.argv[2]
it = iter(vals)
rec, lens, idx, idx_keys = [], [], 0, 0
for k in keys:
    usage = next(it)
    if k.startswith(prefix + "progress:"):
        rec.append(usage)
        lens.append(next(it))
    elif k.startswith(prefix + "progressd:"):
        idx += usage
        idx_keys += 1
n = len(rec)
print(n, sum(rec) / n, min(rec), max(rec), sum(lens) / n, idx, idx_keys)
EOF
)
delta=$(( after - before ))
per_idx="$(awk -v t="$idx_total" -v n="$N" 'BEGIN { printf "%.0f", t / n }')"
per_total="$(awk -v a="$rec_mean" -v b="$idx_total" -v n="$N" 'BEGIN { printf "%.0f", a + b / n }')"
per_delta="$(awk -v d="$delta" -v n="$N" 'BEGIN { printf "%.0f", d / n }')"
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "PASS" : "ABOVE TARGET") }'; }

(( rec_n == N )) || problems+=("${rec_n} record keys under ${PREFIX}progress:, expected ${N}")
[[ "$stages_n" == "5 5" ]] || problems+=("the sample record has (stages, children) = (${stages_n}), expected (5 5)")

echo "written:     ${N} records × 5 requests in ${write_ms} ms; sample ${ID_PREFIX}0 has $(cut -d' ' -f1 <<<"$stages_n") stages, $(cut -d' ' -f2 <<<"$stages_n") children"
echo
echo "Redis, per record (bytes)"
printf '  %-52s %8s\n' "record key: stored value (STRLEN, mean)" "$(printf '%.0f' "$len_mean")"
printf '  %-52s %8s   (min %s, max %s)\n' "record key: MEMORY USAGE (mean of ${rec_n})" "$(printf '%.0f' "$rec_mean")" "$rec_min" "$rec_max"
printf '  %-52s %8s   (%s index keys, %s bytes in all)\n' "listing indexes: MEMORY USAGE ÷ records" "$per_idx" "$idx_keys" "$idx_total"
printf '  %-52s %8s   target <= %s: %s\n' "record + indexes (MEMORY USAGE)" "$per_total" "$TARGET_BYTES" "$(verdict "$per_total" "$TARGET_BYTES")"
printf '  %-52s %8s   target <= %s: %s\n' "used_memory delta ÷ records (whole server)" "$per_delta" "$TARGET_BYTES" "$(verdict "$per_delta" "$TARGET_BYTES")"
echo "  (used_memory ${before} -> ${after}; the shared Redis may have been used by others meanwhile)"
echo
echo "progressd resident memory (MB)"
printf '  %-52s %8s   target <= %s: %s\n' "idle, right after start: VmRSS" "$(mb "$idle_rss")" "$RSS_TARGET_MB" \
  "$(awk -v v="$idle_rss" -v t="$RSS_TARGET_MB" 'BEGIN { print (v / 1024 <= t ? "PASS" : "ABOVE TARGET") }')"
printf '  %-52s %8s\n' "after ${N} records written and read once: VmRSS" "$(mb "$loaded_rss")"
printf '  %-52s %8s\n' "peak (VmHWM)" "$(mb "$loaded_hwm")"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "PROBLEMS:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
exit 0
