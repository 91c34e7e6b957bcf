#!/usr/bin/env bash
# Fuzzes request-body handling (fuzz_targets/body.rs: the PUT/PATCH parse,
# validation, merge and stored form) for FUZZ_SECONDS (default 60), starting
# from seeds/ and the corpus of earlier runs (corpus/, not committed).
# A crash leaves its input in artifacts/body/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz body fuzz/artifacts/body/<file>
# Extra arguments go to libFuzzer (e.g. -jobs=2 -workers=2). Not part of CI.
#
# cargo fuzz passes rustc flags that only a nightly compiler accepts
# (-Zsanitizer=address and the sanitizer-coverage passes). This machine has
# the stable toolchain only and cannot fetch a nightly, so RUSTC_BOOTSTRAP=1
# tells stable rustc to accept them; the AddressSanitizer runtime ships with
# stable's rust-std. (That switch is for local tooling like this, never for
# builds that ship.) FUZZ_TOOLCHAIN=nightly uses a real nightly instead.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TARGET=body

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

toolchain=()
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
else
  export RUSTC_BOOTSTRAP=1
fi

mkdir -p "fuzz/corpus/$TARGET"
cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$TARGET" "fuzz/corpus/$TARGET" "fuzz/seeds/$TARGET" -- \
  -max_total_time="$FUZZ_SECONDS" -timeout=10 -dict=fuzz/body.dict -print_final_stats=1 "$@"
