//! The cluster model shared by the decision engine, the agent and the CLI: what a node posts
//! about itself to etcd, what the leader key holds, and WAL positions.

use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL position (`pg_lsn`), comparable as a number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `XXXXXXXX/XXXXXXXX` text form.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A position in WAL history: only meaningful together with its timeline. Ordered by
/// timeline first, because a higher timeline has seen a promotion the lower one has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct WalPosition {
    pub timeline: u32,
    pub lsn: Lsn,
}

/// The role a node reports, with Chef Backend's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Leader,
    Follower,
    WaitingForLeader,
    DeposedLeader,
    /// Streaming but not eligible to lead (failover disabled, lagging, unhealthy).
    Ineligible,
    /// Copying data from the leader (base backup or rewind).
    Syncing,
    Down,
}

impl NodeRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Leader => "leader",
            NodeRole::Follower => "follower",
            NodeRole::WaitingForLeader => "waiting_for_leader",
            NodeRole::DeposedLeader => "deposed_leader",
            NodeRole::Ineligible => "leader_ineligible",
            NodeRole::Syncing => "syncing",
            NodeRole::Down => "down",
        }
    }
}

/// PostgreSQL as the local agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgState {
    /// Accepting writes.
    Primary,
    /// In recovery and streaming from the leader.
    Streaming,
    /// In recovery but not (yet) streaming.
    Standby,
    Stopped,
    /// No data directory yet.
    Empty,
}

impl PgState {
    pub fn as_str(&self) -> &'static str {
        match self {
            PgState::Primary => "primary",
            PgState::Streaming => "streaming",
            PgState::Standby => "standby",
            PgState::Stopped => "stopped",
            PgState::Empty => "empty",
        }
    }
}

/// What each agent posts to `/larder/status/<guid>` every loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub guid: String,
    pub name: String,
    pub address: String,
    pub role: NodeRole,
    pub pg: PgState,
    pub position: WalPosition,
    /// Whether this node would take leadership if offered.
    pub eligible: bool,
    pub failover_enabled: bool,
    /// The leadership term this node has observed.
    pub term: u64,
    /// The leader this node saw when it posted; `None` = it saw no leader. A candidate only
    /// trusts positions posted after the poster saw the leader gone (see `decide`).
    pub leader_seen: Option<String>,
    /// Set once the node has streamed from a leader at least once: only such nodes vote in
    /// the majority rule and count in the synchronous quorum.
    pub voter: bool,
    pub lag_bytes: Option<u64>,
    pub search_ok: bool,
    pub etcd_ok: bool,
    /// Agent's own monotonic-free counter, so readers can tell a fresh post from a stale one.
    pub seq: u64,
    pub updated_unix_ms: u64,
    /// Rhythm of the frontends' `/leader` checks seen by this node (planned switchovers time
    /// the hand-over by it, see `check_phase`).
    #[serde(default)]
    pub check_phases: Vec<crate::check_phase::CheckPhase>,
    /// Leader only: the earliest wall-clock time its leadership lease can run out in etcd
    /// (last renewal sent + TTL). A standby that stops seeing it move expects an election
    /// then and holds the frontends' checks around it (agent `leader_check`).
    #[serde(default)]
    pub lease_expires_unix_ms: Option<u64>,
    /// Release this member runs (empty from releases before versions were posted).
    #[serde(default)]
    pub version: String,
    /// Cluster protocol this member speaks (0 from releases before versions were posted).
    #[serde(default)]
    pub protocol: u32,
    /// The configured VIP is on this member's interface (see `decide::vip`).
    #[serde(default)]
    pub vip_held: bool,
    /// How other nodes reach this node's PostgreSQL for a backup (its pgBackRest TLS server;
    /// `None` from releases before it, see `backup_source`).
    #[serde(default)]
    pub backup_host: Option<crate::backup_source::BackupHost>,
    /// The client method of this node's pg_hba.conf (`md5` only once its md5 lines are
    /// loaded; empty from releases before it): the leader stores the superuser's password
    /// md5 only when every member posts `md5` (`pgconf::wanted_superuser_hash`).
    #[serde(default)]
    pub pg_auth: String,
}

#[cfg(test)]
impl MemberStatus {
    /// A healthy voter's status (name "n", timeline 1), for the core's unit tests.
    pub(crate) fn test_member(guid: &str, role: NodeRole, pg: PgState) -> MemberStatus {
        MemberStatus {
            guid: guid.into(),
            name: "n".into(),
            address: "a".into(),
            role,
            pg,
            position: WalPosition {
                timeline: 1,
                lsn: Lsn(0),
            },
            eligible: true,
            failover_enabled: true,
            term: 1,
            leader_seen: None,
            voter: true,
            lag_bytes: None,
            search_ok: true,
            etcd_ok: true,
            seq: 1,
            updated_unix_ms: 0,
            check_phases: vec![],
            lease_expires_unix_ms: None,
            version: String::new(),
            protocol: 0,
            vip_held: false,
            backup_host: None,
            pg_auth: String::new(),
        }
    }
}

/// Value of the leader key (bound to the leader's lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub guid: String,
    pub name: String,
    pub address: String,
    pub term: u64,
}

/// A planned switchover in progress, written by the old leader before it steps down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// Node that must take over; `None` = any eligible follower (`demote`).
    pub target: Option<String>,
    /// Term in which the old leader stepped down.
    pub term: u64,
    /// Position of the old leader's shutdown checkpoint: the target must hold it.
    pub min_position: WalPosition,
    pub from: String,
    /// After this wall-clock time the record no longer restricts who may lead, so a target
    /// that died mid-switchover cannot leave the cluster leaderless.
    pub deadline_unix_ms: u64,
}

/// A request written to etcd by `promote` / `demote`, executed by the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchoverRequest {
    pub target: Option<String>,
    pub requested_unix_ms: u64,
}

/// A rolling `upgrade` in progress: held by the node being upgraded, bound to a lease the
/// running `upgrade` command keeps alive, so two nodes are never upgraded at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpgradeLock {
    pub guid: String,
    pub name: String,
    pub started_unix_ms: u64,
}

/// A node taken down by `down-for-upgrade` (full-downtime upgrade), until its `upgrade`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DownForUpgrade {
    pub guid: String,
    pub name: String,
    /// It led when it went down: the cluster waits for it (the upgrade order ends with it).
    pub was_leader: bool,
    pub since_unix_ms: u64,
    /// The old leader's `upgrade` is bringing it back: its PostgreSQL starts as a standby and
    /// posts its position while the record still holds the others back, so the election that
    /// follows the record's removal sees it (it wins a tie).
    #[serde(default)]
    pub returning: bool,
}

/// When the leader will start an accepted switchover, published (bound to its lease) so the
/// target can hold the frontends' checks that will see it take over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchoverPlan {
    pub target: Option<String>,
    /// When the target is expected to be writable: the planned start plus the hand-over.
    pub ready_unix_ms: u64,
}

/// Static registration of a node, written by create-cluster / join-cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub guid: String,
    pub name: String,
    pub address: String,
}

/// Name a follower uses as `application_name`, so the leader can list it in
/// `synchronous_standby_names` and name its replication slot.
pub fn standby_name(guid: &str) -> String {
    format!("larder_{}", &guid[..guid.len().min(16)])
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lsn_parse_display() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert!(Lsn::parse("zz").is_none());
        assert!(Lsn::parse("1FFFFFFFF/0").is_none());
    }
    #[test]
    fn positions_order_by_timeline_first() {
        let a = WalPosition {
            timeline: 2,
            lsn: Lsn(10),
        };
        let b = WalPosition {
            timeline: 1,
            lsn: Lsn(1000),
        };
        assert!(a > b);
    }
}
