#!/usr/bin/env bash
# Installs what Larder needs at run and test time on Debian bookworm, idempotently.
# Safe to run again: packages already present are skipped.
set -euo pipefail

need=(postgresql-15 etcd-server etcd-client protobuf-compiler haproxy iproute2 nftables iptables
      python3 python3-venv curl ca-certificates e2fsprogs)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} — run this script as root (or: sudo $0)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages ship their own services; Larder supervises its own instances.
for svc in etcd postgresql haproxy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
# Debian's etcd-server may have been started by its postinst without systemd; it would hold
# port 2379 on localhost.
pkill -x etcd -u etcd 2>/dev/null || true
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
