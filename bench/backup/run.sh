#!/usr/bin/env bash
# Backup and restore throughput (issue 14): `larder backup --type full` and `larder restore` of a
# pgbench database of a few GB on a one-node cluster, against plain `pg_basebackup` (tar format,
# lz4 on the client like Larder's pgBackRest) and unpacking its tarballs, on the same machine in
# the same run. Larder's production configuration: pgBackRest with compress-type=lz4 (level 1,
# pgBackRest's default for lz4), process-max 1 (pgBackRest's default; Larder sets none),
# start-fast; the restore is the whole `larder restore` (pgBackRest restore, recovery to the end
# of the archive, a new one-node cluster electing itself leader).
#
#   bench/backup/run.sh                 # RUNS=3, SCALE=150 (about 2.2 GB)
#   RUNS=5 SCALE=200 bench/backup/run.sh
#
# Node on 127.0.51.2 (this benchmark's /24; the tests use 127.0.11-48). Needs root. Prints a
# Markdown table (median and min-max over RUNS, never best-of) and the load average.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-3}"
SCALE="${SCALE:-150}"
IP="${IP:-127.0.51.2}"
WORK="${WORK:-/var/tmp/larder-backup-bench}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PGBIN=/usr/lib/postgresql/15/bin
[ "$(id -u)" -eq 0 ] || { echo "run.sh: run as root" >&2; exit 2; }
for c in pgbackrest lz4 tar python3 "$PGBIN/pgbench" "$PGBIN/pg_basebackup"; do
  command -v "$c" >/dev/null || { echo "run.sh: $c missing (scripts/install-deps.sh)" >&2; exit 2; }
done

echo "== building larder (release)" >&2
cargo build --release -q -p larder-cli --bin larder
LARDER="$CARGO_TARGET_DIR/release/larder"
N="$WORK/n1"
REPO="$WORK/repo"
larder() { "$LARDER" --root "$N" "$@"; }
cleanup() { [ -e "$N/var/opt/larder/node.json" ] && larder cleanse -y >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$WORK" && mkdir -p "$WORK"
printf 'benchmark passphrase\n' > "$WORK/pass" && chmod 600 "$WORK/pass"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== one-node cluster on $IP with backups in $REPO" >&2
larder create-cluster --publish-address "$IP" --fqdn bench1 -y >/dev/null
sed -i "s|^repo_path = \"\"|repo_path = \"$REPO\"|" "$N/etc/larder/larder.toml"
larder reconfigure >/dev/null
larder restart postgresql >/dev/null
secret() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['postgresql'][sys.argv[2]])" "$N/etc/larder/chef-backend-secrets.json" "$1"; }
wait_sql() {
  for _ in $(seq 1 600); do
    PGPASSWORD="$(secret db_superuser_password)" "$PGBIN/psql" -h "$IP" -U chef_pgsql -d postgres -Atqc "$1" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "run.sh: PostgreSQL on $IP did not answer" >&2; exit 1
}
wait_sql "SELECT 1" >/dev/null
echo "== pgbench -i -s $SCALE" >&2
PGPASSWORD="$(secret db_superuser_password)" "$PGBIN/pgbench" -q -i -s "$SCALE" -h "$IP" -U chef_pgsql postgres >&2
bytes=$(wait_sql "SELECT sum(pg_database_size(datname)) FROM pg_database")
mb=$(python3 -c "print(round($bytes/1e6))")
echo "== database: $mb MB" >&2

now() { date +%s.%N; }
declare -a t_lb t_lr t_bb t_bu
for r in $(seq 1 "$RUNS"); do
  echo "== run $r/$RUNS" >&2
  t0=$(now)
  label=$(larder backup --type full --passphrase-file "$WORK/pass" 2>/dev/null | tail -1)
  t1=$(now); t_lb+=("$(python3 -c "print($t1-$t0)")")
  rm -rf "$WORK/bb" "$WORK/bb-restored"
  t0=$(now)
  PGPASSWORD="$(secret replication_password)" PGSSLMODE=require "$PGBIN/pg_basebackup" \
    -h "$IP" -U replicator -D "$WORK/bb" -Ft -X stream --compress=client-lz4 --checkpoint=fast
  t1=$(now); t_bb+=("$(python3 -c "print($t1-$t0)")")
  t0=$(now)
  mkdir -p "$WORK/bb-restored/pg_wal"
  lz4 -dc "$WORK/bb/base.tar.lz4" | tar -x -C "$WORK/bb-restored"
  # pg_basebackup compresses the base tarball only; the streamed WAL comes as a plain tar.
  tar -x -f "$WORK/bb/pg_wal.tar" -C "$WORK/bb-restored/pg_wal"
  sync
  t1=$(now); t_bu+=("$(python3 -c "print($t1-$t0)")")
  rm -rf "$WORK/bb" "$WORK/bb-restored"
  larder cleanse -y >/dev/null
  t0=$(now)
  larder restore "$REPO" --set "$label" --passphrase-file "$WORK/pass" -y >/dev/null 2>&1
  wait_sql "SELECT count(*) FROM pgbench_accounts" >/dev/null
  t1=$(now); t_lr+=("$(python3 -c "print($t1-$t0)")")
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$mb" "${t_lb[*]}" "${t_bb[*]}" "${t_lr[*]}" "${t_bu[*]}" <<'EOF'
import statistics, sys
mb = float(sys.argv[1])
rows = [("backup", "`larder backup --type full` (pgBackRest, lz4, process-max 1)", sys.argv[2]),
        ("backup", "`pg_basebackup -Ft -X stream --compress=client-lz4`", sys.argv[3]),
        ("restore", "`larder restore REPO --set L` (to a writable leader)", sys.argv[4]),
        ("restore", "unpack the pg_basebackup tarballs (`lz4 -dc base.tar.lz4 \| tar -x`, `tar -xf pg_wal.tar`, sync)", sys.argv[5])]
print(f"Database: {mb:.0f} MB (sum of pg_database_size)\n")
print("| | what | seconds per run | median s | MB/s median (min–max) |")
print("|---|---|---|---|---|")
for kind, what, ts in rows:
    t = [float(x) for x in ts.split()]
    rates = [mb / x for x in t]
    print(f"| {kind} | {what} | {', '.join(f'{x:.1f}' for x in t)} | {statistics.median(t):.1f} | "
          f"{statistics.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f}) |")
EOF
echo
echo "load average (1/5/15 min): at start $load_start, at end $load_end; $(nproc) cores"
