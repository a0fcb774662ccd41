//! The second baseline: pg_auto_failover 2.0 (Debian's `pg-auto-failover-cli` and
//! `postgresql-15-auto-failover`) managing PostgreSQL 15 — a monitor on its own host and one
//! `pg_autoctl` keeper per data node, on the same test hosts as the other systems.
//!
//! Three things differ from a one-machine-per-node install and are dealt with here:
//! - every PostgreSQL (the monitor's too) listens on 5432 and puts its socket and socket lock
//!   file under /run/postgresql, which the test hosts share (they are network namespaces
//!   only). Each `pg_autoctl` therefore runs in its own mount namespace (`unshare -m`) with a
//!   private directory bind-mounted over /run/postgresql;
//! - `pg_autoctl` keys its config, state and pid files by PGDATA under the XDG directories,
//!   which are pointed into the node's directory so a run leaves nothing in postgres' home;
//! - pg_auto_failover has no per-node HTTP health endpoint that haproxy could check, so each
//!   node runs `larder-faults primary-check` ([`serve_primary_check`]) on 8008: `/primary`
//!   answers 200 only while the local PostgreSQL is out of recovery and read-write. haproxy
//!   checks it exactly as it checks Patroni's REST API.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::command::run;
use crate::error::{Error, Result};
use crate::haproxy::HealthCheck;
use crate::hosts::TestNet;
use crate::netns::Netns;
use crate::pg::Target;

/// Host number of the monitor inside the run's /24 (nodes 1..=9, VIP 100, frontends 200..).
pub const MONITOR_HOST: u8 = 150;
/// Port of the per-node primary check (the port Patroni's REST API uses, so haproxy's
/// configuration is the same for both baselines).
pub const CHECK_PORT: u16 = 8008;
/// Comment that marks the pg_hba line this harness adds for the clients.
const HBA_MARK: &str = "# larder-faults: clients, checks and the harness";

#[derive(Debug, Clone)]
pub struct PgafConfig {
    /// `pg_autoctl`.
    pub autoctl: PathBuf,
    pub pg_bin: PathBuf,
    /// The `larder-faults` binary that serves the primary check on each node.
    pub check_bin: PathBuf,
    pub label: String,
}

pub struct PgafCluster {
    pub net: TestNet,
    pub cfg: PgafConfig,
    monitor: Netns,
    children: Vec<Child>,
}

impl PgafCluster {
    /// Starts the monitor, then the first node (which becomes the primary), then the others
    /// one at a time, sets the formation's synchronous settings and waits for a healthy
    /// cluster.
    pub fn start(net: TestNet, cfg: PgafConfig) -> Result<Self> {
        for p in [&cfg.autoctl, &cfg.pg_bin.join("pg_ctl"), &cfg.check_bin] {
            if !p.exists() {
                return Err(Error::Invalid(format!(
                    "{} not found (bench/failover/setup.sh installs pg_auto_failover)",
                    p.display()
                )));
            }
        }
        let monitor = net.add_host("m", MONITOR_HOST)?;
        let mut c = PgafCluster {
            net,
            cfg,
            monitor,
            children: Vec::new(),
        };
        std::fs::create_dir_all("/run/postgresql").map_err(|e| Error::io("/run/postgresql", e))?;
        for d in
            std::iter::once(c.monitor_dir()).chain((0..c.net.nodes.len()).map(|i| c.node_dir(i)))
        {
            for sub in ["run", "xdg/config", "xdg/data", "xdg/run"] {
                let p = d.join(sub);
                std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            }
            run("chown", &["-R", "postgres:postgres", &d.to_string_lossy()])?;
            run("chmod", &["700", &d.to_string_lossy()])?;
        }

        let mdir = c.monitor_dir();
        let pgdata = mdir.join("pg").to_string_lossy().to_string();
        let mip = c.monitor.ip.clone();
        let monitor = c.monitor.clone();
        let log = c.net.dir.join("pgaf-monitor.log");
        let child = c.spawn_create(&monitor, &mdir, "monitor", &pgdata, &mip, &[], &log)?;
        c.children.push(child);
        c.wait_for("the monitor to answer", Duration::from_secs(120), |c| {
            c.monitor_nodes().is_some()
        })?;

        for i in 0..c.net.nodes.len() {
            c.start_check(i)?;
            c.create_node(i)?;
            let want = if i == 0 { "single" } else { "secondary" };
            c.wait_for(
                &format!("n{} to reach {want}", i + 1),
                Duration::from_secs(180),
                |c| c.state_of(i).is_some_and(|(r, g)| r == want && g == want),
            )?;
            // Standbys copy the primary's pg_hba.conf with their base backup; the line is
            // added on every node anyway in case a version does not.
            c.ensure_client_hba(i)?;
        }
        // Quorum commit like Larder's: one standby of the two must confirm each commit
        // (ANY 1), and both take part in the quorum (replication-quorum is true by default,
        // set explicitly so the configuration says it).
        for i in 0..c.net.nodes.len() {
            let name = format!("n{}", i + 1);
            c.autoctl_in(
                i,
                &["set", "node", "replication-quorum", "true", "--name", &name],
            )?;
        }
        c.autoctl_in(0, &["set", "formation", "number-sync-standbys", "1"])?;
        c.wait_healthy(Duration::from_secs(180))?;
        Ok(c)
    }

    fn monitor_dir(&self) -> PathBuf {
        self.net.dir.join("pgaf-m")
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.net.dir.join(format!("n{}", i + 1))
    }

    fn pgdata(&self, i: usize) -> String {
        self.node_dir(i).join("pg").to_string_lossy().to_string()
    }

    /// `unshare -m` + a private /run/postgresql + the node's XDG directories, then
    /// `pg_autoctl ARGS` as the postgres user.
    fn wrapped(&self, dir: &Path, args: &[&str]) -> Vec<String> {
        let script = r#"d="$1"; shift
mount --bind "$d/run" /run/postgresql || exit 1
exec runuser -u postgres -- env XDG_CONFIG_HOME="$d/xdg/config" XDG_DATA_HOME="$d/xdg/data" XDG_RUNTIME_DIR="$d/xdg/run" "$@""#;
        let mut v: Vec<String> = vec![
            "-m".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            dir.to_string_lossy().into(),
            self.cfg.autoctl.to_string_lossy().into(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn spawn_autoctl(&self, ns: &Netns, dir: &Path, args: &[&str], log: &Path) -> Result<Child> {
        let argv = self.wrapped(dir, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        ns.spawn_daemon("unshare", &argv, log)
    }

    /// `pg_autoctl create <what> … --run` on port 5432 of `hostname`, trusting the run's
    /// subnet and without TLS (the benchmark measures failover, not authentication).
    #[allow(clippy::too_many_arguments)]
    fn spawn_create(
        &self,
        ns: &Netns,
        dir: &Path,
        what: &str,
        pgdata: &str,
        hostname: &str,
        extra: &[&str],
        log: &Path,
    ) -> Result<Child> {
        let pgctl = self.cfg.pg_bin.join("pg_ctl").to_string_lossy().to_string();
        let mut args = vec![
            "create",
            what,
            "--pgdata",
            pgdata,
            "--pgport",
            "5432",
            "--hostname",
            hostname,
        ];
        args.extend_from_slice(extra);
        args.extend(["--auth", "trust", "--no-ssl", "--pgctl", &pgctl, "--run"]);
        self.spawn_autoctl(ns, dir, &args, log)
    }

    /// Runs a `pg_autoctl` command for node `i` (its PGDATA appended) and returns its output.
    fn autoctl_in(&self, i: usize, args: &[&str]) -> Result<String> {
        let pgdata = self.pgdata(i);
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--pgdata", &pgdata]);
        let argv = self.wrapped(&self.node_dir(i), &a);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.net.nodes[i].run("unshare", &argv)
    }

    fn monitor_uri(&self) -> String {
        format!(
            "postgres://autoctl_node@{}:5432/pg_auto_failover?sslmode=disable",
            self.monitor.ip
        )
    }

    fn create_node(&mut self, i: usize) -> Result<()> {
        let ns = self.net.nodes[i].clone();
        let pgdata = self.pgdata(i);
        let name = format!("n{}", i + 1);
        let uri = self.monitor_uri();
        let log = self.net.dir.join(format!("pgaf-n{}.log", i + 1));
        let child = self.spawn_create(
            &ns,
            &self.node_dir(i),
            "postgres",
            &pgdata,
            &ns.ip,
            &["--name", &name, "--monitor", &uri],
            &log,
        )?;
        self.children.push(child);
        Ok(())
    }

    /// `pg_autoctl run` on an already created node (after its processes were killed).
    fn run_node(&mut self, i: usize) -> Result<()> {
        let ns = self.net.nodes[i].clone();
        let pgdata = self.pgdata(i);
        let log = self.net.dir.join(format!("pgaf-n{}.log", i + 1));
        let child =
            self.spawn_autoctl(&ns, &self.node_dir(i), &["run", "--pgdata", &pgdata], &log)?;
        self.children.push(child);
        Ok(())
    }

    fn start_check(&mut self, i: usize) -> Result<()> {
        let ns = self.net.nodes[i].clone();
        let listen = format!("{}:{CHECK_PORT}", ns.ip);
        let log = self.net.dir.join(format!("primary-check-n{}.log", i + 1));
        let bin = self.cfg.check_bin.to_string_lossy().to_string();
        let child = ns.spawn_daemon(
            &bin,
            &["primary-check", "--listen", &listen, "--pg-host", &ns.ip],
            &log,
        )?;
        self.children.push(child);
        Ok(())
    }

    /// Lets the clients (frontends, the sampler's direct writes, the final reads) and the
    /// primary check connect: one `trust` line for the run's subnet, like pg_auto_failover's
    /// own `--auth trust` lines, then a reload.
    fn ensure_client_hba(&self, i: usize) -> Result<()> {
        let hba = self.node_dir(i).join("pg/pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|e| Error::io(&hba, e))?;
        if text.contains(HBA_MARK) {
            return Ok(());
        }
        let subnet = format!("{}.{}.0/24", self.net.naming.subnet_base, self.net.run);
        let line = format!("\n{HBA_MARK}\nhost all all {subnet} trust\n");
        std::fs::write(&hba, text + &line).map_err(|e| Error::io(&hba, e))?;
        let pgctl = self.cfg.pg_bin.join("pg_ctl").to_string_lossy().to_string();
        let pgdata = self.pgdata(i);
        run(
            "runuser",
            &["-u", "postgres", "--", &pgctl, "reload", "-D", &pgdata],
        )?;
        Ok(())
    }

    fn wait_for(&self, what: &str, deadline: Duration, ok: impl Fn(&Self) -> bool) -> Result<()> {
        let start = Instant::now();
        while !ok(self) {
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("{}: {what}", self.cfg.label),
                    secs: deadline.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// (name, reported state, goal state) of every node the monitor knows, read from the
    /// client host the way `pg_autoctl show state` reads it.
    fn monitor_nodes(&self) -> Option<Vec<(String, String, String)>> {
        let t = Target {
            host: self.monitor.ip.clone(),
            port: 5432,
            user: "autoctl_node".into(),
            password: String::new(),
            dbname: "pg_auto_failover".into(),
        };
        crate::inns::block_on(&self.net.client.name.clone(), move || async move {
            let c = crate::pg::connect(&t, Duration::from_secs(2)).await?;
            let rows = c
                .query(
                    "SELECT nodename, reportedstate::text, goalstate::text \
                     FROM pgautofailover.node ORDER BY nodeid",
                    &[],
                )
                .await
                .map_err(|source| Error::Postgres {
                    target: t.describe(),
                    source,
                })?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
        .ok()
    }

    fn state_of(&self, i: usize) -> Option<(String, String)> {
        let name = format!("n{}", i + 1);
        self.monitor_nodes()?
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, r, g)| (r, g))
    }
}

impl Cluster for PgafCluster {
    fn label(&self) -> String {
        self.cfg.label.clone()
    }
    fn net(&self) -> &TestNet {
        &self.net
    }
    fn net_mut(&mut self) -> &mut TestNet {
        &mut self.net
    }
    fn check(&self) -> HealthCheck {
        HealthCheck::primary_check()
    }
    fn pg_target(&self) -> Target {
        // The run's subnet is `trust` (see `ensure_client_hba`); the password is unused.
        Target::loopback("postgres", "unused")
    }
    fn start_node(&mut self, i: usize) -> Result<()> {
        // Reap the children that died with the node so they do not linger as zombies.
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        self.start_check(i)?;
        self.run_node(i)
    }
    fn start_agent(&mut self, i: usize) -> Result<()> {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        self.run_node(i)
    }
    fn lease(&self) -> Duration {
        // The monitor's `pgautofailover.node_considered_unhealthy_timeout` default: how long
        // a silent primary keeps its role.
        Duration::from_secs(20)
    }
    fn data_disk(&self, _i: usize) -> Option<crate::disk::LoopDisk> {
        None
    }
    fn switchover(&mut self, from: usize, to: Option<usize>) -> Result<()> {
        match to {
            // Promote the chosen standby; the command waits until the monitor reports the
            // new primary (or its --wait runs out).
            Some(t) => {
                let name = format!("n{}", t + 1);
                self.autoctl_in(t, &["perform", "promotion", "--name", &name])?;
            }
            None => {
                self.autoctl_in(from, &["perform", "switchover"])?;
            }
        }
        Ok(())
    }
    fn agent_pid(&self, i: usize) -> Option<i32> {
        // The keeper's supervisor: the `pg_autoctl` whose parent is not one.
        self.agent_pids(i).into_iter().find(|p| {
            crate::nemesis::ppid(*p)
                .map(crate::nemesis::comm)
                .as_deref()
                != Some("pg_autoctl")
        })
    }
    fn agent_pids(&self, i: usize) -> Vec<i32> {
        // pg_autoctl is a supervisor with one child per service (postgres controller, node
        // keeper); together they are the agent.
        self.net.nodes[i]
            .pids()
            .into_iter()
            .filter(|p| crate::nemesis::comm(*p) == "pg_autoctl")
            .collect()
    }
    fn etcd_pid(&self, _i: usize) -> Option<i32> {
        None
    }
    fn fully_healthy(&self) -> bool {
        let Some(nodes) = self.monitor_nodes() else {
            return false;
        };
        // Every node settled (reported = goal) in primary/secondary, one primary: with
        // number-sync-standbys 1 the primary reaches `primary` only once a quorum standby is
        // there, so this is also "the synchronous role is taken".
        nodes.len() == self.net.nodes.len()
            && nodes
                .iter()
                .filter(|(_, r, g)| r == "primary" && g == "primary")
                .count()
                == 1
            && nodes
                .iter()
                .all(|(_, r, g)| r == g && (r == "primary" || r == "secondary"))
    }
}

impl Drop for PgafCluster {
    fn drop(&mut self) {
        for n in self.net.nodes.iter().chain([&self.monitor]) {
            let _ = crate::nemesis::kill_host(n);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `larder-faults primary-check`: answers `GET /primary` with 200 while the PostgreSQL at
/// `target` is not in recovery and accepts writes (`transaction_read_only` off — a node being
/// demoted turns read-only before it enters recovery), 503 otherwise (also when it cannot be
/// reached within a second), and 404 for any other path. One connection per check: haproxy
/// checks every 2 s per service and frontend, so the cost is small and a check never reuses a
/// session of a PostgreSQL that was restarted in between.
pub async fn serve_primary_check(listen: &str, target: Target) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(listen, e))?;
    loop {
        let Ok((mut sock, _)) = l.accept().await else {
            continue;
        };
        let t = target.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf[n..])).await {
                    Ok(Ok(k)) if k > 0 => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if path == "/primary" || path.starts_with("/primary?") {
                match tokio::time::timeout(Duration::from_secs(1), is_primary(&t)).await {
                    Ok(Ok(true)) => (200, "primary\n"),
                    Ok(Ok(false)) => (503, "not primary\n"),
                    _ => (503, "postgresql unreachable\n"),
                }
            } else {
                (404, "not found\n")
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

async fn is_primary(t: &Target) -> Result<bool> {
    let c = crate::pg::connect(t, Duration::from_secs(1)).await?;
    let row = t
        .query_one(
            &c,
            "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
        )
        .await?;
    Ok(row.get(0))
}
