//! Replicated cluster: joins, replication, election, fencing, failover, switchover, rejoin,
//! full restart — on real etcd and PostgreSQL under real agents.

mod common;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn write_rows(l: &Node, from: u32, to: u32) {
    for i in from..to {
        assert!(
            l.sql(&format!("INSERT INTO acked VALUES ({i})")).is_some(),
            "insert {i} on {}",
            l.name
        );
    }
}

/// Three nodes, 300 acknowledged rows in `acked`, both followers streaming.
fn cluster_with_rows(subnet: u8) -> Cluster {
    let c = Cluster::with_nodes(subnet, 3);
    {
        let l = c.wait_leader(None, T);
        l.sql("CREATE TABLE acked (id int primary key)").unwrap();
        write_rows(l, 0, 300);
    }
    wait_streaming(&c, 2);
    c
}

#[test]
fn three_nodes_replicate_fail_over_and_rejoin() {
    let c = Cluster::with_nodes(21, 3);
    let l = c.wait_leader(None, T);
    assert_eq!(l.name, "n1");
    // Synchronous quorum replication is configured by the leader.
    let ssn = wait_until(T, "synchronous_standby_names", || {
        l.sql("SHOW synchronous_standby_names")
            .filter(|s| s.starts_with("ANY 1"))
    });
    assert!(ssn.contains("larder_"), "{ssn}");
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    write_rows(l, 0, 200);
    // Writes on the leader appear on followers (which refuse writes).
    for f in &c.nodes[1..] {
        wait_until(T, "rows on follower", || {
            (count(f) == Some(200)).then_some(())
        });
        assert!(
            f.sql("INSERT INTO acked VALUES (100000)").is_none(),
            "follower accepted a write"
        );
        assert_eq!(f.http("/leader"), 503);
        wait_until(T, "replica endpoint", || {
            (f.http("/replica") == 200).then_some(())
        });
    }
    let cs: serde_json::Value =
        serde_json::from_str(&c.nodes[1].ok(&["cluster-status", "--json"])).unwrap();
    assert_eq!(cs["nodes"].as_array().unwrap().len(), 3);
    let st = c.nodes[0].ok(&["status"]);
    assert!(
        st.contains("leader: 1; waiting: 0; follower: 2; total: 3"),
        "{st}"
    );

    // Search: documents acknowledged by _bulk on the leader survive its loss (checked below).
    // HTTPS with the cluster's credentials, as a frontend.
    wait_until(T, "search service", || {
        (l.es("GET", "/", "").0 == 200).then_some(())
    });
    let (code, _) = l.es("PUT", "/chef", "{}");
    assert!(code == 200 || code == 400, "PUT /chef: {code}");
    let mut bulk = String::new();
    for i in 0..50 {
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"chef\",\"_id\":\"n{i}\"}}}}\n"
        ));
        bulk.push_str(&format!("{{\"content\":\"X_CHEF_id_CHEF_X__=__n{i} name__=__web{i} \",\"X_CHEF_id_CHEF_X\":\"n{i}\",\"X_CHEF_database_CHEF_X\":\"chef_db1\",\"X_CHEF_type_CHEF_X\":\"node\"}}\n"));
    }
    let (code, body) = l.es("POST", "/_bulk", &bulk);
    assert_eq!(code, 200, "{body}");

    // kill -9 of the leader's agent (its PostgreSQL dies with it): a new leader, no loss.
    let pg = c.nodes[0].pg_pid().unwrap();
    c.nodes[0].kill_agent();
    ensure_dead(pg);
    let l2 = c.wait_leader(Some("n1"), T);
    assert_eq!(
        count(l2),
        Some(200),
        "acknowledged writes lost on {}",
        l2.name
    );
    wait_until(
        T,
        "all acknowledged documents searchable on the new leader",
        || {
            let (code, body) = l2.es(
                "POST",
                "/chef/_search",
                r#"{"stored_fields":"_id","size":100,"query":{"query_string":{"query":"content:name__=__web*"}}}"#,
            );
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["hits"]["total"]["value"] == 50).then_some(())
        },
    );
    write_rows(l2, 200, 300);

    // The old leader restarts and rejoins by itself (rewind), never writable.
    c.nodes[0].ok(&["start"]);
    wait_until(T, "n1 streaming again", || {
        c.nodes[0]
            .status_json()
            .filter(|s| s["ha"]["postgresql"]["state"] == "streaming")
    });
    assert_eq!(c.nodes[0].http("/leader"), 503);
    wait_until(T, "n1 caught up", || {
        (count(&c.nodes[0]) == Some(300)).then_some(())
    });
    let log =
        std::fs::read_to_string(c.nodes[0].root.join("var/log/larder/agent/current")).unwrap();
    assert!(
        log.contains("pg_rewind"),
        "n1 did not rejoin through pg_rewind"
    );
}

#[test]
fn promote_and_demote_lose_nothing() {
    let c = cluster_with_rows(25);
    c.nodes[2].ok(&["promote", "n2"]);
    let l3 = c.wait_leader(None, T);
    assert_eq!(l3.name, "n2");
    assert_eq!(count(l3), Some(300));
    write_rows(l3, 300, 310);
    // demote: the leader steps down and a follower takes over.
    wait_until(T, "followers streaming", || {
        c.nodes
            .iter()
            .filter(|n| n.name != "n2")
            .all(|n| {
                n.status_json()
                    .is_some_and(|s| s["ha"]["postgresql"]["state"] == "streaming")
            })
            .then_some(())
    });
    c.nodes[1].ok(&["demote"]);
    let l4 = c.wait_leader(Some("n2"), T);
    assert_eq!(count(l4), Some(310));
}

#[test]
fn failover_off_blocks_promotion_until_enabled() {
    let c = cluster_with_rows(26);
    let l = c.wait_leader(None, T);
    write_rows(l, 300, 310);
    let l4 = l;
    // Failover off: killing the leader elects nobody.
    c.nodes[0].ok(&["set-cluster-failover", "off"]);
    wait_until(T, "failover flag in cluster-status", || {
        let st: serde_json::Value =
            serde_json::from_str(&c.nodes[0].ok(&["cluster-status", "--json"])).ok()?;
        (st["cluster_failover"] == false).then_some(())
    });
    let dead = l4.name.clone();
    let d = c.node(&dead);
    let pg = d.pg_pid().unwrap();
    d.kill_agent();
    ensure_dead(pg);
    std::thread::sleep(Duration::from_secs(8)); // two lease TTLs: long enough for a failover to have happened
    assert!(
        c.leader().is_none(),
        "a leader was elected with failover disabled"
    );
    let o = c
        .nodes
        .iter()
        .find(|n| n.name != dead)
        .unwrap()
        .larder(&["promote", "n1"]);
    assert!(!o.status.success(), "promote must refuse with failover off");
    // Failover on again: a leader is elected.
    let alive = c.nodes.iter().find(|n| n.name != dead).unwrap();
    alive.ok(&["set-cluster-failover", "on"]);
    let l5 = c.wait_leader(Some(&dead), T);
    assert_eq!(count(l5), Some(310));
    d.ok(&["start"]);
}

#[test]
fn full_stop_and_restart_elects_a_leader() {
    let c = cluster_with_rows(27);
    let l = c.wait_leader(None, T);
    write_rows(l, 300, 310);
    // Full stop of every node, restart in another order: a leader is elected.
    for n in &c.nodes {
        n.ok(&["uninstall"]);
    }
    assert!(c.leader().is_none());
    for i in [2, 0, 1] {
        c.nodes[i].ok(&["start"]);
    }
    let l6 = c.wait_leader(None, Duration::from_secs(60));
    assert_eq!(count(l6), Some(310));
}

#[test]
fn joins_refuse_wrong_secrets_and_run_one_at_a_time() {
    let c = Cluster::nodes_only(22, 4);
    c.create_first();
    let n1 = &c.nodes[0];

    // Secrets of another cluster: refused, nothing written on either side.
    let other = Cluster::create(23);
    let before = n1.ok(&["cluster-status", "--json"]);
    let n2 = &c.nodes[1];
    let o = n2.larder(&[
        "join-cluster",
        &n1.ip,
        "-s",
        &other.nodes[0].secrets().display().to_string(),
        "-p",
        &n2.ip,
        "--fqdn",
        "n2",
        "-y",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!n2.root.join("etc/larder").exists());
    assert!(!n2.root.join("var/opt/larder").exists());
    assert_eq!(n1.ok(&["cluster-status", "--json"]), before);
    drop(other);

    // Publish address not on this host.
    let o = n2.larder(&[
        "join-cluster",
        &n1.ip,
        "-s",
        &n1.secrets().display().to_string(),
        "-p",
        "192.0.2.77",
        "-y",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not belong to this host"));

    // Two joins at once: one proceeds, the other is refused (or waits) — never a broken cluster.
    let s = n1.secrets().display().to_string();
    let spawn = |n: &Node| {
        std::process::Command::new(BIN)
            .arg("--root")
            .arg(&n.root)
            .args([
                "join-cluster",
                &n1.ip,
                "-s",
                &s,
                "-p",
                &n.ip,
                "--fqdn",
                &n.name,
                "-y",
            ])
            .output()
    };
    let (a, b) = std::thread::scope(|sc| {
        let h1 = sc.spawn(|| spawn(&c.nodes[1]).unwrap());
        let h2 = sc.spawn(|| spawn(&c.nodes[2]).unwrap());
        (h1.join().unwrap(), h2.join().unwrap())
    });
    let oks = [a.status.success(), b.status.success()];
    assert!(
        oks.iter().any(|x| *x),
        "both concurrent joins failed:\n{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    for o in [&a, &b] {
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                e.contains("joins must be sequential") || e.contains("unhealthy"),
                "unexpected refusal: {e}"
            );
        }
    }
    // The cluster still works: the refused node can join afterwards, writes replicate.
    for (i, ok) in oks.iter().enumerate() {
        if !ok {
            let n = &c.nodes[i + 1];
            std::fs::remove_dir_all(&n.root).ok();
            c.join(i + 1);
        }
    }
    let l = c.wait_leader(None, T);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    write_rows(l, 0, 10);
    for n in &c.nodes[1..3] {
        wait_until(T, "rows on joiner", || (count(n) == Some(10)).then_some(()));
    }

    // remove-node: refused while the target runs, then removes membership, status and slot.
    let victim = c.nodes[1..3].iter().find(|n| n.name != l.name).unwrap();
    let other = c
        .nodes
        .iter()
        .take(3)
        .find(|n| n.name != victim.name)
        .unwrap();
    let o = other.larder(&["remove-node", &victim.name, "-y"]);
    assert!(
        !o.status.success(),
        "remove-node of a running node must be refused"
    );
    victim.ok(&["uninstall"]);
    wait_until(T, "victim offline", || {
        (!other
            .ok(&["cluster-status"])
            .lines()
            .any(|l| l.starts_with(&victim.name) && !l.contains("offline")))
        .then_some(())
    });
    other.ok(&["remove-node", &victim.name, "-y"]);
    wait_until(T, "membership shrunk", || {
        let s = other.status_json()?;
        let cs: serde_json::Value =
            serde_json::from_str(&other.ok(&["cluster-status", "--json"])).ok()?;
        let nodes = cs["nodes"].as_array()?.len();
        let slots =
            l.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'larder_%'")?;
        let _ = s;
        (nodes == 2 && slots == "1").then_some(())
    });
    let ssn = wait_until(T, "sync names without the removed node", || {
        l.sql("SHOW synchronous_standby_names")
            .filter(|s| s.matches("larder_").count() == 1)
    });
    assert!(ssn.starts_with("ANY 1"), "{ssn}");

    // cleanse + join-cluster --recovery brings the removed node back with its saved config.
    victim.ok(&["cleanse", "--yes"]);
    assert!(!victim.root.join("etc/larder/larder.toml").exists());
    victim.ok(&[
        "join-cluster",
        &other.ip,
        "-s",
        &n1.secrets().display().to_string(),
        "--recovery",
        "-y",
    ]);
    wait_until(T, "recovered node has the rows", || {
        (count(victim) == Some(10)).then_some(())
    });
}

#[test]
fn five_nodes_survive_losing_two() {
    let c = Cluster::with_nodes(24, 5);
    let l = c.wait_leader(None, T);
    let ssn = wait_until(T, "quorum of 2", || {
        l.sql("SHOW synchronous_standby_names")
            .filter(|s| s.starts_with("ANY 2"))
    });
    assert!(ssn.matches("larder_").count() == 4, "{ssn}");
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    write_rows(l, 0, 100);
    // Lose the leader and one follower at once.
    let victims: Vec<&Node> = vec![l, c.nodes.iter().find(|n| n.name != l.name).unwrap()];
    for v in &victims {
        let pg = v.pg_pid();
        v.kill_agent();
        if let Some(pg) = pg {
            ensure_dead(pg);
        }
    }
    let names: Vec<String> = victims.iter().map(|v| v.name.clone()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let nl = loop {
        if let Some(n) = c.leader() {
            if !names.contains(&n.name) {
                break n;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader after losing 2 of 5"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(count(nl), Some(100));
    write_rows(nl, 100, 120);
}

/// Every node's PostgreSQL log, for the "no PANIC" check after compounded failovers.
fn pg_logs(c: &Cluster) -> String {
    let mut all = String::new();
    for n in &c.nodes {
        let dir = n.root.join("var/log/larder/postgresql");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path()) {
                all.push_str(&format!("== {} {}\n{s}", n.name, e.path().display()));
            }
        }
    }
    all
}

/// Regression: kill → rejoin → switchover → demote → kill in one cluster once left a zeroed WAL
/// page behind ("invalid magic number 0000" at promote). Every step must keep every acknowledged
/// row, and no PostgreSQL may PANIC.
#[test]
fn back_to_back_failovers_keep_every_write_and_the_wal_intact() {
    let c = cluster_with_rows(28);
    let mut rows = 300;
    // Every acknowledged row is on the new leader; then 20 more are acknowledged there.
    let check_and_write = |l: &Node, rows: &mut u64, what: &str| {
        assert_eq!(count(l), Some(*rows), "lost writes after {what}");
        write_rows(l, *rows as u32, *rows as u32 + 20);
        *rows += 20;
    };
    for round in 0..2 {
        // Unplanned: kill -9 of the leader's agent and PostgreSQL.
        let old = c.wait_leader(None, T).name.clone();
        let d = c.node(&old);
        let pg = d.pg_pid().unwrap();
        d.kill_agent();
        ensure_dead(pg);
        let l = c.wait_leader(Some(&old), T);
        check_and_write(l, &mut rows, &format!("kill in round {round}"));
        // The killed node rejoins; then a planned switchover back to it.
        d.ok(&["start"]);
        wait_streaming(&c, 2);
        c.node(&l.name).ok(&["promote", &old]);
        let l = c.wait_leader(None, T);
        assert_eq!(l.name, old);
        check_and_write(l, &mut rows, &format!("promote in round {round}"));
        // demote right away: a follower takes over.
        wait_streaming(&c, 2);
        l.ok(&["demote"]);
        let l = c.wait_leader(Some(&old), T);
        check_and_write(l, &mut rows, &format!("demote in round {round}"));
        wait_streaming(&c, 2);
    }
    let logs = pg_logs(&c);
    assert!(
        logs.contains("database system is ready"),
        "PostgreSQL logs not found"
    );
    let panics: Vec<&str> = logs.lines().filter(|l| l.contains("PANIC")).collect();
    assert!(
        panics.is_empty(),
        "PostgreSQL panicked:\n{}",
        panics.join("\n")
    );
    for n in &c.nodes {
        wait_until(T, "every node has every row", || {
            (count(n) == Some(rows)).then_some(())
        });
    }
}

/// A frozen agent cannot fence its PostgreSQL, which keeps accepting writes after the lease
/// lapsed. Standbys must stop acknowledging its WAL before posting election positions, or a
/// write acknowledged by the old primary after the posts would be missing on the new leader.
#[test]
fn frozen_leader_agent_loses_no_acknowledged_write() {
    let c = cluster_with_rows(29);
    let old = c.wait_leader(None, T).name.clone();
    let d = c.node(&old);
    let agent = d.agent_pid().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked: Vec<u32> = std::thread::scope(|s| {
        // Keep writing straight to the old primary (not through /leader) the whole time.
        let w = s.spawn(|| {
            let mut ok = Vec::new();
            let mut i = 100_000;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if d.sql(&format!("INSERT INTO acked VALUES ({i})")).is_some() {
                    ok.push(i);
                }
                i += 1;
            }
            ok
        });
        signal(agent, Signal::SIGSTOP);
        let l = c.wait_leader(Some(&old), T);
        // Give the old primary every chance to get more commits acknowledged.
        let settle = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(agent, Signal::SIGCONT);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let ok = w.join().unwrap();
        let missing: Vec<u32> = ok
            .iter()
            .copied()
            .filter(|i| {
                l.sql(&format!("SELECT count(*) FROM acked WHERE id = {i}"))
                    .as_deref()
                    != Some("1")
            })
            .collect();
        assert!(
            missing.is_empty(),
            "writes acknowledged by the frozen leader's PostgreSQL are missing on {}: {missing:?}",
            l.name
        );
        ok
    });
    assert!(!acked.is_empty(), "no write reached the old primary");
    // The old leader fences itself once its agent runs again and never answers /leader 200.
    wait_until(T, "old leader read-only", || {
        d.sql("INSERT INTO acked VALUES (999999)")
            .is_none()
            .then_some(())
    });
}

/// Cluster failover off (step 1 of the rolling upgrade), then the leader's agent restarts —
/// cleanly (SIGTERM, what a package upgrade or a reboot does) and by kill -9: the same node
/// leads again without operator action, and no other node ever does.
#[test]
fn leader_restart_with_cluster_failover_off_leads_again() {
    let c = cluster_with_rows(30);
    let old = c.wait_leader(None, T).name.clone();
    let l = c.node(&old);
    l.ok(&["set-cluster-failover", "off"]);
    let table = l.ok(&["cluster-status"]);
    assert!(table.contains("Cluster failover is OFF"), "{table}");
    let term_of = |n: &Node| -> u64 { n.status_json().unwrap()["ha"]["term"].as_u64().unwrap() };
    let mut term = term_of(l);
    for (round, how) in ["clean restart", "kill -9"].iter().enumerate() {
        match *how {
            "clean restart" => {
                l.ok(&["uninstall"]);
            }
            _ => {
                let pg = l.pg_pid().expect("leader PostgreSQL pid");
                l.kill_agent();
                ensure_dead(pg);
            }
        }
        // While it is down nobody else may lead.
        let down_until = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < down_until {
            assert!(
                c.leader().is_none(),
                "{how}: another node leads with failover off"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        l.ok(&["start"]);
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Some(n) = c.leader() {
                assert_eq!(n.name, old, "{how}: another node leads with failover off");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{how}: no leader within {T:?} after restarting {old} with failover off"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let now = term_of(l);
        assert_eq!(now, term + 1, "{how}: exactly one new term, taken by {old}");
        term = now;
        write_rows(l, 300 + 10 * round as u32, 310 + 10 * round as u32);
        assert_eq!(count(l), Some(310 + 10 * round as u64));
    }
    l.ok(&["set-cluster-failover", "on"]);
}

/// force-leader and pgsql-follow go to the local agent and are decided by the core in its HA
/// loop: refusals name the reason and change nothing; accepted requests take effect.
#[test]
fn force_leader_and_pgsql_follow_through_the_agent() {
    let c = cluster_with_rows(31);
    let old = c.wait_leader(None, T).name.clone();
    let l = c.node(&old);
    // On the leader: force-leader is refused (a leader exists), and so is pgsql-follow.
    let o = l.larder(&["force-leader"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is the leader"),
        "{o:?}"
    );
    let o = l.larder(&["pgsql-follow"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("this node is the leader"),
        "{o:?}"
    );
    // A follower naming another node as the leader is refused.
    let f = c.nodes.iter().find(|n| n.name != old).unwrap();
    let other = c
        .nodes
        .iter()
        .find(|n| n.name != old && n.name != f.name)
        .unwrap();
    let o = f.larder(&["pgsql-follow", &other.name]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not the leader"),
        "{o:?}"
    );
    // pgsql-follow on a follower: rewound from the leader, streaming again, nothing lost.
    f.ok(&["pgsql-follow", &old, "--verbose"]);
    write_rows(l, 300, 320);
    wait_until(T, "rows on the re-synced follower", || {
        (count(f) == Some(320)).then_some(())
    });
    // Failover off and the leader gone for good: nobody takes over by themselves...
    l.ok(&["set-cluster-failover", "off"]);
    let pg = l.pg_pid().expect("leader PostgreSQL pid");
    l.kill_agent();
    ensure_dead(pg);
    let quiet_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < quiet_until {
        assert!(c.leader().is_none(), "a node took over with failover off");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...until the operator forces one of the survivors (both hold every write: quorum).
    f.ok(&["force-leader"]);
    let nl = c.wait_leader(None, T);
    assert_eq!(nl.name, f.name);
    assert_eq!(
        count(nl),
        Some(320),
        "force-leader lost acknowledged writes"
    );
    let o = other.larder(&["force-leader"]);
    assert!(!o.status.success(), "a second force-leader must be refused");
    f.ok(&["set-cluster-failover", "on"]);
}
