#!/usr/bin/env bash
# Failover benchmark, Larder and Patroni side by side from one run (issue 5 §5).
#
#   bench/failover/run.sh                 # 10 trials per scenario, every system
#   TRIALS=3 SYSTEMS="patroni-aggressive" bench/failover/run.sh
#   # Larder through haproxy vs. clients writing to the VIP (no haproxy), own doc section:
#   TRIALS=5 SYSTEMS="larder larder-vip" RESULTS=bench/failover/results-vip \
#     SECTION="Failover through the VIP" PNG=bench/failover/vip bench/failover/run.sh
#
# Each system runs in its own set of network namespaces (3 nodes + a client behind haproxy
# configured as a Chef frontend), one client writes every 10 ms; results go to
# bench/failover/results/<label>/ and the `## Failover` section of docs/benchmarks.md.
# Needs root (namespaces, nftables, loop mounts).
set -uo pipefail
cd "$(dirname "$0")/../.."
TRIALS="${TRIALS:-10}"
SYSTEMS="${SYSTEMS:-larder larder-unaligned patroni-defaults patroni-aggressive pg-auto-failover}"
PROFILE="${PROFILE:-release}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
RESULTS="${RESULTS:-bench/failover/results}"
SECTION="${SECTION:-Failover}"
PNG="${PNG:-bench/failover/failover}"
NOTES="${NOTES:-bench/failover/notes.md}"
VENV="${PATRONI_VENV:-/opt/larder-bench-venv}"

bench/failover/setup.sh
flag=()
[ "$PROFILE" = release ] && flag=(--release)
# The agent's idle CPU/RSS is part of the comparison, so both binaries are built optimised.
cargo build "${flag[@]}" -p larder-faults -p larder-cli || exit 1
BIN="$CARGO_TARGET_DIR/$PROFILE"
"$BIN/larder-faults" cleanup

status=0
for s in $SYSTEMS; do
  case "$s" in
    larder) args=(--system larder --larder-bin "$BIN/larder") ;;
    larder-vip) args=(--system larder --via-vip --larder-bin "$BIN/larder") ;;
    # Switchovers only, started at once instead of timed to the frontends' checks.
    larder-unaligned) args=(--system larder --larder-bin "$BIN/larder" --scenarios switchover
                            --larder-set leaderl.align_switchover_to_checks=false) ;;
    patroni-defaults) args=(--system patroni --settings defaults) ;;
    patroni-aggressive) args=(--system patroni --settings aggressive) ;;
    pg-auto-failover) args=(--system pgaf) ;;
    *) echo "unknown system $s" >&2; exit 2 ;;
  esac
  rm -rf "$RESULTS/$s"
  echo "== $s"
  if ! "$BIN/larder-faults" bench "${args[@]}" --trials "$TRIALS" --out "$RESULTS" 2>&1 | tee "/tmp/larder-failover-$s.log"; then
    echo "$s: benchmark failed (see /tmp/larder-failover-$s.log)" >&2
    status=1
  fi
done

"$VENV/bin/python" bench/failover/report.py "$RESULTS" \
  --png-prefix "$PNG" \
  --doc docs/benchmarks.md \
  --section "$SECTION" \
  --notes "$NOTES" \
  --command "TRIALS=$TRIALS SYSTEMS=\"$SYSTEMS\" RESULTS=$RESULTS SECTION=\"$SECTION\" PNG=$PNG bench/failover/run.sh"
exit $status
