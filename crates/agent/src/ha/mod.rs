//! The HA loop: observe (local PostgreSQL, etcd) → decide (pure core) → act → publish.
//!
//! The loop owns leadership bookkeeping: the leader lease and the *fencing deadline* computed
//! from the moment the last successful renewal was sent. The health API reads that deadline
//! on every request, so `/leader` turns 503 at the deadline even if this loop is stuck.
//!
//! - [`observe`]: local PostgreSQL and etcd
//! - the decision: [`larder_core::decide`]
//! - [`execute`]: the actions
//! - [`publish`]: this node's status
//! - [`renew`]: lease renewals
//! - [`history`]: the won term's history entry

mod execute;
mod history;
mod observe;
mod publish;
mod renew;
mod roles;

pub(crate) use publish::status_facts;

use crate::clock::unix_ms;
use crate::dcs::{self, keys, Dcs};
use crate::markers::{diverged_marker, mark_diverged, rewind_failed_marker};
use crate::node::Node;
use crate::postgres::{self, PgObservation};
use crate::state::{LeaseInfo, Sensors, Snapshot};
use crate::supervisor::Supervisor;
use larder_core::decide::{
    self, Action, DcsView, HeldLease, LocalState, Observation, OperatorRequest,
};
use larder_core::lease;
use larder_core::model::{
    LeaderRecord, MemberStatus, NodeRecord, NodeRole, PgState, Switchover, SwitchoverPlan,
    SwitchoverRequest, WalPosition,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Local facts the loop keeps between iterations (intent, not observation).
#[derive(Debug, Default)]
struct Intent {
    following: Option<String>,
    not_streaming_since: Option<Instant>,
    status_lease: Option<i64>,
    /// When the status lease's last renewal succeeded (see `publish`).
    status_renewed: Option<Instant>,
    /// When this node's status was last written, and what it said apart from its clocks.
    published: Option<(Instant, Vec<u8>)>,
    seq: u64,
    pg_failures: u32,
    pg_down_since: Option<Instant>,
    etcd_failures: u32,
    voter: bool,
    roles_ready: bool,
    /// How this leader last made sure the superuser's password is stored (see
    /// `pgconf::wanted_superuser_hash`); `None` at the start of each leadership.
    superuser_hash: Option<larder_core::pgconf::PasswordHash>,
    /// Timeline of the WAL the receiver last flushed, kept after it disconnects: a standby's
    /// other timeline sources (last restartpoint) lag behind a timeline switch, and a
    /// switchover target that just received the old leader's final checkpoint would otherwise
    /// look one timeline behind until it reconnects somewhere.
    received_tli: Option<u32>,
    /// A planned switchover accepted but timed to start later (see `check_phase`).
    switchover_due: Option<(SwitchoverRequest, Instant)>,
    /// Last check that etcd's raft leader is not on this (leader) node; see `raft_placement`.
    raft_placement: Option<(Instant, tokio::task::JoinHandle<()>)>,
    /// The current (or last) leader's last writable moment as seen here: where the write gap
    /// of a hand-over to this node starts (see `larder_core::history`).
    gap_seen: Option<larder_core::history::GapStart>,
    /// Wall-clock time this node first read no leader key (the election's detection time).
    no_leader_since_unix_ms: Option<u64>,
    /// The history entry of the term this node won, written once its PostgreSQL is writable.
    history_draft: Option<larder_core::history::Entry>,
    /// What the last status write read back of `/larder/` in the same transaction: the next
    /// iteration's view while the etcd watch reports no change since (see `read_dcs`).
    read_back: Option<ReadBack>,
}

/// A view of `/larder/` read in the transaction of a status write.
#[derive(Debug)]
struct ReadBack {
    /// When the transaction was sent (the view is at least this fresh).
    sent: Instant,
    revision: i64,
    kvs: Vec<dcs::Kv>,
}

/// An operator request handed to the loop by the control socket, with where to answer.
pub struct Command {
    pub request: OperatorRequest,
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

pub struct HaLoop {
    pub node: Node,
    pub dcs: Dcs,
    pub sup: Supervisor,
    /// The published snapshot: this loop is the only holder of its sender, so the only
    /// writer of leadership state.
    state: Arc<tokio::sync::watch::Sender<Snapshot>>,
    sensors: Arc<Sensors>,
    pub syncing: Arc<std::sync::atomic::AtomicBool>,
    epoch: Instant,
    pg: Option<postgres::Observer>,
    intent: Intent,
    /// Run the next iteration now instead of after `loop_interval_ms` (etcd watch events, and
    /// steps of a leadership change that have a next step).
    wake: Arc<tokio::sync::Notify>,
    commands: tokio::sync::mpsc::Receiver<Command>,
    command_tx: tokio::sync::mpsc::Sender<Command>,
    /// The operator request the next decision sees, and where its answer goes.
    request: Option<(
        OperatorRequest,
        tokio::sync::oneshot::Sender<Result<String, String>>,
    )>,
    /// The configured VIP (`vip`, `vip_interface`) and the role-change hooks; see
    /// `ha/roles.rs`.
    roles: roles::Roles,
}

impl HaLoop {
    pub fn new(
        node: Node,
        dcs: Dcs,
        sup: Supervisor,
        state: tokio::sync::watch::Sender<Snapshot>,
        sensors: Arc<Sensors>,
        syncing: Arc<std::sync::atomic::AtomicBool>,
    ) -> HaLoop {
        let (command_tx, commands) = tokio::sync::mpsc::channel(4);
        let node_cfg = node.cfg.clone();
        HaLoop {
            node,
            dcs,
            sup,
            state: Arc::new(state),
            sensors,
            syncing,
            epoch: Instant::now(),
            pg: None,
            intent: Intent::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            commands,
            command_tx,
            request: None,
            roles: roles::Roles::new(&node_cfg),
        }
    }

    /// Where the control socket sends operator requests (answered after the decision they
    /// were part of has been carried out).
    pub fn command_sender(&self) -> tokio::sync::mpsc::Sender<Command> {
        self.command_tx.clone()
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.node.cfg.leaderl.db_timeout)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.node.cfg.leaderl.loop_interval_ms);
        tokio::spawn(crate::wake::run(
            self.dcs.clone(),
            self.state.subscribe(),
            self.wake.clone(),
            self.sensors.clone(),
            self.node.state.guid.clone(),
            shutdown.clone(),
        ));
        let (renewal_tx, mut renewals) = tokio::sync::mpsc::channel(8);
        tokio::spawn(renew::renew_lease_forever(
            self.dcs.clone(),
            self.state.subscribe(),
            interval,
            renewal_tx,
            shutdown.clone(),
        ));
        let margin = Duration::from_millis(self.node.cfg.leaderl.fence_margin_ms);
        self.roles_on_start();
        // Renewals are applied beside the running iteration (which borrows the loop).
        let state = self.state.clone();
        // Floor between two iterations, so a burst of wake-ups cannot spin the loop.
        let min_gap = Duration::from_millis(20);
        loop {
            let started = Instant::now();
            // Renewals are applied while the iteration runs, so a slow etcd read or action never
            // holds back a deadline the renewer already secured.
            let result = {
                let iteration = self.iterate();
                tokio::pin!(iteration);
                loop {
                    tokio::select! {
                        r = &mut iteration => break r,
                        Some(r) = renewals.recv() => renew::apply_renewal(&state, r, margin),
                    }
                }
            };
            crate::metrics::HA_LOOP.observe(started.elapsed());
            if let Err(e) = result {
                tracing::warn!("HA loop: {e:#}");
                self.state
                    .send_modify(|s| s.last_error = Some(format!("{e:#}")));
            }
            self.state
                .send_modify(|s| s.last_loop = Some(Instant::now()));
            // Wait out the interval, or less: until the fencing deadline (fence exactly at it),
            // a wake-up, or an operator request. Renewals arriving meanwhile are applied and
            // the wait goes on.
            let mut stop = false;
            loop {
                let mut wait = interval.saturating_sub(started.elapsed());
                let lease = self.state.borrow().lease;
                if let Some(l) = lease {
                    wait = wait.min(l.fence_deadline.saturating_duration_since(Instant::now()));
                    // A held VIP goes at its own, earlier deadline.
                    if let Some(at) = self.roles.vip_deadline(l.fence_deadline) {
                        wait = wait.min(at.saturating_duration_since(Instant::now()));
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => { stop = true; break }
                    _ = tokio::time::sleep(wait) => break,
                    _ = self.wake.notified() => break,
                    Some(r) = renewals.recv() => renew::apply_renewal(&state, r, margin),
                    Some(cmd) = self.commands.recv() => {
                        if self.request.is_some() {
                            let _ = cmd.reply.send(Err("another operator request is being handled; retry".into()));
                        } else {
                            self.request = Some((cmd.request, cmd.reply));
                        }
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            let gap = min_gap.saturating_sub(started.elapsed());
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        let holds = self.state.borrow().lease.is_some();
        let vip_present = self.roles.vip_present().await;
        let mut steps = decide::vip::on_shutdown(vip_present);
        steps.extend(decide::on_shutdown(holds));
        if holds {
            self.roles_fire(crate::hooks::Event::Demote);
        }
        for action in steps {
            if let Err(e) = self.execute(action.clone(), None, &[]).await {
                tracing::warn!(?action, "shutdown step failed: {e:#}");
            }
        }
        if let Some(id) = self.intent.status_lease {
            let _ = self.dcs.lease_revoke(id).await;
        }
    }

    async fn iterate(&mut self) -> anyhow::Result<()> {
        let node = self.node.clone();
        // Founding node without data: create it. (Joiners clone from the leader instead.)
        if !postgres::has_data(&node)
            && node.state.etcd_initial_state == "new"
            && !self.syncing_now()
        {
            tracing::info!("initialising PostgreSQL data directory");
            postgres::initdb(&node).await?;
        }
        let pg = self.observe_pg().await;
        self.record_history_when_writable(&pg);
        let dcs_read = self.read_dcs().await;
        let etcd_ok = dcs_read.is_ok();
        let view = match dcs_read {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("etcd read failed: {e}");
                None
            }
        };
        let nodes = view.as_ref().map(|v| v.nodes.clone()).unwrap_or_default();
        if let Some(v) = &view {
            self.track_leader_for_history(v);
        }
        let now = Instant::now();
        self.track_pg(&pg, view.as_ref(), now);

        let lease = self.state.borrow().lease;
        // A timed switchover belongs to its request: gone with it (consumed, refused, or the
        // operator's CLI gave up).
        let request = view.as_ref().and_then(|v| v.switchover_request.clone());
        if self
            .intent
            .switchover_due
            .as_ref()
            .is_some_and(|(r, _)| Some(r) != request.as_ref())
            || request.is_none()
        {
            self.intent.switchover_due = None;
            self.state.send_modify(|s| s.switchover_starts = None);
        }

        let local = self.local_state(&pg, view.as_ref());
        let disk_free_mb = local.disk_free_mb;
        let vip = self.roles.observe().await;
        let obs = Observation {
            now_ms: self.ms(now),
            now_unix_ms: unix_ms(),
            me: node.state.guid.clone(),
            local,
            dcs: view.clone(),
            lease: lease.map(|l| HeldLease {
                term: l.term,
                fence_deadline_ms: self.ms(l.fence_deadline),
            }),
            sync_mode: node.cfg.postgresql.synchronous_mode,
            health: node.cfg.leaderl.health_check.clone(),
            rejoin_timeout_ms: node.cfg.leaderl.rejoin_timeout_ms,
            align_switchover: node.cfg.leaderl.align_switchover_to_checks,
            // Only a pending switchover is timed by them: not worth computing every loop.
            own_checks: match &request {
                Some(_) => self.sensors.checks.lock().unwrap().phases(unix_ms()),
                None => vec![],
            },
            request: self.request.as_ref().map(|(r, _)| r.clone()),
            vip,
        };
        let decision = decide::decide(&obs);
        if decision.reason != self.state.borrow().reason {
            tracing::info!(role = decision.role.as_str(), "{}", decision.reason);
        }
        self.state.send_modify(|s| {
            s.role = Some(decision.role);
            s.reason = decision.reason.clone();
            s.pg = pg.clone();
            s.etcd_ok = etcd_ok;
            if let Some(v) = &view {
                s.leaderless_since = match v.leader {
                    Some(_) => None,
                    None => Some(s.leaderless_since.unwrap_or(now)),
                };
                s.leader = v.leader.clone();
                s.term = v.term;
                s.members = v.members.clone();
                s.voters = v.voters.clone();
                s.cluster_failover = v.cluster_failover;
                s.node_failover = v.node_failover;
                s.nodes = nodes.clone();
                s.upgrade = crate::control::UpgradeState {
                    lock: v.upgrade_lock.clone(),
                    down: v.down_for_upgrade.clone(),
                };
                s.leader_lease_expires_unix_ms = v
                    .leader
                    .as_ref()
                    .filter(|l| l.guid != node.state.guid)
                    .and_then(|l| v.members.iter().find(|m| m.guid == l.guid))
                    .and_then(|m| m.lease_expires_unix_ms);
            }
        });
        // No action may stall the loop: status must keep flowing and the lease keep renewing.
        let limit = Duration::from_secs(10).max(self.timeout() * 4);
        for action in decision.actions.clone() {
            let res =
                tokio::time::timeout(limit, self.execute(action.clone(), view.as_ref(), &nodes))
                    .await;
            let err = match res {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => {
                    // The connection may hold a stuck statement: start a fresh one next time.
                    self.pg = None;
                    format!("{action:?} did not finish within {limit:?}")
                }
            };
            tracing::warn!(?action, "action failed: {err}");
            self.state.send_modify(|s| s.last_error = Some(err));
            break;
        }
        self.roles_after(&decision, lease.is_some());
        self.answer_request(&decision);
        if view.is_some() {
            self.publish(decision.role, &pg, view.as_ref(), disk_free_mb)
                .await;
        }
        if decision.role == NodeRole::Leader {
            self.place_raft_leader();
        }
        Ok(())
    }

    /// Tell the operator what became of their request, now that the decision it was part of
    /// has been carried out.
    fn answer_request(&mut self, decision: &decide::Decision) {
        let Some((req, reply)) = self.request.take() else {
            return;
        };
        let refused = decision.actions.iter().find_map(|a| match a {
            Action::RefuseRequest { reason } => Some(reason.clone()),
            _ => None,
        });
        let answer = match (refused, req) {
            (Some(reason), _) => Err(reason),
            (None, OperatorRequest::Resync { .. }) => {
                match decision.actions.iter().any(|a| matches!(a, Action::MarkResync { .. })) {
                    true => Ok(format!(
                        "re-syncing from {}",
                        self.state
                            .borrow()
                            .leader
                            .as_ref()
                            .map(|l| l.name.clone())
                            .unwrap_or_default()
                    )),
                    false => Err(format!("pgsql-follow did not take effect: {}", decision.reason)),
                }
            }
            (None, OperatorRequest::ForceLeader) => match self.state.borrow().lease.map(|l| l.term) {
                Some(term) => Ok(format!("{} is now the leader (term {})", self.node.cfg.fqdn, term)),
                None => Err(format!(
                    "force-leader did not take effect: {} (another node may have taken leadership meanwhile)",
                    decision.reason
                )),
            },
        };
        let _ = reply.send(answer);
    }

    /// Every few seconds while leader, in the background (never stalls the loop): move etcd's
    /// raft leader to another node if it sits here.
    fn place_raft_leader(&mut self) {
        let due = match &self.intent.raft_placement {
            Some((at, task)) => task.is_finished() && at.elapsed() >= Duration::from_secs(5),
            None => true,
        };
        if !due {
            return;
        }
        let dcs = self.dcs.clone();
        let url = self.node.etcd_client_url();
        let task = tokio::spawn(async move {
            match crate::raft_placement::move_raft_leader_away(&dcs, &url).await {
                Ok(Some(to)) => tracing::info!("moved etcd's raft leader to {to}"),
                Ok(None) => {}
                Err(e) => tracing::debug!("raft leader placement: {e}"),
            }
        });
        self.intent.raft_placement = Some((Instant::now(), task));
    }

    fn syncing_now(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::SeqCst)
    }
}
