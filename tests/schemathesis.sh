#!/usr/bin/env bash
# Schemathesis against openapi.yaml and a live progressd, with every check on
# (`--checks all`: no server errors, status codes, content types, response
# headers and schemas, positive and negative data, auth, ...). Two runs:
#
#   memory  the embedded store; read, write and admin tokens and a signing
#           key configured (POST /tokens mints)
#   redis   Redis on $SCHEMATHESIS_REDIS_URL (default the machine's
#           127.0.0.1:6379) under a unique key prefix, removed afterwards;
#           only the admin token configured (reads and writes open; no
#           signing key, so POST /tokens is 403 signing_disabled)
#
# Both send the admin token, which every route accepts; Schemathesis's auth
# checks send requests without it and with a wrong one.
#
# Usage: tests/schemathesis.sh [memory|redis ...]   (default: both)
# Needs Schemathesis in target/schemathesis-venv (as .ci/run installs it):
#   python3 -m venv target/schemathesis-venv
#   target/schemathesis-venv/bin/pip install schemathesis==4.32.5
# Environment: SCHEMATHESIS (the executable), PROGRESSD_BIN (default
# target/debug/progressd, built first with `cargo build --locked`),
# SCHEMATHESIS_EXAMPLES (per operation, default 25), SCHEMATHESIS_SEED
# (default 20261122; a fixed seed keeps CI repeatable), SCHEMATHESIS_REDIS_URL,
# SCHEMATHESIS_ARGS (more `schemathesis run` options, split on spaces).
# Exits non-zero on any failure; the server's log is printed then.
set -euo pipefail
cd "$(dirname "$0")/.."

ST=${SCHEMATHESIS:-target/schemathesis-venv/bin/schemathesis}
BIN=${PROGRESSD_BIN:-target/debug/progressd}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-25}
SEED=${SCHEMATHESIS_SEED:-20261122}
REDIS=${SCHEMATHESIS_REDIS_URL:-redis://127.0.0.1:6379}
ADMIN=st-admin-token

if [[ ! -x "$ST" ]]; then
  echo "schemathesis.sh: $ST is missing; see the top of this script" >&2
  exit 2
fi
if [[ -z "${PROGRESSD_BIN:-}" ]]; then
  cargo build --locked --bin progressd
fi

WORK=$(mktemp -d)
SERVER_PID=
PREFIX=
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ -n "$PREFIX" ]]; then
    drop_redis_keys
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Deletes this run's keys (and only them) from the shared Redis.
drop_redis_keys() {
  local url=${REDIS#redis://}
  local host=${url%%:*} port=${url##*:}
  port=${port%%/*}
  redis-cli -h "$host" -p "$port" --scan --pattern "${PREFIX}*" \
    | xargs -r -n 500 redis-cli -h "$host" -p "$port" del >/dev/null
  PREFIX=
}

# run NAME VAR=VALUE...: starts progressd with those settings, runs
# Schemathesis against it, stops it by its PID.
run() {
  local name=$1
  shift
  local port log
  port=$(free_port)
  log="$WORK/$name.log"
  # Webhooks on, any host allowed: a schema-valid `webhook` is accepted
  # (its deliveries to generated hosts fail and are retried, harmlessly).
  env -i PATH="$PATH" PORT="$port" PROGRESS_HOST=127.0.0.1 PROGRESS_LOG_LEVEL=warn \
    PROGRESS_ADMIN_TOKEN="$ADMIN" PROGRESS_WEBHOOK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" \
    PROGRESS_WEBHOOK_ALLOWED_HOSTS='*' PROGRESS_WEBHOOK_TIMEOUT_SECONDS=1 "$@" "$BIN" >"$log" 2>&1 &
  SERVER_PID=$!
  local up=
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
      up=1
      break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z "$up" ]]; then
    echo "schemathesis.sh ($name): progressd did not start" >&2
    cat "$log" >&2
    return 1
  fi

  echo "== schemathesis ($name store) against 127.0.0.1:$port"
  local rc=0
  "$ST" --config-file tests/schemathesis.toml --no-color run openapi.yaml \
    --url "http://127.0.0.1:$port" \
    --checks all \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --generation-database none \
    --request-timeout 20 \
    --header "Authorization: Bearer $ADMIN" \
    ${SCHEMATHESIS_ARGS:-} \
    || rc=$?

  kill -TERM "$SERVER_PID"
  local exit_code=0
  wait "$SERVER_PID" || exit_code=$?
  SERVER_PID=
  if [[ $rc -ne 0 || $exit_code -ne 0 ]]; then
    echo "schemathesis.sh ($name): schemathesis exited $rc, progressd exited $exit_code; its log:" >&2
    tail -n 200 "$log" >&2
    return 1
  fi
}

modes=("$@")
[[ ${#modes[@]} -gt 0 ]] || modes=(memory redis)
failed=0
for mode in "${modes[@]}"; do
  case $mode in
    memory)
      run memory PROGRESS_READ_TOKENS=st-read-token PROGRESS_WRITE_TOKENS=st-write-token \
        PROGRESS_SIGNING_KEYS=st:schemathesis-signing-key-of-32-bytes-or-more || failed=1
      ;;
    redis)
      PREFIX="schemathesis-$$-$RANDOM:"
      run redis REDIS_URL="$REDIS" PROGRESS_KEY_PREFIX="$PREFIX" || failed=1
      drop_redis_keys
      ;;
    *)
      echo "schemathesis.sh: unknown run $mode (memory, redis)" >&2
      exit 2
      ;;
  esac
done
if [[ $failed -ne 0 ]]; then
  echo "schemathesis.sh: FAILED" >&2
  exit 1
fi
echo "schemathesis.sh: every run passed"
