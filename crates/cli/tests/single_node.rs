//! Foundation: one node on real etcd and PostgreSQL under a real agent.

mod common;
use common::*;
use std::time::Duration;

fn service<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["service"] == name)
        .unwrap_or_else(|| panic!("no {name} row in {s}"))
}

fn pid_of(n: &Node, svc: &str) -> Option<u64> {
    n.status_json().and_then(|s| {
        let r = service(&s, svc);
        if r["running"] == true {
            r["pid"].as_u64()
        } else {
            None
        }
    })
}

/// Real uid of a process, from /proc.
fn process_uid(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn create_cluster_status_supervision_and_refusals() {
    let c = Cluster::create(11);
    let n = &c.nodes[0];

    // status: leaderl, etcd, postgresql running with pids; /leader answers 200.
    let s = n.status_json().expect("status --json");
    for svc in ["leaderl", "etcd", "postgresql"] {
        assert_eq!(service(&s, svc)["running"], true, "{svc} not running: {s}");
        assert!(
            service(&s, svc)["pid"].as_u64().is_some(),
            "{svc} has no pid"
        );
    }
    assert_eq!(n.http("/leader"), 200);
    assert_eq!(n.http("/replica"), 503);

    // Least privilege: etcd and the search service run as their own unprivileged users,
    // PostgreSQL as postgres; none of them as root.
    let search = wait_until(Duration::from_secs(30), "the search service", || {
        pid_of(n, "elasticsearch")
    });
    for (svc, pid, user) in [
        ("etcd", pid_of(n, "etcd").unwrap(), "larder-etcd"),
        ("elasticsearch", search, "larder-search"),
        ("postgresql", pid_of(n, "postgresql").unwrap(), "postgres"),
    ] {
        let uid = process_uid(pid);
        assert_ne!(uid, 0, "{svc} (pid {pid}) runs as root");
        let want = nix::unistd::User::from_name(user).unwrap().unwrap().uid;
        assert_eq!(
            uid,
            want.as_raw(),
            "{svc} (pid {pid}) is not running as {user}"
        );
    }
    assert_eq!(n.http("/no-such-endpoint"), 503);
    let table = n.ok(&["status"]);
    assert!(table.starts_with("Service"), "{table}");
    assert!(
        table.contains("leaderl") && table.contains("running (pid"),
        "{table}"
    );
    let cs = n.ok(&["cluster-status"]);
    assert!(cs.contains("n1") && cs.contains("leader"), "{cs}");
    // Versions everywhere: the table's Version column, --json, and `--version`.
    assert!(cs.lines().next().unwrap().ends_with("Version"), "{cs}");
    // The release plus this build's checksum (`larder_agent::build`).
    let version = larder_agent::build::version_of(std::path::Path::new(BIN)).unwrap();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    let js: serde_json::Value = serde_json::from_str(&n.ok(&["cluster-status", "--json"])).unwrap();
    wait_until(Duration::from_secs(10), "version in cluster-status", || {
        let js: serde_json::Value =
            serde_json::from_str(&n.ok(&["cluster-status", "--json"])).ok()?;
        (js["nodes"][0]["version"] == version.as_str()).then_some(())
    });
    assert_eq!(js["nodes"].as_array().unwrap().len(), 1);
    assert!(n.ok(&["--version"]).contains(env!("CARGO_PKG_VERSION")));

    // kill -9 of postgres: restarted by the supervisor with a new pid, time in state reset.
    let old = pid_of(n, "postgresql").unwrap();
    signal(old, Signal::SIGKILL);
    let new = wait_until(Duration::from_secs(5), "postgresql restart", || {
        pid_of(n, "postgresql").filter(|p| *p != old)
    });
    assert_ne!(new, old);
    let s = n.status_json().unwrap();
    assert!(
        service(&s, "postgresql")["seconds_in_state"]
            .as_u64()
            .unwrap()
            < 5
    );
    // ...and the node serves as leader again.
    wait_until(
        Duration::from_secs(15),
        "leader after postgres restart",
        || n.is_leader().then_some(()),
    );

    // Same for etcd.
    let old = pid_of(n, "etcd").unwrap();
    signal(old, Signal::SIGKILL);
    wait_until(Duration::from_secs(5), "etcd restart", || {
        pid_of(n, "etcd").filter(|p| *p != old)
    });

    // A second create-cluster is refused and changes nothing.
    let before = tree_snapshot(&n.root.join("etc"));
    let state_before = std::fs::read(n.root.join("var/opt/larder/node.json")).unwrap();
    let o = n.larder(&["create-cluster", "--publish-address", &n.ip, "-y"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already configured"), "{err}");
    assert_eq!(tree_snapshot(&n.root.join("etc")), before);
    assert_eq!(
        std::fs::read(n.root.join("var/opt/larder/node.json")).unwrap(),
        state_before
    );

    // gen-server-config: frontend keys and the member list; file mode 0600.
    let out = n.ok(&["gen-server-config", "fe1.example.com"]);
    assert!(out.contains("use_chef_backend true"));
    assert!(out.contains(&format!("chef_backend_members [\"{}\"]", n.ip)));
    assert!(out.contains(&format!(
        "postgresql['db_superuser_password'] = '{}'",
        n.password()
    )));
    let f = c.dir.path().join("chef-server.rb");
    n.ok(&[
        "gen-server-config",
        "fe1.example.com",
        "-f",
        &f.display().to_string(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Secrets never appear in show-config or logs.
    let cfg = n.ok(&["show-config"]);
    assert!(!cfg.contains(&n.password()));
    for svc in ["agent", "etcd", "postgresql"] {
        let log = std::fs::read_to_string(n.root.join(format!("var/log/larder/{svc}/current")))
            .unwrap_or_default();
        assert!(!log.contains(&n.password()), "password in {svc} log");
    }

    // cleanse leaves no process and no data directory.
    let pids: Vec<u64> = ["etcd", "postgresql"]
        .iter()
        .filter_map(|s| pid_of(n, s))
        .collect();
    let agent = n.agent_pid().unwrap();
    n.ok(&["cleanse", "--yes"]);
    for p in pids.iter().map(|p| *p as i32).chain([agent]) {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err(),
            "process {p} survived cleanse"
        );
    }
    assert!(!n.root.join("var/opt/larder").exists());
    assert!(!n.root.join("var/log/larder").exists());
    assert!(
        std::fs::read_dir(n.root.join("root")).unwrap().count() == 1,
        "config copy kept"
    );
}

#[test]
fn port_in_use_is_named_and_nothing_changes() {
    let c = Cluster::nodes_only(12, 1);
    let n = &c.nodes[0];
    let _hold = std::net::TcpListener::bind(format!("{}:5432", n.ip)).unwrap();
    let o = n.larder(&[
        "create-cluster",
        "--publish-address",
        &n.ip,
        "--fqdn",
        "n1",
        "-y",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("port 5432 (postgresql)"), "{err}");
    assert!(
        !n.root.join("etc/larder").exists(),
        "nothing may be written on refusal"
    );
    assert!(!n.root.join("var/opt/larder").exists());
}

#[test]
fn malformed_config_error_names_file_and_line() {
    let c = Cluster::nodes_only(13, 1);
    let n = &c.nodes[0];
    std::fs::create_dir_all(n.root.join("etc/larder")).unwrap();
    let file = n.root.join("etc/larder/larder.toml");
    std::fs::write(
        &file,
        format!(
            "fqdn = \"n1\"\npublish_address = \"{}\"\n[leaderl]\nleader_tll_seconds = 5\n",
            n.ip
        ),
    )
    .unwrap();
    let o = n.larder(&["create-cluster", "-y"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}:4", file.display())), "{err}");
    assert!(err.contains("leader_ttl_seconds"), "{err}");
    assert!(!n.root.join("var/opt/larder").exists());
    let o = n.larder(&["show-config"]);
    assert!(!o.status.success());
}

#[test]
fn unconfigured_node_commands_fail_clearly() {
    let c = Cluster::nodes_only(14, 1);
    let n = &c.nodes[0];
    for args in [
        vec!["status"],
        vec!["cluster-status"],
        vec!["gen-server-config", "fe"],
    ] {
        let o = n.larder(&args);
        assert!(
            !o.status.success(),
            "{args:?} succeeded on an unconfigured node"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not configured"),
            "{args:?}"
        );
    }
    let o = n.larder(&["backup"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not configured"));
}

#[test]
fn loose_secrets_file_is_refused_by_join() {
    let c = Cluster::nodes_only(15, 2);
    let s = c.dir.path().join("secrets.json");
    std::fs::write(&s, "{}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
    let n = &c.nodes[1];
    let o = n.larder(&[
        "join-cluster",
        "127.0.15.2",
        "-s",
        &s.display().to_string(),
        "-p",
        &n.ip,
        "-y",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
    assert!(!n.root.exists() || !n.root.join("etc/larder").exists());
}
