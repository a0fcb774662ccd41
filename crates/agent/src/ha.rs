//! The HA loop: observe (local PostgreSQL, etcd) → decide (pure core) → act → publish.
//!
//! The loop owns leadership bookkeeping: the leader lease and the *fencing deadline* computed
//! from the moment the last successful renewal was sent. The health API reads that deadline
//! on every request, so `/leader` turns 503 at the deadline even if this loop is stuck.

use crate::dcs::{self, keys, Dcs};
use crate::node::Node;
use crate::postgres::{self, CopyProgress, PgObservation};
use crate::supervisor::Supervisor;
use larder_core::decide::{
    self, Action, DcsView, HeldLease, LocalState, Observation, OperatorRequest,
};
use larder_core::lease;
use larder_core::model::{
    LeaderRecord, MemberStatus, NodeRecord, NodeRole, PgState, Switchover, WalPosition,
};
pub use larder_core::model::{SwitchoverPlan, SwitchoverRequest};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// What the health API, the control socket and `status` read.
///
/// Leadership state — `lease`, `role`, `leader`, `term`, the switchover fields — is written by
/// the HA loop's task only (renewals reach it over a channel, operator requests as
/// [`Command`]s). The remaining fields are sensors with one writer each: `checks` (the health
/// API records `/leader` arrivals), `etcd_members` (member refresh), `search_ok` (search health
/// probe), `copy`/`copy_failed_at` (the background copy task).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub role: Option<NodeRole>,
    pub reason: String,
    pub leader: Option<LeaderRecord>,
    pub term: u64,
    pub pg: Option<PgObservation>,
    pub lease: Option<LeaseInfo>,
    pub members: Vec<MemberStatus>,
    pub nodes: Vec<NodeRecord>,
    pub voters: Vec<String>,
    pub cluster_failover: bool,
    pub node_failover: bool,
    pub etcd_ok: bool,
    pub search_ok: bool,
    pub copy: Option<CopyProgress>,
    pub copy_failed_at: Option<Instant>,
    pub last_loop: Option<Instant>,
    pub last_error: Option<String>,
    pub etcd_members: Vec<dcs::Member>,
    /// `/leader` check arrivals per frontend (see `larder_core::check_phase`).
    pub checks: larder_core::check_phase::CheckTracker,
    /// The leader's published plan for a switchover (see `leader_check`).
    pub switchover_plan: Option<SwitchoverPlan>,
    /// When this leader's accepted switchover starts (see `leader_check`).
    pub switchover_starts: Option<Instant>,
    /// When the current leader's lease can first run out, as it last posted (see
    /// `leader_check`); `None` when this node leads or nothing was posted.
    pub leader_lease_expires_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct LeaseInfo {
    pub id: i64,
    pub term: u64,
    pub fence_deadline: Instant,
}

impl Shared {
    /// Whether this node holds a lease that still allows writes at `now`.
    pub fn lease_live(&self, now: Instant) -> bool {
        self.lease
            .is_some_and(|l| lease::is_live(l.fence_deadline, now))
    }

    /// The writable-leader test behind `GET /leader`, evaluated at request time.
    pub fn is_writable_leader(&self, required_followers: u32) -> bool {
        let lease_ok = self.lease_live(Instant::now());
        let primary = self
            .pg
            .as_ref()
            .map(|p| p.state == PgState::Primary)
            .unwrap_or(false);
        let followers = self
            .pg
            .as_ref()
            .map(|p| p.streaming_followers.len())
            .unwrap_or(0);
        self.role == Some(NodeRole::Leader)
            && lease_ok
            && primary
            && followers >= required_followers as usize
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Local facts the loop keeps between iterations (intent, not observation).
#[derive(Debug, Default)]
struct Intent {
    following: Option<String>,
    not_streaming_since: Option<Instant>,
    status_lease: Option<i64>,
    seq: u64,
    pg_failures: u32,
    pg_down_since: Option<Instant>,
    etcd_failures: u32,
    voter: bool,
    roles_ready: bool,
    /// Timeline of the WAL the receiver last flushed, kept after it disconnects: a standby's
    /// other timeline sources (last restartpoint) lag behind a timeline switch, and a
    /// switchover target that just received the old leader's final checkpoint would otherwise
    /// look one timeline behind until it reconnects somewhere.
    received_tli: Option<u32>,
    /// A planned switchover accepted but timed to start later (see `check_phase`).
    switchover_due: Option<(SwitchoverRequest, Instant)>,
    /// Last check that etcd's raft leader is not on this (leader) node; see `raft_placement`.
    raft_placement: Option<(Instant, tokio::task::JoinHandle<()>)>,
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
    pub shared: Arc<Mutex<Shared>>,
    pub syncing: Arc<std::sync::atomic::AtomicBool>,
    epoch: Instant,
    pg: Option<tokio_postgres::Client>,
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
}

/// What the renewer saw: a keep-alive of lease `id` sent at `sent`, which etcd answered with
/// `ttl_s` seconds (`0`: the lease is gone, whatever our clock says).
#[derive(Debug, Clone, Copy)]
struct Renewal {
    id: i64,
    sent: Instant,
    ttl_s: i64,
}

/// Renew the leader lease (if held) every `interval`, in its own task: a renewal must never
/// wait behind the HA loop's other etcd calls, which on a slow network can together take
/// longer than the fencing deadline leaves (`/leader` would flap to 503 in between). The
/// renewer only reads which lease is held; it reports each answer to the loop, which alone
/// changes leadership state (`apply_renewal`, run concurrently with the loop's work).
async fn renew_lease_forever(
    dcs: Dcs,
    shared: Arc<Mutex<Shared>>,
    interval: Duration,
    renewals: tokio::sync::mpsc::Sender<Renewal>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let lease = shared.lock().unwrap().lease;
        if let Some(l) = lease {
            let sent = Instant::now();
            match dcs.lease_keep_alive(l.id).await {
                Ok(ttl_s) => {
                    let r = Renewal {
                        id: l.id,
                        sent,
                        ttl_s,
                    };
                    if renewals.send(r).await.is_err() {
                        return; // the loop is gone
                    }
                }
                Err(e) => tracing::warn!("lease renewal failed: {e}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval.saturating_sub(started.elapsed())) => {}
        }
    }
}

/// The loop's side of a renewal: move the fencing deadline of the lease still held (never
/// backwards), or end it at once when etcd says the lease is gone.
fn apply_renewal(shared: &Mutex<Shared>, r: Renewal, margin: Duration) {
    let mut s = shared.lock().unwrap();
    let Some(cur) = s.lease.as_mut() else { return };
    if cur.id != r.id {
        return; // an answer about a lease given up meanwhile
    }
    if r.ttl_s > 0 {
        let deadline = lease::fence_deadline(r.sent, Duration::from_secs(r.ttl_s as u64), margin);
        if deadline > cur.fence_deadline {
            cur.fence_deadline = deadline;
        }
    } else {
        cur.fence_deadline = r.sent;
    }
}

pub fn rewind_failed_marker(node: &Node) -> std::path::PathBuf {
    node.paths.data_dir().join("rewind-failed")
}

fn diverged_marker(node: &Node) -> std::path::PathBuf {
    node.paths.data_dir().join("pg-diverged")
}

pub fn mark_diverged(node: &Node, on: bool) {
    let p = diverged_marker(node);
    if on {
        let _ = std::fs::write(
            &p,
            "this data directory ran as a primary and must be rewound before following\n",
        );
    } else {
        let _ = std::fs::remove_file(&p);
    }
}

impl HaLoop {
    pub fn new(
        node: Node,
        dcs: Dcs,
        sup: Supervisor,
        shared: Arc<Mutex<Shared>>,
        syncing: Arc<std::sync::atomic::AtomicBool>,
    ) -> HaLoop {
        let (command_tx, commands) = tokio::sync::mpsc::channel(4);
        HaLoop {
            node,
            dcs,
            sup,
            shared,
            syncing,
            epoch: Instant::now(),
            pg: None,
            intent: Intent::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            commands,
            command_tx,
            request: None,
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
            self.shared.clone(),
            self.wake.clone(),
            shutdown.clone(),
        ));
        let (renewal_tx, mut renewals) = tokio::sync::mpsc::channel(8);
        tokio::spawn(renew_lease_forever(
            self.dcs.clone(),
            self.shared.clone(),
            interval,
            renewal_tx,
            shutdown.clone(),
        ));
        let margin = Duration::from_millis(self.node.cfg.leaderl.fence_margin_ms);
        let shared = self.shared.clone();
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
                        Some(r) = renewals.recv() => apply_renewal(&shared, r, margin),
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!("HA loop: {e:#}");
                self.shared.lock().unwrap().last_error = Some(format!("{e:#}"));
            }
            self.shared.lock().unwrap().last_loop = Some(Instant::now());
            // Wait out the interval, or less: until the fencing deadline (fence exactly at it),
            // a wake-up, or an operator request. Renewals arriving meanwhile are applied and
            // the wait goes on.
            let mut stop = false;
            loop {
                let mut wait = interval.saturating_sub(started.elapsed());
                if let Some(l) = self.shared.lock().unwrap().lease {
                    wait = wait.min(l.fence_deadline.saturating_duration_since(Instant::now()));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => { stop = true; break }
                    _ = tokio::time::sleep(wait) => break,
                    _ = self.wake.notified() => break,
                    Some(r) = renewals.recv() => apply_renewal(&shared, r, margin),
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
        // Leaving: hand leadership over at once instead of making the cluster wait for the TTL.
        let lease = self.shared.lock().unwrap().lease.take();
        if let Some(l) = lease {
            let _ = self
                .sup
                .stop(postgres::SERVICE, Duration::from_secs(10))
                .await;
            mark_diverged(&self.node, true);
            let _ = self.dcs.delete_if_lease(keys::LEADER, l.id).await;
            let _ = self.dcs.lease_revoke(l.id).await;
        }
        if let Some(id) = self.intent.status_lease {
            let _ = self.dcs.lease_revoke(id).await;
        }
    }

    async fn observe_pg(&mut self) -> Option<PgObservation> {
        let running = self
            .sup
            .state(postgres::SERVICE)
            .map(|s| s.running)
            .unwrap_or(false);
        if !running {
            self.pg = None;
            self.intent.received_tli = None;
            return None;
        }
        if self.pg.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
            self.pg = postgres::connect(&self.node, self.timeout()).await.ok();
        }
        let client = self.pg.as_ref()?;
        match tokio::time::timeout(self.timeout(), postgres::observe(client)).await {
            Ok(Ok(mut o)) => {
                match o.state {
                    PgState::Streaming => self.intent.received_tli = Some(o.position.timeline),
                    PgState::Standby => {
                        if let Some(t) = self.intent.received_tli {
                            o.position.timeline = o.position.timeline.max(t);
                        }
                    }
                    PgState::Primary | PgState::Stopped | PgState::Empty => {
                        self.intent.received_tli = None
                    }
                }
                Some(o)
            }
            _ => {
                self.pg = None;
                None
            }
        }
    }

    async fn read_dcs(&mut self) -> Result<DcsView, dcs::DcsError> {
        let kvs = self.dcs.get_prefix(keys::PREFIX).await?;
        let view = DcsView::from_kvs(
            kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
            &self.node.state.guid,
        );
        self.shared.lock().unwrap().switchover_plan = view.switchover_plan.clone();
        Ok(view)
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
        let now = Instant::now();
        self.track_pg(&pg, view.as_ref(), now);

        let lease = self.shared.lock().unwrap().lease;
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
            self.shared.lock().unwrap().switchover_starts = None;
        }

        let local = self.local_state(&pg, view.as_ref());
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
            own_checks: self.shared.lock().unwrap().checks.phases(unix_ms()),
            request: self.request.as_ref().map(|(r, _)| r.clone()),
        };
        let decision = decide::decide(&obs);
        if decision.reason != self.shared.lock().unwrap().reason {
            tracing::info!(role = decision.role.as_str(), "{}", decision.reason);
        }
        {
            let mut s = self.shared.lock().unwrap();
            s.role = Some(decision.role);
            s.reason = decision.reason.clone();
            s.pg = pg.clone();
            s.etcd_ok = etcd_ok;
            if let Some(v) = &view {
                s.leader = v.leader.clone();
                s.term = v.term;
                s.members = v.members.clone();
                s.voters = v.voters.clone();
                s.cluster_failover = v.cluster_failover;
                s.node_failover = v.node_failover;
                s.nodes = nodes.clone();
                s.leader_lease_expires_unix_ms = v
                    .leader
                    .as_ref()
                    .filter(|l| l.guid != node.state.guid)
                    .and_then(|l| v.members.iter().find(|m| m.guid == l.guid))
                    .and_then(|m| m.lease_expires_unix_ms);
            }
        }
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
            self.shared.lock().unwrap().last_error = Some(err);
            break;
        }
        self.answer_request(&decision);
        if view.is_some() {
            self.publish(decision.role, &pg, view.as_ref()).await;
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
            (None, OperatorRequest::ForceLeader) => match self.shared.lock().unwrap().lease {
                Some(l) => Ok(format!("{} is now the leader (term {})", self.node.cfg.fqdn, l.term)),
                None => Err(format!(
                    "force-leader did not take effect: {} (another node may have taken leadership meanwhile)",
                    decision.reason
                )),
            },
        };
        let _ = reply.send(answer);
    }

    /// Carry out the core's timing of an accepted switchover: remember when it starts (the
    /// core steps down once that time has come), publish the plan the target holds its checks
    /// by, and wake the loop at the start.
    fn schedule_switchover(
        &mut self,
        view: Option<&DcsView>,
        start_in_ms: u64,
        ready_unix_ms: u64,
    ) {
        let Some(req) = view.and_then(|v| v.switchover_request.clone()) else {
            return;
        };
        let at = Instant::now() + Duration::from_millis(start_in_ms);
        self.shared.lock().unwrap().switchover_starts = Some(at);
        self.publish_switchover_plan(&req, ready_unix_ms);
        tracing::info!(
            delay_ms = start_in_ms,
            "switchover timed to the frontends' health checks"
        );
        if start_in_ms == 0 {
            return;
        }
        self.intent.switchover_due = Some((req, at));
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            wake.notify_one();
        });
    }

    /// Publishes when the switchover starts, bound to the leader lease (it vanishes with the
    /// hand-over or the leader). In the background: the plan only tunes health-check timing,
    /// and a failed write just loses that.
    fn publish_switchover_plan(&self, req: &SwitchoverRequest, ready_unix_ms: u64) {
        let Some(lease) = self.shared.lock().unwrap().lease else {
            return;
        };
        let plan = SwitchoverPlan {
            target: req.target.clone(),
            ready_unix_ms,
        };
        let dcs = self.dcs.clone();
        tokio::spawn(async move {
            if let Ok(v) = serde_json::to_vec(&plan) {
                if let Err(e) = dcs.put(keys::SWITCHOVER_PLAN, &v, Some(lease.id)).await {
                    tracing::debug!("publishing the switchover plan: {e}");
                }
            }
        });
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

    /// Keep the timestamps the core counts from (PostgreSQL down since, not streaming since).
    fn track_pg(&mut self, pg: &Option<PgObservation>, view: Option<&DcsView>, now: Instant) {
        let want_up = self
            .sup
            .state(postgres::SERVICE)
            .map(|s| s.want_up)
            .unwrap_or(false);
        if pg.is_none() && want_up {
            self.intent.pg_down_since.get_or_insert(now);
        } else if pg.is_some() {
            self.intent.pg_down_since = None;
        }
        self.intent.pg_failures = larder_core::health::pg_failures(
            self.intent.pg_down_since.map(|t| self.ms(t)),
            self.ms(now),
            self.node.cfg.leaderl.health_check.interval_seconds,
        );
        if view.is_none() {
            self.intent.etcd_failures += 1;
        } else {
            self.intent.etcd_failures = 0;
        }
        let leader = view.and_then(|v| v.leader.as_ref()).map(|l| l.guid.clone());
        match pg.as_ref().map(|p| p.state) {
            Some(PgState::Streaming) => self.intent.not_streaming_since = None,
            _ => {
                if self.intent.following.is_some() && self.intent.not_streaming_since.is_none() {
                    self.intent.not_streaming_since = Some(now);
                }
            }
        }
        if leader != self.intent.following && self.intent.following.is_some() && leader.is_some() {
            // Leader changed: a fresh follow starts; the old failure timer is meaningless.
            self.intent.not_streaming_since = None;
        }
    }

    /// Raw local facts for the core (which derives health, eligibility and backoffs from them).
    fn local_state(&self, pg: &Option<PgObservation>, view: Option<&DcsView>) -> LocalState {
        let node = &self.node;
        let pg_state = match pg {
            Some(p) => p.state,
            None if !postgres::has_data(node) => PgState::Empty,
            None => PgState::Stopped,
        };
        let leader = view.and_then(|v| v.leader.as_ref());
        let copy_failed_at = self.shared.lock().unwrap().copy_failed_at;
        LocalState {
            pg: pg_state,
            position: pg.as_ref().map(|p| p.position).unwrap_or_default(),
            pg_failures: self.intent.pg_failures,
            following: self.intent.following.clone(),
            not_streaming_since_ms: self.intent.not_streaming_since.map(|t| self.ms(t)),
            diverged: diverged_marker(node).exists(),
            // Written by a failed rewind (or `pgsql-follow --force-basebackup`), removed by
            // a successful base backup; names the leader it applies to.
            rewind_failed: leader.is_some_and(|l| {
                std::fs::read_to_string(rewind_failed_marker(node))
                    .ok()
                    .as_deref()
                    == Some(l.guid.as_str())
            }),
            disk_free_mb: crate::disk::free_mb(&node.paths.data_dir()),
            syncing: self.syncing_now(),
            copy_failed_ms: copy_failed_at.map(|t| self.ms(t)),
            switchover_scheduled: self
                .intent
                .switchover_due
                .as_ref()
                .map(|(r, at)| (r.clone(), self.ms(*at))),
        }
    }

    async fn execute(
        &mut self,
        action: Action,
        view: Option<&DcsView>,
        nodes: &[NodeRecord],
    ) -> anyhow::Result<()> {
        let node = self.node.clone();
        match action {
            Action::Fence { reason } => {
                tracing::warn!("fencing: {reason}");
                self.shared.lock().unwrap().role = Some(NodeRole::DeposedLeader);
                // SIGQUIT = immediate shutdown: no new commit can be acknowledged after this.
                self.sup
                    .stop_with(
                        postgres::SERVICE,
                        Some(nix::sys::signal::Signal::SIGQUIT),
                        Duration::from_millis(500),
                    )
                    .await?;
                mark_diverged(&node, true);
                self.intent.following = None;
            }
            Action::ReleaseLeadership => {
                let lease = self.shared.lock().unwrap().lease.take();
                if let Some(l) = lease {
                    let _ = self.dcs.delete_if_lease(keys::LEADER, l.id).await;
                    let _ = self.dcs.lease_revoke(l.id).await;
                }
            }
            Action::AcquireLeadership { term } => {
                let ttl = node.cfg.leaderl.leader_ttl_seconds as i64;
                let id = self.dcs.lease_grant(ttl).await?;
                let sent = Instant::now();
                let record = LeaderRecord {
                    guid: node.state.guid.clone(),
                    name: node.cfg.fqdn.clone(),
                    address: node.cfg.publish_address.clone(),
                    term,
                };
                let won = self
                    .dcs
                    .acquire_leader(term - 1, &serde_json::to_vec(&record)?, id)
                    .await?;
                if won {
                    let margin = Duration::from_millis(node.cfg.leaderl.fence_margin_ms);
                    tracing::info!(term, "acquired leadership");
                    self.shared.lock().unwrap().lease = Some(LeaseInfo {
                        id,
                        term,
                        fence_deadline: lease::fence_deadline(
                            sent,
                            Duration::from_secs(ttl as u64),
                            margin,
                        ),
                    });
                    self.intent.roles_ready = false;
                    // Next step (promote) right away, not one loop interval later.
                    self.wake.notify_one();
                } else {
                    let _ = self.dcs.lease_revoke(id).await;
                }
            }
            Action::Promote => {
                postgres::write_follow_conf(&node, None)?;
                let client = self
                    .pg
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no PostgreSQL connection to promote"))?;
                postgres::promote(client).await?;
                mark_diverged(&node, false);
                self.intent.following = None;
                tracing::info!("promoted PostgreSQL to primary");
                // Observe the primary now, so /leader answers 200 without waiting a loop.
                self.wake.notify_one();
            }
            Action::StartPrimary => {
                postgres::write_follow_conf(&node, None)?;
                self.sup.start(postgres::SERVICE)?;
                self.wake.notify_one();
            }
            Action::Detach => {
                postgres::write_follow_conf(&node, None)?;
                // primary_conninfo is reloadable: the WAL receiver stops, the standby stays up.
                self.sup
                    .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
                self.intent.following = None;
                self.intent.not_streaming_since = None;
                // Post the final position as soon as the receiver is gone.
                self.wake.notify_one();
            }
            Action::StartStandby => {
                postgres::write_follow_conf(&node, None)?;
                postgres::set_standby(&node, true)?;
                self.sup.start(postgres::SERVICE)?;
            }
            Action::Follow { leader } => {
                let changed = postgres::write_follow_conf(&node, Some(&leader))?;
                postgres::set_standby(&node, true)?;
                let running = self
                    .sup
                    .state(postgres::SERVICE)
                    .map(|s| s.running)
                    .unwrap_or(false);
                if running && changed {
                    // primary_conninfo is reloadable since PostgreSQL 13.
                    self.sup
                        .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
                } else if !running {
                    self.sup.start(postgres::SERVICE)?;
                }
                if self.intent.following.as_deref() != Some(leader.guid.as_str()) {
                    self.intent.following = Some(leader.guid.clone());
                    self.intent.not_streaming_since = Some(Instant::now());
                }
            }
            // The core only asks for a copy from a promoted leader, outside the failure backoff.
            Action::Rewind { leader } => self.spawn_copy(leader, false),
            Action::Basebackup { leader } => self.spawn_copy(leader, true),
            Action::SetSyncStandbys { k, names } => {
                let Some(client) = self.pg.as_ref() else {
                    return Ok(());
                };
                let ssn = larder_core::pgconf::synchronous_standby_names(k, &names);
                let slots: Vec<String> = nodes
                    .iter()
                    .filter(|n| n.guid != node.state.guid)
                    .map(|n| larder_core::model::standby_name(&n.guid))
                    .collect();
                postgres::apply_replication(client, &ssn, &slots).await?;
                if !self.intent.roles_ready {
                    postgres::create_roles(&node, client).await?;
                    self.intent.roles_ready = true;
                }
            }
            Action::ClearSwitchover => {
                self.dcs.delete(keys::SWITCHOVER).await?;
            }
            Action::RegisterVoter => {
                self.dcs
                    .put(&keys::voter(&node.state.guid), b"1", None)
                    .await?;
                self.intent.voter = true;
            }
            Action::RefuseSwitchover { reason } => {
                self.dcs.delete(keys::SWITCHOVER_REQUEST).await?;
                self.shared.lock().unwrap().last_error = Some(reason.clone());
                self.dcs
                    .put(keys::SWITCHOVER_REFUSED, reason.as_bytes(), None)
                    .await?;
            }
            Action::ScheduleSwitchover {
                start_in_ms,
                ready_unix_ms,
            } => self.schedule_switchover(view, start_in_ms, ready_unix_ms),
            Action::StepDown { target } => self.step_down(target).await?,
            // Answered to the operator by the loop (see `answer_request`).
            Action::RefuseRequest { .. } => {}
        }
        Ok(())
    }

    /// Rewind (or re-clone) in the background; the loop keeps publishing `syncing` meanwhile.
    fn spawn_copy(&mut self, leader: LeaderRecord, full: bool) {
        if self.syncing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let node = self.node.clone();
        let sup = self.sup.clone();
        let shared = self.shared.clone();
        let syncing = self.syncing.clone();
        self.intent.following = Some(leader.guid.clone());
        self.intent.not_streaming_since = None;
        tokio::spawn(async move {
            let _ = sup.stop(postgres::SERVICE, Duration::from_secs(30)).await;
            let result = if full {
                let sh = shared.clone();
                postgres::basebackup(&node, &leader, move |p| sh.lock().unwrap().copy = Some(p))
                    .await
                    .map(|_| "base backup complete".to_string())
            } else {
                postgres::rewind(&node, &leader).await
            };
            match result {
                Ok(msg) => {
                    tracing::info!(
                        "rejoined {}: {}",
                        leader.name,
                        msg.lines().last().unwrap_or("")
                    );
                    mark_diverged(&node, false);
                    if full {
                        let _ = std::fs::remove_file(rewind_failed_marker(&node));
                    }
                }
                Err(e) => {
                    tracing::warn!("copy from {} failed: {e}", leader.name);
                    let mut s = shared.lock().unwrap();
                    s.last_error = Some(e.to_string());
                    s.copy_failed_at = Some(Instant::now());
                    drop(s);
                    if !full {
                        // Next iteration falls back to a base backup.
                        let _ = std::fs::write(rewind_failed_marker(&node), &leader.guid);
                    }
                }
            }
            shared.lock().unwrap().copy = None;
            syncing.store(false, std::sync::atomic::Ordering::SeqCst);
            if postgres::has_data(&node) {
                let _ = sup.start(postgres::SERVICE);
            }
        });
    }

    async fn publish(
        &mut self,
        role: NodeRole,
        pg: &Option<PgObservation>,
        view: Option<&DcsView>,
    ) {
        let node = &self.node;
        let lease = match self.intent.status_lease {
            Some(id) => match self.dcs.lease_keep_alive(id).await {
                Ok(ttl) if ttl > 0 => Some(id),
                _ => None,
            },
            None => None,
        };
        let lease = match lease {
            Some(id) => id,
            None => {
                // Same TTL as leadership, so a dead node shows as offline as soon as its leadership
                // could have lapsed.
                let ttl = node.cfg.leaderl.leader_ttl_seconds as i64;
                match self.dcs.lease_grant(ttl).await {
                    Ok(id) => id,
                    Err(_) => return,
                }
            }
        };
        self.intent.status_lease = Some(lease);
        self.intent.seq += 1;
        let leader_seen = view.and_then(|v| v.leader.as_ref()).map(|l| l.guid.clone());
        let position = pg.as_ref().map(|p| p.position).unwrap_or_default();
        let lag = match (view.and_then(|v| v.leader.as_ref()), view) {
            (Some(l), Some(v)) if l.guid != node.state.guid => v
                .members
                .iter()
                .find(|m| m.guid == l.guid)
                .map(|lm| lm.position.lsn.0.saturating_sub(position.lsn.0)),
            _ => None,
        };
        let pg_state = match pg {
            Some(p) => p.state,
            None if postgres::has_data(node) => PgState::Stopped,
            None => PgState::Empty,
        };
        let failover = view.map(|v| v.node_failover).unwrap_or(true);
        // One lock for everything read from the shared state (a second lock() inside the
        // struct literal below would deadlock on the first one's temporary guard).
        let (search_ok, check_phases, lease_expires_unix_ms) = {
            let s = self.shared.lock().unwrap();
            let expires = s.lease.map(|l| {
                lease::expires_unix_ms(
                    l.fence_deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(node.cfg.leaderl.fence_margin_ms),
                    unix_ms(),
                )
            });
            (s.search_ok, s.checks.phases(unix_ms()), expires)
        };
        let status = MemberStatus {
            guid: node.state.guid.clone(),
            name: node.cfg.fqdn.clone(),
            address: node.cfg.publish_address.clone(),
            role,
            pg: pg_state,
            position,
            eligible: larder_core::health::eligible(failover, pg_state),
            failover_enabled: failover,
            term: view.map(|v| v.term).unwrap_or(0),
            leader_seen,
            // Voting membership is persistent (etcd), not forgotten across agent restarts.
            voter: larder_core::health::voter(
                self.intent.voter,
                view.is_some_and(|v| v.voters.contains(&node.state.guid)),
            ),
            lag_bytes: lag,
            search_ok,
            etcd_ok: self.intent.etcd_failures < node.cfg.leaderl.health_check.max_etcd_failures,
            seq: self.intent.seq,
            updated_unix_ms: unix_ms(),
            check_phases,
            lease_expires_unix_ms,
        };
        if let Ok(b) = serde_json::to_vec(&status) {
            let _ = self
                .dcs
                .put(&keys::status(&node.state.guid), &b, Some(lease))
                .await;
        }
    }

    /// The leader's planned hand-over (decided by the core, `Action::StepDown`): stop
    /// PostgreSQL cleanly (its walsenders ship the shutdown checkpoint to the standbys), record
    /// the checkpoint position the target must hold, release the key. Nothing acknowledged is
    /// lost and nobody waits for a TTL.
    async fn step_down(&mut self, target: Option<String>) -> anyhow::Result<()> {
        let node = self.node.clone();
        let Some(lease) = self.shared.lock().unwrap().lease else {
            anyhow::bail!("step down: this node does not hold the lease");
        };
        self.intent.switchover_due = None;
        self.dcs.delete(keys::SWITCHOVER_REQUEST).await?;
        tracing::info!(target = ?target, "planned switchover");
        {
            let mut s = self.shared.lock().unwrap();
            s.role = Some(NodeRole::DeposedLeader);
            s.switchover_starts = None;
        }
        // Let held health checks see the 503 before PostgreSQL stops: a frontend that still
        // routes here once connections are refused stalls a whole haproxy retry (1 s).
        tokio::time::sleep(crate::leader_check::POLL * 3).await;
        self.sup
            .stop(postgres::SERVICE, Duration::from_secs(30))
            .await?;
        let pos = postgres::checkpoint_position(&node).await?;
        let min = WalPosition {
            timeline: pos.timeline,
            lsn: larder_core::model::Lsn(pos.lsn.0 + 1),
        };
        let sw = Switchover {
            target,
            term: lease.term,
            min_position: min,
            from: node.state.guid.clone(),
            deadline_unix_ms: unix_ms() + 15_000,
        };
        self.dcs
            .put(keys::SWITCHOVER, &serde_json::to_vec(&sw)?, None)
            .await?;
        mark_diverged(&node, true);
        self.shared.lock().unwrap().lease = None;
        self.intent.following = None;
        self.dcs.delete_if_lease(keys::LEADER, lease.id).await?;
        let _ = self.dcs.lease_revoke(lease.id).await;
        self.wake.notify_one();
        Ok(())
    }
}
