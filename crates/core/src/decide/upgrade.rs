//! Upgrade holds: the full-downtime upgrade (`down-for-upgrade`, then `upgrade` on followers
//! first and the old leader last) and the rolling upgrade's lock.
//!
//! - A node that is down for upgrade hands leadership back (a clean stop first, so the
//!   followers hold its last record), stops PostgreSQL and does nothing else until its
//!   `upgrade` clears the record.
//! - While the old leader is down for upgrade nobody else may lead: `down-for-upgrade` blocks
//!   failover by itself. Its `upgrade` (last) first marks the record `returning`: it starts
//!   PostgreSQL as a standby and posts its position while the others still wait; then the
//!   record goes, the election runs as usual, and the node that held the last term wins a tie,
//!   so the old leader leads again.
//! - A node being upgraded (it holds the upgrade lock) may not run for leader until its rejoin
//!   is verified and the lock released — unless it is the only voter, which must lead again
//!   for its upgrade to verify.

use super::{Action, DcsView, Decision, Observation, OperatorRequest};
use crate::model::{NodeRole, PgState};

/// This node's decision while it is down for upgrade; `None` when it is not.
pub(super) fn down(obs: &Observation) -> Option<Decision> {
    let dcs = obs.dcs.as_ref()?;
    let me = dcs.down_for_upgrade.iter().find(|d| d.guid == obs.me)?;
    if me.returning && obs.lease.is_none() {
        let actions = match obs.local.pg {
            PgState::Stopped => vec![Action::StartStandby],
            PgState::Primary => vec![Action::Fence {
                reason: "PostgreSQL is a primary but this node does not hold the leader lease"
                    .into(),
            }],
            _ => vec![],
        };
        return Some(Decision::new(
            NodeRole::WaitingForLeader,
            actions,
            "back from the upgrade: posting this node's position before the election",
        ));
    }
    let reason = if me.was_leader {
        "down for upgrade: run `larder upgrade` here after the followers are upgraded"
    } else {
        "down for upgrade: run `larder upgrade` here (followers first, the old leader last)"
    };
    let mut actions = Vec::new();
    if obs.lease.is_some() {
        // A clean stop ships the shutdown checkpoint to the standbys before the key goes.
        actions.push(Action::StopForShutdown);
        actions.push(Action::ReleaseLeadership);
    } else if obs.local.pg == PgState::Primary {
        actions.push(Action::Fence {
            reason: "PostgreSQL is a primary but this node does not hold the leader lease".into(),
        });
    } else if !matches!(obs.local.pg, PgState::Stopped | PgState::Empty) {
        actions.push(Action::StopPostgres);
    }
    if obs.request.is_some() {
        let what = match obs.request {
            Some(OperatorRequest::ForceLeader) => "force-leader",
            _ => "pgsql-follow",
        };
        actions.push(Action::RefuseRequest {
            reason: format!(
                "{what} refused: this node is down for upgrade; run `larder upgrade` first"
            ),
        });
    }
    Some(Decision::new(NodeRole::Down, actions, reason))
}

/// Why no election may make this node leader now because of an upgrade, if one is why.
pub(super) fn blocks_election(obs: &Observation, dcs: &DcsView) -> Option<String> {
    if let Some(d) = dcs.down_for_upgrade.iter().find(|d| d.was_leader) {
        return Some(format!(
            "the leader {} is down for upgrade (it leads again after its `larder upgrade`)",
            d.name
        ));
    }
    // A single node being upgraded must lead again to be verified (nobody else could).
    let alone = dcs.voters.iter().all(|v| *v == obs.me);
    if being_upgraded(dcs, &obs.me) && !alone {
        return Some("this node is being upgraded (its rejoin is not verified yet)".into());
    }
    None
}

/// `guid` holds the upgrade lock (it does not run for leader, and nobody waits for it to).
pub(super) fn being_upgraded(dcs: &DcsView, guid: &str) -> bool {
    dcs.upgrade_lock.as_ref().is_some_and(|l| l.guid == guid)
}
