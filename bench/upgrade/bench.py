#!/usr/bin/env python3
"""Rolling-upgrade write-gap benchmark (issue 13). Driven by bench/upgrade/run.sh.

Per run: a 3-node cluster from the OLD build on 127.0.<subnet>.2-4, haproxy configured as a
Chef frontend in front of it (127.0.<subnet>.100:5432, `larder-faults haproxy-config`),
CLIENTS writers through haproxy (one persistent connection each, reconnecting on error, one
INSERT every INTERVAL ms), then the documented procedure with the NEW build's CLI, each step
timed, then a baseline (the leader's agent stopped with SIGTERM and started again without the
tooling, cluster failover on), then the check that every acknowledged write is on the final
leader (and on every node).

Per step: the command's duration, the longest gap between two consecutive acknowledged
writes (all clients merged) that overlaps the step's window most (from the step's start to the
next step's start: the settle pause after a command belongs to it), and the failed write
attempts started in that window. Results: one JSON per run in --out, and a markdown table
(median / min / max across runs) printed at the end and written to --out/summary.md.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg

PSQL_USER = "chef_pgsql"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Node:
    def __init__(self, name, ip, root):
        self.name, self.ip, self.root = name, ip, root

    def run(self, binary, *args, check=True, timeout=900):
        t0 = time.monotonic()
        p = subprocess.run(
            [binary, "--root", self.root, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise RuntimeError(
                f"`larder {' '.join(args)}` on {self.name} exited {p.returncode} "
                f"after {time.monotonic() - t0:.1f}s\nstdout: {p.stdout}\nstderr: {p.stderr}"
            )
        return p

    def status(self, binary):
        p = self.run(binary, "status", "--json", check=False, timeout=30)
        if p.returncode != 0:
            return None
        try:
            return json.loads(p.stdout)
        except ValueError:
            return None

    def password(self):
        with open(os.path.join(self.root, "etc/larder/chef-backend-secrets.json")) as f:
            return json.load(f)["postgresql"]["db_superuser_password"]

    def agent_pid(self):
        try:
            with open(os.path.join(self.root, "run/larder/agent.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def is_leader(self):
        try:
            with urllib.request.urlopen(
                f"http://{self.ip}:7331/leader?wait=0", timeout=1
            ) as r:
                return r.status == 200
        except Exception:
            return False

    def connect(self, host=None):
        return psycopg.connect(
            host=host or self.ip,
            port=5432,
            user=PSQL_USER,
            password=self.password(),
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
            options="-c statement_timeout=5000",
        )


def wait_until(what, timeout, f, every=0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Writers:
    """CLIENTS threads, each a persistent connection through haproxy that reconnects on error."""

    def __init__(self, proxy, password, clients, interval):
        self.proxy, self.password = proxy, password
        self.clients, self.interval = clients, interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.next_id = 0
        self.acks = []  # (ack monotonic time, id, client)
        self.failures = []  # (attempt monotonic time, client, error)
        self.threads = []

    def _id(self):
        with self.lock:
            self.next_id += 1
            return self.next_id

    def _client(self, c):
        conn = None
        due = time.monotonic()
        while not self.stop.is_set():
            i = self._id()
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(
                        host=self.proxy,
                        port=5432,
                        user=PSQL_USER,
                        password=self.password,
                        dbname="postgres",
                        connect_timeout=2,
                        autocommit=True,
                        options="-c statement_timeout=5000",
                    )
                conn.execute(
                    "INSERT INTO acked (id, client, at) VALUES (%s, %s, now())", (i, c)
                )
                t1 = time.monotonic()
                with self.lock:
                    self.acks.append((t1, i, c))
            except Exception as e:  # any failure: drop the connection, as a pool does
                with self.lock:
                    self.failures.append((t0, c, str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__))
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
            due += self.interval
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                due = now
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def start(self):
        for c in range(self.clients):
            t = threading.Thread(target=self._client, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def last_ack(self):
        with self.lock:
            return self.acks[-1][0] if self.acks else None


class LeaderSampler(threading.Thread):
    """Samples every node's /leader?wait=0 every 100 ms: counts samples with two leaders."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.stop = nodes, threading.Event()
        self.samples = self.dual = 0

    def run(self):
        while not self.stop.is_set():
            if sum(n.is_leader() for n in self.nodes) > 1:
                self.dual += 1
            self.samples += 1
            time.sleep(0.1)


class Run:
    def __init__(self, args, index):
        self.a, self.index = args, index
        self.root = tempfile.mkdtemp(prefix="larder-upgrade-bench-", dir="/tmp")
        os.chmod(self.root, 0o755)
        net = f"127.0.{args.subnet}"
        self.nodes = [
            Node(f"n{i}", f"{net}.{i + 1}", os.path.join(self.root, f"n{i}"))
            for i in range(1, 4)
        ]
        self.proxy = f"{net}.100"
        self.haproxy = None
        self.steps = []  # dicts: name, start, end
        self.writers = None

    # -- cluster --------------------------------------------------------------------------
    def leader(self, timeout=60):
        def one():
            ls = [n for n in self.nodes if n.is_leader()]
            return ls[0] if len(ls) == 1 else None

        return wait_until("one writable leader", timeout, one)

    def create(self):
        old = self.a.old
        n1 = self.nodes[0]
        log(f"run {self.index}: creating the cluster from the old build under {self.root}")
        n1.run(old, "create-cluster", "--publish-address", n1.ip, "--fqdn", n1.name, "-y")
        secrets = os.path.join(n1.root, "etc/larder/chef-backend-secrets.json")
        for n in self.nodes[1:]:
            n.run(
                old, "join-cluster", n1.ip, "-s", secrets,
                "--publish-address", n.ip, "--fqdn", n.name, "-y",
            )
        leader = self.leader()
        with leader.connect() as c:
            c.execute(
                "CREATE TABLE acked (id bigint PRIMARY KEY, client int, at timestamptz)"
            )
        self.wait_followers_streaming(old)
        self.old_versions = {n.name: n.status(old)["ha"]["version"] for n in self.nodes}

    def wait_followers_streaming(self, binary, timeout=120):
        def ok():
            roles = []
            for n in self.nodes:
                s = n.status(binary)
                if not s:
                    return False
                pg = (s["ha"].get("postgresql") or {}).get("state")
                roles.append((s["ha"].get("role"), pg))
            leaders = [r for r in roles if r[0] == "leader"]
            followers = [r for r in roles if r == ("follower", "streaming")]
            return len(leaders) == 1 and len(followers) == len(self.nodes) - 1

        wait_until("a leader and every follower streaming", timeout, ok, every=0.5)

    def start_haproxy(self):
        servers = []
        for n in self.nodes:
            servers += ["--server", f"{n.name}={n.ip}"]
        cfg = subprocess.run(
            [self.a.faults, "haproxy-config", "--bind", self.proxy, "--pg-only", *servers],
            capture_output=True, text=True, check=True,
        ).stdout
        path = os.path.join(self.root, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        logf = open(os.path.join(self.root, "haproxy.log"), "w")
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", path], stdout=logf, stderr=subprocess.STDOUT
        )
        pw = self.nodes[0].password()
        in_a_row = [0]

        def routed():
            # haproxy starts with every server up until its first checks: wait until several
            # connections in a row (it balances across servers) reach the writable leader.
            try:
                with psycopg.connect(
                    host=self.proxy, port=5432, user=PSQL_USER, password=pw,
                    dbname="postgres", connect_timeout=2,
                ) as c:
                    w = c.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
            except Exception:
                w = False
            in_a_row[0] = in_a_row[0] + 1 if w else 0
            return in_a_row[0] >= 6

        wait_until("haproxy routing to the leader only", 60, routed)

    # -- steps ----------------------------------------------------------------------------
    def step(self, name, f):
        log(f"run {self.index}: {name}")
        start = time.monotonic()
        f()
        end = time.monotonic()
        self.steps.append({"name": name, "start": start, "end": end})
        log(f"run {self.index}: {name}: {end - start:.1f}s")
        self.settle(end)

    def settle(self, end):
        # Keep writing for a while after each command (haproxy may learn of a change up to
        # one check interval later), then until writes flow again.
        time.sleep(self.a.settle)
        wait_until(
            "writes to flow again", 120,
            lambda: (self.writers.last_ack() or 0) > end + self.a.settle,
        )

    def procedure(self):
        new = self.a.new
        leader = self.leader()
        followers = [n for n in self.nodes if n is not leader]
        self.step("set-cluster-failover off", lambda: leader.run(new, "set-cluster-failover", "off"))
        for i, f in enumerate(followers, 1):
            self.step(f"upgrade follower {i}", lambda f=f: self.upgrade(f))
        self.step("set-cluster-failover on", lambda: leader.run(new, "set-cluster-failover", "on"))
        self.step("upgrade --failover (leader)", lambda: self.upgrade(leader, "--failover"))
        now = self.leader()
        if now is leader:
            raise RuntimeError("`upgrade --failover` did not hand leadership over")
        self.step("set-cluster-failover off (2)", lambda: leader.run(new, "set-cluster-failover", "off"))
        self.step("upgrade old leader", lambda: self.upgrade(leader))
        self.step("set-cluster-failover on (2)", lambda: leader.run(new, "set-cluster-failover", "on"))
        self.new_versions = {n.name: n.status(new)["ha"]["version"] for n in self.nodes}

    def upgrade(self, node, *flags):
        out = node.run(self.a.new, "upgrade", *flags)
        if "upgraded" not in out.stdout + out.stderr:
            raise RuntimeError(f"upgrade on {node.name}: no 'upgraded' in\n{out.stdout}{out.stderr}")

    def baseline(self):
        """Without the tooling: SIGTERM the leader's agent, then `larder start` (new build)."""
        new = self.a.new
        leader = self.leader()
        self.wait_followers_streaming(new)

        def naive():
            pid = leader.agent_pid()
            os.kill(pid, signal.SIGTERM)
            wait_until("the leader's agent to exit", 120, lambda: not pid_alive(pid))
            leader.run(new, "start")

            def rejoined():
                s = leader.status(new)
                return s and (
                    s["ha"].get("role") in ("leader", "follower")
                    and (s["ha"].get("postgresql") or {}).get("state") in ("primary", "streaming")
                )

            wait_until(f"{leader.name} to serve again", 180, rejoined, every=0.2)

        self.step("baseline: leader SIGTERM + start (failover on)", naive)

    # -- measurement ----------------------------------------------------------------------
    def measure(self, t_stop):
        acks = sorted(self.writers.acks)
        times = [a[0] for a in acks]
        windows = []
        bounds = [s["start"] for s in self.steps] + [t_stop]
        # Each gap between consecutive acknowledged writes belongs to the window it overlaps
        # most: a gap caused by a step usually begins a few ms before the step's start (the
        # last write before the outage), so "the window it begins in" would misplace it.
        best = [(0.0, None)] * len(self.steps)
        k = 0
        for x, y in zip(times, times[1:]):
            while k + 1 < len(self.steps) and x >= bounds[k + 1]:
                k += 1
            j, most = k, -1.0
            for w in range(k, len(self.steps)):
                if bounds[w] >= y:
                    break
                ov = min(y, bounds[w + 1]) - max(x, bounds[w])
                if ov > most:
                    j, most = w, ov
            if y - x > best[j][0]:
                best[j] = (y - x, x - bounds[j])
        for k, s in enumerate(self.steps):
            lo, hi = bounds[k], bounds[k + 1]
            gap, at = best[k]
            failed = sum(1 for f in self.writers.failures if lo <= f[0] < hi)
            errors = sorted({f[2] for f in self.writers.failures if lo <= f[0] < hi})[:3]
            windows.append({
                "step": s["name"],
                "duration_s": round(s["end"] - s["start"], 3),
                "gap_s": round(gap, 3),
                "gap_begins_after_s": round(at, 3) if at is not None else None,
                "failed": failed,
                "errors": errors,
            })
        return windows

    def verify(self):
        acked = {a[1] for a in self.writers.acks}
        leader = self.leader()
        with leader.connect() as c:
            present = {r[0] for r in c.execute("SELECT id FROM acked")}
        lost = sorted(acked - present)
        per_node = {}
        for n in self.nodes:
            def has_all(n=n):
                try:
                    with n.connect() as c:
                        have = {r[0] for r in c.execute("SELECT id FROM acked")}
                except Exception:
                    return None
                return have if acked <= have else None

            try:
                wait_until(f"every acknowledged write on {n.name}", 60, has_all, every=1)
                per_node[n.name] = 0
            except RuntimeError:
                with n.connect() as c:
                    have = {r[0] for r in c.execute("SELECT id FROM acked")}
                per_node[n.name] = len(acked - have)
        return leader.name, len(acked), lost, per_node

    # -- whole run ------------------------------------------------------------------------
    def execute(self):
        self.create()
        self.start_haproxy()
        pw = self.nodes[0].password()
        self.writers = Writers(self.proxy, pw, self.a.clients, self.a.interval_ms / 1000)
        sampler = LeaderSampler(self.nodes)
        sampler.start()
        self.writers.start()
        self.step("steady writes (before the procedure)", lambda: time.sleep(self.a.steady))
        self.procedure()
        self.baseline()
        time.sleep(1)
        t_stop = time.monotonic()
        self.writers.finish()
        sampler.stop.set()
        sampler.join()
        windows = self.measure(t_stop)
        final_leader, n_acked, lost, per_node = self.verify()
        return {
            "run": self.index,
            "clients": self.a.clients,
            "interval_ms": self.a.interval_ms,
            "old_versions": self.old_versions,
            "new_versions": self.new_versions,
            "steps": windows,
            "acked": n_acked,
            "failed_total": len(self.writers.failures),
            "lost_on_final_leader": len(lost),
            "lost_ids_sample": lost[:20],
            "missing_per_node": per_node,
            "final_leader": final_leader,
            "leader_samples": sampler.samples,
            "dual_leader_samples": sampler.dual,
            "raw": {
                "t0": self.steps[0]["start"],
                "steps": self.steps,
                "ack_times": [round(a[0], 4) for a in sorted(self.writers.acks)],
                "failure_times": sorted(round(f[0], 4) for f in self.writers.failures),
            },
        }

    def teardown(self):
        if self.writers:
            self.writers.stop.set()
        for n in self.nodes:
            if n.agent_pid() and os.path.exists(n.root):
                try:
                    n.run(self.a.new, "uninstall", check=False, timeout=120)
                except Exception as e:
                    log(f"uninstall {n.name}: {e}")
        if self.haproxy:
            self.haproxy.kill()
            self.haproxy.wait()
        # Anything still running under this run's root (by pid, nothing else).
        for _ in range(3):
            left = []
            for p in os.listdir("/proc"):
                if not p.isdigit() or int(p) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if self.root in cmd:
                    left.append(int(p))
            if not left:
                break
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        if self.a.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def spread(xs):
    return statistics.median(xs), min(xs), max(xs)


def summary(results, args):
    names = [s["step"] for s in results[0]["steps"]]
    lines = [
        f"| step | duration s (median, min–max) | longest write gap s (median, min–max) | failed writes (median, min–max) |",
        "|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        d = spread([r["steps"][i]["duration_s"] for r in results])
        g = spread([r["steps"][i]["gap_s"] for r in results])
        f = spread([r["steps"][i]["failed"] for r in results])
        lines.append(
            f"| {name} | {d[0]:.1f} ({d[1]:.1f}–{d[2]:.1f}) | {g[0]:.2f} ({g[1]:.2f}–{g[2]:.2f}) "
            f"| {f[0]:g} ({f[1]}–{f[2]}) |"
        )
    lines.append("")
    lines.append("| run | acknowledged writes | failed attempts | lost on final leader | missing per node | two leaders (samples) |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        miss = ", ".join(f"{k} {v}" for k, v in sorted(r["missing_per_node"].items()))
        lines.append(
            f"| {r['run']} | {r['acked']} | {r['failed_total']} | {r['lost_on_final_leader']} "
            f"| {miss} | {r['dual_leader_samples']} of {r['leader_samples']} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="larder binary of the pinned older release")
    p.add_argument("--new", required=True, help="larder binary of the current build")
    p.add_argument("--faults", required=True, help="larder-faults binary (haproxy-config)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--interval-ms", type=float, default=10)
    p.add_argument("--subnet", type=int, default=50)
    p.add_argument("--settle", type=float, default=4.0, help="seconds of writes after each step")
    p.add_argument("--steady", type=float, default=10.0, help="seconds of steady writes first")
    p.add_argument("--out", required=True)
    p.add_argument("--keep", action="store_true", help="keep each run's root")
    a = p.parse_args()
    if a.subnet != 50:
        log("note: other test suites use 127.0.11-41.0/24; this benchmark's own is 50")
    os.makedirs(a.out, exist_ok=True)
    results, status = [], 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    for i in range(1, a.runs + 1):
        run = Run(a, i)
        try:
            r = run.execute()
        except (Exception, KeyboardInterrupt) as e:
            log(f"run {i} FAILED: {e}")
            status = 1
            run.teardown()
            if isinstance(e, KeyboardInterrupt):
                break
            continue
        run.teardown()
        with open(os.path.join(a.out, f"run-{i}.json"), "w") as f:
            json.dump(r, f, indent=1)
        results.append(r)
        log(f"run {i}: acked {r['acked']}, lost {r['lost_on_final_leader']}, "
            f"gaps " + ", ".join(f"{s['step']}={s['gap_s']:.2f}s" for s in r["steps"]))
        # Loss fails the benchmark. Two-leader samples are reported only: one sweep asks the
        # nodes one after another, so a switchover can show both within one sweep.
        if r["lost_on_final_leader"] or any(r["missing_per_node"].values()):
            status = 1
    if results:
        text = summary(results, a)
        with open(os.path.join(a.out, "summary.md"), "w") as f:
            f.write(text)
        print(f"\n{len(results)} of {a.runs} runs completed\n")
        print(text)
    sys.exit(status if len(results) == a.runs else 1)


if __name__ == "__main__":
    main()
