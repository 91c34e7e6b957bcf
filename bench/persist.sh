#!/usr/bin/env bash
# bench/persist.sh: how many PostgreSQL row writes progressd's write-behind
# makes per record update, for jobs that report progress once a second.
# See bench/README.md ("persist.sh") for what is measured and how to read it.
#
# Two phases, each on its own new database and its own progressd (release
# build, shared Redis with a unique key prefix, default settings but the
# persist interval when PERSIST_INTERVAL is given):
#   single  one job: PUT (status running), one PATCH a second for
#           PERSIST_SECONDS seconds, then PATCH status completed;
#   many    PERSIST_JOBS such jobs at once, their starts spread over one
#           persist interval.
# Row writes are counted from pg_stat_user_tables (n_tup_ins + n_tup_upd of
# table progress) once progressd has exited, and cross-checked by polling the
# rows' versions every 100 ms.
#
# Environment (all optional):
#   PERSIST_SECONDS    progress PATCHes per job, one a second (default 60)
#   PERSIST_INTERVAL   PROGRESS_PERSIST_INTERVAL_SECONDS for the server
#                      (default: unset, i.e. the server default, 10)
#   PERSIST_JOBS       jobs in the "many" phase; 0 skips it (default 20)
#   PERSIST_TARGET     wanted row writes ÷ updates (default 0.10)
#   PERSIST_STRICT     1: also exit 1 when the ratio is above the target or an
#                      update took longer than the interval to reach PostgreSQL
#   BENCH_SKIP_BUILD   1: use the existing target/release/progressd
#   BENCH_LOG_LEVEL    server log level (default warn)
#   BENCH_PG_URL       PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL          Redis to use (default redis://127.0.0.1:6379)
#
# Exit status: 0 when every request succeeded and every check held (whether
# or not the ratio meets the target and the interval was kept, unless
# PERSIST_STRICT=1); 1 otherwise; 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=persist
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

STEPS="${PERSIST_SECONDS:-60}"
INTERVAL_SETTING="${PERSIST_INTERVAL:-}"
INTERVAL="${INTERVAL_SETTING:-10}"   # the server's default
JOBS="${PERSIST_JOBS:-20}"
TARGET="${PERSIST_TARGET:-0.10}"
require_count "$STEPS" PERSIST_SECONDS
require_count "$INTERVAL" PERSIST_INTERVAL
[[ "$JOBS" =~ ^[0-9]+$ ]] || die "PERSIST_JOBS must be a whole number"

need_tools curl awk psql python3 cargo
problems=()

echo "== progressd write-behind: PostgreSQL writes per update =="
print_machine
echo "redis:       ${SHARED_REDIS_URL%%@*}, key prefixes persist-${RUN_ID}-<phase>:"
echo "interval:    PROGRESS_PERSIST_INTERVAL_SECONDS=${INTERVAL}$([[ -z "$INTERVAL_SETTING" ]] && echo ' (server default; not set)')"
echo "job:         PUT running, ${STEPS} PATCHes 1 s apart, PATCH completed 1 s later ($((STEPS + 2)) updates per job)"
echo

build_release

# --- one job ---------------------------------------------------------------------

# run_job DIR INDEX START_US BASE DB: the job's requests on a fixed schedule
# (create at START, PATCH k at START + k s, completed at START + STEPS + 1 s).
# Writes "<kind> <ack time us> <http status> <version>" lines to DIR/job-INDEX,
# plus "pg_after_<kind> <version>" for the two synchronous writes.
run_job() {
  trap - EXIT INT TERM ERR
  set +e
  local dir="$1" i="$2" start="$3" base="$4" db="$5" id="job-$2" k res out
  out="$dir/job-$i"
  : >"$out"
  send() {  # kind method body
    local r
    r="$(curl -s -o /dev/null --max-time 5 -w '%{http_code} %header{etag}' -X "$2" \
           -H 'Content-Type: application/json' --data-binary "$3" "$base/progress/$id")" || r="000 -"
    set -- "$1" $r
    echo "$1 $(now_us) $2 ${3//\"/}" >>"$out"
    LAST_VERSION="${3//\"/}"
  }
  pg_version() {
    echo "pg_after_$1 $(psql "$PG_SERVER_URL/$db" -XAtq -c "SELECT version FROM progress WHERE id = '$id'" 2>/dev/null || echo error)" >>"$out"
  }
  sleep_until_us "$start"
  send create PUT "{\"status\":\"running\",\"stage\":\"work\",\"message\":\"starting\",\"current\":0,\"total\":$STEPS}"
  pg_version create
  for (( k = 1; k <= STEPS; k++ )); do
    sleep_until_us $(( start + k * 1000000 ))
    send update PATCH "{\"current\":$k,\"message\":\"step $k of $STEPS\"}"
  done
  sleep_until_us $(( start + (STEPS + 1) * 1000000 ))
  send terminal PATCH "{\"status\":\"completed\",\"current\":$STEPS,\"message\":\"done\"}"
  pg_version terminal
}

# --- stats -----------------------------------------------------------------------

# Rows written to table progress, from the statistics. Each PostgreSQL backend
# reports its counts when idle (at most once a second, else within 10 s) and
# when it exits; pg_stat_force_next_flush() only affects the calling backend.
# So: progressd has exited (its connections closed) before this runs, and we
# read until two readings a second apart agree.
row_writes() {  # db
  local prev="" cur _
  for _ in $(seq 1 20); do
    cur="$(psql_db "$1" -F ' ' -c "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0)
                                    FROM pg_stat_user_tables WHERE relname = 'progress'")"
    [[ "$cur" == "$prev" ]] && { echo "$cur"; return 0; }
    prev="$cur"
    sleep 1
  done
  echo "$cur"
}

# The fewest row writes that keep the promise for the schedule actually sent:
# the create and the terminal write are synchronous (1 each); in between, an
# update must be in PostgreSQL within the interval unless the terminal write
# carries it first. Greedy: flush as late as allowed, i.e. at the deadline of
# the oldest unflushed update, which carries every update up to then.
minimum_writes() {  # job files...
  awk -v I="$((INTERVAL * 1000000))" '
    FNR == 1 { if (NR > 1) total += finish(); pending = -1; flushes = 0; terminal = -1 }
    $1 == "update" && $3 ~ /^2/ {
      if (pending >= 0 && $2 > pending + I) { flushes++; pending = $2 }
      else if (pending < 0) pending = $2
    }
    $1 == "terminal" && $3 ~ /^2/ { terminal = $2 }
    function finish() {
      if (pending >= 0 && (terminal < 0 || terminal > pending + I)) flushes++
      if (lo == "" || flushes < lo) lo = flushes
      if (hi == "" || flushes > hi) hi = flushes
      return 2 + flushes
    }
    END { total += finish(); print total, lo, hi }' "$@"
}

# The longest time from an update's response (a progress PATCH) to PostgreSQL
# holding it or a newer version, from the poll: the first poll that shows it
# gives the upper bound, the poll of that row just before it the lower bound.
# Prints "upper_s lower_s job version missing".
update_delays() {  # poll file, job files...
  awk '
    FNR == 1 { file++ }
    file == 1 && NF == 3 && $2 ~ /^[0-9]+$/ { n[$1]++; pv[$1, n[$1]] = $2; pt[$1, n[$1]] = $3; next }
    file > 1 && $1 == "update" && $3 ~ /^2/ {
      id = FILENAME; sub(/.*\//, "", id)
      hi = -1
      for (k = 1; k <= n[id]; k++) if (pv[id, k] >= $4) { hi = pt[id, k] - $2; lo = (k > 1 ? pt[id, k - 1] : pt[id, k]) - $2; break }
      if (hi < 0) { missing++; next }
      if (hi > maxhi) { maxhi = hi; maxlo = lo; which = id " v" $4 }
    }
    END { printf "%.2f %.2f %s %d\n", maxhi / 1e6, maxlo / 1e6, (which == "" ? "- -" : which), missing }' "$@"
}

# --- one phase ---------------------------------------------------------------------

# run_phase NAME JOBS: new database, new progressd, JOBS jobs with starts spread
# over one interval; prints the phase's block.
run_phase() {
  local name="$1" njobs="$2" db prefix dir poll poll_pid start i stagger pids=() pid
  db="progressd_persist_${RUN_ID//-/_}_$name"
  prefix="persist-$RUN_ID-$name:"
  dir="$WORK/$name"
  poll="$dir/poll.txt"
  mkdir -p "$dir"
  create_database "$db"
  REDIS_PREFIXES+=("$prefix")
  local settings=(REDIS_URL="$SHARED_REDIS_URL" DATABASE_URL="$PG_SERVER_URL/$db" PROGRESS_KEY_PREFIX="$prefix")
  [[ -n "$INTERVAL_SETTING" ]] && settings+=(PROGRESS_PERSIST_INTERVAL_SECONDS="$INTERVAL_SETTING")
  start_progressd "$name" "${settings[@]}"
  local server_pid="$SERVER_PID" base="$SERVER_BASE" server_log="$SERVER_LOG"
  wait_migrated "$db"
  log "$BENCH_NAME: [$name] progressd (pid $server_pid) at $base on database $db; $njobs job(s), ~$((STEPS + 2)) s"

  # Cross-check: every row's version every 100 ms (the database is ours alone).
  psql "$PG_SERVER_URL/$db" -XAtq -F ' ' >"$poll" 2>&1 \
    <<<"SELECT id, version, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM progress \\watch 0.1" &
  poll_pid=$!
  register_pid "$poll_pid" "psql poller ($name)"

  start=$(( $(now_us) + 1000000 ))
  stagger=$(( njobs > 1 ? INTERVAL * 1000000 / njobs : 0 ))
  for (( i = 0; i < njobs; i++ )); do
    run_job "$dir" "$i" $(( start + i * stagger )) "$base" "$db" &
    pid=$!
    pids+=("$pid")
    register_pid "$pid" "job $i ($name)"
  done
  for pid in "${pids[@]}"; do wait "$pid" || problems+=("[$name] a job loop exited with an error"); done
  sleep 0.3  # one more poll after the last terminal write
  stop_pid "$poll_pid"
  stop_pid "$server_pid"   # its backends exit and report their counts
  (( STOP_STATUS == 0 )) || problems+=("[$name] progressd exited with status $STOP_STATUS on SIGTERM (log: $server_log)")

  # --- figures ---
  local jobfiles=("$dir"/job-*) sent ok bad ins upd writes minimum versions
  sent="$(cat "${jobfiles[@]}" | awk '$1 ~ /^(create|update|terminal)$/' | wc -l)"
  ok="$(cat "${jobfiles[@]}" | awk '$1 ~ /^(create|update|terminal)$/ && $3 ~ /^2/' | wc -l)"
  bad=$(( sent - ok ))
  (( bad == 0 )) || problems+=("[$name] $bad of $sent requests did not answer 2xx (see $dir/job-*)")
  read -r ins upd < <(row_writes "$db")
  writes=$(( ins + upd ))
  local min_lo min_hi
  read -r minimum min_lo min_hi < <(minimum_writes "${jobfiles[@]}")
  # distinct (id, version) pairs seen by the poller
  versions="$(awk 'NF == 3 && $2 ~ /^[0-9]+$/ {print $1, $2}' "$poll" | sort -u | wc -l)"

  # The two synchronous writes: in PostgreSQL as soon as their response arrived.
  local f lastv
  for f in "${jobfiles[@]}"; do
    [[ "$(awk '$1 == "pg_after_create" {print $2}' "$f")" == 1 ]] || \
      problems+=("[$name] $(basename "$f"): the create was not in PostgreSQL when its response arrived ($(awk '$1 == "pg_after_create"' "$f"))")
    lastv="$(awk '$1 == "terminal" {print $4}' "$f")"
    [[ -n "$lastv" && "$(awk '$1 == "pg_after_terminal" {print $2}' "$f")" == "$lastv" ]] || \
      problems+=("[$name] $(basename "$f"): the terminal write (version ${lastv:-?}) was not in PostgreSQL when its response arrived ($(awk '$1 == "pg_after_terminal"' "$f"))")
  done
  (( versions <= writes )) || problems+=("[$name] the poller saw $versions versions but the statistics count $writes row writes")

  echo "-- $name: $njobs job(s)$( (( njobs > 1 )) && echo ", starts $(awk -v s="$stagger" 'BEGIN { printf "%.2f", s / 1e6 }') s apart" ) --"
  printf '  %-44s %s\n' "updates sent (create + PATCHes + terminal):" "$sent ($ok answered 2xx)"
  printf '  %-44s %s\n' "PostgreSQL row writes (pg_stat_user_tables):" "$writes (n_tup_ins $ins + n_tup_upd $upd)"
  printf '  %-44s %s\n' "  cross-check, versions seen by polling:" "$versions"
  printf '  %-44s %s\n' "ratio (row writes / updates):" "$(awk -v w="$writes" -v s="$sent" 'BEGIN { printf "%.3f  (%.1f %%)", w / s, 100 * w / s }')"
  printf '  %-44s %s\n' "  flushes / progress PATCHes:" "$(awk -v w="$writes" -v j="$njobs" -v n="$STEPS" 'BEGIN { f = w - 2 * j; printf "%d / %d = %.3f  (create and terminal writes left out)", f, j * n, f / (j * n) }')"
  printf '  %-44s %s\n' "theoretical minimum for interval ${INTERVAL} s:" "$minimum row writes = $(awk -v m="$minimum" -v s="$sent" 'BEGIN { printf "%.3f  (%.1f %%)", m / s, 100 * m / s }')"
  printf '  %-44s %s\n' "  per job:" "create 1 + $( [[ "$min_lo" == "$min_hi" ]] && echo "$min_lo" || echo "$min_lo-$min_hi" ) flushes + terminal 1"
  printf '  %-44s %s\n' "seed stacks (a write on every update):" "$sent row writes = 1.000"
  if (( njobs == 1 )); then
    # When each version first showed up in PostgreSQL, in seconds after the create.
    local t0
    t0="$(awk '$1 == "create" {print $2}' "${jobfiles[0]}")"
    printf '  %-44s %s\n' "versions in PostgreSQL (s after create):" \
      "$(awk -v t0="$t0" 'NF == 3 && !seen[$2]++ { printf "%sv%d@%.1f", sep, $2, ($3 - t0) / 1e6; sep = " " }' "$poll")"
  else
    printf '  %-44s %s\n' "row writes per job (polling), min-max:" \
      "$(awk 'NF == 3 && !seen[$1 " " $2]++ { n[$1]++ } END { min = -1; for (j in n) { if (min < 0 || n[j] < min) min = n[j]; if (n[j] > max) max = n[j] } printf "%d-%d over %d jobs", min, max, length(n) }' "$poll")"
  fi
  # Flushes of a record less than half an interval after its previous flush
  # (the create and the terminal write left out): each is one write more than
  # the interval needs. See README, "Reading persist.sh".
  local early
  early="$(awk -v half="$((INTERVAL * 500000))" '
    NF == 3 && $2 ~ /^[0-9]+$/ && !seen[$1 " " $2]++ { n[$1]++; t[$1, n[$1]] = $3 }
    END { for (j in n) for (k = 3; k < n[j]; k++) if (t[j, k] - t[j, k - 1] < half) e++; print e + 0 }' "$poll")"
  printf '  %-44s %s\n' "re-flushes < interval/2 after the previous:" "$early"
  local d_hi d_lo d_job d_ver d_missing promise
  read -r d_hi d_lo d_job d_ver d_missing < <(update_delays "$poll" "${jobfiles[@]}")
  (( d_missing == 0 )) || problems+=("[$name] $d_missing acknowledged updates never showed up in PostgreSQL (see $poll)")
  if awk -v l="$d_lo" -v i="$INTERVAL" 'BEGIN { exit !(l > i) }'; then
    promise="BROKEN: over by at least $(awk -v l="$d_lo" -v i="$INTERVAL" 'BEGIN { printf "%.2f", l - i }') s"
    broken+=("[$name] an update reached PostgreSQL ${d_lo}-${d_hi} s after its response ($d_job $d_ver); the interval is ${INTERVAL} s")
  elif awk -v h="$d_hi" -v i="$INTERVAL" 'BEGIN { exit !(h <= i) }'; then
    promise="kept"
  else
    promise="unclear (within the 0.1 s polling step)"
  fi
  printf '  %-44s %s\n' "longest update -> PostgreSQL (polled):" "${d_lo}-${d_hi} s ($d_job $d_ver); promise <= ${INTERVAL} s: $promise"
  local verdict="meets the target"
  awk -v w="$writes" -v s="$sent" -v t="$TARGET" 'BEGIN { exit !(w / s <= t) }' || verdict="ABOVE TARGET"
  local note=""
  if awk -v m="$minimum" -v s="$sent" -v t="$TARGET" 'BEGIN { exit !(m / s > t) }'; then
    note="; no implementation can meet it for this job: the minimum alone is above it"
  fi
  printf '  %-44s %s\n' "target <= ${TARGET}:" "${verdict}${note}"
  [[ "$verdict" == "meets the target" ]] || above_target=1
  echo
}

broken=()
above_target=0
run_phase single 1
if (( JOBS > 0 )); then
  run_phase many "$JOBS"
fi

if (( ${#broken[@]} > 0 )); then
  echo "WARNING: the persist interval was not kept (SPEC §3: updates reach PostgreSQL within it):"
  printf '  - %s\n' "${broken[@]}"
  echo
fi
if (( ${#problems[@]} > 0 )); then
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  echo "  (job logs, polls and server logs: $WORK)"
  exit 1
fi
if [[ "${PERSIST_STRICT:-0}" == 1 ]] && (( above_target || ${#broken[@]} > 0 )); then
  exit 1
fi
exit 0
