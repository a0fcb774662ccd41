#!/usr/bin/env bash
# Search tier benchmark: 100k realistic Chef node documents, durable bulk indexing through the
# HTTP API, query latency p50/p99, and the same queries answered by PostgreSQL alone (pg_trgm).
# Prints a markdown table. Usage: bench/search/run.sh [DOCS]   (env BENCH_QUERIES, BENCH_BULK)
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_DOCS="${1:-${BENCH_DOCS:-100000}}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo run --release -p larder-search --example search_bench
