#!/usr/bin/env bash
# Package test: install, reinstall (the upgrade path), remove and purge the .deb on this machine,
# with a real single-node cluster created from the installed package in between.
# Destructive for /etc/larder, /var/opt/larder, /var/log/larder: run it in a disposable root
# (scripts/fresh-machine-check.sh does). Usage: scripts/package-test.sh DEB [PUBLISH_ADDRESS]
set -euo pipefail
deb=${1:?usage: package-test.sh DEB [PUBLISH_ADDRESS]}
addr=${2:-127.0.0.9}
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
step() { echo "== package-test: $*"; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
for d in /etc/larder /var/opt/larder; do
  [ ! -e "$d/larder.toml" ] && [ ! -e "$d/node.json" ] || fail "$d already holds a node: run this in a disposable root"
done
# Always the packaged binary, never one from /usr/local/bin (the quick start installs one there).
larder() { /usr/bin/larder "$@"; }
chef-backend-ctl() { /usr/bin/chef-backend-ctl "$@"; }
owner_of() { stat -c %U "/proc/$1"; }
service_pid() { larder status --json | python3 -c "import json,sys; s=json.load(sys.stdin); print(next(x['pid'] for x in s['services'] if x['service']=='$1' and x['running']))"; }
wait_leader() {
  for _ in $(seq 1 120); do
    if curl -fsS "http://$addr:7331/leader" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  larder cluster-status || true
  fail "no writable leader on $addr within 60 s"
}

step "dpkg -i $deb"
dpkg -i "$deb"
[ -x /usr/bin/larder ] || fail "/usr/bin/larder missing"
[ "$(readlink /usr/bin/chef-backend-ctl)" = larder ] || fail "/usr/bin/chef-backend-ctl is not a link to larder"
[ -f /lib/systemd/system/larder.service ] || fail "systemd unit missing"
[ "$(stat -c %a /etc/larder)" = 700 ] || fail "/etc/larder is not 0700"
for u in larder-etcd larder-search; do getent passwd "$u" >/dev/null || fail "service account $u missing"; done
chef-backend-ctl --version

step "create-cluster from the installed package ($addr)"
ip addr show lo | grep -q "inet $addr/" || ip addr add "$addr/32" dev lo 2>/dev/null || true
larder create-cluster --publish-address "$addr" --fqdn pkg1 --yes
wait_leader
larder cluster-status
for svc in etcd elasticsearch; do
  pid=$(service_pid "$svc")
  [ "$(owner_of "$pid")" != root ] || fail "$svc runs as root"
done
echo "etcd runs as $(owner_of "$(service_pid etcd)"), search as $(owner_of "$(service_pid elasticsearch)")"

step "dpkg -i again (upgrade path): the running agent keeps running"
agent=$(cat /run/larder/agent.pid)
dpkg -i "$deb"
kill -0 "$agent" || fail "the agent stopped during the package upgrade"
wait_leader

step "larder upgrade: the single node restarts on the installed build and is verified writable"
larder upgrade || fail "larder upgrade exited $? on the single-node cluster"
new_agent=$(cat /run/larder/agent.pid)
[ "$new_agent" != "$agent" ] || fail "larder upgrade did not restart the agent (pid $agent)"
kill -0 "$new_agent" || fail "the agent (pid $new_agent) does not run after larder upgrade"
wait_leader
larder cluster-status
agent=$new_agent

step "dpkg -r: agent stopped, configuration and data kept"
dpkg -r larder
[ ! -e /usr/bin/larder ] || fail "/usr/bin/larder still present after dpkg -r"
! kill -0 "$agent" 2>/dev/null || fail "the agent still runs after dpkg -r"
[ -f /etc/larder/larder.toml ] || fail "dpkg -r removed the configuration"
[ -f /var/opt/larder/postgresql/15/data/PG_VERSION ] || fail "dpkg -r removed the data"

step "dpkg -i after remove: the node comes back on its data"
dpkg -i "$deb"
larder start
wait_leader
larder uninstall

step "dpkg --purge: configuration removed, data kept"
dpkg --purge larder
[ ! -e /etc/larder ] || fail "/etc/larder still present after purge"
[ -f /var/opt/larder/postgresql/15/data/PG_VERSION ] || fail "purge removed the data"
echo "package-test: OK"
