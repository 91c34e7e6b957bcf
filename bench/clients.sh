#!/usr/bin/env bash
# The worker clients (clients/python, clients/js) with their default settings:
# how fast a worker can call update(), and how many PATCHes a second reach
# the release binary (memory store, a write token), for a tight loop and for
# one update per 10 ms. BENCH_SECONDS (default 5) per loop.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LOOP="${BENCH_SECONDS:-5}"

cargo build --release --locked --bin progressd
BIN="${PROGRESSD_BIN:-target/release/progressd}"
if [ ! -f clients/js/dist/esm/index.js ]; then
  npm ci --prefix clients/js --no-audit --no-fund
  npm run --prefix clients/js build
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
TOKEN="bench-write-token"
PORT="$PORT" PROGRESS_HOST=127.0.0.1 PROGRESS_LOG_LEVEL=warn PROGRESS_WRITE_TOKENS="$TOKEN" "$BIN" &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

echo "# $(git rev-parse --short HEAD) $(date -u +%FT%TZ), ${SECONDS_PER_LOOP} s per loop, $(nproc) CPUs"
python3 bench/clients_py.py "http://127.0.0.1:$PORT" "$TOKEN" "$SECONDS_PER_LOOP"
node bench/clients_js.mjs "http://127.0.0.1:$PORT" "$TOKEN" "$SECONDS_PER_LOOP"
