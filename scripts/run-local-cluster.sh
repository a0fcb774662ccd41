#!/usr/bin/env bash
# Quick start, command 1: build Larder and run a 3-node cluster on this machine
# (nodes on 127.0.0.2-4, each under /tmp/larder-dev/nK), then print its status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/check-disk.sh 4 target
cargo build --release -p larder-cli
install -m 0755 target/release/larder /usr/local/bin/larder
ln -sf /usr/local/bin/larder /usr/local/bin/chef-backend-ctl
larder dev up --nodes "${LARDER_NODES:-3}"
