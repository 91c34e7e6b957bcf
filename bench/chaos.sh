#!/usr/bin/env bash
# bench/chaos.sh: the chaos run (examples/chaos.rs) against the release
# binary: its own redis-server, its own PostgreSQL cluster (initdb in a temp
# dir, run as the OS user postgres when we are root) and three progressd
# instances sharing both (each reaching Redis through its own in-process
# proxy), all on free ports; writers and readers through random instances
# while, one fault at a time, Redis, PostgreSQL or an instance is SIGKILLed
# and restarted, Redis or PostgreSQL is paused (SIGSTOP, SIGCONT), or one
# instance is cut off from Redis (its proxy resets or blackholes). See
# bench/README.md ("chaos.sh") for the definitions it prints, what it
# checks, and the refused writes and refusal windows it counts.
#
# Environment (all optional):
#   CHAOS_SECONDS          how long the load and the faults last (default 60)
#   CHAOS_WRITERS          writer tasks, each with its own ids (default 4)
#   CHAOS_IDS_PER_WRITER   ids per writer (default 8)
#   CHAOS_READERS          reader tasks (default 4)
#   CHAOS_PERSIST_SECONDS  PROGRESS_PERSIST_INTERVAL_SECONDS (default 1)
#   CHAOS_SEED             the seed of every random choice (default random, printed)
#   CHAOS_INSTANCES        progressd instances (default 3)
#   CHAOS_FAULTS           the kinds of fault to choose from (default kill,pause,partition)
#   BENCH_SKIP_BUILD       1: use the existing target/release/progressd and example
#
# Exit status: 0 when no violation was found, 1 on violations, 2 when the
# set-up failed. The short version runs in `cargo test` (tests/chaos.rs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v redis-server >/dev/null || { echo "chaos: redis-server is required" >&2; exit 2; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "chaos: initdb (/usr/lib/postgresql/*/bin) is required" >&2; exit 2; }
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  echo "chaos: cargo build --release --locked --bin progressd --example chaos" >&2
  cargo build --release --locked --bin progressd --example chaos >&2
fi
# Copies, so that a rebuild during the run cannot swap the binary an instance restarts with.
work="$(mktemp -d "${TMPDIR:-/tmp}/progressd-chaos-bin.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp target/release/progressd target/release/examples/chaos "$work/"
"$work/chaos" --bin "$work/progressd"
