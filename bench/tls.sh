#!/usr/bin/env bash
# bench/tls.sh: what TLS to Redis and to PostgreSQL costs progressd, in one
# run. See bench/README.md ("TLS (bench/tls.sh)") for how to read it.
#
#   1. Redis: GET (read cache on and off), PUT and PATCH requests/s and p99
#      of progressd over plain Redis next to progressd over TLS Redis. ONE
#      redis-server of this script's own listens on a free plain port and a
#      free TLS port (same process, same settings, no persistence), so the
#      link is the only difference. Four instances, each with its own key
#      prefix, no PostgreSQL: plain and TLS in the default configuration
#      (read cache on: GET (cached), PUT, PATCH), plain and TLS with
#      PROGRESS_CACHE_MAX_AGE_MS=0 (GET (uncached): every read goes to
#      Redis). Every row runs TLS_ROUNDS rounds; in each round plain and TLS
#      run back to back (which goes first alternates), so they share the
#      machine's noise. The table gives the median of the rounds of each side
#      and the median of the rounds' TLS/plain ratios.
#   2. PostgreSQL: the time from spawning the process to the first PUT of a
#      new record answered 201, and to /readyz saying ok, with
#      sslmode=verify-full (CA given with sslrootcert) and with
#      sslmode=require (TLS, server not checked), PostgreSQL alone (no
#      Redis: every write goes to PostgreSQL), and verify-full under the TLS
#      Redis as hot tier (there the first 201 comes from Redis; /readyz waits
#      for both). A private cluster of this script's own (initdb in the work
#      directory, as the OS user postgres when run as root) with ssl = on and
#      a pg_hba.conf that lets TCP clients in over TLS only. The database is
#      migrated once before the runs (not timed): each run is a restart.
#
# The CA and the server certificate (SANs IP:127.0.0.1 and DNS:localhost)
# are made with the openssl CLI in the work directory. The shared Redis
# (6379) and PostgreSQL (5432) are not used.
#
# Environment (all optional):
#   TLS_ROUNDS        rounds of each Redis row (default 3)
#   TLS_DURATION      seconds (or a wrk duration) of each wrk run (default 5)
#   TLS_WARMUP        seconds of wrk on each row and side before the rounds, 0 to skip (default 1)
#   TLS_THREADS       wrk threads (default 2)
#   TLS_CONNECTIONS   wrk connections (default 64)
#   TLS_WRITE_IDS     ids the PUT and PATCH rows spread over (default 1000)
#   TLS_ROWS          Redis rows to run, of: get_cached get_uncached put patch (default all)
#   TLS_STARTS        start-up runs of each PostgreSQL variant (default 5)
#   TLS_POLL_MS       start-up poll interval in ms (default 5)
#   TLS_PARTS         which parts: "redis postgres" (default), "redis" or "postgres"
#   TLS_KEY           key type of the CA and server certificate: rsa (RSA 2048, default) or ec (P-256)
#   BENCH_SKIP_BUILD  1: use the existing target/release/progressd
#   BENCH_BIN         run this binary instead (implies no build)
#   BENCH_LOG_LEVEL   server log level (default warn)
#
# Output: markdown tables on stdout; raw numbers in $WORK/raw (throughput.tsv,
# startup.tsv), wrk output and every log in $WORK (printed at exit).
# Exit status: 0 when every run answered only what it should and every check
# held; 1 otherwise (the tables are still printed); 2 on set-up errors.

set -Eeuo pipefail

BENCH_NAME=tls
# shellcheck source=bench/common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

ROUNDS="${TLS_ROUNDS:-3}"
DURATION="${TLS_DURATION:-5}"
WARMUP="${TLS_WARMUP:-1}"
THREADS="${TLS_THREADS:-2}"
CONNECTIONS="${TLS_CONNECTIONS:-64}"
WRITE_IDS="${TLS_WRITE_IDS:-1000}"
ROWS="${TLS_ROWS:-get_cached get_uncached put patch}"
STARTS="${TLS_STARTS:-5}"
POLL_MS="${TLS_POLL_MS:-5}"
PARTS="${TLS_PARTS:-redis postgres}"
KEY_TYPE="${TLS_KEY:-rsa}"
require_count "$ROUNDS" TLS_ROUNDS
require_count "$THREADS" TLS_THREADS
require_count "$CONNECTIONS" TLS_CONNECTIONS
require_count "$WRITE_IDS" TLS_WRITE_IDS
require_count "$STARTS" TLS_STARTS
require_count "$POLL_MS" TLS_POLL_MS
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
[[ "$WARMUP" =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"
case "$KEY_TYPE" in
  rsa) NEWKEY=(-newkey rsa:2048); KEY_LABEL="RSA 2048" ;;
  ec)  NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1); KEY_LABEL="ECDSA P-256" ;;
  *)   die "TLS_KEY must be rsa or ec (got '$KEY_TYPE')" ;;
esac
for row in $ROWS; do
  case "$row" in get_cached|get_uncached|put|patch) ;; *) die "TLS_ROWS: unknown row '$row'" ;; esac
done
DO_REDIS=0 DO_PG=0
[[ " $PARTS " == *" redis "* ]] && DO_REDIS=1
[[ " $PARTS " == *" postgres "* ]] && DO_PG=1
(( DO_REDIS || DO_PG )) || die "TLS_PARTS must name redis, postgres or both (got '$PARTS')"

# The servers' settings come from here only (common.sh unsets PROGRESS_*,
# RUST_LOG, REDIS_URL, DATABASE_URL): also the host-style variables
# progressd reads when those URLs are unset, and libpq's PGSSLMODE and
# PGSSLROOTCERT, which would fill in what a URL does not say.
for v in REDIS_HOST REDIS_PORT REDIS_USERNAME REDIS_PASSWORD REDIS_TLS \
         PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE PGSSLROOTCERT; do
  UNSET_ENV+=(-u "$v")
done

if ! command -v wrk >/dev/null 2>&1 && (( DO_REDIS )); then
  log "$BENCH_NAME: wrk not found; installing it with apt-get"
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y wrk >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y wrk >&2; }
fi
need_tools curl awk python3 openssl redis-server redis-cli ss
(( DO_REDIS )) && need_tools wrk
PG_BIN=""
if (( DO_PG )); then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || die "initdb (/usr/lib/postgresql/*/bin) is required"
  need_tools psql
fi
case "$WORK$BENCH_DIR" in *' '*) die "paths with spaces are not supported ($WORK, $BENCH_DIR)";; esac

RAW="$WORK/raw"
mkdir -p "$RAW"
problems=()
RECORD_JSON="$BENCH_DIR/record.json"
READ_ID="tls-read"
json=(-H 'Content-Type: application/json')
# wrk's lua scripts (bench/put.lua, patch.lua via report.lua): the write ids,
# and no token or Origin (these servers take none).
export BENCH_WRITE_IDS="$WRITE_IDS"
export BENCH_PUT_ID_PREFIX="tls-put-"
export BENCH_PATCH_ID_PREFIX="tls-patch-"
export BENCH_RECORD_JSON="$RECORD_JSON"
unset BENCH_WRITE_TOKEN BENCH_READ_TOKEN BENCH_ORIGIN

# --- header ------------------------------------------------------------------------

cpu_model="$(grep -m1 -E '^(model name|Model|cpu model)' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
dirty=""
[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || dirty=" (plus uncommitted changes in the working tree)"
busy="$( { ps -eo comm= | grep -E '^(cargo|rustc|wrk|oha|perf|progressd|sse_load)$' || true; } | sort | uniq -c \
        | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')"
echo "## progressd over TLS (bench/tls.sh)"
echo
echo '```'
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:     $(nproc) CPUs, ${cpu_model:-unknown CPU model}, $(uname -sr)"
echo "load avg:    $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "commit:      ${commit}${dirty}"
echo "busy:        ${busy:-none} (other heavy processes at the start, by name)"
echo "tls:         own CA and server certificate, ${KEY_LABEL} (TLS_KEY=${KEY_TYPE}), $(openssl version | awk '{print $1, $2}') CLI"
echo "redis:       own redis-server $(redis-server --version | awk '{print $3}' | sed 's/^v=//'), one process, a plain and a TLS port (the shared one is not used)"
(( DO_REDIS )) && echo "wrk:         $( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $2}'), ${THREADS} threads, ${CONNECTIONS} connections, ${DURATION} per run, ${ROUNDS} rounds, rows: ${ROWS}"
(( DO_PG )) && echo "postgres:    own cluster, $("$PG_BIN/postgres" --version | awk '{print $3}'), ssl = on, hostssl only; ${STARTS} start-ups per variant, polled every ${POLL_MS} ms"
echo "work dir:    $WORK"
echo '```'
echo

build_release

# --- certificates ------------------------------------------------------------------

TLS_DIR="$WORK/tls"
mkdir -p "$TLS_DIR"
CA="$TLS_DIR/ca.pem"
{
  openssl req -x509 "${NEWKEY[@]}" -nodes -keyout "$TLS_DIR/ca.key" -out "$CA" -days 3650 \
    -subj "/CN=progressd bench CA $RUN_ID" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -new "${NEWKEY[@]}" -nodes -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" -subj "/CN=localhost"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$CA" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
    -out "$TLS_DIR/server.crt" -days 825 -extfile "$TLS_DIR/server.ext"
  openssl verify -CAfile "$CA" "$TLS_DIR/server.crt"
} >"$TLS_DIR/openssl.log" 2>&1 || die "openssl could not make the certificates (log: $TLS_DIR/openssl.log)"
chmod 600 "$TLS_DIR"/*.key

# --- helpers -------------------------------------------------------------------------

# wait_ready BASE: until /readyz says "status":"ok" (every configured tier up), at most 30 s.
wait_ready() {
  local _
  for _ in $(seq 1 300); do
    [[ "$(curl -s --max-time 2 "$1/readyz" || true)" == *'"status":"ok"'* ]] && return 0
    sleep 0.1
  done
  die "$1/readyz did not say ok within 30 s: $(curl -s --max-time 2 "$1/readyz" || true)"
}

# Two different free ports.
two_free_ports() {
  local a b
  a="$(free_port)"
  b="$(free_port)"
  while [[ "$b" == "$a" ]]; do b="$(free_port)"; done
  echo "$a $b"
}

# --- Redis: one redis-server, a plain and a TLS port ------------------------------------

REDIS_PID=""
start_redis() {
  local _
  read -r REDIS_PORT REDIS_TLS_PORT < <(two_free_ports)
  ( exec redis-server --port "$REDIS_PORT" --tls-port "$REDIS_TLS_PORT" --bind 127.0.0.1 \
      --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key" \
      --tls-ca-cert-file "$CA" --tls-auth-clients no \
      --save '' --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" ) >/dev/null 2>&1 &
  REDIS_PID=$!
  register_pid "$REDIS_PID" "redis-server"
  for _ in $(seq 1 100); do
    if [[ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" == PONG ]] && \
       [[ "$(redis-cli --tls --cacert "$CA" -h 127.0.0.1 -p "$REDIS_TLS_PORT" PING 2>/dev/null)" == PONG ]]; then
      return 0
    fi
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  die "redis-server did not answer on its plain port $REDIS_PORT and TLS port $REDIS_TLS_PORT (log: $WORK/redis.log)"
}
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# Redis connections (established TCP, to PORT) held by process PID.
conns_to() {  # pid port
  { ss -Htnp state established "( dport = :$2 )" 2>/dev/null || true; } | grep -c "pid=$1," || true
}

start_redis
log "$BENCH_NAME: redis-server (pid $REDIS_PID) on plain :$REDIS_PORT and TLS :$REDIS_TLS_PORT"
PLAIN_URL="redis://127.0.0.1:$REDIS_PORT"
TLS_URL="rediss://127.0.0.1:$REDIS_TLS_PORT"

# --- part 1: requests/s over plain and TLS Redis ----------------------------------------------

declare -A IPID=() IBASE=() IPREFIX=()
# start_instance NAME [VAR=value ...]: progressd on the run's Redis, its own key prefix.
start_instance() {
  local name="$1"
  shift
  IPREFIX[$name]="tls-$RUN_ID-$name:"
  start_progressd "$name" PROGRESS_KEY_PREFIX="${IPREFIX[$name]}" "$@"
  IPID[$name]="$SERVER_PID"
  IBASE[$name]="$SERVER_BASE"
  wait_ready "$SERVER_BASE"
}

# The row → which instance of a side serves it, the lua script, the path.
instance_of() {  # row side
  case "$1" in get_uncached) echo "$2-nocache" ;; *) echo "$2" ;; esac
}
declare -A LABEL=(
  [get_cached]="GET /progress/{id} (cached)"
  [get_uncached]="GET /progress/{id} (uncached)"
  [put]="PUT /progress/{id}"
  [patch]="PATCH /progress/{id}"
)
WRK_PID=""
# run_wrk ROW SIDE DURATION OUT
run_wrk() {
  local row="$1" side="$2" duration="$3" out="$4" base args rc=0
  base="${IBASE[$(instance_of "$row" "$side")]}"
  case "$row" in
    get_cached|get_uncached) args=(-s "$BENCH_DIR/report.lua" "$base/progress/$READ_ID") ;;
    put)   args=(-s "$BENCH_DIR/put.lua" "$base") ;;
    patch) args=(-s "$BENCH_DIR/patch.lua" "$base") ;;
  esac
  # In the background + wait, so that a signal runs the clean-up trap at once.
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$duration" --latency --timeout 5s "${args[@]}" >"$out" 2>&1 &
  WRK_PID=$!
  register_pid "$WRK_PID" "wrk"
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  return "$rc"
}

if (( DO_REDIS )); then
  start_instance plain REDIS_URL="$PLAIN_URL"
  start_instance tls REDIS_URL="$TLS_URL" PROGRESS_REDIS_CA_FILE="$CA"
  start_instance plain-nocache REDIS_URL="$PLAIN_URL" PROGRESS_CACHE_MAX_AGE_MS=0
  start_instance tls-nocache REDIS_URL="$TLS_URL" PROGRESS_REDIS_CA_FILE="$CA" PROGRESS_CACHE_MAX_AGE_MS=0
  log "$BENCH_NAME: progressd instances up: plain ${IBASE[plain]}, tls ${IBASE[tls]}, plain-nocache ${IBASE[plain-nocache]}, tls-nocache ${IBASE[tls-nocache]}"

  # Seed: the record every GET reads, in each prefix; the write rows' records
  # (PUT then replaces, 200; PATCH needs them) for the cache-on instances.
  for name in plain tls plain-nocache tls-nocache; do
    code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT "${json[@]}" --data-binary "@$RECORD_JSON" "${IBASE[$name]}/progress/$READ_ID")"
    [[ "$code" == 201 || "$code" == 200 ]] || die "seeding PUT /progress/$READ_ID on the $name instance answered $code (log: $WORK/server-$name.log)"
  done
  for name in plain tls; do
    for prefix in "$BENCH_PUT_ID_PREFIX" "$BENCH_PATCH_ID_PREFIX"; do
      bad="$(curl -s -X PUT "${json[@]}" --data-binary "@$RECORD_JSON" -o /dev/null -w '%{http_code}\n' \
              "${IBASE[$name]}/progress/${prefix}[0-$((WRITE_IDS - 1))]" | grep -cvE '^20[01]$' || true)"
      [[ "$bad" == 0 ]] || die "seeding ${prefix}* on the $name instance: $bad of $WRITE_IDS PUTs did not answer 200/201"
    done
  done
  log "$BENCH_NAME: seeded $READ_ID in 4 prefixes and 2 × $WRITE_IDS write records in 2"

  # Each instance talks to Redis over the port it was given, and only that
  # one; its change listener (which the read cache needs) is subscribed.
  check_links() {  # when
    local name pid want other n_want n_other subs
    for name in plain tls plain-nocache tls-nocache; do
      pid="${IPID[$name]}"
      if [[ "$name" == tls* ]]; then want="$REDIS_TLS_PORT" other="$REDIS_PORT"; else want="$REDIS_PORT" other="$REDIS_TLS_PORT"; fi
      n_want="$(conns_to "$pid" "$want")"
      n_other="$(conns_to "$pid" "$other")"
      if (( n_want == 0 || n_other > 0 )); then
        problems+=("$name instance $1: $n_want connections to Redis port $want, $n_other to port $other (expected some, and none)")
      fi
      subs="$(rcli PUBSUB NUMSUB "${IPREFIX[$name]}progress:changes" 2>/dev/null | sed -n 2p | tr -d '\r' || true)"
      [[ "$subs" == 1 ]] || problems+=("$name instance $1: ${subs:-?} subscribers on ${IPREFIX[$name]}progress:changes, expected 1 (its change listener)")
      LINKS[$name]="$n_want"
    done
  }
  declare -A LINKS=()
  for _ in $(seq 1 50); do  # the listeners subscribe in the background
    all=1
    for name in plain tls plain-nocache tls-nocache; do
      [[ "$(rcli PUBSUB NUMSUB "${IPREFIX[$name]}progress:changes" 2>/dev/null | sed -n 2p | tr -d '\r' || true)" == 1 ]] || all=0
    done
    (( all )) && break
    sleep 0.1
  done
  check_links "before the run"

  if [[ "$WARMUP" != 0s ]]; then
    log "$BENCH_NAME: warming up, $WARMUP per row and side"
    for row in $ROWS; do
      for side in plain tls; do run_wrk "$row" "$side" "$WARMUP" "$WORK/warmup-$row-$side.txt" || true; done
    done
  fi

  printf 'row\tround\tside\trps\tp50_us\tp99_us\tp999_us\tmax_us\trequests\tstatus_errors\tsocket_errors\n' >"$RAW/throughput.tsv"
  for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(plain tls); else order=(tls plain); fi
    for row in $ROWS; do
      for side in "${order[@]}"; do
        log "$BENCH_NAME: ${LABEL[$row]}, $side, $DURATION, round $round of $ROUNDS (load avg $(cut -d' ' -f1 /proc/loadavg))"
        out="$WORK/wrk-$row-$side-$round.txt"
        run_wrk "$row" "$side" "$DURATION" "$out" || problems+=("${LABEL[$row]} $side round $round: wrk failed: $(tail -n 2 "$out" | tr '\n' ' ')")
        line="$(grep -m1 '^BENCH_RESULT ' "$out" || true)"
        if [[ -z "$line" ]]; then
          problems+=("${LABEL[$row]} $side round $round: wrk printed no result (see $out)")
          continue
        fi
        declare -A F=()
        for kv in ${line#BENCH_RESULT }; do F[${kv%%=*}]="${kv#*=}"; done
        sock=$(( F[connect] + F[read] + F[write] + F[timeout] ))
        printf '%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$round" "$side" "${F[rps]}" "${F[p50_us]}" \
          "${F[p99_us]}" "${F[p999_us]}" "${F[max_us]}" "${F[requests]}" "${F[status]}" "$sock" >>"$RAW/throughput.tsv"
        (( F[requests] > 0 )) || problems+=("${LABEL[$row]} $side round $round: no request completed")
        (( F[status] == 0 )) || problems+=("${LABEL[$row]} $side round $round: ${F[status]} responses with status >= 400")
        (( sock == 0 )) || problems+=("${LABEL[$row]} $side round $round: $sock socket errors")
        unset F
      done
    done
  done
  check_links "after the run"
  # The record the GET rows read must not have moved (a 200 every time, the same one).
  for name in plain tls plain-nocache tls-nocache; do
    code="$(curl -s -o /dev/null -w '%{http_code}' "${IBASE[$name]}/progress/$READ_ID")"
    [[ "$code" == 200 ]] || problems+=("GET /progress/$READ_ID on the $name instance answered $code after the run")
  done
fi

# --- part 2: start-up to the first write over TLS PostgreSQL ------------------------------------

PG_PID=""
PG_DIR="$WORK/pg"
AS_PG=()
stop_own_postgres() {
  [[ -n "$PG_PID" ]] || return 0
  stop_pid "$PG_PID" INT  # fast shutdown
  PG_PID=""
  rm -rf "$PG_DIR/data"   # the cluster is this run's alone; its log stays
}
bench_cleanup_extra() {
  # Everything we started, newest first (progressd before the cluster it
  # uses), then the cluster's data directory. cleanup() goes over the same
  # PIDs afterwards and finds them gone.
  local i
  for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
    [[ "${PIDS[$i]}" == "$PG_PID" ]] || stop_pid "${PIDS[$i]}"
  done
  stop_own_postgres
}

POLLER='
import http.client, os, socket, sys, time
fifo, port, rid, body_file, poll_ms, ready_file = sys.argv[1:7]
port, poll = int(port), int(poll_ms) / 1000.0
body = open(body_file, "rb").read()
fifo = open(fifo, "r")             # the script holds its write end already
open(ready_file, "w").close()      # set up: the script may spawn now
t0_us, pid = (int(x) for x in fifo.readline().split())
t0 = t0_us / 1e6
deadline = t0 + 60

def exited():
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True

def ask(method, path, data=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()

def poll_until(method, path, data, done):
    seen, n = {}, 0
    while True:
        start = time.time()
        if start > deadline:
            return None, n, seen, "gave up after 60 s"
        n += 1
        try:
            status, text = ask(method, path, data)
            if done(status, text):
                return time.time(), n, seen, status
            key = str(status)
        except ConnectionRefusedError:
            key = "refused"
        except (socket.timeout, TimeoutError):
            key = "timeout"
        except (OSError, http.client.HTTPException) as e:
            key = type(e).__name__
        seen[key] = seen.get(key, 0) + 1
        if n % 20 == 0 and exited():
            return None, n, seen, "progressd exited"
        time.sleep(max(0.0, start + poll - time.time()))

def fmt(seen):
    return ",".join("%s:%d" % kv for kv in sorted(seen.items())) or "-"

t_put, n_put, seen_put, how = poll_until("PUT", "/progress/" + rid, body, lambda s, _: s == 201)
if t_put is None:
    print("START put_ms=- ready_ms=- polls=%d seen=%s error=%s" % (n_put, fmt(seen_put), how.replace(" ", "_")))
    sys.exit(1)
t_ready, n_ready, seen_ready, how2 = poll_until("GET", "/readyz", None, lambda s, t: b"\"status\":\"ok\"" in t)
ready = "%.1f" % ((t_ready - t0) * 1000) if t_ready else "-"
print("START put_ms=%.1f ready_ms=%s polls=%d seen=%s ready_polls=%d" % ((t_put - t0) * 1000, ready, n_put, fmt(seen_put), n_ready))
sys.exit(0 if t_ready else 1)
'

# measure_start VARIANT RUN [VAR=value ...]: spawns progressd with those
# settings and times, from the spawn, the first PUT of a new record answered
# 201 and the first /readyz that says ok. Appends to startup.tsv.
measure_start() {
  local variant="$1" run="$2" port pid poller fifo ready out log t0 line rc=0 _
  shift 2
  port="$(free_port)"
  fifo="$WORK/start.fifo"
  ready="$WORK/start.ready"
  out="$WORK/start-$variant-$run.txt"
  log="$WORK/server-start-$variant-$run.log"
  rm -f "$fifo" "$ready"
  mkfifo "$fifo"
  exec 3<>"$fifo"  # read-write: never blocks, and keeps the pipe's data for the poller
  # The poller (python) is started and set up first, so that its start-up
  # time is not counted; it is then told the spawn time and the PID.
  python3 -c "$POLLER" "$fifo" "$port" "tls-start-$RUN_ID-$variant-$run" "$RECORD_JSON" "$POLL_MS" "$ready" >"$out" 2>&1 &
  poller=$!
  register_pid "$poller" "start-up poller"
  for _ in $(seq 1 500); do [[ -e "$ready" ]] && break; kill -0 "$poller" 2>/dev/null || break; sleep 0.01; done
  [[ -e "$ready" ]] || die "the start-up poller did not start: $(cat "$out")"
  t0="${EPOCHREALTIME/./}"
  ( cd "$WORK" && exec env "${UNSET_ENV[@]}" PORT="$port" PROGRESS_HOST=127.0.0.1 PROGRESS_TTL_SECONDS=900 \
      PROGRESS_LOG_LEVEL="${BENCH_LOG_LEVEL:-warn}" "$@" "$BIN" ) >"$log" 2>&1 &
  pid=$!
  register_pid "$pid" "progressd (start-up $variant $run)"
  echo "$t0 $pid" >&3
  wait "$poller" || rc=$?
  exec 3>&-
  rm -f "$fifo" "$ready"
  stop_pid "$pid"
  line="$(grep -m1 '^START ' "$out" || true)"
  if [[ -z "$line" ]]; then
    problems+=("start-up $variant run $run: the poller printed nothing: $(tail -n 3 "$out" | tr '\n' ' ')")
    return 0
  fi
  declare -A S=()
  for kv in ${line#START }; do S[${kv%%=*}]="${kv#*=}"; done
  printf '%s\t%d\t%s\t%s\t%s\t%s\n' "$variant" "$run" "${S[put_ms]}" "${S[ready_ms]}" "${S[polls]}" "${S[seen]}" >>"$RAW/startup.tsv"
  log "$BENCH_NAME: start-up $variant run $run: first 201 after ${S[put_ms]} ms, /readyz ok after ${S[ready_ms]} ms (${S[polls]} polls: ${S[seen]})"
  if (( rc != 0 )) || [[ "${S[put_ms]}" == - || "${S[ready_ms]}" == - ]]; then
    problems+=("start-up $variant run $run: ${S[error]:-/readyz never said ok} (${S[polls]} polls: ${S[seen]}; log: $log)")
  fi
}

PG_TLS_INFO=""
if (( DO_PG )); then
  # A cluster of our own in the work directory, run by the OS user postgres
  # when we are root (PostgreSQL refuses root). setpriv execs, so the PID
  # registered is the postmaster's own.
  mkdir -p "$PG_DIR"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root: an OS user postgres is needed to run the cluster"
    need_tools setpriv
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    chmod 711 "$WORK"
    chown postgres:postgres "$PG_DIR"
  fi
  ( cd "$PG_DIR" && exec "${AS_PG[@]}" env LC_ALL=C "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 \
      --no-locale --no-sync --no-instructions ) >"$PG_DIR/initdb.log" 2>&1 || die "initdb failed (log: $PG_DIR/initdb.log)"
  # The server certificate of the same CA; the key 0600 and the cluster user's, as PostgreSQL wants.
  install -m 644 "$TLS_DIR/server.crt" "$PG_DIR/server.crt"
  install -m 600 "$TLS_DIR/server.key" "$PG_DIR/server.key"
  [[ -z "${AS_PG[*]}" ]] || chown postgres:postgres "$PG_DIR/server.crt" "$PG_DIR/server.key"
  PG_PORT="$(free_port)"
  cat >>"$PG_DIR/data/postgresql.conf" <<EOF

# bench/tls.sh
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
ssl = on
ssl_cert_file = '$PG_DIR/server.crt'
ssl_key_file = '$PG_DIR/server.key'
fsync = off
full_page_writes = off
synchronous_commit = off
shared_buffers = 16MB
max_connections = 50
EOF
  printf '%s\n' "local all all trust" "hostssl all all 127.0.0.1/32 trust" >"$PG_DIR/data/pg_hba.conf"
  ( cd "$PG_DIR" && exec "${AS_PG[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" ) >>"$PG_DIR/postgres.log" 2>&1 &
  PG_PID=$!
  register_pid "$PG_PID" "postgres (own cluster)"
  for _ in $(seq 1 300); do
    "$PG_BIN/pg_isready" -q -h "$PG_DIR" -p "$PG_PORT" -U postgres -t 1 && break
    kill -0 "$PG_PID" 2>/dev/null || die "postgres exited at start-up: $(tail -n 5 "$PG_DIR/postgres.log")"
    sleep 0.1
  done
  "$PG_BIN/pg_isready" -q -h "$PG_DIR" -p "$PG_PORT" -U postgres -t 1 || die "postgres did not start in 30 s (log: $PG_DIR/postgres.log)"
  PG_DB="progressd_tls"
  psql -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "CREATE DATABASE $PG_DB" >/dev/null \
    || die "cannot create database $PG_DB in the own cluster"
  # libpq itself must get in with verify-full against our CA, and TCP
  # without TLS must be refused (hostssl only).
  ssl_on="$(psql "host=127.0.0.1 port=$PG_PORT user=postgres dbname=$PG_DB sslmode=verify-full sslrootcert=$CA" -XAtq \
              -c "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" 2>&1 || true)"
  [[ "$ssl_on" == t ]] || die "psql with sslmode=verify-full could not connect over TLS: $ssl_on"
  if psql "host=127.0.0.1 port=$PG_PORT user=postgres dbname=$PG_DB sslmode=disable" -XAtq -c "SELECT 1" >/dev/null 2>&1; then
    die "the own cluster let a client in without TLS: pg_hba.conf is not hostssl-only"
  fi
  log "$BENCH_NAME: own PostgreSQL (pid $PG_PID) on 127.0.0.1:$PG_PORT, TLS only, database $PG_DB"

  PG_URL_BASE="postgres://postgres@127.0.0.1:$PG_PORT/$PG_DB"
  URL_FULL="$PG_URL_BASE?sslmode=verify-full&sslrootcert=$CA"
  # Without sslrootcert: with one, progressd (like libpq) checks the chain (verify-ca).
  URL_REQUIRE="$PG_URL_BASE?sslmode=require"

  # Migrate once (not timed), and see what TLS progressd's own connections use.
  start_progressd migrate DATABASE_URL="$URL_FULL"
  wait_ready "$SERVER_BASE"
  PG_TLS_INFO="$(psql -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -XAtq -F ' ' -c \
    "SELECT s.version, s.cipher, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
      WHERE a.datname = '$PG_DB' AND s.ssl GROUP BY 1, 2" 2>/dev/null | paste -sd ';' || true)"
  stop_pid "$SERVER_PID"
  log "$BENCH_NAME: database migrated; progressd's connections: ${PG_TLS_INFO:-none seen}"

  VARIANTS=(pg_verify_full pg_require)
  (( REDIS_PID )) && VARIANTS+=(redis_tls_pg_verify_full)
  declare -A VLABEL=(
    [pg_verify_full]="PostgreSQL alone, sslmode=verify-full"
    [pg_require]="PostgreSQL alone, sslmode=require (not verified)"
    [redis_tls_pg_verify_full]="TLS Redis + PostgreSQL verify-full"
  )
  printf 'variant\trun\tfirst_201_ms\treadyz_ok_ms\tpolls\tbefore_201\n' >"$RAW/startup.tsv"
  for run in $(seq 1 "$STARTS"); do
    # Which variant goes first rotates from run to run.
    n=${#VARIANTS[@]}
    for (( k = 0; k < n; k++ )); do
      variant="${VARIANTS[$(( (k + run - 1) % n ))]}"
      case "$variant" in
        pg_verify_full) measure_start "$variant" "$run" DATABASE_URL="$URL_FULL" ;;
        pg_require)     measure_start "$variant" "$run" DATABASE_URL="$URL_REQUIRE" ;;
        redis_tls_pg_verify_full)
          measure_start "$variant" "$run" DATABASE_URL="$URL_FULL" REDIS_URL="$TLS_URL" PROGRESS_REDIS_CA_FILE="$CA" \
            PROGRESS_KEY_PREFIX="tls-$RUN_ID-start:" ;;
      esac
    done
  done
  rows_written="$(psql -h "$PG_DIR" -p "$PG_PORT" -U postgres -d "$PG_DB" -XAtq -c "SELECT count(*) FROM progress WHERE id LIKE 'tls-start-%'" 2>/dev/null || echo '?')"
  stop_own_postgres
fi

# --- tables ---------------------------------------------------------------------------

SUMMARY="$WORK/summary.md"
{
  if (( DO_REDIS )) && [[ -s "$RAW/throughput.tsv" ]]; then
    echo "### Redis link: plain vs TLS (${ROUNDS} rounds × ${DURATION}, ${THREADS} threads, ${CONNECTIONS} connections)"
    echo
    python3 - "$RAW/throughput.tsv" "$ROWS" <<'PY'
import csv, statistics, sys
rows = {}
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        rows.setdefault(r["row"], {}).setdefault(int(r["round"]), {})[r["side"]] = r
label = {"get_cached": "GET /progress/{id} (cached)", "get_uncached": "GET /progress/{id} (uncached)",
         "put": "PUT /progress/{id}", "patch": "PATCH /progress/{id}"}
print("| row | plain req/s | TLS req/s | TLS/plain | plain p99 ms | TLS p99 ms | TLS/plain by round |")
print("|---|---:|---:|---:|---:|---:|---|")
for name in sys.argv[2].split():
    rounds = rows.get(name, {})
    both = [rounds[k] for k in sorted(rounds) if "plain" in rounds[k] and "tls" in rounds[k]]
    if not both:
        print("| %s | (no result) | | | | | |" % label[name])
        continue
    med = lambda side, key: statistics.median(float(r[side][key]) for r in both)
    ratios = [float(r["tls"]["rps"]) / float(r["plain"]["rps"]) for r in both if float(r["plain"]["rps"]) > 0]
    print("| %s | %.0f | %.0f | %.2f | %.2f | %.2f | %s |" % (
        label[name], med("plain", "rps"), med("tls", "rps"), statistics.median(ratios) if ratios else float("nan"),
        med("plain", "p99_us") / 1000, med("tls", "p99_us") / 1000, ", ".join("%.2f" % x for x in ratios)))
PY
    echo
    echo "Each side's requests/s and p99 are the medians of its rounds; TLS/plain is the median of the rounds' ratios (plain and TLS run back to back in each round)."
    echo "Redis connections held (established, to the port each instance was given): plain ${LINKS[plain]:-?}, TLS ${LINKS[tls]:-?}, plain cache off ${LINKS[plain-nocache]:-?}, TLS cache off ${LINKS[tls-nocache]:-?}."
    echo
  fi
  if (( DO_PG )) && [[ -s "$RAW/startup.tsv" ]]; then
    echo "### Start-up to the first write over TLS PostgreSQL (${STARTS} runs per variant, polled every ${POLL_MS} ms)"
    echo
    python3 - "$RAW/startup.tsv" <<'PY'
import csv, statistics, sys
label = {"pg_verify_full": "PostgreSQL alone, sslmode=verify-full",
         "pg_require": "PostgreSQL alone, sslmode=require (not verified)",
         "redis_tls_pg_verify_full": "TLS Redis + PostgreSQL verify-full"}
by = {}
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        by.setdefault(r["variant"], []).append(r)
def mmm(values):
    v = [float(x) for x in values if x not in ("-", "")]
    if not v:
        return "-"
    return "%.0f / %.0f / %.0f" % (min(v), statistics.median(v), max(v))
print("| variant | first PUT 201, ms (min / median / max) | /readyz ok, ms (min / median / max) | runs |")
print("|---|---:|---:|---:|")
for name in ("pg_verify_full", "pg_require", "redis_tls_pg_verify_full"):
    if name in by:
        rs = by[name]
        ok = sum(1 for r in rs if r["first_201_ms"] != "-")
        print("| %s | %s | %s | %d of %d |" % (label[name], mmm(r["first_201_ms"] for r in rs),
              mmm(r["readyz_ok_ms"] for r in rs), ok, len(rs)))
PY
    echo
    echo "From the spawn of the process (a database migrated beforehand: each run is a restart) to the response."
    echo "progressd's own PostgreSQL connections (pg_stat_ssl, after the untimed migration run): ${PG_TLS_INFO:-none seen} (version cipher connections)."
    echo "Records written by the start-up runs, found in PostgreSQL afterwards: ${rows_written:-?}."
    echo
  fi
} | tee "$SUMMARY"

# Every server log line is a warning or an error (log level warn). Expected:
# the 503s that the start-up polls (and the untimed run's /readyz polls)
# were answered before PostgreSQL was ready; anything else is listed.
expected=0 noisy=""
for f in "$WORK"/server-*.log; do
  [[ -s "$f" ]] || continue
  if [[ "$f" == */server-start-* || "$f" == */server-migrate.log ]]; then
    n_expected="$(grep -cE 'circuit breaker open|503 Service Unavailable' "$f" || true)"
    expected=$(( expected + n_expected ))
    n_other=$(( $(wc -l <"$f") - n_expected ))
  else
    n_other="$(wc -l <"$f")"
  fi
  (( n_other == 0 )) || noisy+="${noisy:+, }$(basename "$f") $n_other"
done
echo "server logs (level ${BENCH_LOG_LEVEL:-warn} and up): ${expected} lines about the 503s answered before PostgreSQL was ready (expected); other lines: ${noisy:-none}"
echo "load avg at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw numbers: $RAW/throughput.tsv, $RAW/startup.tsv; tables: $SUMMARY"

if (( ${#problems[@]} > 0 )); then
  echo
  echo "FAILED: these results are not valid measurements:"
  printf '  - %s\n' "${problems[@]}"
  exit 1
fi
exit 0
