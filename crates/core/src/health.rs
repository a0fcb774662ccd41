//! Health facts derived from raw observations, as pure functions: whether this node is healthy
//! enough to lead, its failure count, whether it is eligible and a voter, and the copy backoff.
//! The agent feeds raw numbers (free disk, positions, timestamps); every threshold lives here.

use crate::config::HealthCheckConfig;
use crate::model::{PgState, WalPosition};

/// After a failed rewind or base backup, wait this long before copying again, so a persistent
/// problem (authentication, disk) does not become a tight loop against the leader.
pub const COPY_BACKOFF_MS: u64 = 5_000;

/// Failed PostgreSQL health checks, counted per health-check interval (not per loop): the
/// budget is `max_pgsql_failures × interval_seconds` of PostgreSQL being unreachable.
pub fn pg_failures(down_since_ms: Option<u64>, now_ms: u64, interval_seconds: u64) -> u32 {
    match down_since_ms {
        None => 0,
        Some(since) => {
            let interval_ms = interval_seconds.max(1) * 1000;
            1 + (now_ms.saturating_sub(since) / interval_ms) as u32
        }
    }
}

/// Bytes this node is behind the leader's posted position (`None` without a posted leader).
pub fn lag_bytes(leader: Option<WalPosition>, mine: WalPosition) -> Option<u64> {
    leader.map(|l| l.lsn.0.saturating_sub(mine.lsn.0))
}

/// Free space on the data disk below which PostgreSQL is about to refuse writes: it cannot
/// add a WAL segment (16 MiB) or extend a table. Unlike `disk_min_space_mb` (a warning level,
/// fatal only with `fatal_system_checks`), this always counts: such a node cannot serve.
pub const DISK_FULL_MB: u64 = 32;

/// Whether the data disk is full (see [`DISK_FULL_MB`]); unknown counts as not full.
pub fn disk_full(disk_free_mb: Option<u64>) -> bool {
    disk_free_mb.is_some_and(|mb| mb < DISK_FULL_MB)
}

/// Healthy enough to lead: within `max_bytes_behind_leader` of the leader, its data disk not
/// full, and (when `fatal_system_checks`) with at least `disk_min_space_mb` free. Unknown values
/// count as fine: an unreadable disk is reported elsewhere, and a missing leader position
/// means no leader.
pub fn healthy(hc: &HealthCheckConfig, lag: Option<u64>, disk_free_mb: Option<u64>) -> bool {
    let lag_ok = lag.is_none_or(|b| b <= hc.max_bytes_behind_leader);
    let disk_ok =
        !hc.fatal_system_checks || disk_free_mb.is_none_or(|mb| mb >= hc.disk_min_space_mb);
    lag_ok && disk_ok && !disk_full(disk_free_mb)
}

/// What this node posts as `eligible`: failover allowed for it, PostgreSQL up with data, and
/// room on its data disk (a leader with a full disk hands over only to a node that has room).
pub fn eligible(node_failover: bool, pg: PgState, disk_free_mb: Option<u64>) -> bool {
    node_failover
        && matches!(pg, PgState::Primary | PgState::Streaming | PgState::Standby)
        && !disk_full(disk_free_mb)
}

/// A node becomes a voter once it has streamed from a leader (or led with its roles created),
/// and stays one: the registration in etcd outlives agent restarts.
pub fn voter(became_voter: bool, registered: bool) -> bool {
    became_voter || registered
}

/// Whether a new copy may start at `now_ms` after the last failure at `failed_ms`.
pub fn copy_allowed(failed_ms: Option<u64>, now_ms: u64) -> bool {
    failed_ms.is_none_or(|t| now_ms.saturating_sub(t) >= COPY_BACKOFF_MS)
}

/// A data directory whose last shutdown left it as a primary (`pg_controldata`'s cluster state)
/// may hold WAL the current leader never saw: it must be rewound before following anyone.
pub fn diverged_at_start(control_state: &str) -> bool {
    matches!(
        control_state,
        "in production" | "shut down" | "in crash recovery"
    )
}

/// How PostgreSQL may start, decided on *every* start (first start, operator start, crash
/// restart by the supervisor): only a node holding a live leader lease may start writable,
/// and nothing starts over a data directory a rewind or base backup is rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgStart {
    Primary,
    Standby,
    /// Refused, with the reason the supervisor records.
    Refused(&'static str),
}

pub fn pg_start(copy_running: bool, lease_live: bool) -> PgStart {
    if copy_running {
        PgStart::Refused("a rewind or base backup is in progress")
    } else if lease_live {
        PgStart::Primary
    } else {
        PgStart::Standby
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Lsn;

    #[test]
    fn only_a_live_lease_starts_writable_and_never_during_a_copy() {
        assert_eq!(pg_start(false, true), PgStart::Primary);
        assert_eq!(pg_start(false, false), PgStart::Standby);
        assert!(matches!(pg_start(true, true), PgStart::Refused(_)));
        assert!(matches!(pg_start(true, false), PgStart::Refused(_)));
    }

    fn at(lsn: u64) -> WalPosition {
        WalPosition {
            timeline: 1,
            lsn: Lsn(lsn),
        }
    }

    #[test]
    fn failures_count_intervals_not_loops() {
        assert_eq!(pg_failures(None, 10_000, 1), 0);
        assert_eq!(pg_failures(Some(10_000), 10_000, 1), 1);
        assert_eq!(pg_failures(Some(10_000), 10_999, 1), 1);
        assert_eq!(pg_failures(Some(10_000), 12_000, 1), 3);
        assert_eq!(
            pg_failures(Some(10_000), 12_000, 0),
            3,
            "interval 0 counts as 1 s"
        );
    }

    #[test]
    fn health_thresholds() {
        let hc = HealthCheckConfig {
            fatal_system_checks: true,
            disk_min_space_mb: 100,
            max_bytes_behind_leader: 1000,
            ..HealthCheckConfig::default()
        };
        assert_eq!(lag_bytes(Some(at(1500)), at(400)), Some(1100));
        assert_eq!(lag_bytes(Some(at(100)), at(400)), Some(0));
        assert!(healthy(&hc, Some(1000), Some(100)));
        assert!(!healthy(&hc, Some(1001), Some(100)), "too far behind");
        assert!(!healthy(&hc, Some(0), Some(99)), "disk below the minimum");
        assert!(healthy(&hc, None, None), "unknown is not unhealthy");
        let lax = HealthCheckConfig {
            fatal_system_checks: false,
            ..hc
        };
        assert!(
            healthy(&lax, Some(0), Some(DISK_FULL_MB)),
            "the minimum only counts when fatal"
        );
        assert!(
            !healthy(&lax, Some(0), Some(DISK_FULL_MB - 1)),
            "a full disk always counts"
        );
        assert!(!disk_full(None) && !disk_full(Some(DISK_FULL_MB)) && disk_full(Some(0)));
    }

    #[test]
    fn eligibility_voting_and_backoff() {
        assert!(eligible(true, PgState::Standby, None));
        assert!(eligible(true, PgState::Streaming, Some(DISK_FULL_MB)));
        assert!(!eligible(true, PgState::Streaming, Some(0)), "full disk");
        assert!(!eligible(true, PgState::Stopped, None));
        assert!(!eligible(false, PgState::Streaming, None));
        assert!(voter(false, true) && voter(true, false) && !voter(false, false));
        assert!(copy_allowed(None, 0));
        assert!(!copy_allowed(Some(1_000), 5_999));
        assert!(copy_allowed(Some(1_000), 6_000));
        assert!(diverged_at_start("in production") && !diverged_at_start("in archive recovery"));
    }
}
