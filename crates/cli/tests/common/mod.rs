//! Test harness: real Larder nodes (real etcd 3.4 and PostgreSQL 15 under real agents) on
//! loopback addresses, each under its own temporary root. Every test uses its own /24 of
//! 127.0.0.0/8 so tests can run in parallel on the standard ports.

#![allow(dead_code)]

pub use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_larder");

pub struct Node {
    pub name: String,
    pub ip: String,
    pub root: PathBuf,
    /// The `larder` binary this node's commands run (an older build in upgrade tests).
    pub bin: PathBuf,
}

impl Node {
    pub fn larder(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("run larder")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.larder(args);
        assert!(
            o.status.success(),
            "`larder {}` on {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    pub fn status_json(&self) -> Option<serde_json::Value> {
        let o = self.larder(&["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    pub fn secrets(&self) -> PathBuf {
        self.root.join("etc/larder/chef-backend-secrets.json")
    }

    pub fn password(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.secrets()).unwrap()).unwrap();
        v["postgresql"]["db_superuser_password"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("run/larder/agent.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn pg_pid(&self) -> Option<i32> {
        std::fs::read_to_string(
            self.root
                .join("var/opt/larder/postgresql/15/data/postmaster.pid"),
        )
        .ok()
        .and_then(|p| p.lines().next().and_then(|l| l.trim().parse().ok()))
    }

    pub fn http(&self, path: &str) -> u16 {
        http_status(&format!("{}:7331", self.ip), path)
    }

    /// The secrets file as JSON.
    pub fn secrets_json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.secrets()).unwrap()).unwrap()
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.secrets_json()["larder"]["ca_cert_pem"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The search API's (user, password) from the secrets file.
    pub fn search_credentials(&self) -> (String, String) {
        let v = self.secrets_json();
        let get = |k: &str| {
            v["elasticsearch"][k]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        (get("auth_username"), get("auth_password"))
    }

    /// A request to this node's search API as a frontend makes it: HTTPS trusting the cluster
    /// CA, with the cluster's credentials. (status, body); status 0 when unreachable.
    pub fn es(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let (u, p) = self.search_credentials();
        https_json(
            &format!("{}:9200", self.ip),
            &self.ip,
            &self.ca_pem(),
            Some((&u, &p)),
            method,
            path,
            body,
        )
    }

    pub fn is_leader(&self) -> bool {
        self.http("/leader") == 200
    }

    /// SQL through psql as the superuser; None if the statement failed.
    pub fn sql(&self, sql: &str) -> Option<String> {
        self.sql_at(&self.ip, sql)
    }

    /// SQL through psql as the superuser to `host` (this node, or a proxy in front of the
    /// cluster); None if the statement failed.
    pub fn sql_at(&self, host: &str, sql: &str) -> Option<String> {
        self.try_sql_at(host, sql).ok()
    }

    /// [`Node::sql_at`] with psql's error when the statement failed.
    pub fn try_sql_at(&self, host: &str, sql: &str) -> Result<String, String> {
        let o = Command::new("/usr/lib/postgresql/15/bin/psql")
            .args([
                "-h",
                host,
                "-U",
                "chef_pgsql",
                "-d",
                "postgres",
                "-Atqc",
                sql,
            ])
            .env("PGPASSWORD", self.password())
            .env("PGCONNECT_TIMEOUT", "3")
            .env("PGOPTIONS", "-c statement_timeout=5000")
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
        }
    }

    /// SIGKILL this node's agent; fails the test if there is none to kill.
    pub fn kill_agent(&self) {
        let pid = self
            .agent_pid()
            .unwrap_or_else(|| panic!("{}: no running agent to kill", self.name));
        signal(pid, Signal::SIGKILL);
    }
}

/// Send `sig` to `pid`; fails the test at once if the signal could not be sent (a test that
/// goes on after a kill that never happened waits for a failover that cannot come).
pub fn signal<P: TryInto<i32> + Copy + std::fmt::Display>(pid: P, sig: Signal) {
    let raw = pid
        .try_into()
        .unwrap_or_else(|_| panic!("pid {pid} is out of range"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig)
        .unwrap_or_else(|e| panic!("kill -{sig} {pid} failed: {e}"));
}

/// Make sure `pid` is dead: SIGKILL it (it may already be gone — a PostgreSQL dies with its
/// agent) and fail the test unless it has disappeared within 5 s.
pub fn ensure_dead(pid: i32) {
    let p = nix::unistd::Pid::from_raw(pid);
    match nix::sys::signal::kill(p, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => panic!("kill -9 {pid} failed: {e}"),
    }
    wait_until(
        Duration::from_secs(5),
        &format!("pid {pid} to exit"),
        || (nix::sys::signal::kill(p, None) == Err(nix::errno::Errno::ESRCH)).then_some(()),
    );
}

/// HTTP request with a JSON body; returns (status, body). Status 0 when unreachable.
pub fn http_json(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    split_response(&out)
}

/// (status, body) of a raw HTTP/1.0 response; status 0 when there is none.
fn split_response(out: &str) -> (u16, String) {
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A TLS client configuration trusting only `ca_pem`, without a client certificate.
pub fn tls_client_config(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// [`http_json`] over TLS: the server must present a certificate for `server_name` issued by
/// `ca_pem`; `auth` adds HTTP Basic credentials. Status 0 when unreachable or the handshake
/// failed.
pub fn https_json(
    addr: &str,
    server_name: &str,
    ca_pem: &str,
    auth: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let cfg = tls_client_config(ca_pem);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let Ok(tcp) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return (0, String::new());
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((u, p)) = auth {
        head.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64_encode(&format!("{u}:{p}"))
        ));
    }
    head.push_str("\r\n");
    if s.write_all(format!("{head}{body}").as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    split_response(&String::from_utf8_lossy(&raw))
}

/// Standard base64 (for a Basic header; the tests need nothing more).
pub fn base64_encode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (*x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Minimal HTTP GET returning the status code (0 when unreachable).
pub fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
    else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return 0;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// `subnet` picks 127.0.<subnet>.0/24 so parallel tests never share an address.
    pub fn nodes_only(subnet: u8, n: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("larder-it-")
            .tempdir()
            .unwrap();
        let nodes = (1..=n)
            .map(|i| Node {
                name: format!("n{i}"),
                ip: format!("127.0.{subnet}.{}", i + 1),
                root: dir.path().join(format!("n{i}")),
                bin: PathBuf::from(BIN),
            })
            .collect();
        Cluster { dir, nodes }
    }

    pub fn create(subnet: u8) -> Cluster {
        let c = Cluster::nodes_only(subnet, 1);
        c.create_first();
        c
    }

    pub fn create_first(&self) {
        let n = &self.nodes[0];
        n.ok(&[
            "create-cluster",
            "--publish-address",
            &n.ip,
            "--fqdn",
            &n.name,
            "-y",
        ]);
    }

    pub fn join(&self, i: usize) {
        let n = &self.nodes[i];
        let s = self.nodes[0].secrets().display().to_string();
        n.ok(&[
            "join-cluster",
            &self.nodes[0].ip,
            "-s",
            &s,
            "--publish-address",
            &n.ip,
            "--fqdn",
            &n.name,
            "-y",
        ]);
    }

    /// Like [`Cluster::with_nodes`], each node's larder.toml holding its identity plus `extra`
    /// (TOML tables) before it is created or joined.
    pub fn with_config(subnet: u8, n: usize, extra: &str) -> Cluster {
        let c = Cluster::nodes_only(subnet, n);
        for node in &c.nodes {
            let dir = node.root.join("etc/larder");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("larder.toml"),
                format!(
                    "fqdn = \"{}\"\npublish_address = \"{}\"\n{extra}",
                    node.name, node.ip
                ),
            )
            .unwrap();
        }
        c.formed()
    }

    pub fn with_nodes(subnet: u8, n: usize) -> Cluster {
        Cluster::nodes_only(subnet, n).formed()
    }

    /// The first node creates the cluster, the others join it.
    fn formed(self) -> Cluster {
        self.create_first();
        for i in 1..self.nodes.len() {
            self.join(i);
        }
        self
    }

    pub fn leader(&self) -> Option<&Node> {
        let l: Vec<&Node> = self.nodes.iter().filter(|n| n.is_leader()).collect();
        assert!(
            l.len() <= 1,
            "two nodes answer /leader 200: {:?}",
            l.iter().map(|n| &n.name).collect::<Vec<_>>()
        );
        l.into_iter().next()
    }

    /// Wait until exactly one node (optionally other than `not`) is the writable leader.
    pub fn wait_leader(&self, not: Option<&str>, timeout: Duration) -> &Node {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                if not != Some(l.name.as_str()) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // LARDER_TEST_KEEP=1 keeps a failed test's nodes (logs, data) for inspection.
        if std::env::var_os("LARDER_TEST_KEEP").is_some() && std::thread::panicking() {
            eprintln!("keeping test cluster in {}", self.dir.path().display());
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = d.keep();
        }
        for n in &self.nodes {
            if n.agent_pid().is_some() {
                let _ = n.larder(&["uninstall"]);
            }
        }
        // Safety net: nothing started under this test's root may outlive the test.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.path().display().to_string()])
            .status();
    }
}

/// Poll `f` until it returns Some, or fail after `timeout` naming `what`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tree_snapshot(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<(PathBuf, u64)>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((path, len));
                }
            }
        }
    }
    walk(root, &mut out);
    out.sort();
    out
}

/// haproxy in front of a cluster's PostgreSQL, configured as a Chef frontend configures it
/// (`larder_faults::haproxy::render_config`), listening on `bind`:5432.
pub struct Haproxy {
    child: std::process::Child,
}

impl Haproxy {
    pub fn start(dir: &Path, bind: &str, nodes: &[Node]) -> Haproxy {
        Haproxy::start_ports(dir, bind, nodes, &[5432])
    }

    /// haproxy for the given Chef frontend ports (5432 and/or 9200), as a frontend runs it.
    pub fn start_ports(dir: &Path, bind: &str, nodes: &[Node], ports: &[u16]) -> Haproxy {
        use larder_faults::haproxy::{chef_services, render_config_on, HealthCheck};
        let servers: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.ip.clone()))
            .collect();
        let pg: Vec<_> = chef_services()
            .into_iter()
            .filter(|s| ports.contains(&s.port))
            .collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            render_config_on(bind, &servers, &HealthCheck::larder(), &pg),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        wait_until(Duration::from_secs(10), "haproxy to listen", || {
            std::net::TcpStream::connect((bind, ports[0]))
                .ok()
                .map(|_| ())
        });
        Haproxy { child }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// haproxy starts with every server up until its first checks: wait until the one at `proxy`
/// routes only to the writable leader (several connections in a row, as it balances across
/// servers). `n` is any node (its password is the cluster's).
pub fn wait_routed_to_leader(n: &Node, proxy: &str) {
    let mut in_a_row = 0;
    wait_until(
        Duration::from_secs(120),
        "haproxy routing to the leader only",
        || {
            let writable = n.sql_at(proxy, "SELECT NOT pg_is_in_recovery()");
            in_a_row = if writable.as_deref() == Some("t") {
                in_a_row + 1
            } else {
                0
            };
            (in_a_row >= 6).then_some(())
        },
    );
}

/// Wait until `want` nodes report PostgreSQL streaming from a leader.
pub fn wait_streaming(c: &Cluster, want: usize) {
    wait_until(Duration::from_secs(60), "followers streaming", || {
        (c.nodes
            .iter()
            .filter(|n| {
                n.status_json()
                    .is_some_and(|s| s["ha"]["postgresql"]["state"] == "streaming")
            })
            .count()
            == want)
            .then_some(())
    });
}

/// Rows in the tests' `acked` table on `n`.
pub fn count(n: &Node) -> Option<u64> {
    n.sql("SELECT count(*) FROM acked")
        .and_then(|s| s.parse().ok())
}

/// The ids in the tests' `acked` table on `n`.
pub fn ids(n: &Node) -> Option<std::collections::BTreeSet<u32>> {
    n.sql("SELECT id FROM acked")
        .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
}
