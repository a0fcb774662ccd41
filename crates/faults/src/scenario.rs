//! The failover benchmark: repeated trials of one failure at a time under a client writing
//! every few milliseconds through haproxy, measuring the write-unavailability window.

use std::time::Duration;

use serde::Serialize;

use crate::checker;
use crate::clients::Clients;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::nemesis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// (a) kill -9 every process of the leader's host, restart it after writes resume.
    KillLeaderNode,
    /// (b) kill -9 the leader's postmaster.
    KillLeaderPostgres,
    /// (c) planned switchover to another node.
    Switchover,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::KillLeaderNode,
        Scenario::KillLeaderPostgres,
        Scenario::Switchover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLeaderNode => "leader node killed",
            Scenario::KillLeaderPostgres => "leader PostgreSQL killed",
            Scenario::Switchover => "planned switchover",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "kill-node" | "a" => Some(Scenario::KillLeaderNode),
            "kill-postgres" | "b" => Some(Scenario::KillLeaderPostgres),
            "switchover" | "c" => Some(Scenario::Switchover),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Trial {
    pub scenario: Scenario,
    pub trial: u32,
    pub leader_before: String,
    pub leader_after: Option<String>,
    /// When the fault was injected (seconds since the history start).
    pub fault_at_s: f64,
    /// End of the first acknowledged write that started after the fault.
    pub resumed_at_s: f64,
    /// Longest gap between acknowledged writes around the fault: what the client saw. For a
    /// trial that did not recover, the time waited (a lower bound).
    pub window_s: f64,
    /// Whether writes came back within the resume deadline. A system that stays down is a
    /// result too: such a trial is recorded and the cluster healed for the next one.
    #[serde(default = "recovered_default")]
    pub recovered: bool,
    /// Each frontend's own longest gap (frontend 1 first); `window_s` is the largest. One
    /// entry with a single frontend; empty in results saved before frontends were counted.
    #[serde(default)]
    pub frontend_windows_s: Vec<f64>,
}

/// Every frontend's longest gap between its own acknowledged writes, by `gap(frontend)`.
fn per_frontend(frontends: u32, gap: impl Fn(u32) -> u64) -> Vec<f64> {
    (0..frontends.max(1)).map(|k| gap(k) as f64 / 1e6).collect()
}

fn recovered_default() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub trials: u32,
    /// How long a trial may wait for writes to come back before it is recorded as a failure.
    pub resume_deadline: Duration,
    /// How long the cluster may take to be fully healthy again between trials.
    pub heal_deadline: Duration,
}

/// Runs `trials` of `scenario`. A trial whose writes do not resume within the deadline is
/// recorded as not recovered and the cluster is healed (the killed node restarted, then if
/// need be every node) before the next one; only a cluster that cannot be healed at all ends
/// the scenario, with an error next to the trials completed so far (the history shows why).
/// Nothing is silently dropped from the statistics.
pub fn run(
    cluster: &mut dyn Cluster,
    clients: &Clients,
    scenario: Scenario,
    opts: &BenchOptions,
) -> (Vec<Trial>, Option<Error>) {
    let mut out = Vec::new();
    for trial in 1..=opts.trials {
        match one_trial(cluster, clients, scenario, trial, opts) {
            Ok(t) => out.push(t),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn one_trial(
    cluster: &mut dyn Cluster,
    clients: &Clients,
    scenario: Scenario,
    trial: u32,
    opts: &BenchOptions,
) -> Result<Trial> {
    let rec = &clients.rec;
    let leader = heal(cluster, opts)?;
    // Writes must be flowing through haproxy before the fault, or the window would also
    // measure haproxy catching up with the previous trial.
    let now = rec.now_us();
    clients.wait_write_after(now, opts.heal_deadline)?;
    let leader_name = format!("n{}", leader + 1);
    rec.event(
        "fault",
        format!(
            "{} trial {trial}: {} on {leader_name}",
            cluster.label(),
            scenario.name()
        ),
    );
    let fault_at = rec.now_us();
    match scenario {
        Scenario::KillLeaderNode => {
            nemesis::kill_host(&cluster.net().nodes[leader])?;
        }
        Scenario::KillLeaderPostgres => {
            let pms = nemesis::postmasters(&cluster.net().nodes[leader]);
            if pms.is_empty() {
                return Err(Error::Invalid(format!(
                    "no postmaster found on {leader_name}"
                )));
            }
            for p in pms {
                nemesis::kill9(p)?;
            }
        }
        Scenario::Switchover => {
            let to = (leader + 1) % cluster.node_count();
            cluster.switchover(leader, Some(to))?;
        }
    }
    // "Resumed" is judged only from writes that began after the fault action returned:
    // a switchover command returns once the new leader is up, and writes that the old
    // leader still accepted while the command ran say nothing about the hand-over.
    let action_done = rec.now_us();
    let resumed = match clients.wait_write_after(action_done, opts.resume_deadline) {
        Ok(at) => at,
        Err(Error::Timeout { .. }) => {
            let waited = rec.now_us().saturating_sub(fault_at);
            rec.event(
                "heal",
                format!(
                    "trial {trial}: no acknowledged write within {:.0}s of the fault; healing",
                    opts.resume_deadline.as_secs_f64()
                ),
            );
            eprintln!(
                "  {} trial {trial}/{}: NO RECOVERY within {:.0}s",
                scenario.name(),
                opts.trials,
                opts.resume_deadline.as_secs_f64()
            );
            if scenario == Scenario::KillLeaderNode {
                cluster.start_node(leader)?;
            }
            return Ok(Trial {
                scenario,
                trial,
                leader_before: leader_name,
                leader_after: cluster.leader().map(|l| format!("n{}", l + 1)),
                fault_at_s: fault_at as f64 / 1e6,
                resumed_at_s: rec.now_us() as f64 / 1e6,
                window_s: waited as f64 / 1e6,
                recovered: false,
                frontend_windows_s: vec![waited as f64 / 1e6; clients.frontends() as usize],
            });
        }
        Err(e) => return Err(e),
    };
    let entries = rec.entries();
    let windows = per_frontend(clients.frontends(), |k| {
        checker::longest_gap_of(&entries, fault_at, resumed, Some(k)).0
    });
    let gap = windows.iter().fold(0f64, |a, b| a.max(*b));
    let gap = (gap * 1e6).round() as u64;
    let leader_after = cluster.leader().map(|l| format!("n{}", l + 1));
    rec.event(
        "heal",
        format!(
            "trial {trial}: writes resumed after {:.3}s window; leader now {}",
            gap as f64 / 1e6,
            leader_after.as_deref().unwrap_or("?")
        ),
    );
    if scenario == Scenario::KillLeaderNode {
        cluster.start_node(leader)?;
    }
    let t = Trial {
        scenario,
        trial,
        leader_before: leader_name,
        leader_after,
        fault_at_s: fault_at as f64 / 1e6,
        resumed_at_s: resumed as f64 / 1e6,
        window_s: gap as f64 / 1e6,
        recovered: true,
        frontend_windows_s: windows,
    };
    let each = match t.frontend_windows_s.len() {
        1 => String::new(),
        _ => format!(
            " (frontends: {})",
            t.frontend_windows_s
                .iter()
                .map(|w| format!("{w:.3}s"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    eprintln!(
        "  {} trial {trial}/{}: window {:.3}s{each}",
        scenario.name(),
        opts.trials,
        gap as f64 / 1e6
    );
    Ok(t)
}

/// Waits for one leader with every replica streaming and writes flowing; a cluster stuck
/// after an unrecovered trial gets every node restarted once (kill -9 and start, as an
/// operator would) before giving up.
fn heal(cluster: &mut dyn Cluster, opts: &BenchOptions) -> Result<usize> {
    match cluster.wait_healthy(opts.heal_deadline) {
        Ok(l) => Ok(l),
        Err(e) => {
            eprintln!("  cluster did not heal ({e}); restarting every node");
            for i in 0..cluster.node_count() {
                nemesis::kill_host(&cluster.net().nodes[i])?;
            }
            for i in 0..cluster.node_count() {
                cluster.start_node(i)?;
            }
            cluster.wait_healthy(opts.heal_deadline)
        }
    }
}

/// Re-measures every trial's window over its whole trial period: from its fault to the next
/// trial's fault (or the end of the history). The window taken while the trial ran ends at the
/// first acknowledged write after the fault action returned, which undercounts when the outage
/// starts *after* the action returned (a `patronictl switchover` that returns before the
/// hand-over, backends that outlive a killed postmaster for a moment). The whole period
/// always contains the full outage, and each trial first waits for a healthy cluster with
/// writes flowing, so nothing of the previous trial leaks in.
pub fn remeasure(entries: &[crate::history::Entry], trials: &mut [Trial]) {
    let end = crate::checker::ops(entries)
        .map(|o| o.end_us)
        .max()
        .unwrap_or(0);
    let mut starts: Vec<u64> = trials.iter().map(|t| (t.fault_at_s * 1e6) as u64).collect();
    starts.sort_unstable();
    // An unrecovered trial keeps the time it waited: its outage lasted until the heal.
    let frontends = crate::checker::ops(entries)
        .filter(|o| o.kind == crate::history::OpKind::Write)
        .map(|o| crate::workload::frontend_of(o.process) + 1)
        .max()
        .unwrap_or(1);
    for t in trials.iter_mut().filter(|t| t.recovered) {
        let from = (t.fault_at_s * 1e6) as u64;
        let to = starts.iter().copied().find(|s| *s > from).unwrap_or(end);
        t.frontend_windows_s = per_frontend(frontends, |k| {
            checker::longest_gap_ending_in_of(entries, from, to, Some(k))
        });
        t.window_s = t.frontend_windows_s.iter().fold(0f64, |a, b| a.max(*b));
    }
}
