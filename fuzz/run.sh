#!/usr/bin/env bash
# Runs the frame/message decoder fuzz target for a bounded time (default 60 s) and prints how
# long it ran clean. cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p fuzz/corpus/frame_decoder
start=$(date +%s)
RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder fuzz/corpus/frame_decoder -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 25
echo "fuzz: frame_decoder ran clean for $(( $(date +%s) - start )) s"
