//! The baseline: Patroni 4 managing PostgreSQL 15, with etcd 3.4 (v3 API through its JSON
//! gateway), one of each per test host — the setup people pick instead of Larder.
//!
//! PostgreSQL refuses to run as root, so Patroni runs as the `postgres` OS user (`runuser`)
//! and owns its node directory; etcd runs as root.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::command::run;
use crate::error::{Error, Result};
use crate::haproxy::HealthCheck;
use crate::hosts::TestNet;
use crate::pg::Target;

/// Patroni's timing knobs (bootstrap DCS settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Timing {
    /// Patroni's own defaults.
    pub const DEFAULTS: Timing = Timing {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
    };
    /// The most aggressive settings Patroni's validator accepts (ttl has a floor of 20 s).
    pub const AGGRESSIVE: Timing = Timing {
        ttl: 20,
        loop_wait: 1,
        retry_timeout: 3,
    };
}

#[derive(Debug, Clone)]
pub struct PatroniConfig {
    /// Directory of the venv with `patroni` and `patronictl`.
    pub venv: PathBuf,
    pub pg_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub timing: Timing,
    pub label: String,
    /// Size of the loop filesystem holding each node's PostgreSQL data (0 = none).
    pub disk_mb: u64,
}

pub struct PatroniCluster {
    pub net: TestNet,
    pub cfg: PatroniConfig,
    superuser_password: String,
    children: Vec<Child>,
}

fn random_secret() -> String {
    use rand::RngExt;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

impl PatroniCluster {
    /// Starts etcd on every node, then Patroni on every node, and waits for a healthy cluster.
    pub fn start(net: TestNet, cfg: PatroniConfig) -> Result<Self> {
        for p in [
            cfg.venv.join("bin/patroni"),
            cfg.pg_bin.join("postgres"),
            cfg.etcd_bin.clone(),
        ] {
            if !p.exists() {
                return Err(Error::Invalid(format!("{} not found", p.display())));
            }
        }
        let mut c = PatroniCluster {
            net,
            cfg,
            superuser_password: random_secret(),
            children: Vec::new(),
        };
        let replication_password = random_secret();
        for i in 0..c.net.nodes.len() {
            let dir = c.node_dir(i);
            std::fs::create_dir_all(dir.join("sock")).map_err(|e| Error::io(&dir, e))?;
            if c.cfg.disk_mb > 0 {
                let name = format!("pgdisk-n{}", i + 1);
                c.net.add_disk(&name, &dir.join("pg"), c.cfg.disk_mb)?;
            } else {
                std::fs::create_dir_all(dir.join("pg")).map_err(|e| Error::io(&dir, e))?;
            }
            let yml = c.render_config(i, &replication_password);
            let path = dir.join("patroni.yml");
            std::fs::write(&path, yml).map_err(|e| Error::io(&path, e))?;
            run(
                "chown",
                &["-R", "postgres:postgres", &dir.to_string_lossy()],
            )?;
            run("chmod", &["700", &dir.to_string_lossy()])?;
        }
        for i in 0..c.net.nodes.len() {
            c.start_etcd(i)?;
        }
        for i in 0..c.net.nodes.len() {
            c.start_patroni(i)?;
        }
        c.wait_healthy(Duration::from_secs(180))?;
        Ok(c)
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.net.dir.join(format!("n{}", i + 1))
    }

    fn etcd_dir(&self, i: usize) -> PathBuf {
        // Outside the postgres-owned node dir: etcd runs as root.
        self.net.dir.join(format!("etcd-n{}", i + 1))
    }

    fn start_etcd(&mut self, i: usize) -> Result<()> {
        let ns = self.net.nodes[i].clone();
        let initial: Vec<String> = self
            .net
            .nodes
            .iter()
            .enumerate()
            .map(|(k, n)| format!("n{}=http://{}:2380", k + 1, n.ip))
            .collect();
        let dir = self.etcd_dir(i).to_string_lossy().to_string();
        let log = self.net.dir.join(format!("etcd-n{}.log", i + 1));
        let name = format!("n{}", i + 1);
        let client_urls = format!("http://{}:2379,http://127.0.0.1:2379", ns.ip);
        let adv_client = format!("http://{}:2379", ns.ip);
        let peer = format!("http://{}:2380", ns.ip);
        let initial = initial.join(",");
        let token = format!("lf{}", self.net.run);
        let args = [
            "--name",
            &name,
            "--data-dir",
            &dir,
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &adv_client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &token,
            // Tuned like the etcd Larder runs (crates/agent/src/etcd.rs, config defaults): a
            // 100 ms heartbeat and 500 ms election timeout instead of etcd's 100/1000, and
            // pre-vote, so a comparison of failover times does not hinge on etcd's defaults.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "500",
            "--pre-vote=true",
        ];
        let child = ns.spawn_daemon(&self.cfg.etcd_bin.to_string_lossy(), &args, &log)?;
        self.children.push(child);
        Ok(())
    }

    fn start_patroni(&mut self, i: usize) -> Result<()> {
        let ns = self.net.nodes[i].clone();
        let yml = self.node_dir(i).join("patroni.yml");
        let log = self.net.dir.join(format!("patroni-n{}.log", i + 1));
        let bin = self
            .cfg
            .venv
            .join("bin/patroni")
            .to_string_lossy()
            .to_string();
        let yml = yml.to_string_lossy().to_string();
        let args = ["-u", "postgres", "--", bin.as_str(), yml.as_str()];
        let child = ns.spawn_daemon("runuser", &args, &log)?;
        self.children.push(child);
        Ok(())
    }

    fn render_config(&self, i: usize, replication_password: &str) -> String {
        let n = &self.net.nodes[i];
        let dir = self.node_dir(i);
        let hosts: Vec<String> = self
            .net
            .nodes
            .iter()
            .map(|n| format!("{}:2379", n.ip))
            .collect();
        let subnet = format!("{}.{}.0/24", crate::hosts::SUBNET_BASE, self.net.run);
        let t = self.cfg.timing;
        // Timing keys are written only when they differ from Patroni's defaults, so the
        // "defaults" run really runs on Patroni's built-in values.
        let timing = if t == Timing::DEFAULTS {
            String::new()
        } else {
            format!(
                "    ttl: {}\n    loop_wait: {}\n    retry_timeout: {}\n",
                t.ttl, t.loop_wait, t.retry_timeout
            )
        };
        format!(
            r#"scope: lf{run}
name: n{k}
log:
  level: INFO
restapi:
  listen: {ip}:8008
  connect_address: {ip}:8008
etcd3:
  hosts: [{hosts}]
bootstrap:
  dcs:
{timing}    synchronous_mode: quorum
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        # Larder's value (crates/core/src/pgconf.rs): a standby whose upstream vanished retries
        # WAL retrieval every 0.5 s instead of PostgreSQL's 5 s, which shortens how long a
        # replica takes to follow a new primary.
        wal_retrieve_retry_interval: 500ms
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: {ip},127.0.0.1:5432
  connect_address: {ip}:5432
  data_dir: {dir}/pg/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: "{su}"
    replication:
      username: replicator
      password: "{rp}"
  parameters:
    unix_socket_directories: "{dir}/sock"
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host all all {subnet} scram-sha-256
    - host replication replicator {subnet} scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
"#,
            run = self.net.run,
            k = i + 1,
            ip = n.ip,
            hosts = hosts.join(", "),
            dir = dir.display(),
            bin = self.cfg.pg_bin.display(),
            su = self.superuser_password,
            rp = replication_password,
        )
    }

    fn rest_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let addr = format!("{}:8008", self.net.nodes[i].ip);
        let path = path.to_string();
        crate::inns::block_on(&self.net.client.name.clone(), move || async move {
            Ok(crate::http::get(&addr, &path, Duration::from_secs(2)).await)
        })
        .ok()
        .flatten()
    }
}

impl Cluster for PatroniCluster {
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
        HealthCheck::patroni()
    }
    fn pg_target(&self) -> Target {
        Target::loopback("postgres", &self.superuser_password)
    }
    fn start_node(&mut self, i: usize) -> Result<()> {
        // Reap the children that died with the node so they do not linger as zombies.
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        self.start_etcd(i)?;
        self.start_patroni(i)
    }
    fn start_agent(&mut self, i: usize) -> Result<()> {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        self.start_patroni(i)
    }
    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.timing.ttl as u64)
    }
    fn data_disk(&self, i: usize) -> Option<crate::disk::LoopDisk> {
        let mp = self.node_dir(i).join("pg");
        self.net.disks.iter().find(|d| d.mountpoint == mp).cloned()
    }
    fn switchover(&mut self, from: usize, to: Option<usize>) -> Result<()> {
        let ns = &self.net.nodes[from];
        let yml = self.node_dir(from).join("patroni.yml");
        let ctl = self.cfg.venv.join("bin/patronictl");
        let leader = format!("n{}", from + 1);
        let mut args: Vec<String> = vec![
            ctl.to_string_lossy().into(),
            "-c".into(),
            yml.to_string_lossy().into(),
            "switchover".into(),
            "--leader".into(),
            leader,
            "--force".into(),
        ];
        if let Some(t) = to {
            args.push("--candidate".into());
            args.push(format!("n{}", t + 1));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.run(argv[0], &argv[1..])?;
        Ok(())
    }
    fn agent_pid(&self, i: usize) -> Option<i32> {
        crate::nemesis::find(&self.net.nodes[i], "bin/patroni ")
            .into_iter()
            .find(|p| crate::nemesis::comm(*p) != "runuser")
    }
    fn etcd_pid(&self, i: usize) -> Option<i32> {
        crate::nemesis::find(&self.net.nodes[i], "--initial-cluster")
            .into_iter()
            .next()
    }
    fn fully_healthy(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some((200, body)) = self.rest_get(l, "/cluster") else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let members = v["members"].as_array().cloned().unwrap_or_default();
        members.len() == self.net.nodes.len()
            && members.iter().all(|m| {
                let role = m["role"].as_str().unwrap_or("");
                let state = m["state"].as_str().unwrap_or("");
                // A replica counts only once it holds the synchronous role too (quorum mode
                // names it `quorum_standby`): streaming alone is reached first, and a trial
                // started then finds `patronictl switchover` refusing (or silently ignoring)
                // a candidate that is not yet eligible — the void trials of earlier runs.
                match role {
                    "leader" => state == "running",
                    "quorum_standby" | "sync_standby" => state == "streaming",
                    _ => false,
                }
            })
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Kill the hosts' processes first (TestNet's teardown does it too, but the children
        // must be reaped here, by their parent).
        for n in &self.net.nodes {
            let _ = crate::nemesis::kill_host(n);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
