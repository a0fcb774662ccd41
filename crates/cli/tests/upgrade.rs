//! Upgrades as Chef Backend's documentation describes them, against real clusters: the rolling
//! procedure from a real older build (the commit in `pinned-release`, built by the test) while
//! writes flow through haproxy with Chef's check configuration; two upgrades at once; the
//! full-downtime procedure and its order.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const HANDOVER: &str = "upgrade --failover on the leader";

/// Build the pinned earlier release into its own target directory (kept between runs).
fn pinned_build() -> PathBuf {
    let commit = include_str!("pinned-release")
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a commit in tests/pinned-release")
        .to_string();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pinned-{commit}"));
    let bin = base.join("target/debug/larder");
    if bin.exists() {
        return bin;
    }
    let have = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .expect("run git");
    assert!(
        have.success(),
        "commit {commit} (tests/pinned-release) is not in this clone; fetch the full history (`git fetch --unshallow`)"
    );
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C '{}' archive {commit} | tar -x -C '{}'",
            repo.display(),
            src.display()
        ))
        .status()
        .unwrap();
    assert!(archive.success(), "extracting {commit}");
    let build = Command::new(env!("CARGO"))
        .current_dir(&src)
        .args(["build", "-q", "-p", "larder-cli", "--bin", "larder"])
        .env("CARGO_TARGET_DIR", base.join("target"))
        .status()
        .unwrap();
    assert!(build.success(), "building the pinned release {commit}");
    bin
}

/// The current build's identity as its agent posts it.
fn new_version() -> String {
    larder_agent::build::version_of(Path::new(BIN)).unwrap()
}

/// Run the current build's CLI on `n`.
fn new_cli(n: &Node, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--root")
        .arg(&n.root)
        .args(args)
        .output()
        .unwrap()
}

fn new_ok(n: &Node, args: &[&str]) -> String {
    let o = new_cli(n, args);
    assert!(
        o.status.success(),
        "`larder {}` on {}:\nstdout: {}\nstderr: {}",
        args.join(" "),
        n.name,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn leader_name(c: &Cluster) -> String {
    c.wait_leader(None, T).name.clone()
}

/// The documented rolling procedure, from the pinned release to this build, with two
/// clients writing through haproxy the whole time.
#[test]
fn rolling_upgrade_from_the_pinned_release_loses_nothing() {
    let old_bin = pinned_build();
    let mut c = Cluster::nodes_only(32, 3);
    for n in c.nodes.iter_mut() {
        n.bin = old_bin.clone();
    }
    c.create_first();
    c.join(1);
    c.join(2);
    let first = leader_name(&c);
    c.node(&first)
        .sql("CREATE TABLE acked (id int primary key)")
        .unwrap();
    let new = new_version();
    for n in &c.nodes {
        let v = n.status_json().unwrap()["ha"]["version"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(v, new, "{} already runs the new build", n.name);
    }
    let proxy = "127.0.32.100";
    let _haproxy = Haproxy::start(c.dir.path(), proxy, &c.nodes);
    wait_routed_to_leader(&c.nodes[0], proxy);

    let stop = AtomicBool::new(false);
    let next = AtomicU32::new(0);
    let acked = Mutex::new(BTreeSet::new());
    let failed: Mutex<Vec<(Instant, String)>> = Mutex::new(vec![]);
    // (step, started, ended) of every step of the procedure, to place failed writes.
    let steps: Mutex<Vec<(String, Instant, Instant)>> = Mutex::new(vec![]);
    let step = |what: String, f: &mut dyn FnMut() -> String| -> String {
        let started = Instant::now();
        let out = f();
        steps.lock().unwrap().push((what, started, Instant::now()));
        out
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    let at = Instant::now();
                    match c.nodes[0].try_sql_at(proxy, &format!("INSERT INTO acked VALUES ({id})"))
                    {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) => failed.lock().unwrap().push((at, e)),
                    }
                }
            });
        }
        // Never two writable leaders (Cluster::leader asserts it on every sample).
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let _ = c.leader();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let run = || {
            let leader = leader_name(&c);
            let l = c.node(&leader);
            step("failover off".into(), &mut || {
                new_ok(l, &["set-cluster-failover", "off"])
            });
            for f in c.nodes.iter().filter(|n| n.name != leader) {
                let out = step(format!("upgrade {}", f.name), &mut || {
                    new_ok(f, &["upgrade"])
                });
                assert!(out.contains("upgraded"), "{out}");
            }
            step("failover on".into(), &mut || {
                new_ok(l, &["set-cluster-failover", "on"])
            });
            let out = step(HANDOVER.into(), &mut || {
                new_ok(l, &["upgrade", "--failover"])
            });
            assert!(out.contains("upgraded"), "{out}");
            let now = leader_name(&c);
            assert_ne!(now, leader, "the leader did not hand over");
            step("failover off".into(), &mut || {
                new_ok(l, &["set-cluster-failover", "off"])
            });
            let out = step(format!("upgrade {} again", l.name), &mut || {
                new_ok(l, &["upgrade"])
            });
            assert!(out.contains("upgraded"), "{out}");
            step("failover on".into(), &mut || {
                new_ok(l, &["set-cluster-failover", "on"])
            });
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        // Keep writing a little after the last step, then stop the clients.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for n in &c.nodes {
        wait_until(T, "every acknowledged write on every node", || {
            let have = ids(n)?;
            acked.is_subset(&have).then_some(())
        });
        let v = n.status_json().unwrap()["ha"]["version"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(v, new, "{} runs {v}", n.name);
    }
    // Writes failed only around the hand-over (haproxy learns of it at its next 2 s check).
    let steps = steps.into_inner().unwrap();
    let (_, from, to) = steps.iter().find(|s| s.0 == HANDOVER).unwrap().clone();
    let outside: Vec<_> = failed
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|(t, _)| *t < from || *t > to + Duration::from_secs(5))
        .collect();
    let place = |t: Instant| {
        steps
            .iter()
            .find(|(_, a, b)| t >= *a && t <= *b)
            .map(|s| s.0.clone())
            .unwrap_or_else(|| "between steps".into())
    };
    assert!(
        outside.is_empty(),
        "{} writes failed outside the leader hand-over: {:?}",
        outside.len(),
        outside
            .iter()
            .take(5)
            .map(|(t, e)| (place(*t), e))
            .collect::<Vec<_>>()
    );
    let table = new_ok(&c.nodes[0], &["cluster-status"]);
    assert!(!table.contains("different Larder versions"), "{table}");
}

/// Two followers upgraded at once: exactly one proceeds, the other is refused by the lock and
/// its node is left untouched.
#[test]
fn concurrent_upgrades_one_is_refused() {
    let c = Cluster::with_nodes(33, 3);
    let leader = leader_name(&c);
    c.node(&leader).ok(&["set-cluster-failover", "off"]);
    let followers: Vec<&Node> = c.nodes.iter().filter(|n| n.name != leader).collect();
    wait_until(T, "followers streaming", || {
        followers
            .iter()
            .all(|f| {
                f.status_json()
                    .is_some_and(|s| s["ha"]["role"] == "follower")
            })
            .then_some(())
    });
    let pids: Vec<Option<i32>> = followers.iter().map(|f| f.agent_pid()).collect();
    let children: Vec<_> = followers
        .iter()
        .map(|f| {
            Command::new(BIN)
                .arg("--root")
                .arg(&f.root)
                .arg("upgrade")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    let ok: Vec<usize> = (0..2).filter(|i| outs[*i].status.success()).collect();
    assert_eq!(ok.len(), 1, "exactly one upgrade proceeds: {outs:?}");
    let refused = 1 - ok[0];
    let err = String::from_utf8_lossy(&outs[refused].stderr);
    assert!(
        err.contains("is being upgraded") && err.contains("nothing was changed"),
        "{err}"
    );
    // The refused node's agent was never restarted; the other one was.
    assert_eq!(followers[refused].agent_pid(), pids[refused]);
    assert_ne!(followers[ok[0]].agent_pid(), pids[ok[0]]);
    // The lock is gone with the finished upgrade: the refused node can go now.
    followers[refused].ok(&["upgrade"]);
    c.node(&leader).ok(&["set-cluster-failover", "on"]);
}

/// The full-downtime procedure: `down-for-upgrade` leader first, then the followers;
/// `upgrade` followers first, the old leader last; out-of-order steps are refused.
#[test]
fn full_downtime_upgrade_in_the_documented_order() {
    let c = Cluster::with_nodes(34, 3);
    let leader = leader_name(&c);
    let l = c.node(&leader);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    for i in 0..200 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    let followers: Vec<&Node> = c.nodes.iter().filter(|n| n.name != leader).collect();
    // A follower first is out of order: refused, nothing changed.
    let o = followers[0].larder(&["down-for-upgrade"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("run `larder down-for-upgrade` on {leader} first")),
        "{err}"
    );
    assert!(
        followers[0].pg_pid().is_some(),
        "refused, yet PostgreSQL stopped"
    );
    l.ok(&["down-for-upgrade"]);
    for f in &followers {
        f.ok(&["down-for-upgrade"]);
    }
    for n in &c.nodes {
        assert!(n.pg_pid().is_none(), "{}: PostgreSQL still running", n.name);
    }
    // Down for upgrade: nobody leads, for as long as it takes.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(c.leader().is_none(), "a node leads during the downtime");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old leader first is out of order.
    let o = l.larder(&["upgrade"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("upgrade it last"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    for f in &followers {
        f.ok(&["upgrade"]);
        assert!(
            c.leader().is_none(),
            "a follower took over while {leader} is down"
        );
    }
    l.ok(&["upgrade"]);
    let now = leader_name(&c);
    assert_eq!(now, leader, "the old leader leads again (positions tie)");
    let have = ids(c.node(&now)).unwrap();
    assert_eq!(have.len(), 200, "acknowledged rows lost");
    c.node(&now).sql("INSERT INTO acked VALUES (1000)").unwrap();
    let st = l.status_json().unwrap();
    assert_eq!(st["upgrade"]["down"], serde_json::json!([]), "{st}");
}

/// A one-node cluster upgrades in place: the lock holder is the only voter, so it leads again
/// and the upgrade verifies (the lock does not keep it leaderless).
#[test]
fn single_node_upgrade_leads_again() {
    let c = Cluster::create(40);
    let n = &c.nodes[0];
    c.wait_leader(None, T);
    let before = n.agent_pid();
    let out = new_ok(n, &["upgrade", "--timeout", "60"]);
    assert!(out.contains("writable again"), "{out}");
    assert_ne!(n.agent_pid(), before, "the agent was not restarted");
    assert!(n.is_leader());
    // The agent's status shows etcd as its loop last read it: the release shows within a loop.
    wait_until(T, "the upgrade lock released", || {
        let st = n.status_json()?;
        st["upgrade"]["lock"].is_null().then_some(())
    });
}
