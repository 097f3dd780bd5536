#!/usr/bin/env bash
# Runs each fuzz target (the frame/message decoders, the admin port's request parser) for a
# bounded time each (default 60 s) and prints how long it ran clean. cargo fuzz needs nightly
# compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them. Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in frame_decoder admin_request; do
    mkdir -p "fuzz/corpus/$target"
    start=$(date +%s)
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25
    echo "fuzz: $target ran clean for $(( $(date +%s) - start )) s"
done
