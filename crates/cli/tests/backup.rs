//! Backups and restores with real pgBackRest, PostgreSQL and etcd: a backup while writes flow,
//! the cluster destroyed, a new one restored and joined; point-in-time recovery; the archive
//! across a failover; bad input.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Turn backups on in a running cluster the way an operator does: `backup.repo_path` in every
/// node's larder.toml, `reconfigure`, then restart PostgreSQL (archive_mode needs it).
fn enable_backups(c: &Cluster, repo: &Path) {
    for n in &c.nodes {
        let f = n.root.join("etc/larder/larder.toml");
        let text = std::fs::read_to_string(&f).unwrap();
        // The generated file lists every setting: set the one in its [backup] table.
        assert!(text.contains("repo_path = \"\""), "{text}");
        let text = text.replace(
            "repo_path = \"\"",
            &format!("repo_path = \"{}\"", repo.display()),
        );
        std::fs::write(&f, text).unwrap();
        n.ok(&["reconfigure"]);
    }
    for n in &c.nodes {
        n.ok(&["restart", "postgresql"]);
    }
    let l = c.wait_leader(None, T);
    wait_until(T, "archiving on", || {
        (l.sql("SHOW archive_mode").as_deref() == Some("on")).then_some(())
    });
    wait_streaming(c, c.nodes.len() - 1);
}

fn passphrase_file(c: &Cluster) -> PathBuf {
    let p = c.dir.path().join("passphrase");
    std::fs::write(&p, "a long enough passphrase\n").unwrap();
    p
}

fn index_docs(n: &Node, count: u32) {
    // HTTPS with the cluster's credentials, as a frontend.
    wait_until(T, "search service", || {
        (n.es("GET", "/", "").0 == 200).then_some(())
    });
    let (code, _) = n.es("PUT", "/chef", "{}");
    assert!(code == 200 || code == 400, "PUT /chef: {code}");
    let mut bulk = String::new();
    for i in 0..count {
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"chef\",\"_id\":\"n{i}\"}}}}\n"
        ));
        bulk.push_str(&format!("{{\"content\":\"X_CHEF_id_CHEF_X__=__n{i} name__=__web{i} \",\"X_CHEF_id_CHEF_X\":\"n{i}\",\"X_CHEF_database_CHEF_X\":\"chef_db1\",\"X_CHEF_type_CHEF_X\":\"node\"}}\n"));
    }
    let (code, body) = n.es("POST", "/_bulk", &bulk);
    assert_eq!(code, 200, "{body}");
}

fn searchable(n: &Node, count: u32) {
    wait_until(Duration::from_secs(60), "documents searchable", || {
        let (code, body) = n.es(
            "POST",
            "/chef/_search",
            r#"{"stored_fields":"_id","size":100,"query":{"query_string":{"query":"content:name__=__web*"}}}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["hits"]["total"]["value"] == count).then_some(())
    });
}

#[test]
fn backup_while_writing_destroy_restore_and_rejoin() {
    let c = Cluster::with_nodes(35, 3);
    let repo = c.dir.path().join("repo");
    enable_backups(&c, &repo);
    let l = c.wait_leader(None, T);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    for i in 0..300 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    index_docs(l, 40);
    let pass = passphrase_file(&c);
    let pass_arg = pass.display().to_string();
    // A follower is refused: the backup runs on the leader.
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    let o = f.larder(&["backup", "--passphrase-file", &pass_arg]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("run `larder backup` on {}", l.name)),
        "{o:?}"
    );
    // Writes flow during the backup; those acknowledged before it ends must come back.
    let stop = AtomicBool::new(false);
    let next = AtomicU32::new(1000);
    let acked = Mutex::new(BTreeSet::new());
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                if l.sql(&format!("INSERT INTO acked VALUES ({id})")).is_some() {
                    acked.lock().unwrap().insert(id);
                }
            }
        });
        let out = l.ok(&["backup", "--type", "full", "--passphrase-file", &pass_arg]);
        // Everything acknowledged so far was committed before the backup ended.
        let before_end = acked.lock().unwrap().clone();
        stop.store(true, Ordering::SeqCst);
        (out, before_end)
    });
    let (label, before_end) = (out.0.trim().to_string(), out.1);
    assert!(label.ends_with('F'), "a full backup label: {label}");
    assert!(!before_end.is_empty(), "no write during the backup");
    let list = l.ok(&["backup", "--list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["backups"][0]["label"], label.as_str(), "{list}");
    assert_eq!(v["gaps"], serde_json::json!([]), "{list}");
    // Secrets are saved sealed only.
    let secret = l.password();
    let sealed = std::fs::read(repo.join("larder").join(&label).join("secrets.sealed")).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(&secret));

    // The cluster is destroyed.
    for n in &c.nodes {
        n.ok(&["cleanse", "-y"]);
    }
    let n1 = &c.nodes[0];
    // Bad input first: a missing repository, a wrong passphrase; nothing is written.
    let o = n1.larder(&["restore", "/nonexistent/repo", "-y"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{o:?}"
    );
    let wrong = c.dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let repo_arg = repo.display().to_string();
    let o = n1.larder(&[
        "restore",
        &repo_arg,
        "--passphrase-file",
        &wrong.display().to_string(),
        "-y",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{o:?}"
    );
    assert!(
        !n1.root.join("etc/larder/larder.toml").exists(),
        "a refused restore wrote config"
    );
    // Restore on n1, then the others join the new cluster.
    n1.ok(&["restore", &repo_arg, "--passphrase-file", &pass_arg, "-y"]);
    let l = c.wait_leader(None, T);
    assert_eq!(l.name, "n1");
    c.join(1);
    c.join(2);
    wait_streaming(&c, 2);
    for n in &c.nodes {
        let have = ids(n).unwrap();
        assert!(
            (0..300).all(|i| have.contains(&i)),
            "{}: rows written before the backup lost",
            n.name
        );
        let lost: Vec<_> = before_end.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "{}: writes acknowledged before the backup ended are missing: {lost:?}",
            n.name
        );
    }
    searchable(l, 40);
    // A node of a live cluster is refused.
    let o = c.nodes[1].larder(&["restore", &repo_arg, "-y"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("belongs to a cluster"),
        "{o:?}"
    );
}

#[test]
fn point_in_time_recovery_between_two_batches() {
    let c = Cluster::with_nodes(36, 1);
    let repo = c.dir.path().join("repo");
    enable_backups(&c, &repo);
    let l = &c.nodes[0];
    c.wait_leader(None, T);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    let pass = passphrase_file(&c);
    let pass_arg = pass.display().to_string();
    l.ok(&["backup", "--passphrase-file", &pass_arg]);
    for i in 0..100 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    // The time between the batches, as the server sees it.
    std::thread::sleep(Duration::from_millis(1100));
    let t = l.sql("SELECT now()::text").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    for i in 100..200 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    // Make sure batch B's WAL is archived too (it must be skipped by the restore, not missing).
    l.sql("SELECT pg_switch_wal()").unwrap();
    // An incremental backup after both batches; PITR picks the backup before the target.
    l.ok(&["backup", "--type", "incr", "--passphrase-file", &pass_arg]);
    l.ok(&["cleanse", "-y"]);
    let repo_arg = repo.display().to_string();
    l.ok(&[
        "restore",
        &repo_arg,
        "--to-time",
        &t,
        "--passphrase-file",
        &pass_arg,
        "-y",
    ]);
    c.wait_leader(None, T);
    let have = ids(l).unwrap();
    assert_eq!(have, (0..100).collect::<BTreeSet<u32>>(), "exactly batch A");
    // The restored cluster takes writes on its new timeline.
    l.sql("INSERT INTO acked VALUES (500)").unwrap();
}

#[test]
fn archive_follows_the_leader_across_a_failover() {
    let c = Cluster::with_nodes(37, 3);
    let repo = c.dir.path().join("repo");
    enable_backups(&c, &repo);
    let l = c.wait_leader(None, T);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    let pass = passphrase_file(&c);
    let pass_arg = pass.display().to_string();
    l.ok(&["backup", "--passphrase-file", &pass_arg]);
    let mut acked = BTreeSet::new();
    for i in 0..200 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
        acked.insert(i);
    }
    // The leader dies mid-stream (its PostgreSQL with it).
    let old = l.name.clone();
    let pg = l.pg_pid().unwrap();
    l.kill_agent();
    ensure_dead(pg);
    let l2 = c.wait_leader(Some(&old), T);
    for i in 200..300 {
        l2.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
        acked.insert(i);
    }
    l2.ok(&["backup", "--passphrase-file", &pass_arg]);
    let list = l2.ok(&["backup", "--list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        v["gaps"],
        serde_json::json!([]),
        "archive gap after the failover: {list}"
    );
    // Restore to the latest point on a fresh node: every acknowledged write is there.
    for n in &c.nodes {
        n.ok(&["cleanse", "-y"]);
    }
    // The backup was taken on the new leader: its saved config names that node, so the
    // restore on n1 gives n1's own address and name.
    let n = &c.nodes[0];
    n.ok(&[
        "restore",
        &repo.display().to_string(),
        "--passphrase-file",
        &pass_arg,
        "--publish_address",
        &n.ip,
        "--fqdn",
        &n.name,
        "-y",
    ]);
    c.wait_leader(None, T);
    let have: BTreeSet<u32> = n
        .try_sql_at(&n.ip, "SELECT id FROM acked")
        .unwrap_or_else(|e| panic!("reading the restored rows: {e}"))
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost: Vec<_> = acked.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes missing after restore: {lost:?}"
    );
}
