//! Larder under test: the `larder` binary started on each test host the way an operator
//! would (create-cluster on the first node, join-cluster on the others, one at a time).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::haproxy::HealthCheck;
use crate::hosts::TestNet;
use crate::pg::Target;

#[derive(Debug, Clone)]
pub struct LarderConfig {
    /// Path of the `larder` binary.
    pub bin: PathBuf,
    pub label: String,
    /// Leader lease the cluster is configured with (Larder's default unless overridden).
    pub lease: Duration,
    /// Size of a loop filesystem mounted at each node's root (0 = none).
    pub disk_mb: u64,
    /// larder.toml settings that differ from Larder's defaults, as (dotted key, TOML value),
    /// e.g. ("leaderl.leader_ttl_seconds", "2"), on top of the suite's own settings
    /// (`with_suite_settings`).
    pub overrides: Vec<(String, String)>,
    /// Run every `larder` process of a node (the CLI, the agent it starts and the services
    /// the agent starts, which inherit the environment) under the clock-skew shim, with a
    /// skew file per node (`nK.clockskew` in the run directory, no skew at first), so a
    /// clock fault can skew that node's clocks while it runs.
    pub clock_shim: bool,
}

/// Parses `KEY=VALUE` (`leaderl.leader_ttl_seconds=2`) into a [`LarderConfig::overrides`]
/// entry; the value is written into TOML as given (numbers, booleans, "quoted strings").
pub fn parse_override(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| Error::Invalid(format!("{s:?}: expected KEY=VALUE")))?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() || v.is_empty() || k.starts_with('.') || k.ends_with('.') {
        return Err(Error::Invalid(format!("{s:?}: expected KEY=VALUE")));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A node's larder.toml: identity (what `create-cluster`/`join-cluster` would generate from
/// their flags) plus the overrides, grouped into their tables.
pub fn render_config(fqdn: &str, ip: &str, overrides: &[(String, String)]) -> String {
    let mut top = format!("fqdn = \"{fqdn}\"\npublish_address = \"{ip}\"\nip_version = \"ipv4\"\n");
    let mut tables: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
    for (k, v) in overrides {
        match k.rsplit_once('.') {
            Some((table, key)) => tables.entry(table).or_default().push((key, v)),
            None => top.push_str(&format!("{k} = {v}\n")),
        }
    }
    for (table, kv) in tables {
        top.push_str(&format!("\n[{table}]\n"));
        for (k, v) in kv {
            top.push_str(&format!("{k} = {v}\n"));
        }
    }
    top
}

/// Settings every suite node needs whatever the scenario, unless an override sets them: the
/// suite's PostgreSQL clients are tokio-postgres without TLS (Patroni, the baseline, has none
/// either, and TLS set-up would skew the comparison), so client TLS is not required; its
/// samplers read `/status` from the suite's own network, which is therefore allowed.
fn with_suite_settings(net: &TestNet, overrides: &[(String, String)]) -> Vec<(String, String)> {
    let subnet = match net.client.ip.rsplit_once('.') {
        Some((prefix, _)) => format!("{prefix}.0/24"),
        None => net.client.ip.clone(),
    };
    let mut all: Vec<(String, String)> = vec![
        ("postgresql.require_ssl".into(), "false".into()),
        (
            "leaderl.status_allowed_cidrs".into(),
            format!("[\"127.0.0.0/8\", \"{subnet}\"]"),
        ),
    ];
    all.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    all.extend(overrides.iter().cloned());
    all
}

pub struct LarderCluster {
    pub net: TestNet,
    pub cfg: LarderConfig,
    superuser_password: String,
    /// The compiled shim when `cfg.clock_shim`.
    shim: Option<PathBuf>,
}

impl LarderCluster {
    pub fn root(&self, i: usize) -> PathBuf {
        self.net.dir.join(format!("n{}", i + 1))
    }

    fn secrets(&self) -> PathBuf {
        self.root(0).join("etc/larder/chef-backend-secrets.json")
    }

    fn skew_file(&self, i: usize) -> PathBuf {
        self.net.dir.join(format!("n{}.clockskew", i + 1))
    }

    /// Runs `larder --root <root of node i> ARGS` inside node i's namespace, bounded by
    /// `timeout(1)`: a CLI call that hangs (agent frozen by a fault) must fail, not stall
    /// the whole run. With the clock shim, through `env LD_PRELOAD=… LARDER_SKEW_FILE=…`.
    pub fn larder(&self, i: usize, args: &[&str]) -> Result<String> {
        let limit = match args.first() {
            Some(&"create-cluster") | Some(&"join-cluster") => "300",
            _ => "60",
        };
        let root = self.root(i).to_string_lossy().to_string();
        let bin = self.cfg.bin.to_string_lossy().to_string();
        let mut full = vec!["-k", "5", limit, bin.as_str(), "--root", root.as_str()];
        full.extend_from_slice(args);
        match &self.shim {
            Some(so) => {
                let preload = format!("LD_PRELOAD={}", so.display());
                let file = format!(
                    "{}={}",
                    crate::clockskew::FILE_ENV,
                    self.skew_file(i).display()
                );
                let mut with_env = vec![preload.as_str(), file.as_str(), "timeout"];
                with_env.extend_from_slice(&full);
                self.net.nodes[i].run("env", &with_env)
            }
            None => self.net.nodes[i].run("timeout", &full),
        }
    }

    /// The lease the cluster really runs with: `leader_ttl_seconds` of node 1's larder.toml.
    fn configured_lease(&self) -> Option<Duration> {
        let text = std::fs::read_to_string(self.root(0).join("etc/larder/larder.toml")).ok()?;
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("leader_ttl_seconds"))?;
        let secs: u64 = line.split('=').nth(1)?.trim().parse().ok()?;
        Some(Duration::from_secs(secs))
    }

    pub fn start(mut net: TestNet, cfg: LarderConfig) -> Result<Self> {
        if !cfg.bin.exists() {
            return Err(Error::Invalid(format!(
                "larder binary {} not found",
                cfg.bin.display()
            )));
        }
        for i in 0..net.nodes.len() {
            let root = net.dir.join(format!("n{}", i + 1));
            if cfg.disk_mb > 0 {
                net.add_disk(&format!("root-n{}", i + 1), &root, cfg.disk_mb)?;
            } else {
                std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
            }
        }
        let overrides = with_suite_settings(&net, &cfg.overrides);
        for (i, node) in net.nodes.iter().enumerate() {
            let dir = net.dir.join(format!("n{}/etc/larder", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let file = dir.join("larder.toml");
            let text = render_config(&format!("n{}", i + 1), &node.ip, &overrides);
            std::fs::write(&file, text).map_err(|e| Error::io(&file, e))?;
        }
        let shim = if cfg.clock_shim {
            for i in 0..net.nodes.len() {
                let f = net.dir.join(format!("n{}.clockskew", i + 1));
                crate::clockskew::Skew::default().write(&f)?;
            }
            Some(crate::clockskew::build(&net.dir.join("clockskew"))?)
        } else {
            None
        };
        let mut c = LarderCluster {
            net,
            cfg,
            superuser_password: String::new(),
            shim,
        };
        let ip1 = c.net.nodes[0].ip.clone();
        c.larder(
            0,
            &[
                "create-cluster",
                "--publish-address",
                &ip1,
                "--fqdn",
                "n1",
                "-y",
            ],
        )?;
        c.superuser_password = read_superuser_password(&c.secrets())?;
        if let Some(lease) = c.configured_lease() {
            c.cfg.lease = lease;
        }
        c.wait_leader(0, Duration::from_secs(120))?;
        let secrets = c.secrets().to_string_lossy().to_string();
        for i in 1..c.net.nodes.len() {
            let ip = c.net.nodes[i].ip.clone();
            let fqdn = format!("n{}", i + 1);
            c.larder(
                i,
                &[
                    "join-cluster",
                    &ip1,
                    "-s",
                    &secrets,
                    "--publish-address",
                    &ip,
                    "--fqdn",
                    &fqdn,
                    "-y",
                ],
            )?;
        }
        c.wait_healthy(Duration::from_secs(300))?;
        Ok(c)
    }

    fn wait_leader(&self, i: usize, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        while self.leader() != Some(i) {
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("n{} to answer /leader with 200", i + 1),
                    secs: deadline.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// Streaming replicas as the leader's PostgreSQL sees them.
    fn streaming_replicas(&self, leader: usize) -> Option<i64> {
        let t = self.pg_target().with_host(&self.net.nodes[leader].ip);
        crate::inns::block_on(&self.net.client.name.clone(), move || async move {
            let c = crate::pg::connect(&t, Duration::from_secs(2)).await?;
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .await
                .map_err(|source| Error::Postgres {
                    target: t.describe(),
                    source,
                })?;
            Ok(row.get::<_, i64>(0))
        })
        .ok()
    }
}

impl LarderCluster {
    /// `cluster-status --json` on the leader: every node online, one leader, the rest
    /// followers.
    fn cluster_view_complete(&self, leader: usize) -> bool {
        let Ok(out) = self.larder(leader, &["cluster-status", "--json"]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let leaders = nodes.iter().filter(|n| n["role"] == "leader").count();
        nodes.len() == self.net.nodes.len()
            && leaders == 1
            && nodes
                .iter()
                .all(|n| n["online"] == true && (n["role"] == "leader" || n["role"] == "follower"))
    }
}

/// postgresql.db_superuser_password from the shared secrets file.
/// `etcdctl member list -w json`: ids are 64-bit numbers (parsed as such, not as floats); a
/// member added but not started yet has no name.
fn parse_member_list(json: &str) -> Result<Vec<crate::cluster::EtcdMember>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::Invalid(format!("etcdctl member list: {e}: {json}")))?;
    Ok(v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| crate::cluster::EtcdMember {
                    id: m["ID"].as_u64().unwrap_or(0),
                    name: m["name"].as_str().unwrap_or("").to_string(),
                    learner: m["isLearner"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default())
}

pub fn read_superuser_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    v["postgresql"]["db_superuser_password"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no postgresql.db_superuser_password",
                path.display()
            ))
        })
}

impl Cluster for LarderCluster {
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
        HealthCheck::larder()
    }
    fn pg_target(&self) -> Target {
        Target::loopback("chef_pgsql", &self.superuser_password)
    }
    fn start_node(&mut self, i: usize) -> Result<()> {
        self.larder(i, &["start"]).map(|_| ())
    }
    fn start_agent(&mut self, i: usize) -> Result<()> {
        self.larder(i, &["start"]).map(|_| ())
    }
    fn lease(&self) -> Duration {
        self.cfg.lease
    }
    fn data_disk(&self, i: usize) -> Option<crate::disk::LoopDisk> {
        let mp = self.root(i);
        self.net.disks.iter().find(|d| d.mountpoint == mp).cloned()
    }
    fn switchover(&mut self, _from: usize, to: Option<usize>) -> Result<()> {
        let to = to.unwrap_or((_from + 1) % self.net.nodes.len());
        let name = format!("n{}", to + 1);
        self.larder(to, &["promote", &name]).map(|_| ())
    }
    fn agent_pid(&self, i: usize) -> Option<i32> {
        let p = self.root(i).join("run/larder/agent.pid");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
    fn etcd_pid(&self, i: usize) -> Option<i32> {
        crate::nemesis::find(&self.net.nodes[i], "etcd")
            .into_iter()
            .find(|p| crate::nemesis::comm(*p) == "etcd")
    }
    fn etcd_data_dir(&self, i: usize) -> Option<PathBuf> {
        Some(self.root(i).join("var/opt/larder/etcd"))
    }
    fn etcd_member_list(&self, via: usize) -> Result<Vec<crate::cluster::EtcdMember>> {
        let tls = self.root(via).join("etc/larder/tls");
        let f = |n: &str| tls.join(n).to_string_lossy().to_string();
        let endpoint = format!("--endpoints=https://{}:2379", self.net.nodes[via].ip);
        let (ca, cert, key) = (
            format!("--cacert={}", f("ca.crt")),
            format!("--cert={}", f("node.crt")),
            format!("--key={}", f("node.key")),
        );
        let out = self.net.nodes[via].run(
            "env",
            &[
                "ETCDCTL_API=3",
                "etcdctl",
                &endpoint,
                &ca,
                &cert,
                &key,
                "--command-timeout=3s",
                "member",
                "list",
                "-w",
                "json",
            ],
        )?;
        parse_member_list(&out)
    }
    fn search_access(&self) -> Option<crate::cluster::SearchAccess> {
        let text = std::fs::read_to_string(self.secrets()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let s = |a: &str, b: &str| v[a][b].as_str().map(str::to_string);
        Some(crate::cluster::SearchAccess {
            ca_pem: s("larder", "ca_cert_pem")?,
            username: s("elasticsearch", "auth_username")?,
            password: s("elasticsearch", "auth_password")?,
        })
    }
    fn clock_skew_file(&self, i: usize) -> Option<PathBuf> {
        self.shim.as_ref().map(|_| self.skew_file(i))
    }
    fn fully_healthy(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        // Larder's own view must agree (its CLI refuses a switchover to a node it does not
        // yet list as a streaming follower), and PostgreSQL's must show every replica.
        self.cluster_view_complete(l)
            && self.streaming_replicas(l) == Some(self.net.nodes.len() as i64 - 1)
    }
}

impl Drop for LarderCluster {
    fn drop(&mut self) {
        for n in &self.net.nodes {
            let _ = crate::nemesis::kill_host(n);
        }
        // Service logs live under each node's root; put them next to the run's other logs
        // (`nK-<service>.log`) so `TestNet::keep_logs` preserves them.
        for i in 0..self.net.nodes.len() {
            let dir = self.root(i).join("var/log/larder");
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let src = e.path().join("current");
                let name = format!("n{}-{}.log", i + 1, e.file_name().to_string_lossy());
                let _ = std::fs::copy(&src, self.net.dir.join(name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_list_ids_keep_all_64_bits() {
        let out = r#"{"header":{"cluster_id":1},"members":[{"ID":17237436991929493444,"name":"n1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},{"ID":5,"peerURLs":["https://10.0.0.2:2380"],"isLearner":true}]}"#;
        let m = parse_member_list(out).unwrap();
        assert_eq!(m[0].id, 17_237_436_991_929_493_444);
        assert_eq!((m[0].name.as_str(), m[0].learner), ("n1", false));
        assert_eq!((m[1].name.as_str(), m[1].learner), ("", true));
    }

    #[test]
    fn overrides_land_in_their_tables() {
        let o = vec![
            parse_override("leaderl.leader_ttl_seconds=2").unwrap(),
            parse_override("etcd.election_timeout = 500").unwrap(),
            parse_override("leaderl.loop_interval_ms=200").unwrap(),
        ];
        let t = render_config("n1", "10.213.5.1", &o);
        assert!(t.starts_with("fqdn = \"n1\"\npublish_address = \"10.213.5.1\"\n"));
        assert!(t.contains("\n[leaderl]\nleader_ttl_seconds = 2\nloop_interval_ms = 200\n"));
        assert!(t.contains("\n[etcd]\nelection_timeout = 500\n"));
        assert!(parse_override("nokey").is_err());
        assert!(parse_override("x=").is_err());
    }
}
