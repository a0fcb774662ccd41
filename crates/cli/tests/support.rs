//! Support verbs: `import-chef-backend` (a Chef Backend node's files become a working
//! larder.toml and secrets file) and `gather-logs` (one redacted support tarball).
//! The cluster test uses 127.0.41.0/24 only.

mod common;
use common::*;
use larder_core::config::Config;
use larder_core::secrets::Secrets;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SU_PASSWORD: &str = "Chef-SU-7d1e5a9c0b";
const REPL_PASSWORD: &str = "Chef-Repl-4b8f2e61aa";
const ETCD_TOKEN: &str = "chef-etcd-token-93ab17";
const CLUSTER_NAME: &str = "chef-es-cluster-5521";

/// A chef-backend.rb as Chef Backend's docs show them, for a node named `name` at `ip`.
fn chef_rb(name: &str, ip: &str) -> String {
    format!(
        r#"# /etc/chef-backend/chef-backend.rb
fqdn "{name}"
publish_address '{ip}'
hide_sensitive true
postgresql.md5_auth_cidr_addresses = ["samehost", "samenet",
                                      "127.0.0.0/8"]   # frontends
postgresql.log_min_duration_statement = 500
postgresql.max_connections = 200
postgresql['work_mem'] = '16MB'
elasticsearch.heap_size = 2048
leaderl.health_check.max_pgsql_failures = 4
postgresql.log_rotation.num_to_keep = 5
etcd.log_rotation.num_to_keep = 5
"#
    )
}

fn chef_secrets() -> String {
    serde_json::json!({
        "postgresql": {
            "db_superuser_password": SU_PASSWORD,
            "replication_password": REPL_PASSWORD
        },
        "etcd": {"initial_cluster_token": ETCD_TOKEN},
        "elasticsearch": {"cluster_name": CLUSTER_NAME}
    })
    .to_string()
}

/// Write the two Chef Backend files into `dir`; returns (chef-backend.rb, secrets JSON).
fn write_chef_files(dir: &Path, rb: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let rb_path = dir.join("chef-backend.rb");
    let sec_path = dir.join("chef-backend-secrets.json");
    std::fs::write(&rb_path, rb).unwrap();
    std::fs::write(&sec_path, chef_secrets()).unwrap();
    std::fs::set_permissions(&sec_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    (rb_path, sec_path)
}

fn import(root: &Path, rb: &Path, secrets: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--root")
        .arg(root)
        .arg("import-chef-backend")
        .arg("--config")
        .arg(rb)
        .arg("--secrets")
        .arg(secrets)
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn import_chef_backend_writes_a_config_larder_loads() {
    let d = tempfile::tempdir().unwrap();
    let (rb, sec) = write_chef_files(&d.path().join("chef"), &chef_rb("be1", "10.0.0.11"));
    let root = d.path().join("node");
    let o = import(&root, &rb, &sec, &[]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    // Keys Larder cannot map are named (and the import still succeeds).
    let err = text(&o.stderr);
    for key in [
        "postgresql.log_min_duration_statement (line 7)",
        "elasticsearch.heap_size (line 10)",
    ] {
        assert!(err.contains(key), "{key} not reported: {err}");
    }
    assert!(!err.contains("max_connections"), "{err}");

    // larder.toml loads with Larder's own parser and carries the values.
    let cfg_path = root.join("etc/larder/larder.toml");
    let cfg = Config::load(&cfg_path).unwrap();
    assert_eq!(cfg.fqdn, "be1");
    assert_eq!(cfg.publish_address, "10.0.0.11");
    assert_eq!(
        cfg.postgresql.md5_auth_cidr_addresses,
        ["samehost", "samenet", "127.0.0.0/8"]
    );
    assert_eq!(cfg.postgresql.max_connections, 200);
    assert_eq!(cfg.postgresql.work_mem, "16MB");
    assert_eq!(cfg.leaderl.health_check.max_pgsql_failures, 4);
    assert_eq!(cfg.log_rotation.num_to_keep, 5);
    // ...and so does the binary.
    let show = Command::new(BIN)
        .arg("--root")
        .arg(&root)
        .arg("show-config")
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(text(&show.stdout).contains("max_connections = 200"));

    // The secrets: Chef's values, plus a cluster CA, mode 0600, loadable by Larder.
    let sec_path = root.join("etc/larder/chef-backend-secrets.json");
    let mode = std::fs::metadata(&sec_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let s = Secrets::load(&sec_path).unwrap();
    assert_eq!(s.postgresql.db_superuser_password.expose(), SU_PASSWORD);
    assert_eq!(s.postgresql.replication_password.expose(), REPL_PASSWORD);
    assert_eq!(s.etcd.initial_cluster_token.expose(), ETCD_TOKEN);
    assert_eq!(s.elasticsearch.cluster_name, CLUSTER_NAME);
    // No secret reached the terminal.
    let all = format!("{}{}", text(&o.stdout), err);
    for secret in [SU_PASSWORD, REPL_PASSWORD, ETCD_TOKEN] {
        assert!(!all.contains(secret), "output shows a secret: {all}");
    }

    // An existing config is not overwritten without --yes; nothing changes.
    let before = std::fs::read(&cfg_path).unwrap();
    let sec_before = std::fs::read(&sec_path).unwrap();
    let (rb2, _) = write_chef_files(&d.path().join("chef2"), &chef_rb("be2", "10.0.0.12"));
    let o = import(&root, &rb2, &sec, &[]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--yes"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&cfg_path).unwrap(), before);
    assert_eq!(std::fs::read(&sec_path).unwrap(), sec_before);
    let o = import(&root, &rb2, &sec, &["--yes"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(Config::load(&cfg_path).unwrap().fqdn, "be2");

    // A malformed file: error naming file and line, non-zero exit, nothing written.
    let bad = chef_rb("be3", "10.0.0.13").replace(
        "postgresql.max_connections = 200",
        "postgresql.max_connections = node['cpu']",
    );
    let (rb3, _) = write_chef_files(&d.path().join("chef3"), &bad);
    let fresh = d.path().join("fresh");
    let o = import(&fresh, &rb3, &sec, &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("{}:8:", rb3.display())),
        "no file:line in {err}"
    );
    assert!(
        !fresh.exists(),
        "something was written for a malformed file"
    );

    // --output writes elsewhere (secrets next to it); missing secrets are named.
    let out = d.path().join("out/larder.toml");
    let o = import(&fresh, &rb, &sec, &["--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    Config::load(&out).unwrap();
    Secrets::load(&d.path().join("out/chef-backend-secrets.json")).unwrap();
    std::fs::write(&sec, r#"{"postgresql": {"db_superuser_password": "x"}}"#).unwrap();
    let o = import(&d.path().join("fresh2"), &rb, &sec, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("postgresql.replication_password"),
        "{}",
        text(&o.stderr)
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    tree_snapshot(dir).into_iter().map(|(p, _)| p).collect()
}

fn gather(n: &Node, extra: &[&str]) -> PathBuf {
    let mut args = vec!["gather-logs"];
    args.extend_from_slice(extra);
    let out = n.ok(&args);
    let path = PathBuf::from(out.trim().lines().last().unwrap_or(""));
    assert!(path.is_file(), "gather-logs printed {out:?}, not a tarball");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "tarball mode");
    path
}

/// Extract `tarball` into a new directory; returns (its single top directory, member list).
fn extract(tarball: &Path, into: &Path) -> (PathBuf, Vec<String>) {
    std::fs::create_dir_all(into).unwrap();
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(tarball)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list.stderr));
    let members: Vec<String> = text(&list.stdout).lines().map(String::from).collect();
    let x = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(x.success());
    let tops: Vec<_> = std::fs::read_dir(into).unwrap().flatten().collect();
    assert_eq!(tops.len(), 1, "one top directory in the tarball");
    (tops[0].path(), members)
}

#[test]
fn gather_logs_of_a_node_imported_from_chef_backend() {
    let c = Cluster::nodes_only(41, 1);
    let n = &c.nodes[0];
    // The node is set up from Chef Backend's files, then created: it keeps Chef's passwords.
    let (rb, sec) = write_chef_files(&c.dir.path().join("chef"), &chef_rb(&n.name, &n.ip));
    let o = import(&n.root, &rb, &sec, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    c.create_first();
    assert_eq!(
        n.password(),
        SU_PASSWORD,
        "create-cluster replaced the imported secrets"
    );
    assert_eq!(
        n.sql("SELECT 1").as_deref(),
        Some("1"),
        "Chef's password does not log in"
    );
    // Let the search service come up so its log exists too.
    wait_until(
        std::time::Duration::from_secs(30),
        "the search service",
        || {
            n.status_json().and_then(|s| {
                s["services"]
                    .as_array()?
                    .iter()
                    .any(|x| x["service"] == "elasticsearch" && x["running"] == true)
                    .then_some(())
            })
        },
    );

    // The secrets' actual values, read from the node's own secrets file.
    let sv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n.secrets()).unwrap()).unwrap();
    let mut secrets: Vec<String> = vec![
        sv["postgresql"]["db_superuser_password"]
            .as_str()
            .unwrap()
            .into(),
        sv["postgresql"]["replication_password"]
            .as_str()
            .unwrap()
            .into(),
        sv["etcd"]["initial_cluster_token"].as_str().unwrap().into(),
        sv["elasticsearch"]["cluster_name"].as_str().unwrap().into(),
    ];
    let key_pem = sv["larder"]["ca_key_pem"].as_str().unwrap();
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
            .map(String::from),
    );
    assert!(secrets.len() >= 5, "the CA key has no body lines?");

    let tarball = gather(
        n,
        &[
            "--output",
            c.dir.path().join("support.tar.gz").to_str().unwrap(),
        ],
    );
    let (top, members) = extract(&tarball, &c.dir.path().join("x1"));
    let has = |m: &str| members.iter().any(|x| x.ends_with(m));
    for m in [
        "/summary.txt",
        "/status/status.json",
        "/status/cluster-status.json",
        "/config/larder.toml",
        "/config/chef-backend-secrets.json",
        "/config/node.json",
        "/config/postgresql/pg_hba.conf",
        "/etcd/member-list.txt",
        "/etcd/endpoint-health.txt",
        "/postgresql/settings.tsv",
        "/postgresql/pg_stat_replication.tsv",
        "/postgresql/pg_stat_wal_receiver.tsv",
        "/postgresql/pg_replication_slots.tsv",
        "/versions/larder.txt",
        "/versions/postgres.txt",
        "/versions/etcd.txt",
        "/disk/df.txt",
        "/logs/agent/current",
        "/logs/etcd/current",
        "/logs/postgresql/current",
        "/logs/elasticsearch/current",
    ] {
        assert!(has(m), "{m} missing from the tarball: {members:#?}");
    }
    // With the agent up, none of the live parts failed.
    let failed: Vec<&String> = members
        .iter()
        .filter(|m| m.ends_with(".FAILED.txt"))
        .collect();
    for m in &failed {
        assert!(
            !["/status/", "/etcd/", "/postgresql/"]
                .iter()
                .any(|p| m.contains(p)),
            "{m} failed: {}",
            std::fs::read_to_string(top.parent().unwrap().join(m)).unwrap_or_default()
        );
    }
    let read = |rel: &str| std::fs::read_to_string(top.join(rel)).unwrap();
    let status: serde_json::Value = serde_json::from_str(&read("status/status.json")).unwrap();
    assert!(
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "postgresql" && s["running"] == true),
        "{status}"
    );
    let cs: serde_json::Value = serde_json::from_str(&read("status/cluster-status.json")).unwrap();
    assert_eq!(cs["nodes"][0]["name"], "n1", "{cs}");
    assert!(read("etcd/member-list.txt").contains("n1"));
    assert!(read("etcd/member-list.txt").contains(&n.ip));
    assert!(read("postgresql/settings.tsv").contains("max_connections\t200"));
    assert!(read("versions/postgres.txt").contains("PostgreSQL) 15"));
    assert!(read("config/chef-backend-secrets.json").contains("[REDACTED]"));
    assert!(read("logs/agent/current").lines().count() > 3);

    // No secret value anywhere in the tarball.
    for f in files_under(&top) {
        let data = std::fs::read(&f).unwrap();
        for s in &secrets {
            assert!(
                !data.windows(s.len()).any(|w| w == s.as_bytes()),
                "a secret from the secrets file appears in {}",
                f.display()
            );
        }
    }

    // With the agent down the gather still completes (default location), recording why the
    // live parts are missing.
    n.ok(&["uninstall"]);
    let tarball = gather(n, &[]);
    assert!(
        tarball.starts_with(n.root.join("var/log/larder")),
        "{}",
        tarball.display()
    );
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("gather-logs-n1-") && name.ends_with("Z.tar.gz"),
        "{name}"
    );
    let (top, members) = extract(&tarball, &c.dir.path().join("x2"));
    assert!(
        members
            .iter()
            .any(|m| m.ends_with("/status/status.json.FAILED.txt")),
        "{members:#?}"
    );
    assert!(members.iter().any(|m| m.ends_with("/logs/agent/current")));
    assert!(std::fs::read_to_string(top.join("summary.txt"))
        .unwrap()
        .contains("FAILED  status/status.json"));
}
