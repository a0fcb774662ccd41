//! What the benchmark and the fault schedule need from a cluster under test, so Larder and
//! the Patroni baseline go through exactly the same trials.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::haproxy::HealthCheck;
use crate::hosts::TestNet;
use crate::pg::Target;

/// What a Chef frontend is given to talk to the search API: the cluster CA it verifies the
/// node certificates with, and the HTTP Basic credentials.
#[derive(Clone)]
pub struct SearchAccess {
    pub ca_pem: String,
    pub username: String,
    pub password: String,
}

/// One entry of `etcdctl member list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    pub name: String,
    pub learner: bool,
}

pub trait Cluster {
    /// "patroni-defaults", "larder", ...
    fn label(&self) -> String;
    fn net(&self) -> &TestNet;
    fn net_mut(&mut self) -> &mut TestNet;
    /// The leader check haproxy uses (and the sampler).
    fn check(&self) -> HealthCheck;
    /// Superuser connection template; the host is replaced per use.
    fn pg_target(&self) -> Target;
    /// (Re)starts every service of node `i` after its processes were killed.
    fn start_node(&mut self, i: usize) -> Result<()>;
    /// Restarts only the HA agent of node `i` (after it was killed alone).
    fn start_agent(&mut self, i: usize) -> Result<()>;
    /// The leader lease, i.e. how long a silent leader keeps its key; faults that must
    /// outlast it ("freeze the agent longer than the lease") are sized from this.
    fn lease(&self) -> Duration;
    /// The loop-mounted filesystem holding node `i`'s database, when the cluster has one.
    fn data_disk(&self, i: usize) -> Option<crate::disk::LoopDisk>;
    /// Planned switchover from the current leader (to `to`, or any when `None`).
    fn switchover(&mut self, from: usize, to: Option<usize>) -> Result<()>;
    /// Pid of node `i`'s HA agent process (Patroni's python / `larder agent`).
    fn agent_pid(&self, i: usize) -> Option<i32>;
    /// Every process of node `i`'s HA agent (pg_autoctl is a supervisor plus one child per
    /// service); idle CPU and RSS are summed over these.
    fn agent_pids(&self, i: usize) -> Vec<i32> {
        self.agent_pid(i).into_iter().collect()
    }
    /// Pid of node `i`'s etcd.
    fn etcd_pid(&self, i: usize) -> Option<i32>;
    /// Node `i`'s etcd data directory, when the harness may delete it (`etcd-data-loss`).
    fn etcd_data_dir(&self, _i: usize) -> Option<std::path::PathBuf> {
        None
    }
    /// Node `i`'s etcd member name.
    fn etcd_member_name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }
    /// The etcd membership as node `via`'s etcd reports it.
    fn etcd_member_list(&self, _via: usize) -> Result<Vec<EtcdMember>> {
        Err(Error::Unsupported(format!(
            "{}: no etcd member list",
            self.label()
        )))
    }
    /// Whether every node is up and replicating (all replicas streaming from the leader).
    fn fully_healthy(&self) -> bool;
    /// How a frontend reaches the search API (9200), when the cluster has one.
    fn search_access(&self) -> Option<SearchAccess> {
        None
    }

    /// The clock-skew file of node `i` when its processes run under the shim of
    /// [`crate::clockskew`] (`None`: the cluster was started without it).
    fn clock_skew_file(&self, _i: usize) -> Option<std::path::PathBuf> {
        None
    }

    fn node_count(&self) -> usize {
        self.net().nodes.len()
    }

    /// Index of the node whose leader check answers 2xx; `None` if none or several do.
    fn leader(&self) -> Option<usize> {
        let check = self.check();
        let addrs: Vec<String> = self
            .net()
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.ip, check.port))
            .collect();
        let path = check.sample_path.clone();
        let statuses = crate::inns::block_on(&self.net().client.name.clone(), move || async move {
            let mut v = Vec::new();
            for a in &addrs {
                v.push(crate::http::get_status(a, &path, Duration::from_secs(1)).await);
            }
            Ok(v)
        })
        .ok()?;
        let leaders: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some_and(|c| (200..400).contains(&c)))
            .map(|(i, _)| i)
            .collect();
        if leaders.len() == 1 {
            Some(leaders[0])
        } else {
            None
        }
    }

    /// Polls until [`Cluster::fully_healthy`] and a single leader, or fails at the deadline.
    fn wait_healthy(&self, deadline: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                if self.fully_healthy() {
                    return Ok(l);
                }
            }
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("{}: one leader and every replica streaming", self.label()),
                    secs: deadline.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
