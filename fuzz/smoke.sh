#!/usr/bin/env bash
# CI smoke test for the fuzz targets: builds them all, then runs each for a few
# seconds from its seeds (and any local corpus). Exits non-zero if the build
# fails or any target crashes, leaks, times out or runs out of memory.
#
#   fuzz/smoke.sh              # from anywhere; 5 s per target
#   SMOKE_SECONDS=60 fuzz/smoke.sh
#
# Needs a nightly toolchain (`rustup toolchain install nightly`). Builds go to
# $CARGO_TARGET_DIR, by default a cache directory outside the repository, and
# never build gust's default features (no RocksDB C++ build).
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SECONDS_PER_TARGET="${SMOKE_SECONDS:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME}/.cache/gust-fuzz-target}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "smoke.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

cd "$FUZZ_DIR"
cargo +nightly fuzz build

targets="$(cargo +nightly fuzz list)"
if [ -z "$targets" ]; then
    echo "smoke.sh: no fuzz targets found" >&2
    exit 1
fi

failed=()
for target in $targets; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ -d "seeds/$target" ]; then
        dirs+=("seeds/$target")
    fi
    # Replay the saved crash inputs first: each must now pass.
    if [ -d "regressions/$target" ] && compgen -G "regressions/$target/*" >/dev/null; then
        echo "==> $target: replaying regressions/$target"
        if ! cargo +nightly fuzz run "$target" regressions/"$target"/* -- -runs=1; then
            failed+=("$target (regression)")
            continue
        fi
    fi
    echo "==> $target: ${SECONDS_PER_TARGET}s"
    if ! cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "smoke.sh: failed: ${failed[*]} (crash inputs are under fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke.sh: all fuzz targets passed"
