//! The agent's shared state: what the health API, `/leader`, the control socket and `status`
//! read, published by the HA loop (see [`Shared`] for who writes which part).

use crate::postgres::{CopyProgress, PgObservation};
use larder_core::lease;
use larder_core::model::{
    LeaderRecord, MemberStatus, NodeRecord, NodeRole, PgState, SwitchoverPlan,
};
use std::time::Instant;

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
    pub etcd_members: Vec<crate::dcs::Member>,
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
