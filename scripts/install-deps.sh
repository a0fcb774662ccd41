#!/usr/bin/env bash
# Installs everything Larder needs on Debian bookworm to build, run, test and benchmark it,
# idempotently: packages already present are skipped, and what is installed is printed.
#
# The lists below are the single source of truth. After installing, every command the build,
# the tests and the benchmarks call is looked up; a missing one fails here, naming it, instead
# of failing later inside a test (scripts/fresh-machine-check.sh runs this in a clean root).
set -euo pipefail

# Build: a C toolchain (cc links every Rust binary; ring and zstd build C code) and protoc with
# the well-known .proto files (etcd-client's build script imports google/protobuf/*.proto,
# which only libprotobuf-dev ships).
build=(build-essential pkg-config protobuf-compiler libprotobuf-dev git)
# Run: the services Larder supervises, and what the agent calls.
run=(postgresql-15 etcd-server etcd-client ca-certificates procps util-linux mount passwd pgbackrest
     iputils-arping)
# Test and benchmark: frontend routing, fault injection (namespaces, nftables, netem, loop
# disks), the Python ES/OpenSearch client tests, Debian packaging, fresh-root checks, and the
# observability test (promtool and a Prometheus server scrape /metrics, headless Chromium
# renders /ui). Development only: none of these is in the .deb's Depends.
test=(haproxy iproute2 nftables iptables e2fsprogs python3 python3-venv curl psmisc
      dpkg-dev mmdebstrap prometheus chromium)

need=("${build[@]}" "${run[@]}" "${test[@]}")
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} — run this script as root (or: sudo $0)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Every program the build, the agent, the tests and the benchmarks execute. Keep in step with
# the code: `grep -rn 'Command::new' crates` lists them.
commands=(cc protoc git /usr/lib/postgresql/15/bin/postgres /usr/lib/postgresql/15/bin/pg_ctl
          /usr/lib/postgresql/15/bin/pg_rewind /usr/lib/postgresql/15/bin/pg_basebackup
          /usr/lib/postgresql/15/bin/psql /usr/lib/postgresql/15/bin/pg_controldata pgbackrest
          etcd etcdctl haproxy ip tc ss nft iptables losetup
          mount umount mkfs.ext4 kill pkill pgrep ps timeout tail tar df du uname python3 curl useradd
          arping
          dpkg-deb mmdebstrap promtool prometheus chromium)
absent=()
for c in "${commands[@]}"; do
  command -v "$c" >/dev/null 2>&1 || absent+=("$c")
done
[ -f /usr/include/google/protobuf/descriptor.proto ] || absent+=("/usr/include/google/protobuf/descriptor.proto")
if [ "${#absent[@]}" -gt 0 ]; then
  echo "install-deps: still missing after install: ${absent[*]} — add the package that ships it to scripts/install-deps.sh" >&2
  exit 1
fi

# The Debian packages ship their own services; Larder supervises its own instances.
for svc in etcd postgresql haproxy prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
# Debian's etcd-server may have been started by its postinst without systemd; it would hold
# port 2379 on localhost.
pkill -x etcd -u etcd 2>/dev/null || true
# Likewise Debian's prometheus (port 9090, which the observability test binds on loopback).
pkill -x prometheus -u prometheus 2>/dev/null || true
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
