//! The HA decision: a pure function from what this node observes to what it should do.
//!
//! No I/O and no clock reads happen here: the agent passes `now_ms` (a monotonic clock) and
//! everything it saw, and executes the returned actions. That keeps every safety rule unit- and
//! property-testable without processes. The rules, in order of precedence:
//!
//! 1. **Fence first.** A leader whose fencing deadline (last *observed* successful lease
//!    renewal + TTL − margin) has passed, or who sees another node's leader key, stops
//!    PostgreSQL before anything else. The deadline is measured from when the renewal request
//!    was *sent*, so the lease on the etcd side can only expire later than we think.
//! 2. **Never two writers.** A node that is not the leader never runs PostgreSQL as a primary.
//! 3. **Never lose an acknowledged commit.** A candidate acquires leadership only when it holds
//!    the most advanced WAL position among positions posted — after the posters saw the leader
//!    gone and stopped receiving WAL — by a majority of voters. In quorum mode every acknowledged commit sits on a
//!    majority, and any two majorities intersect, so the winner holds every acknowledged commit.
//! 4. **Planned switchovers lose nothing:** only the named target (holding the old leader's
//!    shutdown checkpoint) may acquire while a switchover record is live — and it may do so at
//!    once, since that checkpoint is the last record the old leader wrote.

use crate::check_phase::CheckPhase;
use crate::config::{HealthCheckConfig, SyncMode};
use crate::health;
use crate::model::{
    LeaderRecord, MemberStatus, NodeRecord, NodeRole, PgState, Switchover, SwitchoverPlan,
    SwitchoverRequest, WalPosition,
};

/// Everything the agent observed in one loop iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub now_ms: u64,
    /// Wall clock, only for comparing with deadlines other nodes wrote (switchover expiry).
    pub now_unix_ms: u64,
    pub me: String,
    pub local: LocalState,
    /// `None` when etcd could not be read this iteration.
    pub dcs: Option<DcsView>,
    /// Lease bookkeeping for leadership held by this node.
    pub lease: Option<HeldLease>,
    pub sync_mode: SyncMode,
    /// Thresholds of the health checks (`leaderl.health_check.*`).
    pub health: HealthCheckConfig,
    /// How long a follower may fail to stream before the agent rewinds it
    /// (`leaderl.rejoin_timeout_ms`).
    pub rejoin_timeout_ms: u64,
    /// The frontends' health-check rhythms this node has seen (for timing a switchover).
    pub own_checks: Vec<CheckPhase>,
    /// Whether a switchover's start is timed to them (`leaderl.align_switchover_to_checks`).
    pub align_switchover: bool,
    /// What an operator asked this agent for (control socket), if anything.
    pub request: Option<OperatorRequest>,
    /// The VIP that follows the leader, when one is configured (see [`vip`]).
    pub vip: Option<vip::VipView>,
}

/// Operator intent delivered to the loop through the local control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRequest {
    /// `force-leader`: take leadership while no leader exists, if this node is the most
    /// advanced of the live members.
    ForceLeader,
    /// `pgsql-follow`: re-sync this follower from the leader (`full`: a fresh base backup).
    Resync { full: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalState {
    pub pg: PgState,
    pub position: WalPosition,
    /// Consecutive failed PostgreSQL health checks.
    pub pg_failures: u32,
    /// The leader our recovery configuration currently points at.
    pub following: Option<String>,
    /// Since when (monotonic ms) we have been trying to follow `following` without streaming.
    pub not_streaming_since_ms: Option<u64>,
    /// This data directory ran as a primary that is no longer the leader: it may hold WAL the
    /// new leader never saw and must be rewound before following.
    pub diverged: bool,
    /// A rewind was tried against the current leader and failed: re-clone instead.
    pub rewind_failed: bool,
    /// Free space of the data directory's file system (`None`: could not be read).
    pub disk_free_mb: Option<u64>,
    /// Set while a base backup or rewind is running.
    pub syncing: bool,
    /// When (monotonic ms) the last rewind or base backup failed.
    pub copy_failed_ms: Option<u64>,
    /// A switchover this leader accepted and timed to start later: the request and when
    /// (monotonic ms) it starts.
    pub switchover_scheduled: Option<(SwitchoverRequest, u64)>,
}

/// One read of the cluster's etcd state (parsed by [`DcsView::from_kvs`], see [`crate::keys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DcsView {
    pub leader: Option<LeaderRecord>,
    /// Who acquired the current term (survives the leader key's lease).
    pub last_leader: Option<LeaderRecord>,
    pub term: u64,
    /// Statuses of every registered member whose liveness key exists (self included).
    pub members: Vec<MemberStatus>,
    /// Registered members that vote (see [`MemberStatus::voter`]), alive or not.
    pub voters: Vec<String>,
    /// Registered members.
    pub nodes: Vec<NodeRecord>,
    pub cluster_failover: bool,
    pub node_failover: bool,
    pub switchover: Option<Switchover>,
    /// An operator's `promote`/`demote`, not yet taken up by the leader.
    pub switchover_request: Option<SwitchoverRequest>,
    /// The leader's timing plan for an accepted switchover.
    pub switchover_plan: Option<SwitchoverPlan>,
    /// The cluster's protocol version (`None`: not recorded yet, a cluster created before
    /// versions were recorded).
    pub protocol: Option<u32>,
    /// The rolling upgrade in progress, if any.
    pub upgrade_lock: Option<crate::model::UpgradeLock>,
    /// Nodes taken down for a full-downtime upgrade.
    pub down_for_upgrade: Vec<crate::model::DownForUpgrade>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// Term of our leadership.
    pub term: u64,
    /// Monotonic ms after which we must no longer accept writes.
    pub fence_deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop PostgreSQL immediately and mark the data directory as possibly diverged.
    Fence { reason: String },
    /// Drop leadership in etcd (delete the key, revoke the lease).
    ReleaseLeadership,
    /// Compare-and-swap the leader key: absent and term unchanged → ours with `term`.
    AcquireLeadership { term: u64 },
    /// Turn the local standby into the primary.
    Promote,
    /// Start PostgreSQL as the primary (we hold the lease and it is down).
    StartPrimary,
    /// Point recovery at the leader and (re)start as a standby.
    Follow { leader: LeaderRecord },
    /// Run as a standby with no upstream while no leader exists, so the position is known.
    StartStandby,
    /// Stop receiving WAL (clear the upstream, keep running as a standby): a position posted
    /// for an election must be final, and an old primary whose agent is frozen may still be
    /// running and sending WAL that a streaming standby would acknowledge.
    Detach,
    /// `pg_rewind` from the leader, then follow it.
    Rewind { leader: LeaderRecord },
    /// Re-clone from the leader with `pg_basebackup`.
    Basebackup { leader: LeaderRecord },
    /// Leader: set `synchronous_standby_names` to `ANY k (names)`; `k == 0` = asynchronous.
    SetSyncStandbys { k: usize, names: Vec<String> },
    /// Leader: clear a switchover record that has completed or expired.
    ClearSwitchover,
    /// Leader: refuse the pending switchover request (clear it and tell the operator why).
    RefuseSwitchover { reason: String },
    /// Leader: start the accepted switchover `start_in_ms` from now, and publish when the target
    /// should be writable (it holds the frontends' checks from a little before then).
    ScheduleSwitchover {
        start_in_ms: u64,
        ready_unix_ms: u64,
    },
    /// Leader: planned hand-over now. Answer `/leader` 503, stop PostgreSQL cleanly (its
    /// walsenders ship the shutdown checkpoint), record that checkpoint as the position the
    /// target must hold, release the key. Nothing acknowledged is lost, nobody waits for a TTL.
    StepDown { target: Option<String> },
    /// Record this node as a voting member (it streamed from a leader, or leads).
    RegisterVoter,
    /// Refuse an operator's request to this agent, saying why.
    RefuseRequest { reason: String },
    /// Leaving (agent shutdown): stop PostgreSQL cleanly and mark the data directory as a
    /// former primary's.
    StopForShutdown,
    /// Leader: record the cluster's protocol version where none is recorded yet, or raise it
    /// once every registered member speaks a newer one (the end of a rolling upgrade).
    RecordProtocol { from: Option<u32>, version: u32 },
    /// Stop PostgreSQL cleanly (`down-for-upgrade` on a non-leader; its data stays a
    /// follower's).
    StopPostgres,
    /// Mark the data directory for a re-sync (`full`: base backup, else rewind); the following
    /// decisions carry it out like any rejoin.
    MarkResync { full: bool },
    /// Leader, PostgreSQL writable: add the VIP with this kernel lifetime and announce it
    /// (gratuitous ARP). See [`vip`].
    AddVip { lifetime_s: u32 },
    /// Leader holding the VIP: extend its kernel lifetime (it ends before the fencing deadline).
    RenewVip { lifetime_s: u32 },
    /// Remove the VIP from the interface (first, before anything else of the decision).
    RemoveVip { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub role: NodeRole,
    pub actions: Vec<Action>,
    /// Human-readable explanation for status and logs.
    pub reason: String,
}

impl Decision {
    fn new(role: NodeRole, actions: Vec<Action>, reason: impl Into<String>) -> Decision {
        Decision {
            role,
            actions,
            reason: reason.into(),
        }
    }
}

/// Number of voters needed for a majority.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// `k` of `ANY k (...)` for a cluster of `voters` voting members (leader included).
pub fn sync_quorum(mode: SyncMode, voters: usize) -> usize {
    match mode {
        SyncMode::Off => 0,
        // leader + k followers = majority of voters
        SyncMode::Quorum => voters / 2,
        SyncMode::Strict => voters.saturating_sub(1),
    }
}

/// What the agent does when it shuts down: a leader hands leadership over at once (a clean
/// stop, then the key and lease released) instead of making the cluster wait for the TTL; a
/// non-leader just stops.
pub fn on_shutdown(holds_lease: bool) -> Vec<Action> {
    if holds_lease {
        vec![Action::StopForShutdown, Action::ReleaseLeadership]
    } else {
        vec![]
    }
}

pub fn decide(obs: &Observation) -> Decision {
    vip::apply(obs, decide_leadership(obs))
}

fn decide_leadership(obs: &Observation) -> Decision {
    // A cluster whose protocol this build does not speak: never lead in it, never act on it.
    if let Some(Err(why)) = obs
        .dcs
        .as_ref()
        .and_then(|d| d.protocol)
        .map(|p| crate::version::check(p, crate::version::PROTOCOL))
    {
        let actions = match obs.lease {
            Some(_) => vec![
                Action::Fence {
                    reason: why.clone(),
                },
                Action::ReleaseLeadership,
            ],
            None => vec![],
        };
        return Decision::new(NodeRole::Down, actions, why);
    }
    if let Some(d) = upgrade::down(obs) {
        return d;
    }
    match obs.lease {
        Some(lease) => decide_as_leader(obs, lease),
        None => decide_as_non_leader(obs),
    }
}

/// The cluster's protocol: recorded by the first leader that sees none, raised by the leader
/// once every registered member posts a newer one (the N / N−1 rule of [`crate::version`]:
/// until then, new agents keep to what the old ones understand).
fn protocol_action(dcs: &DcsView) -> Option<Action> {
    let mine = crate::version::PROTOCOL;
    match dcs.protocol {
        None => Some(Action::RecordProtocol {
            from: None,
            version: mine,
        }),
        Some(p) if p < mine => {
            let all_speak_it = dcs.nodes.iter().all(|n| {
                dcs.members
                    .iter()
                    .any(|m| m.guid == n.guid && m.protocol >= mine)
            });
            all_speak_it.then_some(Action::RecordProtocol {
                from: Some(p),
                version: mine,
            })
        }
        Some(_) => None,
    }
}

fn decide_as_leader(obs: &Observation, lease: HeldLease) -> Decision {
    let mut d = decide_as_leader_inner(obs, lease);
    // Operator requests make no sense on the leader: refuse them, change nothing else.
    let refusal = match &obs.request {
        Some(OperatorRequest::Resync { .. }) => Some(
            "this node is the leader; run pgsql-follow on a follower (or `larder demote` first)",
        ),
        Some(OperatorRequest::ForceLeader) => {
            Some("force-leader refused: this node is the leader already")
        }
        None => None,
    };
    if let Some(reason) = refusal {
        d.actions.push(Action::RefuseRequest {
            reason: reason.into(),
        });
    }
    d
}

fn decide_as_leader_inner(obs: &Observation, lease: HeldLease) -> Decision {
    // Rule 1: our own clock decides, whatever etcd says or fails to say.
    if obs.now_ms >= lease.fence_deadline_ms {
        return Decision::new(
            NodeRole::DeposedLeader,
            vec![
                Action::Fence {
                    reason: "leadership lease could not be renewed in time".into(),
                },
                Action::ReleaseLeadership,
            ],
            "lease renewal deadline passed: fenced",
        );
    }
    let Some(dcs) = &obs.dcs else {
        // Still within the deadline: keep serving, the deadline will fence us if etcd stays away.
        return leader_steady(obs, lease, None);
    };
    match &dcs.leader {
        Some(l) if l.guid == obs.me && l.term == lease.term => {}
        other => {
            let who = other
                .as_ref()
                .map(|l| format!("{} holds it (term {})", l.name, l.term))
                .unwrap_or_else(|| "the leader key is gone".into());
            return Decision::new(
                NodeRole::DeposedLeader,
                vec![
                    Action::Fence {
                        reason: format!("lost leadership: {who}"),
                    },
                    Action::ReleaseLeadership,
                ],
                format!("lost leadership: {who}"),
            );
        }
    }
    // A planned switchover requested by an operator.
    if let Some(req) = &dcs.switchover_request {
        if let Some(actions) = switchover::leader_actions(obs, dcs, req) {
            let stepping_down = actions.iter().any(|a| matches!(a, Action::StepDown { .. }));
            if stepping_down {
                return Decision::new(
                    NodeRole::DeposedLeader,
                    actions,
                    "planned switchover: stepping down",
                );
            }
            let mut d = leader_steady(obs, lease, Some(dcs));
            d.actions.extend(actions);
            return d;
        }
    }
    // PostgreSQL down on the leader for longer than its failure budget: hand over.
    if obs.local.pg_failures >= obs.health.max_pgsql_failures
        && !matches!(obs.local.pg, PgState::Primary)
        && has_eligible_follower(obs, dcs)
    {
        return Decision::new(
            NodeRole::DeposedLeader,
            vec![
                Action::Fence {
                    reason: "PostgreSQL failed its health checks on the leader".into(),
                },
                Action::ReleaseLeadership,
            ],
            "PostgreSQL on the leader is down: handing over leadership",
        );
    }
    // The data disk is full: PostgreSQL refuses every write that needs space (a new WAL
    // segment, a table extension) until an operator frees some. A streaming follower with room
    // holds every acknowledged commit (synchronous quorum) and takes over; with none, staying
    // is no worse than handing over.
    if health::disk_full(obs.local.disk_free_mb) && has_eligible_follower(obs, dcs) {
        return Decision::new(
            NodeRole::DeposedLeader,
            vec![
                Action::Fence {
                    reason: "the data disk on the leader is full".into(),
                },
                Action::ReleaseLeadership,
            ],
            "the leader's data disk is full: handing over leadership",
        );
    }
    leader_steady(obs, lease, Some(dcs))
}

fn has_eligible_follower(obs: &Observation, dcs: &DcsView) -> bool {
    dcs.members
        .iter()
        .any(|m| m.guid != obs.me && m.eligible && m.pg == PgState::Streaming)
}

fn leader_steady(obs: &Observation, _lease: HeldLease, dcs: Option<&DcsView>) -> Decision {
    let mut actions = Vec::new();
    match obs.local.pg {
        PgState::Primary => {}
        PgState::Streaming | PgState::Standby => actions.push(Action::Promote),
        PgState::Stopped => actions.push(Action::StartPrimary),
        PgState::Empty => {
            // A leader without data cannot serve; nothing safe to do but hand over.
            return Decision::new(
                NodeRole::DeposedLeader,
                vec![
                    Action::Fence {
                        reason: "leader has no data directory".into(),
                    },
                    Action::ReleaseLeadership,
                ],
                "no data directory on the leader",
            );
        }
    }
    if let Some(dcs) = dcs {
        let mut names: Vec<String> = dcs
            .voters
            .iter()
            .filter(|g| **g != obs.me)
            .map(|g| crate::model::standby_name(g))
            .collect();
        names.sort();
        let k = sync_quorum(obs.sync_mode, dcs.voters.len().max(1)).min(names.len());
        actions.push(Action::SetSyncStandbys { k, names });
        if dcs.switchover.is_some() {
            actions.push(Action::ClearSwitchover);
        }
        if let Some(a) = protocol_action(dcs) {
            actions.push(a);
        }
        // A writable leader votes (its roles exist once SetSyncStandbys succeeded).
        if obs.local.pg == PgState::Primary && !dcs.voters.contains(&obs.me) {
            actions.push(Action::RegisterVoter);
        }
    }
    Decision::new(NodeRole::Leader, actions, "holding the leader lease")
}

fn decide_as_non_leader(obs: &Observation) -> Decision {
    // Rule 2: a non-leader never runs a writable primary.
    if obs.local.pg == PgState::Primary {
        return Decision::new(
            NodeRole::DeposedLeader,
            vec![Action::Fence {
                reason: "PostgreSQL is a primary but this node does not hold the leader lease"
                    .into(),
            }],
            "writable PostgreSQL without leadership: fenced",
        );
    }
    let Some(dcs) = &obs.dcs else {
        return Decision::new(
            NodeRole::WaitingForLeader,
            vec![],
            "etcd unreachable: waiting",
        );
    };
    match obs.request {
        Some(OperatorRequest::ForceLeader) => return force::decide(obs, dcs),
        Some(OperatorRequest::Resync { full }) => return resync(obs, dcs, full),
        None => {}
    }
    if obs.local.syncing {
        return Decision::new(NodeRole::Syncing, vec![], "copying data from the leader");
    }
    match &dcs.leader {
        Some(leader) if leader.guid == obs.me => {
            // Our key exists but we do not hold its lease (e.g. the agent restarted): we cannot
            // renew it, so wait for it to expire rather than act as leader.
            Decision::new(
                NodeRole::WaitingForLeader,
                vec![],
                "a leader key of a previous run of this agent exists: waiting for it to expire",
            )
        }
        Some(leader) => follow(obs, dcs, leader.clone()),
        None => elect(obs, dcs),
    }
}

/// Healthy enough to lead: lag behind the leader's posted position and free disk within the
/// configured thresholds.
fn healthy(obs: &Observation) -> bool {
    let leader_pos = obs.dcs.as_ref().and_then(|d| {
        let l = d.leader.as_ref()?;
        d.members
            .iter()
            .find(|m| m.guid == l.guid)
            .map(|m| m.position)
    });
    let lag = health::lag_bytes(leader_pos, obs.local.position);
    health::healthy(&obs.health, lag, obs.local.disk_free_mb)
}

/// Whether the leader's own status shows a promoted, writable PostgreSQL.
fn leader_promoted(dcs: &DcsView, leader: &LeaderRecord) -> bool {
    dcs.members
        .iter()
        .any(|m| m.guid == leader.guid && m.pg == PgState::Primary)
}

/// A rewind or base backup from `leader` — only from a leader that has finished promotion (a
/// rewind against a standby, or one that has not checkpointed its new timeline, copies the
/// wrong history), and not within the backoff after a failed copy.
fn copy_from(
    obs: &Observation,
    dcs: &DcsView,
    leader: LeaderRecord,
    full: bool,
    why: &str,
) -> Decision {
    if !leader_promoted(dcs, &leader) {
        return Decision::new(
            NodeRole::Syncing,
            vec![],
            format!("{why}: waiting for {} to finish promotion", leader.name),
        );
    }
    if !health::copy_allowed(obs.local.copy_failed_ms, obs.now_ms) {
        return Decision::new(
            NodeRole::Syncing,
            vec![],
            format!("{why}: the last copy failed; retrying after a short pause"),
        );
    }
    let action = if full {
        Action::Basebackup { leader }
    } else {
        Action::Rewind { leader }
    };
    Decision::new(NodeRole::Syncing, vec![action], why)
}

/// `pgsql-follow`: a follower of a known leader marks itself for a re-sync; the next decisions
/// rewind (or clone) it through the usual guards.
fn resync(obs: &Observation, dcs: &DcsView, full: bool) -> Decision {
    let refuse = |why: &str| {
        Decision::new(
            NodeRole::WaitingForLeader,
            vec![Action::RefuseRequest { reason: why.into() }],
            "re-sync refused",
        )
    };
    match &dcs.leader {
        None => refuse("no leader to follow: wait for one or run `larder force-leader` on the most advanced node"),
        Some(l) if l.guid == obs.me => refuse("this node's previous leadership has not expired yet; retry in a few seconds"),
        Some(_) if obs.local.syncing => refuse("a copy from the leader is already running"),
        Some(_) => Decision::new(
            NodeRole::Syncing,
            vec![Action::MarkResync { full }],
            "re-sync requested by the operator",
        ),
    }
}

fn follow(obs: &Observation, dcs: &DcsView, leader: LeaderRecord) -> Decision {
    let l = &obs.local;
    if l.pg == PgState::Empty || l.rewind_failed {
        return copy_from(obs, dcs, leader, true, "cloning data from the leader");
    }
    if l.diverged {
        return copy_from(
            obs,
            dcs,
            leader,
            false,
            "former primary: rewinding onto the new leader's history",
        );
    }
    let pointed = l.following.as_deref() == Some(leader.guid.as_str());
    if !pointed {
        return Decision::new(
            NodeRole::Follower,
            vec![Action::Follow { leader }],
            "following the leader",
        );
    }
    // Pointed at the leader but not streaming (or not even starting) for too long: the
    // history may have forked; rewind (which falls back to a fresh copy if it fails).
    if l.pg != PgState::Streaming {
        if let Some(since) = l.not_streaming_since_ms {
            if obs.now_ms.saturating_sub(since) >= obs.rejoin_timeout_ms {
                return copy_from(
                    obs,
                    dcs,
                    leader,
                    false,
                    "not streaming from the leader: rewinding",
                );
            }
        }
    }
    if l.pg == PgState::Stopped {
        return Decision::new(
            NodeRole::Follower,
            vec![Action::Follow { leader }],
            "starting PostgreSQL to follow the leader",
        );
    }
    // Streaming on an older timeline than the leader's is a standby that keeps reconnecting
    // and failing (its WAL went past the fork point): not a follower yet.
    let leader_tli = dcs
        .members
        .iter()
        .find(|m| m.guid == leader.guid)
        .map(|m| m.position.timeline);
    let current = leader_tli.is_none_or(|t| l.position.timeline >= t);
    let role = if l.pg == PgState::Streaming && healthy(obs) && current {
        NodeRole::Follower
    } else {
        NodeRole::Ineligible
    };
    // Having streamed from a leader makes this node a voter, for good.
    let mut actions = vec![];
    if l.pg == PgState::Streaming && !dcs.voters.contains(&obs.me) {
        actions.push(Action::RegisterVoter);
    }
    Decision::new(role, actions, "following the leader")
}

/// Why this node may not run for leader, if it may not.
fn ineligibility(obs: &Observation, dcs: &DcsView) -> Option<String> {
    if let Some(why) = upgrade::blocks_election(obs, dcs) {
        return Some(why);
    }
    // With cluster failover off only the node that held the current term may lead again (a
    // restart of the leader's agent or host is not a failover; leaving the cluster leaderless
    // would be worse). It holds every acknowledged commit: followers only ever receive WAL from
    // it, and nobody else led since (the term is unchanged).
    if !dcs.cluster_failover && dcs.term > 0 && !held_current_term(obs, dcs) {
        return Some("cluster failover is disabled".into());
    }
    if !dcs.node_failover {
        return Some("failover is disabled on this node".into());
    }
    let l = &obs.local;
    if l.pg == PgState::Empty {
        return Some("no data".into());
    }
    if !healthy(obs) || l.pg_failures >= obs.health.max_pgsql_failures {
        return Some("unhealthy".into());
    }
    if !dcs.voters.contains(&obs.me) {
        return Some("not a voting member yet".into());
    }
    None
}

/// This node acquired the current term (it is the last leader, and nobody led since).
fn held_current_term(obs: &Observation, dcs: &DcsView) -> bool {
    dcs.last_leader
        .as_ref()
        .is_some_and(|l| l.guid == obs.me && l.term == dcs.term)
}

fn elect(obs: &Observation, dcs: &DcsView) -> Decision {
    let mut actions = Vec::new();
    if obs.local.pg == PgState::Stopped {
        // Run as a standby without upstream so our position is current and ready to promote.
        actions.push(Action::StartStandby);
    }
    if obs.local.pg == PgState::Streaming {
        // The key is gone but WAL still flows (the old primary's agent may be frozen while its
        // PostgreSQL runs): acknowledging more of it after posting a position would let a
        // commit exist that the elected candidate never saw.
        return Decision::new(
            NodeRole::WaitingForLeader,
            vec![Action::Detach],
            "no leader: detaching from the old upstream so the posted position is final",
        );
    }
    if let Some(why) = ineligibility(obs, dcs) {
        return Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            format!("no leader; not eligible: {why}"),
        );
    }
    if let Some(sw) = &dcs.switchover {
        if sw.term == dcs.term && obs.now_unix_ms < sw.deadline_unix_ms {
            match &sw.target {
                Some(t) if t != &obs.me => {
                    return Decision::new(
                        NodeRole::WaitingForLeader,
                        actions,
                        "switchover to another node in progress",
                    )
                }
                _ if sw.target.is_none() && sw.from == obs.me => {
                    return Decision::new(
                        NodeRole::WaitingForLeader,
                        actions,
                        "stepped down (demote): another node takes over",
                    )
                }
                _ => {
                    if obs.local.position < sw.min_position {
                        return Decision::new(
                            NodeRole::WaitingForLeader,
                            actions,
                            format!(
                                "switchover: waiting to receive {} from the old leader",
                                sw.min_position.lsn
                            ),
                        );
                    }
                    // The old leader stopped cleanly and its shutdown checkpoint is the last
                    // record it ever wrote: holding it means holding every acknowledged
                    // commit, so no majority of positions is needed (that wait would cost a
                    // loop or two of write unavailability). The CAS on the term still lets
                    // only one candidate win.
                    actions.push(Action::AcquireLeadership { term: dcs.term + 1 });
                    return Decision::new(
                        NodeRole::WaitingForLeader,
                        actions,
                        "switchover: holding the old leader's final checkpoint: acquiring",
                    );
                }
            }
        }
    }
    if obs.local.pg != PgState::Standby {
        // Our own position is unknown until PostgreSQL runs (it was just started above).
        return Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            "no leader; waiting for the local PostgreSQL to report its position",
        );
    }
    // Rule 3: positions are trusted only from voters that are alive, posted in this term and
    // saw no leader when posting (so nothing acknowledged can arrive after their post).
    let me = &obs.me;
    let fresh: Vec<&MemberStatus> = dcs
        .members
        .iter()
        .filter(|m| {
            m.guid != *me
                && m.voter
                && dcs.voters.contains(&m.guid)
                && m.term == dcs.term
                && m.leader_seen.is_none()
                // A known, final position only: not receiving WAL any more (see
                // Action::Detach), and PostgreSQL running (a stopped node posts 0/0, which
                // says nothing about the WAL on its disk).
                && matches!(m.pg, PgState::Standby | PgState::Primary)
        })
        .collect();
    let need = majority(dcs.voters.len());
    if fresh.len() + 1 < need {
        return Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            format!(
                "no leader; waiting for positions from a majority ({} of {} voters reported)",
                fresh.len() + 1,
                dcs.voters.len()
            ),
        );
    }
    let mine = obs.local.position;
    // With cluster failover off the others may not lead at all, and the node that held the
    // current term needs no comparison: every commit acknowledged in this term was flushed on
    // it first (a walsender only sends WAL its primary has flushed), so a follower can be
    // "ahead" only by the torn tail of a crashed primary's last record, which holds nothing
    // acknowledged. Deferring to such a follower would leave the cluster leaderless.
    let sole_candidate = !dcs.cluster_failover && held_current_term(obs, dcs);
    if let Some(ahead) = fresh.iter().find(|m| !sole_candidate && m.position > mine) {
        return Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            format!(
                "no leader; {} is more advanced ({} > {})",
                ahead.name, ahead.position.lsn, mine.lsn
            ),
        );
    }
    // (Lag beyond max_bytes_behind_leader makes a node unhealthy, hence ineligible, above.)
    // Tie-break among equally advanced eligible candidates: lowest GUID goes first, so two
    // nodes do not race for the key on every election.
    let named_target = dcs.switchover.as_ref().is_some_and(|sw| {
        sw.term == dcs.term
            && obs.now_unix_ms < sw.deadline_unix_ms
            && sw.target.as_deref() == Some(me.as_str())
    });
    let stepping_down = dcs
        .switchover
        .as_ref()
        .filter(|sw| sw.term == dcs.term && obs.now_unix_ms < sw.deadline_unix_ms)
        .map(|sw| sw.from.as_str());
    // The node that held the current term goes first on a tie (after a full-downtime
    // upgrade the old leader leads again), then the lowest GUID.
    let last = dcs
        .last_leader
        .as_ref()
        .filter(|l| l.term == dcs.term)
        .map(|l| l.guid.as_str());
    let goes_first = |m: &MemberStatus| {
        Some(m.guid.as_str()) == last || (Some(me.as_str()) != last && m.guid < *me)
    };
    if let Some(rival) = fresh.iter().find(|m| {
        !named_target
            && !sole_candidate
            && m.eligible
            && m.position == mine
            && goes_first(m)
            && Some(m.guid.as_str()) != stepping_down
            && !upgrade::being_upgraded(dcs, &m.guid)
    }) {
        return Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            format!(
                "no leader; {} is equally advanced and goes first",
                rival.name
            ),
        );
    }
    actions.push(Action::AcquireLeadership { term: dcs.term + 1 });
    Decision::new(
        NodeRole::WaitingForLeader,
        actions,
        "no leader; this node is the most advanced eligible member: acquiring",
    )
}

mod force;
mod switchover;
mod upgrade;
pub mod vip;
pub use switchover::{HANDOVER_MS, MAX_WAIT_MS, PLANNED_HOLD_MS};

#[cfg(test)]
mod tests;
