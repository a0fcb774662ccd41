#!/usr/bin/env bash
# Installs what the failover benchmark needs: Debian's PostgreSQL 15, etcd 3.4, haproxy,
# nftables, and a venv with Patroni 4 + psycopg + matplotlib.
# The venv is built from Debian's /usr/bin/python3 on purpose: Patroni runs as the
# `postgres` user, which cannot execute an interpreter living under /root (pyenv).
set -euo pipefail
VENV="${PATRONI_VENV:-/opt/larder-bench-venv}"
need=()
for b in /usr/lib/postgresql/15/bin/postgres /usr/bin/etcd /usr/sbin/haproxy /usr/sbin/nft /usr/sbin/losetup /usr/sbin/mkfs.ext4 /usr/bin/pg_autoctl /usr/share/postgresql/15/extension/pgautofailover.control; do
  [ -e "$b" ] || need+=("$b")
done
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 etcd-server etcd-client haproxy nftables iproute2 e2fsprogs mount python3-venv pg-auto-failover-cli postgresql-15-auto-failover
fi
if [ ! -x "$VENV/bin/patroni" ] || ! "$VENV/bin/python" -c 'import psycopg, matplotlib' 2>/dev/null; then
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'patroni[etcd3]' 'psycopg[binary]' matplotlib
fi
"$VENV/bin/patroni" --version
