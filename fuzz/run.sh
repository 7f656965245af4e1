#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after another (the machine has 2 shared cores).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 120 s each, every target
#
# Needs `cargo install cargo-fuzz`. The stable toolchain is told to accept cargo-fuzz's
# nightly flags (-Zsanitizer=address, sancov) with RUSTC_BOOTSTRAP=1.
# New inputs go to fuzz/corpus-work/<target>/ (ignored by git); the committed seeds in
# fuzz/corpus/<target>/ are only read. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-120}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "corpus-work/$t"
    echo "=== $t: ${secs}s"
    cargo fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1
done
