//! The agent's state as other tasks see it: the HA loop's published [`Snapshot`] and the
//! [`Sensors`] other tasks measure.
//!
//! Leadership state — lease, role, leader, term, the switchover fields — lives in the
//! [`Snapshot`], and only the HA loop holds the [`tokio::sync::watch::Sender`] that changes
//! it (renewals reach it over a channel, operator requests as commands). Everyone else — the
//! health API, `/leader`, the control socket, the PostgreSQL pre-start rule, the renewer, the
//! etcd watch — holds a receiver and reads. The lease deadline in it is still compared with the
//! clock at request time, so `/leader` turns 503 at the deadline even if the loop is stuck.

use crate::postgres::{CopyProgress, PgObservation};
use larder_core::lease;
use larder_core::model::{
    LeaderRecord, MemberStatus, NodeRecord, NodeRole, PgState, SwitchoverPlan,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// The HA loop's published state (see the module comment for who writes it).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
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
    pub last_loop: Option<Instant>,
    pub last_error: Option<String>,
    /// The leader's published plan for a switchover (see `leader_check`).
    pub switchover_plan: Option<SwitchoverPlan>,
    /// When this leader's accepted switchover starts (see `leader_check`).
    pub switchover_starts: Option<Instant>,
    /// When the current leader's lease can first run out, as it last posted (see
    /// `leader_check`); `None` when this node leads or nothing was posted.
    pub leader_lease_expires_unix_ms: Option<u64>,
    /// The rolling upgrade in progress and the nodes down for a full-downtime upgrade, as
    /// last read from etcd.
    pub upgrade: crate::control::UpgradeState,
    /// The configured VIP and whether it is on this node's interface (as the loop last saw or
    /// left it); `None` when no VIP is configured.
    pub vip: Option<crate::control::VipStatus>,
    /// The last role-change hook that ran.
    pub last_hook: Option<crate::hooks::HookReport>,
    /// Since when the loop has read no leader key from etcd (`None` while there is one).
    pub leaderless_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct LeaseInfo {
    pub id: i64,
    pub term: u64,
    pub fence_deadline: Instant,
}

impl Snapshot {
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

/// A rewind or base backup running in the background (written by the copy task only).
#[derive(Debug, Clone, Default)]
pub struct CopyState {
    pub progress: Option<CopyProgress>,
    pub failed_at: Option<Instant>,
    pub error: Option<String>,
}

/// Measurements that are not leadership state, each cell with exactly one writer.
#[derive(Debug, Default)]
pub struct Sensors {
    /// `/leader` check arrivals per frontend (see `larder_core::check_phase`); written by the
    /// health API.
    pub checks: Mutex<larder_core::check_phase::CheckTracker>,
    /// etcd's member list; written by the member refresh.
    pub etcd_members: Mutex<Vec<crate::dcs::Member>>,
    /// Whether the local search service answers; written by its health probe.
    search_ok: AtomicBool,
    /// The background copy; written by the copy task.
    pub copy: Mutex<CopyState>,
    /// The leadership history and the hand-overs counted; written by the history task.
    pub history: Mutex<crate::history::HistoryCache>,
    /// The search service's own figures; written by its health probe.
    pub search: Mutex<SearchProbe>,
    /// Members' replication lag over the last minutes; written by the lag sampler (`ui`).
    pub lag: Mutex<crate::ui::LagHistory>,
    /// Counts changes seen to node request keys (`node_requests`); written by the etcd watch.
    pub requests: tokio::sync::watch::Sender<u64>,
    /// What the etcd watch has seen change; written by the etcd watch (`wake`), read by the
    /// HA loop to tell whether the view its last write read back is still current.
    pub watch: Mutex<WatchCursor>,
}

/// The etcd watch's account of `/larder/`, enough to tell whether a view read at some
/// revision is still what etcd holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCursor {
    /// Since when the watch has been delivering every change (`None` while it is down): a
    /// view read after this moment misses no change the watch would not have reported.
    pub live_since: Option<Instant>,
    /// The latest revision at which anything changed that a decision could read: every
    /// change except this node's own status writes and statuses whose clocks alone moved.
    pub changed_rev: i64,
}

impl WatchCursor {
    /// Whether a view read (with its request sent at `sent`) at `revision` still holds.
    pub fn unchanged_since(&self, sent: Instant, revision: i64) -> bool {
        self.live_since.is_some_and(|t| t <= sent) && self.changed_rev <= revision
    }
}

/// What the search probe last fetched from `GET /_larder/stats`.
#[derive(Debug, Clone, Default)]
pub struct SearchProbe {
    pub stats: Option<larder_core::search_stats::SearchStats>,
    /// Documents per second accepted by `_bulk` between the last two fetches.
    pub bulk_rate: f64,
    /// When `stats` was fetched.
    pub at: Option<Instant>,
}

impl Sensors {
    pub fn search_ok(&self) -> bool {
        self.search_ok.load(Ordering::Relaxed)
    }

    pub fn set_search_ok(&self, ok: bool) {
        self.search_ok.store(ok, Ordering::Relaxed);
    }
}

/// What a reader holds: the loop's snapshot (read-only) and the sensors.
#[derive(Debug, Clone)]
pub struct Views {
    pub ha: watch::Receiver<Snapshot>,
    pub sensors: Arc<Sensors>,
}

impl Views {
    /// A copy of the loop's latest snapshot (never hold a borrow across an await).
    pub fn snapshot(&self) -> Snapshot {
        self.ha.borrow().clone()
    }
}
