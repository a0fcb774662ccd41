#!/usr/bin/env bash
# Quick start, command 2: install what the tests need and run every test of the workspace
# (unit, property and integration tests against real etcd, PostgreSQL and haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off run gains nothing from incremental caches (gigabytes of disk); opt in with
# CARGO_INCREMENTAL=1 when iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash scripts/check-disk.sh 12 "${CARGO_TARGET_DIR:-target}"
bash scripts/install-deps.sh
venv=${LARDER_VENV:-/opt/larder-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r crates/search/tests/requirements.txt
export LARDER_TEST_PYTHON="$venv/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start several real clusters; three at a time fit two cores.
cargo test --workspace -- --test-threads="${LARDER_TEST_THREADS:-3}"
# Fault-injection suite, short fixed-seed pass over every fault (network namespaces, haproxy as
# a Chef frontend; needs root). Prints a table and fails on any lost write or split brain.
cargo build -p larder-cli -p larder-faults
"${CARGO_TARGET_DIR:-target}/debug/larder-faults" ci --out "${CARGO_TARGET_DIR:-target}/larder-faults-ci"
