//! Fault schedules: every fault of issue 5 §2 as an inject/heal pair, a seeded random plan
//! for long runs and a fixed plan that visits each fault once (CI).

use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::checker;
use crate::clients::Clients;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::{blkio, clockskew, nemesis, netem, partition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillAgent,
    KillPostgres,
    KillNode,
    FreezeAgent,
    FreezeNode,
    FreezeEtcdOne,
    FreezeEtcdTwo,
    PartitionLeader,
    OneWayPartition,
    IsolateFollower,
    DiskFull,
    SlowDiskLeader,
    RestartAll,
    BackToBackFailovers,
    Netem,
    LossyLink,
    RestartEtcd,
    EtcdDataLoss,
    ClockJumpLeader,
    ClockDriftFollower,
    ClockDriftLeader,
}

impl Fault {
    /// Short name for `--skip`.
    pub fn id(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill-agent",
            Fault::KillPostgres => "kill-postgres",
            Fault::KillNode => "kill-node",
            Fault::FreezeAgent => "freeze-agent",
            Fault::FreezeNode => "freeze-node",
            Fault::FreezeEtcdOne => "freeze-etcd-one",
            Fault::FreezeEtcdTwo => "freeze-etcd-two",
            Fault::PartitionLeader => "partition-leader",
            Fault::OneWayPartition => "one-way-partition",
            Fault::IsolateFollower => "isolate-follower",
            Fault::DiskFull => "disk-full",
            Fault::SlowDiskLeader => "slow-disk-leader",
            Fault::RestartAll => "restart-all",
            Fault::BackToBackFailovers => "back-to-back-switchovers",
            Fault::Netem => "netem",
            Fault::LossyLink => "lossy-link",
            Fault::RestartEtcd => "restart-etcd",
            Fault::EtcdDataLoss => "etcd-data-loss",
            Fault::ClockJumpLeader => "clock-jump-leader",
            Fault::ClockDriftFollower => "clock-drift-follower",
            Fault::ClockDriftLeader => "clock-drift-leader",
        }
    }

    /// The fault named `id` (see [`Fault::id`]); the error lists the valid names.
    pub fn from_id(id: &str) -> std::result::Result<Fault, String> {
        Fault::ALL
            .iter()
            .copied()
            .find(|f| f.id() == id)
            .ok_or_else(|| {
                format!(
                    "unknown fault {id:?}; faults: {}",
                    Fault::ALL.map(|f| f.id()).join(", ")
                )
            })
    }

    pub const ALL: [Fault; 21] = [
        Fault::KillAgent,
        Fault::KillPostgres,
        Fault::KillNode,
        Fault::FreezeAgent,
        Fault::FreezeNode,
        Fault::FreezeEtcdOne,
        Fault::FreezeEtcdTwo,
        Fault::PartitionLeader,
        Fault::OneWayPartition,
        Fault::IsolateFollower,
        Fault::DiskFull,
        Fault::SlowDiskLeader,
        Fault::RestartAll,
        Fault::BackToBackFailovers,
        Fault::Netem,
        Fault::LossyLink,
        Fault::RestartEtcd,
        Fault::EtcdDataLoss,
        Fault::ClockJumpLeader,
        Fault::ClockDriftFollower,
        Fault::ClockDriftLeader,
    ];

    /// Faults that skew a node's clocks (they need the nodes started under the shim).
    pub fn skews_clocks(self) -> bool {
        matches!(
            self,
            Fault::ClockJumpLeader | Fault::ClockDriftFollower | Fault::ClockDriftLeader
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill -9 leader agent",
            Fault::KillPostgres => "kill -9 leader PostgreSQL",
            Fault::KillNode => "kill -9 leader node",
            Fault::FreezeAgent => "SIGSTOP leader agent > lease",
            Fault::FreezeNode => "SIGSTOP whole leader node",
            Fault::FreezeEtcdOne => "SIGSTOP etcd on leader",
            Fault::FreezeEtcdTwo => "SIGSTOP etcd on two nodes",
            Fault::PartitionLeader => "partition leader | majority",
            Fault::OneWayPartition => "one-way: leader -/-> others",
            Fault::IsolateFollower => "isolate a follower",
            Fault::DiskFull => "fill leader data disk",
            Fault::SlowDiskLeader => "slow leader disk (throttled loop)",
            Fault::RestartAll => "kill and restart all nodes",
            Fault::BackToBackFailovers => "3 back-to-back switchovers",
            Fault::Netem => "netem 50ms±50ms all links",
            Fault::LossyLink => "15% loss + reordering, leader link",
            Fault::RestartEtcd => "kill -9 every etcd member",
            Fault::EtcdDataLoss => "etcd data dir lost on n1 (founder)",
            Fault::ClockJumpLeader => "leader wall clock +30s, back, -30s",
            Fault::ClockDriftFollower => "follower clocks drift +1000ppm",
            Fault::ClockDriftLeader => "leader clocks drift -1000ppm",
        }
    }

    pub fn expect(self) -> Expect {
        match self {
            Fault::KillAgent
            | Fault::KillPostgres
            | Fault::KillNode
            | Fault::FreezeAgent
            | Fault::FreezeNode
            | Fault::FreezeEtcdOne
            | Fault::PartitionLeader
            | Fault::OneWayPartition
            | Fault::DiskFull
            | Fault::SlowDiskLeader
            | Fault::LossyLink => Expect::Bounded,
            Fault::IsolateFollower
            | Fault::Netem
            | Fault::ClockJumpLeader
            | Fault::ClockDriftFollower
            | Fault::ClockDriftLeader
            | Fault::EtcdDataLoss => Expect::NoLeaderChange,
            Fault::FreezeEtcdTwo
            | Fault::RestartAll
            | Fault::BackToBackFailovers
            | Fault::RestartEtcd => Expect::Unbounded,
        }
    }
}

/// What a fault may do to write availability, judged while it is still in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It takes the leader (or its PostgreSQL, its etcd member, its disk, its links) away:
    /// writes through haproxy must be acknowledged again — by a new leader, or by the old one
    /// if it could keep its lease — within [`availability_bound`], *before* the heal.
    Bounded,
    /// It must not move leadership (a follower's loss, delay within the lease budget): every
    /// write acknowledged while it holds comes from the leader of before, which still leads.
    NoLeaderChange,
    /// It takes away what any leader needs (etcd quorum; every node at once) or is a series of
    /// hand-overs each with its own deadline: only recovery after the heal is bounded.
    Unbounded,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Bounded => "bounded gap",
            Expect::NoLeaderChange => "no leader change",
            Expect::Unbounded => "recovers after heal",
        }
    }
}

/// Time for the election and promotion beyond the lease, with room for a loaded CI machine:
/// the agent's loop notices the expired key within one interval (100 ms), etcd commits the
/// new key, PostgreSQL promotes (≤ 1 s measured); the rest is margin.
pub const ELECTION_ALLOWANCE: Duration = Duration::from_secs(2);

/// The longest write gap a client behind haproxy may see when the leader is removed:
/// `lease + 2 × check interval + ELECTION_ALLOWANCE`. The lease runs out (the old leader is
/// fenced at or before it), a new leader is elected and promoted, and haproxy notices within
/// one check interval that the new leader passes (`rise 1`) — two intervals because a check
/// that started just before the promotion answers the old state (a held Larder check wakes
/// on the change, Patroni's does not).
pub fn availability_bound(lease: Duration, check_interval: Duration) -> Duration {
    lease + 2 * check_interval + ELECTION_ALLOWANCE
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Fixed list of faults (CI) ...
    pub fixed: Option<Vec<Fault>>,
    /// Faults left out on purpose (`--skip`, local runs only): never injected, listed in the
    /// summary. Any other fault that cannot run fails the run.
    pub skip: Vec<Fault>,
    /// ... or random picks until this much time has passed.
    pub duration: Duration,
    pub seed: u64,
}

impl Plan {
    pub fn random(seed: u64, duration: Duration) -> Plan {
        Plan {
            fixed: None,
            skip: vec![],
            duration,
            seed,
        }
    }

    pub fn every_fault_once() -> Plan {
        Plan {
            fixed: Some(Fault::ALL.to_vec()),
            skip: vec![],
            duration: Duration::ZERO,
            seed: 5,
        }
    }

    /// Whether the plan may inject a clock fault (the nodes must then run under the shim).
    pub fn may_skew_clocks(&self) -> bool {
        match &self.fixed {
            Some(list) => list.iter().any(|f| f.skews_clocks()),
            None => Fault::ALL
                .iter()
                .any(|f| f.skews_clocks() && !self.skip.contains(f)),
        }
    }

    /// Leave `skip` out of the plan.
    pub fn skipping(mut self, skip: Vec<Fault>) -> Plan {
        if let Some(list) = &mut self.fixed {
            list.retain(|f| !skip.contains(f));
        }
        self.skip = skip;
        self
    }
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub fault: Fault,
    pub target: String,
    /// "done", or why it was skipped.
    pub status: String,
    pub hold_s: f64,
    /// Longest gap between acknowledged writes from injection to recovery.
    pub gap_s: f64,
    /// Seconds from heal until writes were acknowledged again.
    pub recovered_after_heal_s: f64,
    pub leader_after: Option<String>,
    /// What the fault may do to availability, and the verdict: `None` = met.
    pub expect: Expect,
    /// Longest write gap while the fault was in place (from injection to the heal; for an
    /// instantaneous fault, to the first write after it).
    pub in_place_gap_s: f64,
    pub failure: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Maximum time for the cluster to become fully healthy before the next fault.
    pub heal_deadline: Duration,
    /// A leader must accept writes again within this bound after healing (issue 5 §3).
    pub leader_bound: Duration,
    /// Extra time a "longer than the lease" fault is held beyond the lease.
    pub beyond_lease: Duration,
    /// The frontend's health-check interval (haproxy `inter`), for [`availability_bound`].
    pub check_interval: Duration,
}

/// What must be undone when a fault is healed.
enum Active {
    Nothing,
    Thaw(Vec<i32>),
    StartAgent(usize),
    StartNodes(Vec<usize>),
    Heal,
    FreeDisk(crate::disk::LoopDisk),
    Unthrottle(blkio::Throttle, blkio::Serviced),
    ClearNetem(netem::Impaired),
    /// Ends a clock fault on the node whose skew file this is (see [`clockskew::Skew::ended`]).
    EndSkew(std::path::PathBuf, clockskew::Skew),
    /// Node `node` lost its etcd data; its agent must replace the member (`old_id`): waits,
    /// asking `via`'s etcd, until a voter of that name with a new id runs there.
    AwaitEtcdMember {
        node: usize,
        via: usize,
        old_id: u64,
    },
}

/// How long an agent may take to replace a lost etcd member (remove, re-add as learner, start
/// empty, catch up from a snapshot, promote): seconds on a small cluster; the bound only
/// catches a flow that never finishes.
const ETCD_REPLACE_DEADLINE: Duration = Duration::from_secs(90);

/// The slow leader disk: 30 write IOPS and 2 MiB/s (reads alike), held 20 s like the lossy
/// link. A commit costs at least one synchronous WAL write (PostgreSQL) and every etcd
/// proposal one WAL sync on each member, so the leader host gets ~30 syncs a second for
/// everything — PostgreSQL's group commit of three writers and the probes, the local etcd
/// member's renewals, checkpoints, the search index. Measured (docs/faults.md): the node used
/// the whole budget, three writers got ~5 commits/s at a median of 0.6 s instead of > 100/s at
/// ~10 ms. That is a disk at the edge of saturation (a cloud volume out of burst credits
/// throttled to its baseline, a rebuilding RAID, a drive retrying), clearly slow but not dead;
/// a stalled disk is closer to the freeze faults.
const SLOW_DISK: blkio::Limits = blkio::Limits {
    read_iops: 30,
    write_iops: 30,
    read_bps: 2 * 1024 * 1024,
    write_bps: 2 * 1024 * 1024,
};
const SLOW_DISK_HOLD: Duration = Duration::from_secs(20);
/// Synchronous 8 KiB writes of the probe that proves the throttle bites: at 30 IOPS they take
/// ≥ 0.8 s alone (~5 s measured, sharing the budget with the node), against 0.07–0.25 s
/// unthrottled on these machines.
const SLOW_DISK_PROBE_WRITES: u32 = 24;

/// How long each step of a clock fault lasts.
const CLOCK_JUMP_STEP: Duration = Duration::from_secs(10);
const CLOCK_DRIFT_HOLD: Duration = Duration::from_secs(30);
/// 1000 ppm = 1 ms/s: ten times what an undisciplined quartz clock is allowed (±100 ppm) and
/// twice what `adjtimex` may slew (500 ppm), i.e. an extreme but physically possible rate.
/// A follower runs fast; the leader runs slow, the direction that matters for safety: a slow
/// monotonic clock reaches the leader's fencing deadline late, after etcd (on its own
/// clock) may already have expired the lease.
const CLOCK_DRIFT_PPM: i64 = 1_000;

/// The skew file of node `i`, after checking that its running agent really is under the shim
/// (the environment it was started with names the file): a clock fault on an unshimmed agent
/// would pass without having happened.
fn skew_target(cluster: &dyn Cluster, i: usize) -> Result<std::path::PathBuf> {
    let file = cluster.clock_skew_file(i).ok_or_else(|| {
        Error::Unsupported("the cluster was started without the clock-skew shim".into())
    })?;
    let pid = cluster
        .agent_pid(i)
        .ok_or_else(|| Error::Invalid(format!("no agent pid on n{}", i + 1)))?;
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let want = format!("{}={}", clockskew::FILE_ENV, file.display());
    let shimmed = env.split(|b| *b == 0).any(|v| v == want.as_bytes())
        && env
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"LD_PRELOAD="));
    if !shimmed {
        return Err(Error::Invalid(format!(
            "the agent of n{} (pid {pid}) does not run under the clock-skew shim",
            i + 1
        )));
    }
    Ok(file)
}

/// How far node `i`'s PostgreSQL (a child of its agent, so under the same shim) reads its
/// wall clock from the suite's, in ms: the proof that a jump reached the node's processes.
fn pg_clock_offset_ms(cluster: &dyn Cluster, clients: &Clients, i: usize) -> Result<i64> {
    let t = cluster.pg_target().with_host(&cluster.net().nodes[i].ip);
    let ns = clients.client_ns().to_string();
    crate::inns::block_on(&ns, move || async move {
        let c = crate::pg::connect(&t, Duration::from_secs(3)).await?;
        let before = clockskew::unix_ms_now();
        let row = t
            .query_one(
                &c,
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            )
            .await?;
        let after = clockskew::unix_ms_now();
        Ok(row.get::<_, i64>(0) - (before + after) / 2)
    })
}

/// Steps node `i`'s wall clock by `offset_ms` and checks its PostgreSQL sees the step.
fn jump_and_check(
    cluster: &dyn Cluster,
    clients: &Clients,
    file: &std::path::Path,
    i: usize,
    offset_ms: i64,
) -> Result<()> {
    let node = format!("n{}", i + 1);
    set_skew(&clients.rec, file, &node, clockskew::Skew::jump(offset_ms))?;
    // The shim re-reads its file at most every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let seen = pg_clock_offset_ms(cluster, clients, i)?;
    clients.rec.event(
        "note",
        format!("PostgreSQL on {node} reads its wall clock {seen:+} ms off"),
    );
    if (seen - offset_ms).abs() > 1_000 {
        return Err(Error::Invalid(format!(
            "{node}'s clock was set {offset_ms:+} ms but its PostgreSQL reads {seen:+} ms"
        )));
    }
    Ok(())
}

fn set_skew(
    rec: &crate::history::Recorder,
    file: &std::path::Path,
    node: &str,
    skew: clockskew::Skew,
) -> Result<()> {
    skew.write(file)?;
    rec.event("note", format!("clock of {node}: {}", skew.describe()));
    Ok(())
}

/// Runs the probe inside the throttle and fails unless it was slowed as the limit says and the
/// throttle accounted its writes: a throttle that does not bite would pass the fault without
/// it having happened. Returns the probe's time and the counters after it.
fn prove_throttle(
    t: &blkio::Throttle,
    dir: &std::path::Path,
    base: Duration,
) -> Result<(Duration, blkio::Serviced)> {
    let before = t.serviced()?;
    let took = t.probe(dir, SLOW_DISK_PROBE_WRITES)?;
    let after = t.serviced()?;
    let seen = after.since(before).writes;
    // Half the time the limit implies: the throttle's slice may let the first few through.
    let floor =
        Duration::from_secs_f64(SLOW_DISK_PROBE_WRITES as f64 / t.limits.write_iops as f64 / 2.0);
    if took < floor || seen < u64::from(SLOW_DISK_PROBE_WRITES) {
        return Err(Error::Invalid(format!(
            "the blkio throttle on {} did not bite: {SLOW_DISK_PROBE_WRITES} O_DSYNC writes took \
             {:.3} s (unthrottled {:.3} s, expected ≥ {:.3} s) and {seen} writes were accounted",
            t.dev,
            took.as_secs_f64(),
            base.as_secs_f64(),
            floor.as_secs_f64()
        )));
    }
    Ok((took, after))
}

fn other_nodes(n: usize, leader: usize) -> Vec<usize> {
    (0..n).filter(|i| *i != leader).collect()
}

fn inject(
    cluster: &mut dyn Cluster,
    clients: &Clients,
    fault: Fault,
    leader: usize,
    rng: &mut Xoshiro256PlusPlus,
    opts: &RunOptions,
) -> Result<(Active, String, Duration)> {
    let n = cluster.node_count();
    let lname = format!("n{}", leader + 1);
    let long = cluster.lease() + opts.beyond_lease;
    let nodes = cluster.net().nodes.clone();
    Ok(match fault {
        Fault::KillAgent => {
            let pid = cluster
                .agent_pid(leader)
                .ok_or_else(|| Error::Invalid(format!("no agent pid on {lname}")))?;
            nemesis::kill9(pid)?;
            (Active::StartAgent(leader), lname, long)
        }
        Fault::KillPostgres => {
            for p in nemesis::postmasters(&nodes[leader]) {
                nemesis::kill9(p)?;
            }
            (Active::Nothing, lname, Duration::ZERO)
        }
        Fault::KillNode => {
            nemesis::kill_host(&nodes[leader])?;
            (Active::StartNodes(vec![leader]), lname, long)
        }
        Fault::FreezeAgent => {
            let pid = cluster
                .agent_pid(leader)
                .ok_or_else(|| Error::Invalid(format!("no agent pid on {lname}")))?;
            nemesis::freeze(pid)?;
            (Active::Thaw(vec![pid]), lname, long)
        }
        Fault::FreezeNode => {
            let pids = nemesis::freeze_host(&nodes[leader])?;
            (Active::Thaw(pids), lname, long)
        }
        Fault::FreezeEtcdOne => {
            let pid = cluster
                .etcd_pid(leader)
                .ok_or_else(|| Error::Invalid(format!("no etcd pid on {lname}")))?;
            nemesis::freeze(pid)?;
            (Active::Thaw(vec![pid]), lname, long)
        }
        Fault::FreezeEtcdTwo => {
            let others = other_nodes(n, leader);
            let follower = others[rng.random_range(0..others.len())];
            let mut pids = Vec::new();
            for i in [leader, follower] {
                let pid = cluster
                    .etcd_pid(i)
                    .ok_or_else(|| Error::Invalid(format!("no etcd pid on n{}", i + 1)))?;
                nemesis::freeze(pid)?;
                pids.push(pid);
            }
            (
                Active::Thaw(pids),
                format!("{lname}+n{}", follower + 1),
                long,
            )
        }
        Fault::PartitionLeader => {
            let rest: Vec<&crate::netns::Netns> = other_nodes(n, leader)
                .into_iter()
                .map(|i| &nodes[i])
                .collect();
            let p = partition::Partition::new().between(&[&nodes[leader]], &rest);
            p.apply(&nodes)?;
            (Active::Heal, p.describe(), long)
        }
        Fault::OneWayPartition => {
            let mut p = partition::Partition::new();
            for i in other_nodes(n, leader) {
                p = p.one_way(&nodes[leader], &nodes[i]);
            }
            p.apply(&nodes)?;
            (Active::Heal, p.describe(), long)
        }
        Fault::IsolateFollower => {
            let others = other_nodes(n, leader);
            let f = others[rng.random_range(0..others.len())];
            let rest: Vec<&crate::netns::Netns> =
                other_nodes(n, f).into_iter().map(|i| &nodes[i]).collect();
            let p = partition::Partition::new().between(&[&nodes[f]], &rest);
            p.apply(&nodes)?;
            (Active::Heal, p.describe(), long)
        }
        Fault::DiskFull => {
            let disk = cluster.data_disk(leader).ok_or_else(|| {
                Error::Unsupported("the cluster was started without loop-mounted data disks".into())
            })?;
            let bytes = disk.fill()?;
            clients.rec.event(
                "note",
                format!("filled {} with {bytes} bytes", disk.mountpoint.display()),
            );
            // Small inserts fit in WAL segments PostgreSQL already recycled, so a full disk
            // may go unnoticed for minutes; a statement that needs new space makes the
            // leader meet ENOSPC now.
            let outcome = ballast(cluster, clients, leader);
            clients
                .rec
                .event("note", format!("space-hungry insert on {lname}: {outcome}"));
            (Active::FreeDisk(disk), lname, long)
        }
        Fault::SlowDiskLeader => {
            let disk = cluster.data_disk(leader).ok_or_else(|| {
                Error::Unsupported("the cluster was started without loop-mounted data disks".into())
            })?;
            let base = blkio::probe_writes(None, &disk.mountpoint, SLOW_DISK_PROBE_WRITES)?;
            let ns = &nodes[leader];
            let t = blkio::Throttle::apply(ns, &disk, &blkio::cgroup_name(ns), SLOW_DISK)?;
            let (slow, after_probe) = match prove_throttle(&t, &disk.mountpoint, base) {
                Ok(x) => x,
                Err(e) => {
                    let _ = t.remove();
                    return Err(e);
                }
            };
            let what = format!(
                "{lname} loop {} ({}), {} processes",
                t.dev,
                SLOW_DISK.describe(),
                t.moved()
            );
            clients.rec.event(
                "note",
                format!(
                    "slow disk: {what}; probe of {SLOW_DISK_PROBE_WRITES} × 8 KiB O_DSYNC writes \
                     {:.3} s throttled vs {:.3} s before",
                    slow.as_secs_f64(),
                    base.as_secs_f64()
                ),
            );
            (Active::Unthrottle(t, after_probe), what, SLOW_DISK_HOLD)
        }
        Fault::RestartAll => {
            for node in &nodes {
                nemesis::kill_host(node)?;
            }
            (
                Active::StartNodes((0..n).collect()),
                "all".into(),
                Duration::from_secs(2),
            )
        }
        Fault::BackToBackFailovers => {
            // Each hand-over starts as soon as the cluster is ready for it (one leader, every
            // follower streaming, in the system's own view too) — not blindly retried, which
            // would measure how the CLI copes with being hammered instead.
            let mut from = leader;
            for k in 0..3 {
                let start = Instant::now();
                if k > 0 {
                    from = cluster.wait_healthy(opts.leader_bound)?;
                }
                let to = (from + 1) % n;
                cluster.switchover(from, Some(to))?;
                let now = clients.rec.now_us();
                clients.wait_write_after(now, opts.leader_bound)?;
                clients.rec.event(
                    "note",
                    format!(
                        "switchover {k}: n{} -> n{} ({:.1}s including the wait for a ready cluster)",
                        from + 1,
                        to + 1,
                        start.elapsed().as_secs_f64()
                    ),
                );
            }
            (Active::Nothing, lname, Duration::ZERO)
        }
        Fault::Netem => {
            let probe = format!("{}{}-netemprobe", crate::hosts::PREFIX, cluster.net().run);
            let backend = netem::Backend::detect(&probe)?;
            let spec = netem::Netem::jitter(50, 50);
            let imp = netem::apply_all(&nodes, spec, backend)?;
            let what = imp.describe();
            clients
                .rec
                .event("note", format!("netem on every node: {what}"));
            (Active::ClearNetem(imp), what, Duration::from_secs(30))
        }
        Fault::LossyLink => {
            let probe = format!("{}{}-netemprobe", crate::hosts::PREFIX, cluster.net().run);
            let backend = netem::Backend::detect(&probe)?;
            // Per-packet delays of 0–20 ms reorder back-to-back packets; the loss makes TCP
            // retransmit (≥ 200 ms) on etcd renewals, replication and client answers alike.
            let spec = netem::Netem {
                loss_percent: 15.0,
                ..netem::Netem::jitter(10, 10)
            };
            let imp = netem::apply_all(std::slice::from_ref(&nodes[leader]), spec, backend)?;
            let what = format!("{lname}: {}", imp.describe());
            clients.rec.event("note", format!("lossy link: {what}"));
            (Active::ClearNetem(imp), what, Duration::from_secs(20))
        }
        Fault::ClockJumpLeader => {
            // The wall clock only (an NTP step or an operator's `date -s`); the monotonic
            // clock a real step leaves alone. Writes flow throughout.
            let file = skew_target(cluster, leader)?;
            jump_and_check(cluster, clients, &file, leader, 30_000)?;
            std::thread::sleep(CLOCK_JUMP_STEP);
            jump_and_check(cluster, clients, &file, leader, 0)?;
            std::thread::sleep(CLOCK_JUMP_STEP / 2);
            jump_and_check(cluster, clients, &file, leader, -30_000)?;
            let back = clockskew::Skew::jump(-30_000);
            (
                Active::EndSkew(file, back),
                format!("{lname} wall clock"),
                CLOCK_JUMP_STEP,
            )
        }
        Fault::ClockDriftFollower | Fault::ClockDriftLeader => {
            let i = if fault == Fault::ClockDriftLeader {
                leader
            } else {
                let others = other_nodes(n, leader);
                others[rng.random_range(0..others.len())]
            };
            let node = format!("n{}", i + 1);
            let file = skew_target(cluster, i)?;
            let ppm = if fault == Fault::ClockDriftLeader {
                -CLOCK_DRIFT_PPM
            } else {
                CLOCK_DRIFT_PPM
            };
            let drift = clockskew::Skew::drift(ppm);
            set_skew(&clients.rec, &file, &node, drift)?;
            (
                Active::EndSkew(file, drift),
                format!("{node} {ppm:+}ppm"),
                CLOCK_DRIFT_HOLD,
            )
        }
        Fault::RestartEtcd => {
            // Every member at once (PostgreSQL stays up): the agents must restart their etcd,
            // which keeps its data, and the cluster must find its leader again.
            let mut killed = Vec::new();
            for i in 0..n {
                let pid = cluster
                    .etcd_pid(i)
                    .ok_or_else(|| Error::Invalid(format!("no etcd pid on n{}", i + 1)))?;
                nemesis::kill9(pid)?;
                killed.push(format!("n{}", i + 1));
            }
            (Active::Nothing, killed.join("+"), Duration::ZERO)
        }
        Fault::EtcdDataLoss => {
            // Always the founding node (n1), leader or not: its etcd flags say "new cluster",
            // the case where an empty data directory could bootstrap a second cluster. The
            // Larder leader must keep leading through the other members, so no leader change
            // is allowed either way.
            let i = 0;
            let via = (0..n).find(|j| *j != i).unwrap_or(0);
            let dir = cluster.etcd_data_dir(i).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{} does not expose its etcd data directory; --skip etcd-data-loss",
                    cluster.label()
                ))
            })?;
            let name = format!("n{}", i + 1);
            let old = cluster
                .etcd_member_list(via)?
                .into_iter()
                .find(|m| m.name == cluster.etcd_member_name(i))
                .ok_or_else(|| Error::Invalid(format!("{name} is not an etcd member")))?;
            let pid = cluster
                .etcd_pid(i)
                .ok_or_else(|| Error::Invalid(format!("no etcd pid on {name}")))?;
            // Frozen while its files go, then killed: a running member could create files in
            // the directory being deleted, and a restarted one could start on half of it.
            nemesis::freeze(pid)?;
            nemesis::wait_stopped(&[pid], Duration::from_secs(5))?;
            let removed = std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            });
            nemesis::kill9(pid)?;
            removed?;
            (
                Active::AwaitEtcdMember {
                    node: i,
                    via,
                    old_id: old.id,
                },
                format!("{name} (member {:x})", old.id),
                Duration::from_secs(3),
            )
        }
    })
}

/// Waits until node `node`'s lost etcd member was replaced: a voter of its name, a new id,
/// and write-ahead log files in its data directory again.
fn await_etcd_member(
    cluster: &dyn Cluster,
    node: usize,
    via: usize,
    old_id: u64,
) -> Result<String> {
    let start = Instant::now();
    let name = cluster.etcd_member_name(node);
    let dir = cluster
        .etcd_data_dir(node)
        .ok_or_else(|| Error::Invalid("no etcd data directory".into()))?;
    loop {
        let last = match cluster.etcd_member_list(via) {
            Ok(list) => {
                let mine: Vec<_> = list.iter().filter(|m| m.name == name).collect();
                let has_wal = std::fs::read_dir(dir.join("member/wal"))
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                    })
                    .unwrap_or(false);
                if let [m] = mine.as_slice() {
                    if m.id != old_id && !m.learner && has_wal && list.len() == cluster.node_count()
                    {
                        return Ok(format!(
                            "n{} etcd member replaced: {:x} -> {:x}, voter, {} members, after {:.1}s",
                            node + 1,
                            old_id,
                            m.id,
                            list.len(),
                            start.elapsed().as_secs_f64()
                        ));
                    }
                }
                format!(
                    "members {:?}, data {}",
                    list.iter()
                        .map(|m| format!(
                            "{}:{:x}{}",
                            m.name,
                            m.id,
                            if m.learner { " (learner)" } else { "" }
                        ))
                        .collect::<Vec<_>>(),
                    if has_wal { "present" } else { "missing" }
                )
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() > ETCD_REPLACE_DEADLINE {
            return Err(Error::Invalid(format!(
                "n{}'s lost etcd member was not replaced within {}s; last seen: {last}",
                node + 1,
                ETCD_REPLACE_DEADLINE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn heal(cluster: &mut dyn Cluster, rec: &crate::history::Recorder, active: Active) -> Result<()> {
    match active {
        Active::Nothing => Ok(()),
        Active::Thaw(pids) => nemesis::thaw_pids(&pids),
        Active::StartAgent(i) => cluster.start_agent(i),
        Active::StartNodes(v) => {
            for i in v {
                cluster.start_node(i)?;
            }
            Ok(())
        }
        Active::Heal => partition::heal(&cluster.net().nodes),
        Active::AwaitEtcdMember { node, via, old_id } => {
            let done = await_etcd_member(cluster, node, via, old_id)?;
            rec.event("note", done);
            Ok(())
        }
        Active::FreeDisk(d) => d.free(),
        Active::Unthrottle(t, after_probe) => {
            let (dev, dir) = (t.dev.clone(), t.dir.clone());
            let total = t.remove()?;
            // What the node's own processes did through the throttle while it held.
            rec.event(
                "note",
                format!(
                    "slow disk healed ({} on {dev} removed): throttled I/O while held {}",
                    dir.display(),
                    total.since(after_probe).describe()
                ),
            );
            Ok(())
        }
        Active::EndSkew(file, skew) => {
            let end = skew.ended();
            end.write(&file)?;
            rec.event(
                "note",
                format!("clock fault ended ({}): {}", file.display(), end.describe()),
            );
            Ok(())
        }
        Active::ClearNetem(imp) => {
            let dead = imp.dead();
            for (host, st) in imp.clear()? {
                rec.event("note", format!("delayer {host}: {}", st.describe()));
            }
            // A dead delayer means its link ran undelayed: the fault did not happen as
            // claimed, so the run cannot vouch for it.
            if !dead.is_empty() {
                let msg = format!(
                    "delayer thread died on {} (its link ran undelayed)",
                    dead.join(",")
                );
                rec.event("check", msg.clone());
                return Err(Error::Invalid(msg));
            }
            Ok(())
        }
    }
}

/// Runs the plan against a started cluster with clients running. Returns the step results;
/// an `Err` means the cluster could not be brought back (itself a finding: the history
/// tells why).
pub fn run(
    cluster: &mut dyn Cluster,
    clients: &Clients,
    plan: &Plan,
    opts: &RunOptions,
) -> (Vec<StepResult>, Option<String>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(plan.seed);
    let rec = &clients.rec;
    let started = Instant::now();
    let mut results = Vec::new();
    let mut k = 0;
    loop {
        let fault = match &plan.fixed {
            Some(list) => match list.get(k) {
                Some(f) => *f,
                None => break,
            },
            None => {
                if started.elapsed() >= plan.duration {
                    break;
                }
                let pool: Vec<Fault> = Fault::ALL
                    .iter()
                    .copied()
                    .filter(|f| !plan.skip.contains(f))
                    .collect();
                if pool.is_empty() {
                    break;
                }
                pool[rng.random_range(0..pool.len())]
            }
        };
        k += 1;
        let leader = match cluster.wait_healthy(opts.heal_deadline) {
            Ok(l) => l,
            Err(e) => {
                return (
                    results,
                    Some(format!("before fault {k} ({}): {e}", fault.name())),
                )
            }
        };
        let before = rec.now_us();
        if let Err(e) = clients.wait_write_after(before, opts.heal_deadline) {
            return (results, Some(format!("before fault {k}: {e}")));
        }
        rec.event(
            "fault",
            format!("#{k} {} (leader n{})", fault.name(), leader + 1),
        );
        let at = rec.now_us();
        eprintln!("fault #{k}: {} (leader n{})", fault.name(), leader + 1);
        let (active, target, hold) = match inject(cluster, clients, fault, leader, &mut rng, opts) {
            Ok(x) => x,
            Err(Error::Unsupported(why)) => {
                rec.event("note", format!("#{k} skipped: {why}"));
                results.push(StepResult {
                    fault,
                    target: "-".into(),
                    status: format!("skipped: {why}"),
                    hold_s: 0.0,
                    gap_s: 0.0,
                    recovered_after_heal_s: 0.0,
                    leader_after: None,
                    expect: fault.expect(),
                    in_place_gap_s: 0.0,
                    failure: None,
                });
                continue;
            }
            Err(e) => return (results, Some(format!("injecting {}: {e}", fault.name()))),
        };
        // A fault that removes the leader is held past the availability bound, so the bound is
        // judged while it is still in place: a build that only recovers at the heal fails.
        let bound = availability_bound(cluster.lease(), opts.check_interval);
        let hold = if fault.expect() == Expect::Bounded && !hold.is_zero() {
            hold.max(bound + Duration::from_secs(1))
        } else {
            hold
        };
        // Holding the fault is the experiment itself, not a wait for a condition.
        std::thread::sleep(hold);
        let heal_at = rec.now_us();
        if let Err(e) = heal(cluster, rec, active) {
            return (results, Some(format!("healing {}: {e}", fault.name())));
        }
        rec.event("heal", format!("#{k} {}", fault.name()));
        let recovered = match clients.wait_write_after(heal_at, opts.leader_bound) {
            Ok(t) => t,
            Err(_) => {
                let msg = format!(
                    "#{k} {}: no acknowledged write within {:?} after healing",
                    fault.name(),
                    opts.leader_bound
                );
                rec.event("check", msg.clone());
                eprintln!(
                    "{msg}\n{}",
                    checker::excerpt(
                        &rec.entries(),
                        heal_at.saturating_sub(2_000_000),
                        rec.now_us(),
                        &[],
                        60
                    )
                );
                return (results, Some(msg));
            }
        };
        let entries = rec.entries();
        let (gap, _) = checker::longest_gap(&entries, at, recovered);
        let in_place = if hold.is_zero() {
            gap
        } else {
            checker::longest_gap(&entries, at, heal_at).0
        };
        let leader_after = cluster.leader().map(|l| format!("n{}", l + 1));
        let leader_ip = cluster.net().nodes[leader].ip.clone();
        let failure = judge(
            fault.expect(),
            Duration::from_micros(in_place),
            bound,
            &foreign_writes(&entries, at, recovered, &leader_ip),
            &format!("n{}", leader + 1),
            leader_after.as_deref(),
        );
        if let Some(f) = &failure {
            rec.event("check", format!("#{k} {}: {f}", fault.name()));
            eprintln!("#{k} {}: {f}", fault.name());
        }
        results.push(StepResult {
            fault,
            target,
            status: "done".into(),
            hold_s: hold.as_secs_f64(),
            gap_s: gap as f64 / 1e6,
            recovered_after_heal_s: recovered.saturating_sub(heal_at) as f64 / 1e6,
            leader_after,
            expect: fault.expect(),
            in_place_gap_s: in_place as f64 / 1e6,
            failure,
        });
    }
    (results, None)
}

/// Nodes other than `leader_ip` that acknowledged a client write ending in `[from, to]`.
fn foreign_writes(
    entries: &[crate::history::Entry],
    from: u64,
    to: u64,
    leader_ip: &str,
) -> Vec<String> {
    let mut v: Vec<String> = checker::ops(entries)
        .filter(|o| {
            o.kind == crate::history::OpKind::Write
                && o.outcome == crate::history::Outcome::Ok
                && o.end_us >= from
                && o.end_us <= to
        })
        .filter_map(|o| o.node.clone())
        .filter(|n| n != leader_ip)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The availability verdict of one fault (`None` = as expected), from what the clients saw.
pub fn judge(
    expect: Expect,
    in_place_gap: Duration,
    bound: Duration,
    foreign_writers: &[String],
    leader_before: &str,
    leader_after: Option<&str>,
) -> Option<String> {
    match expect {
        Expect::Bounded if in_place_gap > bound => Some(format!(
            "write gap {:.2}s while the fault was in place exceeds the bound {:.1}s (lease + 2 × check interval + {}s)",
            in_place_gap.as_secs_f64(),
            bound.as_secs_f64(),
            ELECTION_ALLOWANCE.as_secs()
        )),
        Expect::NoLeaderChange if !foreign_writers.is_empty() => Some(format!(
            "writes were acknowledged by {} while {leader_before} should have kept leading",
            foreign_writers.join(", ")
        )),
        Expect::NoLeaderChange if leader_after != Some(leader_before) => Some(format!(
            "leader changed from {leader_before} to {}",
            leader_after.unwrap_or("none")
        )),
        _ => None,
    }
}

/// Runs a ~64 MB insert (plus its WAL) directly on node `i` and describes what PostgreSQL answered.
fn ballast(cluster: &dyn Cluster, clients: &Clients, i: usize) -> String {
    let t = cluster.pg_target().with_host(&cluster.net().nodes[i].ip);
    let ns = clients.client_ns().to_string();
    crate::inns::block_on(&ns, move || async move {
        let c = crate::pg::connect(&t, Duration::from_secs(3)).await?;
        // A logged table: its WAL needs fresh segments, which is what fills real disks.
        let sql = "DROP TABLE IF EXISTS larder_faults_ballast; \
                   CREATE TABLE larder_faults_ballast AS \
                   SELECT repeat(md5(g::text), 32) AS pad FROM generate_series(1, 65536) g";
        Ok(
            match tokio::time::timeout(Duration::from_secs(30), c.batch_execute(sql)).await {
                Ok(Ok(())) => "succeeded (the disk had room after all)".to_string(),
                Ok(Err(e)) => format!("failed: {}", crate::pg::describe(&e)),
                Err(_) => "no answer within 30 s".to_string(),
            },
        )
    })
    .unwrap_or_else(|e| format!("could not run: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_ids_are_unique_and_round_trip() {
        let mut ids: Vec<&str> = Fault::ALL.iter().map(|f| f.id()).collect();
        for f in Fault::ALL {
            assert_eq!(Fault::from_id(f.id()), Ok(f));
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Fault::ALL.len());
        assert!(Fault::from_id("nope").unwrap_err().contains("kill-agent"));
    }

    #[test]
    fn availability_verdicts() {
        let bound = availability_bound(Duration::from_secs(3), Duration::from_secs(2));
        assert_eq!(bound, Duration::from_secs(9));
        let ms = Duration::from_millis;
        assert_eq!(
            judge(Expect::Bounded, ms(8_900), bound, &[], "n1", Some("n2")),
            None
        );
        let late = judge(Expect::Bounded, ms(9_100), bound, &[], "n1", Some("n2")).unwrap();
        assert!(late.contains("9.10s") && late.contains("9.0s"), "{late}");
        // A leader-keeping fault: a write on another node, or another leader afterwards, fails.
        let other = vec!["10.0.0.2".to_string()];
        assert!(judge(
            Expect::NoLeaderChange,
            ms(1),
            bound,
            &other,
            "n1",
            Some("n1")
        )
        .is_some());
        assert!(judge(Expect::NoLeaderChange, ms(1), bound, &[], "n1", Some("n2")).is_some());
        assert!(judge(Expect::NoLeaderChange, ms(1), bound, &[], "n1", None).is_some());
        assert_eq!(
            judge(
                Expect::NoLeaderChange,
                ms(30_000),
                bound,
                &[],
                "n1",
                Some("n1")
            ),
            None
        );
        assert_eq!(
            judge(Expect::Unbounded, ms(60_000), bound, &other, "n1", None),
            None
        );
    }

    #[test]
    fn clock_faults_ask_for_the_shim() {
        assert!(Plan::every_fault_once().may_skew_clocks());
        let clock: Vec<Fault> = Fault::ALL
            .into_iter()
            .filter(|f| f.skews_clocks())
            .collect();
        assert_eq!(clock.len(), 3);
        assert!(!Plan::every_fault_once()
            .skipping(clock.clone())
            .may_skew_clocks());
        assert!(!Plan::random(1, Duration::from_secs(60))
            .skipping(clock)
            .may_skew_clocks());
        assert!(Plan::random(1, Duration::from_secs(60)).may_skew_clocks());
        for f in Fault::ALL.into_iter().filter(|f| f.skews_clocks()) {
            assert_eq!(f.expect(), Expect::NoLeaderChange);
        }
    }

    #[test]
    fn slow_disk_is_in_the_ci_plan_and_bounded() {
        let f = Fault::from_id("slow-disk-leader").unwrap();
        assert_eq!(f, Fault::SlowDiskLeader);
        assert!(Plan::every_fault_once().fixed.unwrap().contains(&f));
        // It takes the leader's disk away in part: writes may slow or move, never stop for
        // longer than a failover would take.
        assert_eq!(f.expect(), Expect::Bounded);
        let bound = availability_bound(Duration::from_secs(3), Duration::from_secs(2));
        assert!(SLOW_DISK_HOLD > bound + Duration::from_secs(1));
        assert!(!f.skews_clocks());
    }

    #[test]
    fn skipped_faults_leave_the_plan() {
        let p = Plan::every_fault_once().skipping(vec![Fault::Netem, Fault::DiskFull]);
        let fixed = p.fixed.unwrap();
        assert_eq!(fixed.len(), Fault::ALL.len() - 2);
        assert!(!fixed.contains(&Fault::Netem) && !fixed.contains(&Fault::DiskFull));
    }
}
