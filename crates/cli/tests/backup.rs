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
    enable_backups_on(c, &c.nodes, repo);
}

/// [`enable_backups`] on the running `nodes` of `c`.
fn enable_backups_on(c: &Cluster, nodes: &[Node], repo: &Path) {
    for n in nodes {
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
    for n in nodes {
        n.ok(&["restart", "postgresql"]);
    }
    let l = c.wait_leader(None, T);
    wait_until(T, "archiving on", || {
        (l.sql("SHOW archive_mode").as_deref() == Some("on")).then_some(())
    });
    wait_streaming(c, nodes.len() - 1);
}

/// `restore SOURCE…` with a wrong passphrase is refused and writes no configuration or secrets.
fn wrong_passphrase_refused(c: &Cluster, n: &Node, source: &[&str]) {
    let wrong = c.dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let wrong = wrong.display().to_string();
    let args = [
        &["restore"][..],
        source,
        &["--passphrase-file", &wrong, "-y"],
    ]
    .concat();
    let o = n.larder(&args);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"),
        "{o:?}"
    );
    for f in ["larder.toml", "chef-backend-secrets.json"] {
        assert!(
            !n.root.join("etc/larder").join(f).exists(),
            "a refused restore wrote {f}"
        );
    }
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
    // The service answers 503 while it reconnects to a PostgreSQL that just restarted.
    wait_until(T, "PUT /chef", || {
        let (code, _) = n.es("PUT", "/chef", "{}");
        (code == 200 || code == 400).then_some(())
    });
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
    // Writes flow during the backup; those acknowledged before it ends must come back.
    // Run on the leader, it reads from one of the two streaming followers.
    let ((label, said), before_end) = while_writing(
        l,
        l,
        &["backup", "--type", "full", "--passphrase-file", &pass_arg],
    );
    assert!(said.contains("read from the follower n"), "{said}");
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
    let repo_arg = repo.display().to_string();
    wrong_passphrase_refused(&c, n1, &[&repo_arg]);
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

/// `larder ARGS` on `n` (see [`backup_on`]) while a writer inserts into `acked` on the leader
/// `l`; also returns the ids acknowledged before the command returned.
fn while_writing(l: &Node, n: &Node, args: &[&str]) -> ((String, String), BTreeSet<u32>) {
    let stop = AtomicBool::new(false);
    let next = AtomicU32::new(1000);
    let acked = Mutex::new(BTreeSet::new());
    let (o, before_end) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                if l.sql(&format!("INSERT INTO acked VALUES ({id})")).is_some() {
                    acked.lock().unwrap().insert(id);
                }
            }
        });
        // No assertion in here: a panic would leave the writer running and the scope waiting.
        let o = n.larder(args);
        // Everything acknowledged so far was committed before the command ended.
        let before_end = acked.lock().unwrap().clone();
        stop.store(true, Ordering::SeqCst);
        (o, before_end)
    });
    (finished(n, args, o), before_end)
}

/// `larder backup`'s label (last stdout line) and everything it printed; the command must
/// have succeeded.
fn finished(n: &Node, args: &[&str], o: std::process::Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(
        o.status.success(),
        "`larder {}` on {}:\n{out}\n{err}",
        args.join(" "),
        n.name
    );
    (
        out.trim().lines().last().unwrap_or("").to_string(),
        out + &err,
    )
}

/// The options the set was taken with, from pgBackRest's own manifest.
fn manifest(repo: &Path, label: &str) -> String {
    std::fs::read_to_string(
        repo.join("backup/larder")
            .join(label)
            .join("backup.manifest"),
    )
    .unwrap_or_else(|e| panic!("manifest of {label}: {e}"))
}

/// [`finished`] of `larder ARGS` on `n`.
fn backup_on(n: &Node, args: &[&str]) -> (String, String) {
    finished(n, args, n.larder(args))
}

#[test]
fn backup_reads_from_a_streaming_follower_while_writes_flow() {
    let c = Cluster::with_nodes(45, 2);
    let repo = c.dir.path().join("repo");
    enable_backups(&c, &repo);
    let l = c.wait_leader(None, T);
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    for i in 0..200 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    let pass = passphrase_file(&c);
    let pass_arg = pass.display().to_string();
    // On the follower, while writes flow on the leader.
    let ((label, said), before_end) = while_writing(
        l,
        f,
        &["backup", "--type", "full", "--passphrase-file", &pass_arg],
    );
    assert!(!before_end.is_empty(), "no write during the backup");
    assert!(
        said.contains(&format!("read from the follower {}", f.name)),
        "{said}"
    );
    // pgBackRest's own record: the set was taken from a standby.
    let m = manifest(&repo, &label);
    assert!(m.contains("option-backup-standby=true"), "{m}");
    // Run on the leader, the backup is read from the follower too.
    let (incr, said) = backup_on(
        l,
        &["backup", "--type", "incr", "--passphrase-file", &pass_arg],
    );
    assert!(
        said.contains(&format!("read from the follower {}", f.name)),
        "{said}"
    );
    assert!(manifest(&repo, &incr).contains("option-backup-standby=true"));

    // The standby-read backup restores completely.
    for n in &c.nodes {
        n.ok(&["cleanse", "-y"]);
    }
    let n1 = &c.nodes[0];
    n1.ok(&[
        "restore",
        &repo.display().to_string(),
        "--set",
        &label,
        "--passphrase-file",
        &pass_arg,
        "--publish_address",
        &n1.ip,
        "--fqdn",
        &n1.name,
        "-y",
    ]);
    c.wait_leader(None, T);
    let have = ids(n1).unwrap();
    assert!(
        (0..200).all(|i| have.contains(&i)),
        "rows before the backup lost"
    );
    let lost: Vec<_> = before_end.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "writes acknowledged before the backup ended are missing: {lost:?}"
    );
}

#[test]
fn tarball_restores_alone_and_a_second_node_joins() {
    let c = Cluster::nodes_only(46, 2);
    c.create_first();
    let repo = c.dir.path().join("repo");
    enable_backups_on(&c, &c.nodes[..1], &repo);
    let n1 = &c.nodes[0];
    // Idempotent statements, retried: right after the restart that turned archiving on, a
    // loaded machine may time a first statement out.
    wait_until(T, "the table and its rows", || {
        n1.sql("CREATE TABLE IF NOT EXISTS acked (id int primary key); INSERT INTO acked SELECT generate_series(0, 149) ON CONFLICT DO NOTHING")
    });
    index_docs(n1, 25);
    let pass = passphrase_file(&c);
    let pass_arg = pass.display().to_string();
    let tar = c.dir.path().join("larder-backup.tar.gz");
    let (_, said) = backup_on(
        n1,
        &[
            "backup",
            "--passphrase-file",
            &pass_arg,
            "--output",
            &tar.display().to_string(),
        ],
    );
    assert!(said.contains("no follower streams"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&tar).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Self-contained: the node and the repository are gone, only the tarball is left.
    n1.ok(&["cleanse", "-y"]);
    std::fs::remove_dir_all(&repo).unwrap();
    let tar_arg = tar.display().to_string();
    let stage = c.dir.path().join("stage");
    let stage_arg = stage.display().to_string();
    wrong_passphrase_refused(&c, n1, &[&tar_arg, "-d", &stage_arg]);
    assert!(
        !stage.exists(),
        "a refused restore left its staging directory behind"
    );
    n1.ok(&[
        "restore",
        &tar_arg,
        "-d",
        &stage_arg,
        "--passphrase-file",
        &pass_arg,
        "-y",
    ]);
    let l = c.wait_leader(None, T);
    assert_eq!(l.name, "n1");
    assert_eq!(ids(n1).unwrap(), (0..150).collect::<BTreeSet<u32>>());
    searchable(n1, 25);
    // The restored node's config points at the unpacked repository; a second node joins.
    c.join(1);
    wait_streaming(&c, 1);
    assert_eq!(count(&c.nodes[1]), Some(150));
    n1.sql("INSERT INTO acked VALUES (1000)").unwrap();
}

/// SQL in database `db` of node `n` (the tests' `Node::sql` works in `postgres`).
fn sql_db(n: &Node, db: &str, sql: &str) -> String {
    let o = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([
            "-h",
            &n.ip,
            "-U",
            "chef_pgsql",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atqc",
            sql,
        ])
        .env("PGPASSWORD", n.password())
        .output()
        .unwrap();
    assert!(o.status.success(), "{sql}: {o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn gzip_hex(text: &str) -> String {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn search_count(n: &Node, query: &str) -> Option<u64> {
    let (code, body) = n.es(
        "POST",
        "/chef/_search",
        &serde_json::json!({"stored_fields": "_id", "size": 0,
            "query": {"query_string": {"query": query}}})
        .to_string(),
    );
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["hits"]["total"]["value"].as_u64())?
}

#[test]
fn restore_from_a_chef_backend_dump_rebuilds_search() {
    let c = Cluster::create(47);
    let old = &c.nodes[0];
    // A Chef Server database shaped like erchef's: gzip-compressed objects (one plain).
    old.sql("CREATE ROLE opscode_chef LOGIN").unwrap();
    old.sql("CREATE DATABASE opscode_chef OWNER opscode_chef")
        .unwrap();
    sql_db(old, "opscode_chef", "CREATE TABLE nodes (id char(32) PRIMARY KEY, org_id char(32) NOT NULL, name text NOT NULL, environment text, serialized_object bytea); CREATE TABLE roles (id char(32) PRIMARY KEY, org_id char(32) NOT NULL, name text NOT NULL, serialized_object bytea); ALTER TABLE nodes OWNER TO opscode_chef");
    let org = "0123456789abcdef0123456789abcdef";
    let mut inserts = String::new();
    for i in 0..30 {
        let node = serde_json::json!({"name": format!("web{i}"), "chef_environment": "prod",
            "run_list": ["recipe[nginx]"], "automatic": {"platform": "debian"},
            "default": {"port": 80}, "override": {"port": 8000 + i}});
        let obj = if i == 0 {
            format!(
                "convert_to('{}', 'UTF8')",
                node.to_string().replace('\'', "''")
            )
        } else {
            format!("'\\x{}'::bytea", gzip_hex(&node.to_string()))
        };
        inserts.push_str(&format!(
            "INSERT INTO nodes VALUES ('{:032x}', '{org}', 'web{i}', 'prod', {obj});",
            i + 1
        ));
    }
    inserts.push_str(&format!(
        "INSERT INTO roles VALUES ('{:032x}', '{org}', 'base', '\\x{}'::bytea);",
        99,
        gzip_hex(r#"{"name":"base","run_list":["recipe[ntp]"]}"#)
    ));
    sql_db(old, "opscode_chef", &inserts);
    let dump = c.dir.path().join("chef-backend.sql");
    let o = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dumpall")
        .args([
            "-h",
            &old.ip,
            "-U",
            "chef_pgsql",
            "--exclude-database=larder_search",
            "-f",
        ])
        .arg(&dump)
        .env("PGPASSWORD", old.password())
        .output()
        .unwrap();
    assert!(o.status.success(), "pg_dumpall: {o:?}");
    let old_password = old.password();
    old.ok(&["cleanse", "-y"]);

    let n = &c.nodes[0];
    let refused = |args: &[&str], why: &str| {
        let o = n.larder(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(!n.root.join("etc/larder/larder.toml").exists());
        assert!(!n.root.join("var/opt/larder/node.json").exists());
    };
    let base = ["--publish_address", n.ip.as_str(), "--fqdn", "n1", "-y"];
    let missing = c.dir.path().join("missing.sql").display().to_string();
    refused(
        &[&["restore", "--from-pg-dump", &missing][..], &base].concat(),
        "cannot read the dump",
    );
    let junk = c.dir.path().join("junk.sql");
    std::fs::write(&junk, "hello\nworld\n").unwrap();
    let junk = junk.display().to_string();
    refused(
        &[&["restore", "--from-pg-dump", &junk][..], &base].concat(),
        "is not a cluster dump",
    );

    let dump_arg = dump.display().to_string();
    n.ok(&[&["restore", "--from-pg-dump", &dump_arg][..], &base].concat());
    c.wait_leader(None, T);
    // The new cluster keeps its own superuser password (the dump's hash was not loaded).
    assert_ne!(n.password(), old_password);
    assert_eq!(
        sql_db(n, "opscode_chef", "SELECT count(*) FROM nodes"),
        "30"
    );
    wait_until(Duration::from_secs(60), "restored nodes searchable", || {
        (search_count(n, "content:name__=__web*") == Some(30)).then_some(())
    });
    assert_eq!(search_count(n, "content:platform__=__debian"), Some(30));
    assert_eq!(search_count(n, "content:port__=__8007"), Some(1));
    assert_eq!(
        search_count(n, "content:X_CHEF_type_CHEF_X__=__role"),
        Some(1)
    );
    // A second restore on the node it built is refused.
    let o = n.larder(&[&["restore", "--from-pg-dump", &dump_arg][..], &base].concat());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("belongs to a cluster"),
        "{o:?}"
    );
}
