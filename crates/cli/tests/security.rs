//! Issue 17, security on every port, on a real 3-node cluster (127.0.53.x): search over HTTPS
//! with HTTP Basic authentication (raw requests, the Python ES/OpenSearch clients, and the
//! erchef request flow through a haproxy configured from `gen-server-config`), PostgreSQL
//! requiring TLS and scram for clients, the health API's read ACL, and a scan of every port
//! a node listens on; `rotate-certs` on a second 3-node cluster (127.0.54.x) under write
//! load; `postgresql.client_auth_method = "md5"` for md5-only clients, switched both ways on a
//! running cluster (127.0.58.x); `rotate-secrets --postgresql` under frontend write load
//! (127.0.59.x).

mod common;

use common::*;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// `/status` is allowed from 127.0.53.128/26 (and the members); 127.0.53.200 is a stranger.
const CONFIG: &str = "\n[leaderl]\nstatus_allowed_cidrs = [\"127.0.53.128/26\"]\n";

#[test]
fn security_on_every_port() {
    let c = Cluster::with_config(53, 3, CONFIG);
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    search_requires_tls_and_credentials(l);
    python_clients_with_tls_and_auth(l);
    erchef_flow_through_haproxy_from_gen_server_config(&c, l);
    postgresql_requires_tls_from_frontend_networks(l);
    health_api_read_acl(&c);
    for n in &c.nodes {
        scan_listening_ports(n);
    }
}

fn search_requires_tls_and_credentials(l: &Node) {
    wait_until(T, "search over HTTPS with credentials", || {
        (l.es("GET", "/", "").0 == 200).then_some(())
    });
    let addr = format!("{}:9200", l.ip);
    let ca = l.ca_pem();
    let (user, pass) = l.search_credentials();
    assert_eq!(user, "larder");
    assert!(pass.len() >= 32, "generated search password too short");

    let (code, body) = https_json(&addr, &l.ip, &ca, None, "GET", "/chef/_search", "{}");
    assert_es_error(
        code,
        &body,
        401,
        "security_exception",
        "missing authentication credentials",
    );

    let wrong = format!("{pass}x");
    let (code, body) = https_json(&addr, &l.ip, &ca, Some((&user, &wrong)), "GET", "/", "");
    assert_es_error(
        code,
        &body,
        401,
        "security_exception",
        "unable to authenticate user [larder]",
    );
    assert!(!body.contains(&pass), "a refusal echoed the password");

    // Plain HTTP on the HTTPS port: an ES-shaped 400 naming the fix, not a reset.
    let (code, body) = http_json(&addr, "GET", "/", "");
    assert_es_error(code, &body, 400, "illegal_argument_exception", "HTTPS only");

    // Nothing logged a password.
    let log = std::fs::read_to_string(l.root.join("var/log/larder/elasticsearch/current"))
        .unwrap_or_default();
    assert!(
        !log.contains(&pass) && !log.contains(&wrong),
        "search log holds a password"
    );
    let agent_log =
        std::fs::read_to_string(l.root.join("var/log/larder/agent/current")).unwrap_or_default();
    assert!(
        !agent_log.contains(&pass),
        "agent log holds the search password"
    );
}

/// An Elasticsearch-shaped error: `{"error":{"root_cause":[..],"type":..,"reason":..},"status":N}`.
fn assert_es_error(code: u16, body: &str, status: u16, kind: &str, reason_part: &str) {
    assert_eq!(code, status, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"]["root_cause"].is_array(), "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert_eq!(v["status"], status, "{v}");
    let reason = v["error"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(reason_part), "{v}");
}

fn python_clients_with_tls_and_auth(l: &Node) {
    let python = std::env::var("LARDER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LARDER_TEST_PYTHON is not set: point it at a python with \
             crates/search/tests/requirements.txt installed (scripts/test.sh does)"
        )
    });
    let ca = l.root.join("ca.pem");
    std::fs::write(&ca, l.ca_pem()).unwrap();
    let (user, pass) = l.search_credentials();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../search/tests/clients/chef_client_check.py"
    );
    for flavor in ["elasticsearch7", "opensearch"] {
        let out = Command::new(&python)
            .arg(script)
            .arg(flavor)
            .arg(format!("https://{}:9200", l.ip))
            .arg(&ca)
            .arg(&user)
            .arg(&pass)
            .output()
            .expect("run python");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{flavor} over HTTPS failed:\n{text}");
        assert!(text.contains(&format!("{flavor}: ok")), "{text}");
    }
}

/// The value of `key = 'value'` in a chef-server.rb.
fn rb_value(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} missing from:\n{text}"));
    line.split_once('=')
        .unwrap()
        .1
        .trim()
        .trim_matches('\'')
        .to_string()
}

fn erchef_flow_through_haproxy_from_gen_server_config(c: &Cluster, l: &Node) {
    let file = c.dir.path().join("chef-server.rb");
    let f = file.display().to_string();
    l.ok(&["gen-server-config", "fe1.example.com", "-f", &f]);
    let rb = std::fs::read_to_string(&file).unwrap();
    let ca = std::fs::read_to_string(c.dir.path().join("larder-cluster-ca.pem")).unwrap();
    assert_eq!(ca, l.ca_pem());
    let url = rb_value(&rb, "opscode_solr4['external_url']");
    assert_eq!(url, "https://127.0.0.1:9200");
    let user = rb_value(&rb, "opscode_erchef['search_auth_username']");
    let pass = rb_value(&rb, "opscode_erchef['search_auth_password']");
    assert_eq!(rb_value(&rb, "postgresql['sslmode']"), "require");
    let pg_pass = rb_value(&rb, "postgresql['db_superuser_password']");
    let os = l.ok(&[
        "gen-server-config",
        "fe1.example.com",
        "--style",
        "opensearch",
    ]);
    assert_eq!(rb_value(&os, "opensearch['external_url']"), url);
    assert_eq!(
        rb_value(&os, "opscode_erchef['search_provider']"),
        "opensearch"
    );

    // The frontend's haproxy, as chef-server writes it, beside the cluster (its 127.0.0.1 is
    // shared by other tests). It proxies TCP, so TLS goes through to the leader; the frontend
    // verifies the name of its URL, 127.0.0.1 (in every node certificate).
    let proxy = "127.0.53.100";
    let _h = Haproxy::start_ports(c.dir.path(), proxy, &c.nodes, &[5432, 9200]);
    let addr = format!("{proxy}:9200");
    let es = |method: &str, path: &str, body: &str| {
        https_json(
            &addr,
            "127.0.0.1",
            &ca,
            Some((&user, &pass)),
            method,
            path,
            body,
        )
    };
    let (code, body) = wait_until(T, "search through haproxy", || {
        let r = es("GET", "/", "");
        (r.0 == 200).then_some(r)
    });
    assert!(body.contains("\"7.10.2\""), "{code} {body}");
    // haproxy starts with every server UP until its first checks (within `inter`, 2 s) took
    // the followers out; round robin over three servers means three writes in a row succeed
    // only once the leader alone is UP. A frontend waits for exactly one UP server likewise.
    let probe = "{\"delete\":{\"_index\":\"chef\",\"_id\":\"probe\" }}\n";
    wait_until(T, "haproxy routing to the leader only", || {
        (0..3)
            .all(|_| es("POST", "/_bulk", probe).0 == 200)
            .then_some(())
    });
    let (code, _) = es("GET", "/chef", "");
    if code == 404 {
        let (code, body) = es(
            "PUT",
            "/chef",
            r#"{"settings":{"analysis":{"analyzer":{"default":{"type":"whitespace"}}},"number_of_shards":5,"number_of_replicas":1},"mappings":{"properties":{"X_CHEF_database_CHEF_X":{"type":"keyword","norms":false},"X_CHEF_type_CHEF_X":{"type":"keyword","norms":false},"X_CHEF_id_CHEF_X":{"type":"keyword","norms":false},"data_bag":{"type":"keyword","norms":false},"content":{"type":"text","index":true,"norms":false}},"_source":{"enabled":false}}}"#,
        );
        assert_eq!(code, 200, "{body}");
    }
    let mut bulk = String::new();
    for i in 0..20 {
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\"chef\",\"_id\":\"fe-{i}\"}}}}\n"
        ));
        bulk.push_str(&format!("{{\"content\":\"X_CHEF_database_CHEF_X__=__chef_org1 X_CHEF_id_CHEF_X__=__fe-{i} X_CHEF_type_CHEF_X__=__node name__=__web{i} \",\"X_CHEF_id_CHEF_X\":\"fe-{i}\",\"X_CHEF_database_CHEF_X\":\"chef_org1\",\"X_CHEF_type_CHEF_X\":\"node\"}}\n"));
    }
    bulk.push_str("{\"delete\":{\"_index\":\"chef\",\"_id\":\"fe-19\" }}\n");
    let (code, body) = es("POST", "/_bulk", &bulk);
    assert_eq!(code, 200, "{body}");
    let search = r#"{"stored_fields":"_id","from":0,"size":1000,"sort":[{"X_CHEF_id_CHEF_X":{"order":"asc"}}],"query":{"bool":{"must":{"query_string":{"query":"content:name__=__web1*"}},"filter":{"query_string":{"query":"+X_CHEF_database_CHEF_X:chef_org1 +X_CHEF_type_CHEF_X:node"}}}}}"#;
    wait_until(T, "the frontend's search answered", || {
        let (code, body) = es("GET", "/chef/_search", search);
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        // web1, web10..web18 (web19 deleted)
        (code == 200 && v["hits"]["total"]["value"] == 10).then_some(())
    });
    let (code, body) = es(
        "POST",
        "/chef/_delete_by_query",
        r#"{"query":{"query_string":{"query":"X_CHEF_database_CHEF_X:chef_org1"}}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let deleted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(deleted["deleted"], 19, "{deleted}");
    assert_eq!(es("POST", "/_refresh", "").0, 200);
    let (_, body) = es("GET", "/chef/_search", search);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hits"]["total"]["value"], 0, "after {deleted}: {v}");

    // PostgreSQL through the same haproxy with the file's sslmode and password.
    let out = psql(
        proxy,
        &pg_pass,
        "sslmode=require",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(out, Ok("t".to_string()));
}

/// psql as chef_pgsql to `host` with extra connection options.
fn psql(host: &str, password: &str, opts: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("/usr/lib/postgresql/15/bin/psql")
        .arg(format!(
            "host={host} user=chef_pgsql dbname=postgres connect_timeout=5 {opts}"
        ))
        .args(["-Atqc", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

fn postgresql_requires_tls_from_frontend_networks(l: &Node) {
    let pw = l.password();
    let e = psql(&l.ip, &pw, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
        "{e}"
    );
    let ca = l.root.join("pg-ca.pem");
    std::fs::write(&ca, l.ca_pem()).unwrap();
    let out = psql(
        &l.ip,
        &pw,
        &format!("sslmode=verify-full sslrootcert={}", ca.display()),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(out, Ok("t".to_string()));
    // Every client line is hostssl with scram; there is no plain `host` line at all.
    let rules = psql(
        &l.ip,
        &pw,
        "sslmode=require",
        "SELECT type || ' ' || array_to_string(database, ',') || ' ' || auth_method FROM pg_hba_file_rules WHERE type <> 'local'",
    )
    .unwrap();
    assert!(!rules.lines().any(|r| r.starts_with("host ")), "{rules}");
    assert!(
        rules
            .lines()
            .filter(|r| r.starts_with("hostssl all "))
            .all(|r| r.ends_with(" scram-sha-256")),
        "{rules}"
    );
    assert!(
        rules.lines().any(|r| r.starts_with("hostssl all ")),
        "{rules}"
    );
    // A wrong password over TLS is refused too.
    assert!(psql(&l.ip, "wrong", "sslmode=require", "SELECT 1").is_err());
}

/// HTTP status of `GET path` on `ip`:7331 sent from the source address `from`.
fn get_from(from: &str, ip: &str, path: &str) -> u16 {
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--interface",
            from,
        ])
        .arg(format!("http://{ip}:7331{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn health_api_read_acl(c: &Cluster) {
    let n = &c.nodes[0];
    let stranger = "127.0.53.200";
    for path in ["/status", "/cluster", "/metrics", "/ui"] {
        assert_eq!(
            get_from(stranger, &n.ip, path),
            403,
            "{path} from a stranger"
        );
    }
    let leader = c.leader().unwrap();
    assert_eq!(get_from(stranger, &leader.ip, "/leader"), 200);
    assert_eq!(get_from(stranger, &n.ip, "/health"), 200);
    assert_eq!(get_from(stranger, &n.ip, "/v2/members"), 200);
    // Allowed network, and a member.
    assert_eq!(get_from("127.0.53.150", &n.ip, "/status"), 200);
    assert_eq!(get_from(&c.nodes[1].ip, &n.ip, "/status"), 200);
}

/// Every TCP socket a node's processes listen on, as (address, port).
fn listening(n: &Node) -> Vec<(IpAddr, u16)> {
    let agent = n.agent_pid().expect("agent running");
    // The agent and all its descendants.
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        parent.insert(pid, ppid);
    }
    let descends = |mut p: i32| loop {
        if p == agent {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp > 1 => p = pp,
            _ => return false,
        }
    };
    let mut inodes = std::collections::HashSet::new();
    for &pid in parent.keys().filter(|p| descends(**p)) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                let t = t.display().to_string();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            let (addr, port) = f[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            let words: Vec<u32> = (0..addr.len() / 8)
                .map(|i| {
                    u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16)
                        .unwrap()
                        .swap_bytes()
                })
                .collect();
            let ip = if v6 {
                let mut b = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
                }
                IpAddr::from(b)
            } else {
                IpAddr::from(words[0].to_be_bytes())
            };
            out.push((ip, port));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Ports that may answer without TLS, and why (README, "Security"): the health API, whose
/// open answers are what frontends' haproxy checks; everything else on it is ACL'd.
const DOCUMENTED_OPEN: &[u16] = &[7331];

/// Does `addr` complete a TLS handshake whose certificate the cluster CA issued for `name`?
fn speaks_tls(addr: &str, name: &str, ca_pem: &str, tls_dir: &Path, postgres: bool) -> bool {
    presented(addr, name, ca_pem, tls_dir, postgres).is_some()
}

/// The certificate (DER) `addr` presents in a TLS handshake verified against the cluster CA
/// for `name`. PostgreSQL negotiates TLS in-band (SSLRequest first). The node certificate is
/// offered as client certificate, so mutual-TLS listeners (etcd) complete too.
fn presented(
    addr: &str,
    name: &str,
    ca_pem: &str,
    tls_dir: &Path,
    postgres: bool,
) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_dir.join("node.crt"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(tls_dir.join("node.key")).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let mut tcp =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .ok()?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    if postgres {
        // SSLRequest: length 8, code 80877103.
        tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).ok()?;
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).ok()?;
        if b[0] != b'S' {
            return None;
        }
    }
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            eprintln!("TLS handshake with {addr}: {e}");
            return None;
        }
    }
    conn.peer_certificates()?.first().map(|c| c.to_vec())
}

fn scan_listening_ports(n: &Node) {
    let ports = listening(n);
    let found: Vec<u16> = ports.iter().map(|(_, p)| *p).collect();
    for want in [2379, 2380, 5432, 7331, 9200] {
        assert!(
            found.contains(&want),
            "{}: nothing on {want}: {ports:?}",
            n.name
        );
    }
    let ca = n.ca_pem();
    let tls_dir = n.root.join("etc/larder/tls");
    let mut report = Vec::new();
    for (ip, port) in &ports {
        let loopback_only =
            *ip == IpAddr::from([127, 0, 0, 1]) || *ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]);
        let kind = if loopback_only {
            "loopback-only"
        } else if ip.is_unspecified() {
            panic!("{}: {ip}:{port} listens on every address", n.name);
        } else if speaks_tls(&format!("{ip}:{port}"), &n.ip, &ca, &tls_dir, *port == 5432) {
            "TLS"
        } else if DOCUMENTED_OPEN.contains(port) {
            "documented open"
        } else {
            panic!(
                "{}: {ip}:{port} is neither TLS nor loopback-only nor on the documented open list",
                n.name
            );
        };
        report.push(format!("{ip}:{port} {kind}"));
    }
    eprintln!("{} listens on: {}", n.name, report.join(", "));
    // 9200 must be TLS, not merely "documented".
    assert!(
        report.iter().any(|r| r.ends_with(":9200 TLS")),
        "{report:?}"
    );
}

/// Run `f` while two clients insert ids from `first` on into `acked` through haproxy at
/// `proxy` (a frontend's path): its result, the ids acknowledged, the errors of the writes
/// that failed.
fn under_write_load<R>(
    l: &Node,
    proxy: &str,
    first: u32,
    f: impl FnOnce() -> R,
) -> (R, std::collections::BTreeSet<u32>, Vec<String>) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;
    let stop = AtomicBool::new(false);
    let next = AtomicU32::new(first);
    let acked = Mutex::new(std::collections::BTreeSet::new());
    let failed = Mutex::new(Vec::new());
    let out = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    match l.try_sql_at(proxy, &format!("INSERT INTO acked VALUES ({id})")) {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            });
        }
        // No assertion in here: a panic would leave the writers running and the scope waiting.
        let o = f();
        stop.store(true, Ordering::SeqCst);
        o
    });
    (
        out,
        acked.into_inner().unwrap(),
        failed.into_inner().unwrap(),
    )
}

fn assert_all_in_db(l: &Node, acked: &std::collections::BTreeSet<u32>) {
    let in_db: std::collections::BTreeSet<u32> = l
        .sql("SELECT string_agg(id::text, ',') FROM acked")
        .unwrap()
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    let lost: Vec<_> = acked.difference(&in_db).collect();
    assert!(lost.is_empty(), "acknowledged writes missing: {lost:?}");
}

/// The certificate each of a node's TLS ports presents: (etcd, PostgreSQL, search).
fn presented_all(n: &Node) -> [Option<Vec<u8>>; 3] {
    let tls = n.root.join("etc/larder/tls");
    // What the node trusts: the cluster CA, and the operator's once configured.
    let ca = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
    [(2379, false), (5432, true), (9200, false)]
        .map(|(port, pg)| presented(&format!("{}:{port}", n.ip), &n.ip, &ca, &tls, pg))
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[test]
fn rotate_certs_under_write_load_without_failover() {
    let c = Cluster::with_nodes(54, 3);
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    l.sql("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let term = |n: &Node| n.status_json().and_then(|s| s["ha"]["term"].as_u64());
    let term_before = term(l).expect("term");
    let before: Vec<_> = c.nodes.iter().map(presented_all).collect();
    for (n, certs) in c.nodes.iter().zip(&before) {
        assert!(
            certs.iter().all(|c| c.is_some()),
            "{}: a TLS port did not answer before the rotation",
            n.name
        );
    }
    // Bad input changes nothing.
    let o = l.larder(&["rotate-certs", "--node", "nosuch"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no node named \"nosuch\""),
        "{err}"
    );
    let o = l.larder(&["rotate-certs", "--days", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("out of range"), "{err}");
    assert_eq!(
        c.nodes.iter().map(presented_all).collect::<Vec<_>>(),
        before
    );

    let proxy = "127.0.54.100";
    let _h = Haproxy::start(c.dir.path(), proxy, &c.nodes);
    wait_routed_to_leader(l, proxy);
    let (out, acked, failed) =
        under_write_load(l, proxy, 0, || l.larder(&["rotate-certs", "--days", "400"]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "rotate-certs:\n{stdout}\n{stderr}");
    eprintln!("rotate-certs printed:\n{stdout}{stderr}");
    assert!(
        failed.is_empty(),
        "writes failed during the rotation: {failed:?}"
    );
    // Two psql writers manage ~10 inserts/s each and a rotation of three nodes takes a few
    // seconds: fewer than 5 would mean the load never overlapped it.
    assert!(
        acked.len() >= 5,
        "too few writes ran during the rotation: {}",
        acked.len()
    );
    assert_eq!(
        term(l),
        Some(term_before),
        "the rotation changed the leader"
    );
    assert!(c.leader().is_some_and(|x| x.name == l.name));
    assert_all_in_db(l, &acked);

    // Every port of every node now presents the node's new certificate, valid for 400 days,
    // and `status` shows that expiry.
    let want_days = 399..=400;
    for (n, old) in c.nodes.iter().zip(&before) {
        let file = pem_der(&n.root.join("etc/larder/tls/node.crt"));
        let now = presented_all(n);
        for (port, (new, old)) in ["etcd", "postgresql", "search"]
            .iter()
            .zip(now.iter().zip(old))
        {
            assert_eq!(
                new.as_ref(),
                Some(&file),
                "{} {port}: not the new certificate",
                n.name
            );
            assert_ne!(new, old, "{} {port}: still the old certificate", n.name);
        }
        let s = n.status_json().unwrap();
        let days = s["security"]["certificate_days_left"].as_i64().unwrap();
        assert!(want_days.contains(&days), "{}: {days} days left", n.name);
        let shown = s["security"]["certificate_not_after"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(&n.name) && line.contains(&shown)),
            "{} with {shown} missing from:\n{stdout}",
            n.name
        );
    }
    // The leader went last.
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|line| {
            c.nodes
                .iter()
                .find(|n| line.contains(&format!(" {} ", n.name)))
        })
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(order.last(), Some(&l.name.as_str()), "{stdout}");
    // Replication reconnects with the new client certificates.
    for f in c.nodes.iter().filter(|n| n.name != l.name) {
        f.larder(&["restart", "postgresql"]);
    }
    wait_streaming(&c, 2);
}

/// The operator's own PKI: a CA unrelated to the cluster's, and a node certificate from it
/// (SAN = the node's address, server and client auth), written as PEM files under `dir`.
struct OperatorPki {
    ca: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_file: std::path::PathBuf,
}

impl OperatorPki {
    fn new(dir: &Path) -> OperatorPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "Example Corp Root CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let ca_file = dir.join("corp-ca.pem");
        std::fs::write(&ca_file, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        OperatorPki {
            ca,
            ca_key,
            ca_file,
        }
    }

    /// (certificate file, key file) for address `ip`.
    fn issue(&self, name: &str, ip: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
        let mut p = CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.subject_alt_names = vec![SanType::IpAddress(ip.parse().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(
            self.ca.clone(),
            KeyPair::from_pem(&self.ca_key.serialize_pem()).unwrap(),
        );
        let dir = self.ca_file.parent().unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, p.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Set `ssl.*` keys in a node's larder.toml.
fn set_ssl(n: &Node, f: impl FnOnce(&mut larder_core::config::SslConfig)) {
    let path = n.root.join("etc/larder/larder.toml");
    let mut cfg = larder_core::config::Config::load(&path).unwrap();
    f(&mut cfg.ssl);
    std::fs::write(&path, cfg.to_toml()).unwrap();
}

#[test]
fn switch_to_the_operators_certificates_under_write_load() {
    let c = Cluster::with_nodes(55, 3);
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    l.sql("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let term = |n: &Node| n.status_json().and_then(|s| s["ha"]["term"].as_u64());
    let term_before = term(l).expect("term");
    let pki = OperatorPki::new(&c.dir.path().join("corp-pki"));
    let certs: Vec<_> = c.nodes.iter().map(|n| pki.issue(&n.name, &n.ip)).collect();
    let ca = pki.ca_file.display().to_string();
    let before: Vec<_> = c.nodes.iter().map(presented_all).collect();
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    let fi = c.nodes.iter().position(|n| n.name == f.name).unwrap();

    // Refused, changing nothing: a node presenting a certificate the others do not trust yet,
    // and a certificate made out to another node's address.
    set_ssl(f, |s| {
        s.ca = ca.clone();
        s.certificate = certs[fi].0.display().to_string();
        s.certificate_key = certs[fi].1.display().to_string();
    });
    let o = l.larder(&["rotate-certs", "--node", &f.name]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("does not accept"),
        "{err}"
    );
    let other = (fi + 1) % 3;
    set_ssl(f, |s| {
        s.certificate = certs[other].0.display().to_string();
        s.certificate_key = certs[other].1.display().to_string();
    });
    let o = l.larder(&["rotate-certs", "--node", &f.name]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&format!("as the server {}", f.ip)),
        "{err}"
    );
    assert_eq!(
        c.nodes.iter().map(presented_all).collect::<Vec<_>>(),
        before
    );

    let proxy = "127.0.55.100";
    let _h = Haproxy::start(c.dir.path(), proxy, &c.nodes);
    wait_routed_to_leader(l, proxy);
    // Step 1: every node trusts the operator's CA (etcd restarts to read it, one at a time).
    for n in &c.nodes {
        set_ssl(n, |s| {
            s.ca = ca.clone();
            s.certificate = String::new();
            s.certificate_key = String::new();
        });
    }
    let (o1, acked1, failed1) = under_write_load(l, proxy, 0, || l.larder(&["rotate-certs"]));
    // Step 2: every node presents the operator's certificate.
    for (n, (cert, key)) in c.nodes.iter().zip(&certs) {
        set_ssl(n, |s| {
            s.certificate = cert.display().to_string();
            s.certificate_key = key.display().to_string();
        });
    }
    let (o2, acked2, failed2) =
        under_write_load(l, proxy, 1_000_000, || l.larder(&["rotate-certs"]));
    for (step, o) in [("trust", &o1), ("switch", &o2)] {
        assert!(
            o.status.success(),
            "rotate-certs ({step}):\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    eprintln!("switch printed:\n{}", String::from_utf8_lossy(&o2.stdout));
    assert!(
        failed1.is_empty() && failed2.is_empty(),
        "writes failed: {failed1:?} {failed2:?}"
    );
    assert!(
        acked1.len() >= 5 && acked2.len() >= 5,
        "the load did not overlap"
    );
    assert_eq!(term(l), Some(term_before), "the switch changed the leader");
    assert_all_in_db(l, &acked1);
    assert_all_in_db(l, &acked2);
    for (n, (cert, _)) in c.nodes.iter().zip(&certs) {
        let want = pem_der(cert);
        for (port, got) in ["etcd", "postgresql", "search"]
            .iter()
            .zip(presented_all(n))
        {
            assert_eq!(
                got.as_ref(),
                Some(&want),
                "{} {port}: not the operator's certificate",
                n.name
            );
        }
    }
    // The cluster keeps working on the operator's PKI alone: a follower's etcd and PostgreSQL
    // restart, rejoin (peer TLS) and stream again (replication TLS).
    f.ok(&["restart", "etcd"]);
    f.ok(&["restart", "postgresql"]);
    wait_streaming(&c, 2);
    wait_until(T, "etcd healthy on every node", || {
        c.nodes
            .iter()
            .all(|n| n.status_json().is_some_and(|s| s["ha"]["etcd_ok"] == true))
            .then_some(())
    });
    // A frontend that trusts the operator's CA (and only it) reaches search over HTTPS.
    let (u, p) = l.search_credentials();
    let corp_ca = std::fs::read_to_string(&pki.ca_file).unwrap();
    let (code, body) = https_json(
        &format!("{}:9200", l.ip),
        &l.ip,
        &corp_ca,
        Some((&u, &p)),
        "GET",
        "/",
        "",
    );
    assert_eq!(code, 200, "search with the operator's CA: {body}");
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for (path, _) in tree_snapshot(dir) {
        let full = dir.join(&path);
        if std::fs::read(&full)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            out.push(full);
        }
    }
    out
}

#[test]
fn rotate_the_search_password_without_cutting_off_frontends() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::with_nodes(56, 3);
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    let (user, old) = l.search_credentials();
    let ca = l.ca_pem();
    let answer = |n: &Node, password: &str| {
        https_json(
            &format!("{}:9200", n.ip),
            &n.ip,
            &ca,
            Some((&user, password)),
            "GET",
            "/",
            "",
        )
        .0
    };
    for n in &c.nodes {
        wait_until(T, "search with the first password", || {
            (answer(n, &old) == 200).then_some(())
        });
    }
    // Bad requests change nothing.
    for (args, says) in [
        (
            &["rotate-secrets", "--search", "--finish"][..],
            "no search password rotation is under way",
        ),
        (&["rotate-secrets"][..], "--search"),
        (
            &["rotate-secrets", "--search", "--postgresql"][..],
            "one secret at a time",
        ),
    ] {
        let o = l.larder(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(l.search_credentials().1, old);

    let out = l.ok(&["rotate-secrets", "--search"]);
    assert!(out.contains("accepted on every node"), "{out}");
    let new = l.search_credentials().1;
    assert_ne!(new, old);
    for n in &c.nodes {
        assert_eq!(
            n.search_credentials().1,
            new,
            "{}: not the new password",
            n.name
        );
        let mode = std::fs::metadata(n.secrets()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: secrets file mode", n.name);
        // Both work while the frontends move over.
        assert_eq!(answer(n, &new), 200, "{}: new password", n.name);
        assert_eq!(
            answer(n, &old),
            200,
            "{}: old password during the rotation",
            n.name
        );
        // etcd carried the password sealed: no clear copy in its data files.
        let leaked = files_containing(&n.root.join("var/opt/larder/etcd"), &new);
        assert!(
            leaked.is_empty(),
            "{}: the new password in clear in {leaked:?}",
            n.name
        );
    }
    let fe = l.ok(&["gen-server-config", "fe1.example"]);
    assert!(
        fe.contains(&new) && !fe.contains(&old),
        "frontend settings:\n{fe}"
    );
    let o = l.larder(&["rotate-secrets", "--search"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("already under way"),
        "{err}"
    );

    let out = l.ok(&["rotate-secrets", "--search", "--finish"]);
    assert!(out.contains("refused on every node"), "{out}");
    for n in &c.nodes {
        assert_eq!(
            answer(n, &new),
            200,
            "{}: new password after finish",
            n.name
        );
        assert_eq!(
            answer(n, &old),
            401,
            "{}: old password after finish",
            n.name
        );
        let text = std::fs::read_to_string(n.secrets()).unwrap();
        assert!(
            !text.contains(&old),
            "{}: old password still in the secrets file",
            n.name
        );
    }
    // A search service started afresh takes the new password only, and the agent's own probe
    // (reading the secrets file, not its copy from start) finds it healthy.
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    let restarted = f.status_json().unwrap()["ha"]["search_ok"].clone();
    assert_eq!(restarted, true);
    f.ok(&["restart", "elasticsearch"]);
    wait_until(T, "search back with the new password", || {
        (answer(f, &new) == 200).then_some(())
    });
    assert_eq!(answer(f, &old), 401);
    wait_until(T, "the agent's probe healthy after the restart", || {
        f.status_json()
            .is_some_and(|s| s["ha"]["search_ok"] == true)
            .then_some(())
    });
}

/// Set `postgresql.client_auth_method` in a node's larder.toml.
fn set_client_auth(n: &Node, method: &str) {
    let path = n.root.join("etc/larder/larder.toml");
    let mut cfg = larder_core::config::Config::load(&path).unwrap();
    cfg.postgresql.client_auth_method = method.into();
    std::fs::write(&path, cfg.to_toml()).unwrap();
}

/// PostgreSQL's authentication request codes (the `R` message).
const AUTH_OK: i32 = 0;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;

/// An md5-only client logging in as `user` to `ip`:5432 over TLS (as a frontend must, the
/// client lines being `hostssl`), speaking the protocol by hand: the authentication request
/// the server answers the startup message with, and when that asked for md5, the code after
/// our md5 answer (`AUTH_OK`) or `None` for a refusal.
fn md5_only_login(ip: &str, ca_pem: &str, user: &str, password: &str) -> (i32, Option<i32>) {
    use std::io::{Read, Write};
    let cfg = common::tls_client_config(ca_pem);
    let mut tcp = std::net::TcpStream::connect((ip, 5432)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    let mut b = [0u8; 1];
    tcp.read_exact(&mut b).unwrap();
    assert_eq!(b[0], b'S', "{ip}: PostgreSQL refused TLS");
    let name = rustls::pki_types::ServerName::try_from(ip.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // StartupMessage, protocol 3.0.
    let mut body = 196608i32.to_be_bytes().to_vec();
    for part in ["user", user, "database", "postgres", ""] {
        body.extend(part.as_bytes());
        body.push(0);
    }
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    s.write_all(&msg).unwrap();
    // One backend message: its type and body.
    let read = |s: &mut rustls::StreamOwned<_, _>| -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).unwrap();
        (head[0], body)
    };
    let (kind, body) = read(&mut s);
    assert_eq!(kind, b'R', "{ip}: not an authentication request: {body:?}");
    let code = i32::from_be_bytes(body[0..4].try_into().unwrap());
    if code != AUTH_MD5 {
        return (code, None);
    }
    let salt: [u8; 4] = body[4..8].try_into().unwrap();
    let answer =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    let mut msg = vec![b'p'];
    msg.extend(((answer.len() + 5) as i32).to_be_bytes());
    msg.extend(answer.as_bytes());
    msg.push(0);
    s.write_all(&msg).unwrap();
    let (kind, body) = read(&mut s);
    match kind {
        b'R' => (
            code,
            Some(i32::from_be_bytes(body[0..4].try_into().unwrap())),
        ),
        _ => (code, None),
    }
}

/// `left(rolpassword, 3)` of the superuser on `n`: `md5` or `SCR`.
fn stored_hash(n: &Node) -> Option<String> {
    n.sql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'chef_pgsql'")
}

fn wait_stored_hash(c: &Cluster, want: &str) {
    for n in &c.nodes {
        wait_until(T, &format!("{}: superuser stored {want}", n.name), || {
            (stored_hash(n).as_deref() == Some(want)).then_some(())
        });
    }
}

/// psql as a frontend logs in (TLS required), and the authentication the server asked for.
fn assert_logins(c: &Cluster, want: i32) {
    for n in &c.nodes {
        let pw = n.password();
        let (code, after) = md5_only_login(&n.ip, &n.ca_pem(), "chef_pgsql", &pw);
        assert_eq!(code, want, "{}: authentication request", n.name);
        if want == AUTH_MD5 {
            assert_eq!(
                after,
                Some(AUTH_OK),
                "{}: the md5 answer was refused",
                n.name
            );
            let (_, wrong) = md5_only_login(&n.ip, &n.ca_pem(), "chef_pgsql", "wrong");
            assert_eq!(wrong, None, "{}: a wrong md5 answer was accepted", n.name);
        }
        let out = psql(
            &n.ip,
            &pw,
            "sslmode=require",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert_eq!(out, Ok("t".to_string()), "{}: psql over TLS", n.name);
    }
}

#[test]
fn md5_client_auth_for_md5_only_clients_switched_both_ways() {
    let c = Cluster::with_config(58, 3, "\n[postgresql]\nclient_auth_method = \"md5\"\n");
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    // Created md5: the superuser's password is stored md5 (replicated to every node), host
    // and local lines are md5, and an md5-only client logs in.
    wait_stored_hash(&c, "md5");
    assert_logins(&c, AUTH_MD5);
    let rules = l
        .sql("SELECT type || ' ' || array_to_string(database, ',') || ' ' || auth_method FROM pg_hba_file_rules")
        .unwrap();
    assert!(rules.lines().any(|r| r == "local all md5"), "{rules}");
    assert!(
        rules
            .lines()
            .filter(|r| r.starts_with("hostssl replication"))
            .all(|r| r.ends_with(" scram-sha-256")),
        "{rules}"
    );
    assert_eq!(
        l.sql("SHOW password_encryption").as_deref(),
        Some("md5"),
        "what the frontends' own roles are stored as"
    );
    // The replication role stays SCRAM: its lines are scram-sha-256.
    assert_eq!(
        l.sql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'replicator'")
            .as_deref(),
        Some("SCR")
    );

    // To scram, one follower first: it waits for the leader to store SCRAM before its lines
    // change; the others' md5 lines then run SCRAM (an md5-only client is refused there too).
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    set_client_auth(f, "scram-sha-256");
    f.ok(&["reconfigure"]);
    assert_eq!(stored_hash(f).as_deref(), Some("SCR"));
    wait_stored_hash(&c, "SCR");
    assert_logins(&c, AUTH_SASL);
    for n in c.nodes.iter().filter(|n| n.name != f.name) {
        set_client_auth(n, "scram-sha-256");
        n.ok(&["reconfigure"]);
    }
    assert_logins(&c, AUTH_SASL);

    // Back to md5, the leader first: it keeps SCRAM (which md5 lines accept) until every
    // member's md5 lines are loaded.
    set_client_auth(l, "md5");
    l.ok(&["reconfigure"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored_hash(l).as_deref(), Some("SCR"));
    assert_eq!(
        md5_only_login(&l.ip, &l.ca_pem(), "chef_pgsql", &l.password()).0,
        AUTH_SASL
    );
    for n in c.nodes.iter().filter(|n| n.name != l.name) {
        set_client_auth(n, "md5");
        n.ok(&["reconfigure"]);
    }
    wait_stored_hash(&c, "md5");
    assert_logins(&c, AUTH_MD5);
    // No failover, every agent still reaches its PostgreSQL, the search services theirs.
    assert!(c.leader().is_some_and(|x| x.name == l.name));
    wait_streaming(&c, 2);
    for n in &c.nodes {
        wait_until(T, &format!("{}: search healthy", n.name), || {
            n.status_json()
                .is_some_and(|s| s["ha"]["search_ok"] == true)
                .then_some(())
        });
    }
}

/// A frontend's long-lived PostgreSQL session through `host` (erchef keeps a pool of them):
/// one psql reading statements from a pipe, each INSERT followed by a marker line, so every
/// write is known to have been acknowledged or not.
struct Session {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Session {
    fn open(host: &str, password: &str) -> Session {
        use std::io::BufRead;
        use std::process::Stdio;
        // Line-buffered: psql's output to a pipe is otherwise held back.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-At"])
            .args(["-v", "ON_ERROR_STOP=0"])
            .arg(format!(
                "host={host} user=chef_pgsql dbname=postgres sslmode=require connect_timeout=5"
            ))
            .env("PGPASSWORD", password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (e, stderr) = (errors.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                e.lock().unwrap().push(line);
            }
        });
        Session {
            child,
            stdin,
            stdout,
            errors,
        }
    }

    /// Insert `id`: Ok once PostgreSQL acknowledged it, Err with psql's messages otherwise.
    fn insert(&mut self, id: u32) -> Result<(), String> {
        use std::io::{BufRead, Write};
        let marker = format!("done-{id}");
        write!(
            self.stdin,
            "INSERT INTO acked VALUES ({id}) RETURNING id;\n\\echo {marker}\n"
        )
        .map_err(|e| format!("session gone: {e}"))?;
        self.stdin
            .flush()
            .map_err(|e| format!("session gone: {e}"))?;
        let mut acked = false;
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap_or(0) == 0 {
                return Err(format!(
                    "session lost: {}",
                    self.errors.lock().unwrap().join(" / ")
                ));
            }
            match line.trim() {
                l if l == marker => break,
                l if l == id.to_string() => acked = true,
                _ => {}
            }
        }
        if acked {
            Ok(())
        } else {
            Err(self.errors.lock().unwrap().join(" / "))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes through `proxy` while `f` runs, as frontends make them: `sessions` long-lived
/// sessions opened before with `password` (each acknowledged id, each failure), and one
/// client that opens a new connection per write with the password the leader's secrets file
/// holds at that moment (a frontend reconfigured at once).
#[allow(clippy::type_complexity)]
fn under_frontend_load<R>(
    l: &Node,
    proxy: &str,
    password: &str,
    f: impl FnOnce() -> R,
) -> (R, std::collections::BTreeSet<u32>, Vec<String>, Vec<String>) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;
    let stop = AtomicBool::new(false);
    let next = AtomicU32::new(0);
    let acked = Mutex::new(std::collections::BTreeSet::new());
    let (session_failures, connect_failures) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let mut sessions: Vec<Session> = (0..2).map(|_| Session::open(proxy, password)).collect();
    let out = std::thread::scope(|s| {
        for session in sessions.iter_mut() {
            let (stop, next, acked, failed) = (&stop, &next, &acked, &session_failures);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    match session.insert(id) {
                        Ok(()) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                match l.try_sql_at(proxy, &format!("INSERT INTO acked VALUES ({id})")) {
                    Ok(_) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Err(e) => connect_failures.lock().unwrap().push(e),
                }
            }
        });
        // No assertion in here: a panic would leave the writers running and the scope waiting.
        let o = f();
        stop.store(true, Ordering::SeqCst);
        o
    });
    (
        out,
        acked.into_inner().unwrap(),
        session_failures.into_inner().unwrap(),
        connect_failures.into_inner().unwrap(),
    )
}

/// The replication role logging in to `ip` with `password`, as a standby does (replication
/// connection over TLS).
fn replication_login(ip: &str, password: &str) -> Result<String, String> {
    let o = Command::new("/usr/lib/postgresql/15/bin/psql")
        .arg(format!(
            "host={ip} user=replicator dbname=postgres replication=database sslmode=require connect_timeout=5"
        ))
        .args(["-Atqc", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

#[test]
fn rotate_the_postgresql_passwords_under_write_load_without_failover() {
    let c = Cluster::with_nodes(59, 3);
    let l = c.wait_leader(None, T);
    wait_streaming(&c, 2);
    l.sql("CREATE TABLE acked (id int PRIMARY KEY)").unwrap();
    let term = |n: &Node| n.status_json().and_then(|s| s["ha"]["term"].as_u64());
    let term_before = term(l).expect("term");
    let pg_secret = |n: &Node, k: &str| {
        n.secrets_json()["postgresql"][k]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (old_su, old_repl) = (
        pg_secret(l, "db_superuser_password"),
        pg_secret(l, "replication_password"),
    );
    let files = |c: &Cluster| -> Vec<String> {
        c.nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.secrets()).unwrap())
            .collect()
    };
    let before = files(&c);

    // Bad requests change nothing.
    for (args, says) in [
        (
            &["rotate-secrets", "--postgresql", "--finish"][..],
            "--finish belongs to --search",
        ),
        (
            &["rotate-secrets", "--postgresql", "--search"][..],
            "one secret at a time",
        ),
    ] {
        let o = l.larder(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
    }
    // A node down: refused up front, naming it, nothing changed anywhere.
    let f = c.nodes.iter().find(|n| n.name != l.name).unwrap();
    let pg = f.pg_pid().unwrap();
    f.kill_agent();
    ensure_dead(pg);
    wait_until(T, "the stopped node shown offline", || {
        let js: serde_json::Value =
            serde_json::from_str(&l.ok(&["cluster-status", "--json"])).ok()?;
        js["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == f.name.as_str() && n["online"] == false)
            .then_some(())
    });
    let o = l.larder(&["rotate-secrets", "--postgresql"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&f.name)
            && err.contains("not reporting")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        files(&c),
        before,
        "a refused rotation changed a secrets file"
    );
    assert_eq!(
        psql(&l.ip, &old_su, "sslmode=require", "SELECT 1"),
        Ok("1".into())
    );
    f.ok(&["start"]);
    wait_streaming(&c, 2);

    // The rotation, under frontend load.
    let proxy = "127.0.59.100";
    let _h = Haproxy::start(c.dir.path(), proxy, &c.nodes);
    wait_routed_to_leader(l, proxy);
    let t0 = l.sql("SELECT now()").unwrap();
    let (out, acked, session_failures, connect_failures) =
        under_frontend_load(l, proxy, &old_su, || {
            l.larder(&["rotate-secrets", "--postgresql"])
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "rotate-secrets:\n{stdout}\n{stderr}");
    eprintln!("rotate-secrets printed:\n{stdout}{stderr}");
    assert!(
        stdout.contains("gen-server-config") && stdout.contains("chef-server-ctl reconfigure"),
        "{stdout}"
    );
    // Open sessions never noticed; new connections were refused only for their password,
    // between the roles' change and the leader's switch to the new password.
    assert!(
        session_failures.is_empty(),
        "writes on open sessions failed: {session_failures:?}"
    );
    assert!(
        connect_failures
            .iter()
            .all(|e| e.contains("password authentication failed")),
        "new connections failed otherwise: {connect_failures:?}"
    );
    eprintln!(
        "{} writes acknowledged, {} new connections refused their (old) password",
        acked.len(),
        connect_failures.len()
    );
    assert!(acked.len() >= 5, "the load did not overlap the rotation");
    assert_eq!(
        term(l),
        Some(term_before),
        "the rotation changed the leader"
    );
    assert!(c.leader().is_some_and(|x| x.name == l.name));
    assert_all_in_db(l, &acked);

    // New passwords everywhere, none staged; the old ones refused.
    let (new_su, new_repl) = (
        pg_secret(l, "db_superuser_password"),
        pg_secret(l, "replication_password"),
    );
    assert!(new_su != old_su && new_repl != old_repl && new_su.len() >= 32);
    for n in &c.nodes {
        let js = n.secrets_json();
        assert_eq!(pg_secret(n, "db_superuser_password"), new_su, "{}", n.name);
        assert_eq!(pg_secret(n, "replication_password"), new_repl, "{}", n.name);
        let text = std::fs::read_to_string(n.secrets()).unwrap();
        assert!(
            !text.contains("next_") && !text.contains(&old_su) && !text.contains(&old_repl),
            "{}: {js}",
            n.name
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(n.secrets()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: secrets file mode", n.name);
    }
    let e = psql(&l.ip, &old_su, "sslmode=require", "SELECT 1").unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    assert_eq!(
        psql(&l.ip, &new_su, "sslmode=require", "SELECT 1"),
        Ok("1".into())
    );
    assert!(replication_login(&l.ip, &old_repl).is_err());
    assert!(replication_login(&l.ip, &new_repl).is_ok());
    // Both followers stream again, through WAL receivers started after the rotation began
    // (so logged in with the new replication password).
    wait_until(T, "both followers streaming with the new password", || {
        (psql(
            &l.ip,
            &new_su,
            "sslmode=require",
            &format!("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND backend_start > '{t0}'"),
        )
        .ok()?
            == "2")
            .then_some(())
    });
    wait_streaming(&c, 2);
    let fe = l.ok(&["gen-server-config", "fe1.example"]);
    assert!(fe.contains(&new_su) && !fe.contains(&old_su), "{fe}");
    // The search services (connections kept, new ones with the new password) and every
    // agent's own connections: healthy after a restart of both on a follower.
    f.ok(&["restart", "elasticsearch"]);
    f.ok(&["restart", "postgresql"]);
    wait_streaming(&c, 2);
    for n in &c.nodes {
        wait_until(T, &format!("{}: search healthy", n.name), || {
            n.status_json()
                .is_some_and(|s| s["ha"]["search_ok"] == true)
                .then_some(())
        });
    }
    // No password, old or new, in any log; the new ones not in clear in etcd's files.
    for n in &c.nodes {
        for p in [&old_su, &old_repl, &new_su, &new_repl] {
            let logged = files_containing(&n.root.join("var/log"), p);
            assert!(logged.is_empty(), "{}: a password in {logged:?}", n.name);
        }
        for p in [&new_su, &new_repl] {
            let leaked = files_containing(&n.root.join("var/opt/larder/etcd"), p);
            assert!(
                leaked.is_empty(),
                "{}: a new password in clear in {leaked:?}",
                n.name
            );
        }
    }
}
