#!/usr/bin/env bash
# Builds the Debian package larder_<version>_<arch>.deb from a release build:
#   /usr/bin/larder, /usr/bin/chef-backend-ctl (symlink), /lib/systemd/system/larder.service,
#   /etc/larder (0700), maintainer scripts that create the service accounts (contrib/debian/).
# Usage: scripts/build-deb.sh [OUTDIR]        (env: LARDER_BIN=prebuilt binary, LARDER_DEB_VERSION)
# Install: dpkg -i larder_<version>_amd64.deb (or apt-get install ./larder_<version>_amd64.deb,
# which also pulls in postgresql-15, etcd-server and etcd-client).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${CARGO_TARGET_DIR:-target}/debian}
version=${LARDER_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
arch=$(dpkg --print-architecture)
bin=${LARDER_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p larder-cli
  bin=${CARGO_TARGET_DIR:-target}/release/larder
fi
[ -x "$bin" ] || { echo "build-deb: no executable at $bin" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/larder"
strip --strip-debug "$stage/usr/bin/larder" 2>/dev/null || true
ln -s larder "$stage/usr/bin/chef-backend-ctl"
install -D -m 0644 contrib/larder.service "$stage/lib/systemd/system/larder.service"
install -D -m 0644 README.md "$stage/usr/share/doc/larder/README.md"
install -d -m 0700 "$stage/etc/larder"
install -d -m 0755 "$stage/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "contrib/debian/$s" "$stage/DEBIAN/$s"; done
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: larder
Version: $version
Architecture: $arch
Maintainer: Larder developers <larder@localhost>
Section: database
Priority: optional
Installed-Size: $size
Depends: postgresql-15, etcd-server, etcd-client, passwd, procps, pgbackrest, iproute2, iputils-arping
Description: high-availability backend cluster for Chef Infra Server
 Larder is a drop-in replacement for Chef Backend (chef-backend-ctl): one binary that
 supervises etcd, PostgreSQL 15 and an Elasticsearch-compatible search service on each
 backend node, elects the leader through etcd, replicates synchronously, fails over in
 seconds and fences the deposed leader.
CONTROL
mkdir -p "$out"
deb="$out/larder_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
