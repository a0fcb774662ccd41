#!/usr/bin/env bash
# Long soak on demand (issue 18 item 6): a seeded random schedule of every fault for MINUTES,
# then the heal and the checks (summary table on stdout), then the plot.
#
#   MINUTES=60 SEED=18 bench/faults/soak.sh            # release build, output in target/soak-<seed>
#
# Needs root (namespaces, nftables, loop disks). Exit status: larder-faults's (1 on any
# violation or failed verdict).
set -uo pipefail
cd "$(dirname "$0")/../.."
MINUTES="${MINUTES:-60}"
SEED="${SEED:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="${OUT:-$CARGO_TARGET_DIR/soak-$SEED}"
VENV="${PATRONI_VENV:-/opt/larder-bench-venv}"

bench/failover/setup.sh
cargo build --release -p larder-faults -p larder-cli || exit 1
BIN="$CARGO_TARGET_DIR/release"
"$BIN/larder-faults" cleanup
"$BIN/larder-faults" run --minutes "$MINUTES" --seed "$SEED" --larder-bin "$BIN/larder" --out "$OUT" 2>&1 | tee "$OUT.log"
status=${PIPESTATUS[0]}
"$VENV/bin/python" bench/faults/plot.py "$OUT/larder-faults/history.jsonl" --out "$OUT/soak.png"
exit "$status"
