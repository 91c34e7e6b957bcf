#!/usr/bin/env bash
# bench/sse_curve.sh: progressd's RSS with 1,000 and 10,000 open event
# streams (the memory store, streams spread over 1,000 records), for each
# binary given, with examples/sse_load.rs in hold mode (see bench/sse.sh for
# what hold mode samples). Prints one SSE_RESULT line per binary and count.
# See bench/README.md ("Issue 23 results").
#
#   SSE_LOADER=target/release/examples/sse_load bench/sse_curve.sh /tmp/before /tmp/after
#   SSE_COUNTS="1000 10000 100000" ...   # 100,000 needs nofile and local ports for it
#
# Needs `ulimit -n` of at least the largest count plus a few hundred (the
# loader and the server each hold one descriptor per stream).
#
# Counts past the open-file limit: SSE_MEMORY_COUNTS="1000 10000 100000"
# runs examples/sse_memory.rs (SSE_MEMORY, default
# target/release/examples/sse_memory) once per count: progressd built into
# that example, its connections in-process streams that hold no descriptor.
# It measures the source tree it was built from, not the binaries given.
set -uo pipefail
LOADER="${SSE_LOADER:-target/release/examples/sse_load}"
read -r -a COUNTS <<<"${SSE_COUNTS:-1000 10000}"
read -r -a MEMORY_COUNTS <<<"${SSE_MEMORY_COUNTS:-}"
MEMORY="${SSE_MEMORY:-target/release/examples/sse_memory}"
(( $# == 0 )) || [[ -x "$LOADER" ]] || { echo "sse_curve: $LOADER does not exist (cargo build --release --example sse_load)" >&2; exit 2; }
(( ${#MEMORY_COUNTS[@]} == 0 )) || [[ -x "$MEMORY" ]] || { echo "sse_curve: $MEMORY does not exist (cargo build --release --example sse_memory)" >&2; exit 2; }
for bin in "$@"; do
  for subs in "${COUNTS[@]}"; do
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    ( cd /tmp && ulimit -n "$(ulimit -Hn)" && exec env -u REDIS_URL -u DATABASE_URL PORT="$port" PROGRESS_HOST=127.0.0.1 \
        PROGRESS_LOG_LEVEL=warn PROGRESS_MAX_CONNECTIONS=$((subs + 2000)) PROGRESS_TTL_SECONDS=900 "$bin" ) >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    line="$( (ulimit -n "$(ulimit -Hn)"; "$LOADER" --mode hold --url "http://127.0.0.1:$port" --subscribers "$subs" \
      --records 1000 --server-pid "$pid" --label "$(basename "$bin")-$subs") 2>/dev/null | grep '^SSE_RESULT')"
    echo "$(basename "$bin") subs=$subs ${line:-no result}"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
done
for subs in "${MEMORY_COUNTS[@]}"; do
  line="$("$MEMORY" --subscribers "$subs" --records 1000 2>/dev/null | grep '^SSE_RESULT')"
  echo "in-memory subs=$subs ${line:-no result}"
done
