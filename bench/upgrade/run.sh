#!/usr/bin/env bash
# Rolling-upgrade write-gap benchmark (issue 13): the write gap of each step of the documented
# rolling procedure, from the pinned older release (crates/cli/tests/pinned-release) to the
# current build, with a naive leader restart (no tooling) as the baseline.
#
#   bench/upgrade/run.sh              # RUNS=3 full procedures, each on a fresh cluster
#   RUNS=5 CLIENTS=8 bench/upgrade/run.sh
#
# Builds both releases optimised (the pinned one from `git archive` into its own target dir,
# like the integration test), then runs bench/upgrade/bench.py: a 3-node cluster from the old
# build on 127.0.50.2-4 (this benchmark's /24 only; the tests use 127.0.11-41), haproxy as a
# Chef frontend (`inter 2s rise 1 fall 1 on-marked-down shutdown-sessions`) on
# 127.0.50.100:5432, CLIENTS writers through it. Results: $OUT/run-N.json and $OUT/summary.md.
# Needs root (the agents run PostgreSQL and etcd under their service accounts).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-3}"
CLIENTS="${CLIENTS:-4}"
INTERVAL_MS="${INTERVAL_MS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="${OUT:-$CARGO_TARGET_DIR/upgrade-bench}"
VENV="${VENV:-/opt/larder-bench-venv}"
[ "$(id -u)" -eq 0 ] || { echo "run.sh: run as root" >&2; exit 2; }
"$VENV/bin/python" -c 'import psycopg' || { echo "run.sh: $VENV lacks psycopg (VENV=...)" >&2; exit 2; }
command -v haproxy >/dev/null || { echo "run.sh: haproxy missing (scripts/install-deps.sh)" >&2; exit 2; }

commit=$(grep -v '^[[:space:]]*#' crates/cli/tests/pinned-release | grep -m1 -o '[0-9a-f]\{40\}')
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "run.sh: pinned commit $commit is not in this clone (git fetch --unshallow)" >&2; exit 2; }
pinned="$CARGO_TARGET_DIR/pinned-$commit"
if [ ! -x "$pinned/target/release/larder" ]; then
  echo "== building the pinned release $commit"
  rm -rf "$pinned/src" && mkdir -p "$pinned/src"
  git archive "$commit" | tar -x -C "$pinned/src"
  (cd "$pinned/src" && CARGO_TARGET_DIR="$pinned/target" cargo build --release -q -p larder-cli --bin larder)
fi
echo "== building the current tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.lock || echo +dirty))"
cargo build --release -q -p larder-cli -p larder-faults

rm -rf "$OUT"
exec "$VENV/bin/python" bench/upgrade/bench.py \
  --old "$pinned/target/release/larder" \
  --new "$CARGO_TARGET_DIR/release/larder" \
  --faults "$CARGO_TARGET_DIR/release/larder-faults" \
  --runs "$RUNS" --clients "$CLIENTS" --interval-ms "$INTERVAL_MS" --out "$OUT"
