#!/usr/bin/env bash
# Scrape-cost benchmark (issue 16): latency of GET /metrics and the agent's CPU while idle and
# while scraped once a second, on a real 3-node cluster of the optimised build.
#
#   bench/metrics/run.sh                 # RUNS=3 windows of WINDOW=60 s each, idle then scraped
#   RUNS=5 WINDOW=120 bench/metrics/run.sh
#   PROFILE=debug bench/metrics/run.sh   # the unoptimised build the tests use (a pessimistic bound)
#
# The nodes run on 127.0.44.2-4 (this benchmark's loopback addresses; stop the observability
# test first, its Prometheus uses 127.0.44.1). Measured on the leader: CPU is the agent
# process's own utime+stime from /proc/PID/stat (not PostgreSQL's, etcd's or search's), over
# the window's wall time; latency is curl's time_total per scrape. Prints one row per window
# and the spread (min–max) over the windows. Needs root, like any Larder node.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-3}"
WINDOW="${WINDOW:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ "$(id -u)" -eq 0 ] || { echo "run.sh: run as root" >&2; exit 2; }
command -v curl >/dev/null || { echo "run.sh: curl missing (scripts/install-deps.sh)" >&2; exit 2; }

PROFILE="${PROFILE:-release}"
case "$PROFILE" in
  release) cargo build --release -q -p larder-cli ;;
  debug) cargo build -q -p larder-cli ;;
  *) echo "run.sh: PROFILE is release or debug" >&2; exit 2 ;;
esac
bin="$CARGO_TARGET_DIR/$PROFILE/larder"
echo "build: $PROFILE ($bin), $(git rev-parse --short HEAD), windows of ${WINDOW}s"
work=$(mktemp -d /tmp/larder-metrics-bench.XXXXXX)
# etcd and the search service run as their own users: they must reach their roots.
chmod 755 "$work"
ips=(127.0.44.2 127.0.44.3 127.0.44.4)
cleanup() {
  for i in 1 2 3; do "$bin" --root "$work/n$i" uninstall >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" --root "$work/n1" create-cluster --publish-address "${ips[0]}" --fqdn b1 -y >"$work/create.log" 2>&1 || { cat "$work/create.log" >&2; exit 1; }
for i in 2 3; do
  "$bin" --root "$work/n$i" join-cluster "${ips[0]}" -s "$work/n1/etc/larder/chef-backend-secrets.json" \
    --publish-address "${ips[$((i - 1))]}" --fqdn "b$i" -y >"$work/join.log" 2>&1 || { cat "$work/join.log" >&2; exit 1; }
done
leader=""
for _ in $(seq 1 120); do
  for i in 1 2 3; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://${ips[$((i - 1))]}:7331/leader?wait=0")" = 200 ] && leader=$i
  done
  [ -n "$leader" ] && break
  sleep 0.5
done
[ -n "$leader" ] || { echo "run.sh: no leader" >&2; exit 1; }
ip=${ips[$((leader - 1))]}
pid=$(cat "$work/n$leader/run/larder/agent.pid")
tck=$(getconf CLK_TCK)
# Let joins, the first copies and the status leases settle before measuring.
sleep 20

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# CPU percent of one core over a window, while "$@" runs (or sleeping).
measure() {
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(cpu_ticks)
  "$@"
  t1=$(date +%s.%N); c1=$(cpu_ticks)
  awk -v c="$((c1 - c0))" -v t="$tck" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", 100 * c / t / (b - a) }'
}
scrape_for() {
  : >"$work/lat"
  local end=$((SECONDS + WINDOW))
  while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://$ip:7331/metrics" >>"$work/lat"
    sleep 1
  done
}

printf '%-6s %-12s %-14s %-9s %-9s %-9s %-9s %s\n' window idle_cpu_% scraped_cpu_% scrapes p50_ms p99_ms max_ms bytes
rows=()
for r in $(seq 1 "$RUNS"); do
  idle=$(measure sleep "$WINDOW")
  busy=$(measure scrape_for)
  stats=$(sort -n "$work/lat" | awk '{ t[NR] = $1 * 1000; b = $2 } END {
    p50 = t[int((NR + 1) * 0.5)]; p99 = t[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
    printf "%d %.2f %.2f %.2f %d", NR, p50, p99, t[NR], b }')
  read -r n p50 p99 max bytes <<<"$stats"
  printf '%-6s %-12s %-14s %-9s %-9s %-9s %-9s %s\n' "$r" "$idle" "$busy" "$n" "$p50" "$p99" "$max" "$bytes"
  rows+=("$idle $busy $p50 $p99 $max")
done
printf '%s\n' "${rows[@]}" | awk '
  NR == 1 { for (i = 1; i <= 5; i++) { lo[i] = $i; hi[i] = $i } }
  { for (i = 1; i <= 5; i++) { if ($i < lo[i]) lo[i] = $i; if ($i > hi[i]) hi[i] = $i } }
  END { printf "spread over %d windows: idle CPU %s–%s %%, scraped CPU %s–%s %%, p50 %s–%s ms, p99 %s–%s ms, max %s–%s ms\n",
        NR, lo[1], hi[1], lo[2], hi[2], lo[3], hi[3], lo[4], hi[4], lo[5], hi[5] }'
