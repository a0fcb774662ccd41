#!/usr/bin/env bash
# Fresh-machine check: proves the README's quick start works on a new Debian bookworm machine,
# where nothing this machine once installed by hand exists.
#
#   scripts/fresh-machine-check.sh            # README command 1 + cluster-status + package test
#   scripts/fresh-machine-check.sh --tests    # ... and README command 2 (every test) too
#   KEEP=1 scripts/fresh-machine-check.sh     # keep the root afterwards to look inside
#
# Builds a minimal bookworm root once with mmdebstrap (cached as a tarball in
# /var/cache/larder-fresh), unpacks a new copy per run, clones HEAD (committed work only, as CI
# sees it) into it and runs the commands there with the host's network. The host's Rust
# toolchain is mounted (the README asks for cargo to be present) and so is its apt download
# cache (saves downloading the same .debs; what is *installed* starts from minbase every run).
# Nothing else of the host is visible. Needs root. Exit status: non-zero on the first failure.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine-check: run as root" >&2; exit 2; }
with_tests=0
for a in "$@"; do
  case "$a" in
    --tests) with_tests=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fresh-machine-check: unknown option $a (use --tests)" >&2; exit 2 ;;
  esac
done
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cache=/var/cache/larder-fresh
base=$cache/bookworm-minbase.tar
if [ ! -s "$base" ]; then
  if ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
  mkdir -p "$cache"
  echo "fresh-machine-check: building the base root (once, ~2 min)" >&2
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  mmdebstrap --quiet --format=tar --variant=minbase --include=ca-certificates,curl bookworm "$base.tmp" "$sources"
  mv "$base.tmp" "$base"
fi
# The root holds its own apt installs and cargo builds (a release build; with --tests a whole
# debug test build too).
bash "$repo/scripts/check-disk.sh" $(( with_tests ? 20 : 8 )) /var/tmp
root=$(mktemp -d /var/tmp/larder-fresh.XXXXXX)
cleanup() {
  # Every process whose root is the fresh root (agents, PostgreSQL, etcd, builds) goes first.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
  done
  sleep 1
  for m in $(awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if [ -z "${KEEP:-}" ]; then rm -rf --one-file-system "$root"; else echo "fresh-machine-check: kept $root" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
tar -C "$root" -xf "$base"
name=$(basename "$repo")
git clone -q --no-local "$repo" "$root/src/$name"
[ -d "$repo/../shared" ] && cp -a "$repo/../shared" "$root/src/shared"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# This workplace's way to the registries (extra CA certificates, pip settings) belongs to every
# machine here, not to the project: carry it over.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
passenv=()
while IFS= read -r v; do passenv+=("$v=${!v}"); done < <(compgen -e | grep -E '^(SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|PIP_[A-Z_]+|[Hh][Tt][Tt][Pp][Ss]?_[Pp][Rr][Oo][Xx][Yy]|[Nn][Oo]_[Pp][Rr][Oo][Xx][Yy])$' | grep -vx PIP_FIND_LINKS || true)
mkdir -p "$root/root/.cargo" "$root/root/.rustup" /var/cache/apt/archives/partial
mount --bind "$root" "$root"            # "/" inside is a mount point (ip netns needs that)
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount --bind "${CARGO_HOME:-$HOME/.cargo}" "$root/root/.cargo"
mount --bind "${RUSTUP_HOME:-$HOME/.rustup}" "$root/root/.rustup"
mount --bind /var/cache/apt/archives "$root/var/cache/apt/archives"
# minbase's apt deletes downloaded .debs after installing; keep them in the shared cache.
rm -f "$root/etc/apt/apt.conf.d/docker-clean"

inside() {
  echo "fresh-machine-check: [$*]" >&2
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 "${passenv[@]}" \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /src/$name && $*"
}

started=$(date +%s)
# README command 1, exactly as a newcomer types it.
inside "bash scripts/run-local-cluster.sh"
inside "larder --root /tmp/larder-dev/n1 cluster-status"
inside "larder dev down"
# The Debian package, built from the binary command 1 just built, installed and removed.
inside "LARDER_BIN=target/release/larder bash scripts/build-deb.sh /tmp/deb"
inside 'bash scripts/package-test.sh /tmp/deb/larder_*.deb'
if [ "$with_tests" = 1 ]; then
  # README command 2.
  inside "bash scripts/test.sh"
fi
echo "fresh-machine-check: OK in $(( $(date +%s) - started )) s"
