//! `force-leader`: the operator's override for a cluster that has no leader and will not elect
//! one by itself (failover off, a majority of positions missing). It skips the failover flags
//! and the majority rule, but never takes leadership from a live leader, never from a node whose
//! own position is unknown, and never while a live member is more advanced.

use super::{Action, DcsView, Decision, Observation};
use crate::model::{NodeRole, PgState};

pub(super) fn decide(obs: &Observation, dcs: &DcsView) -> Decision {
    let refuse = |why: String| {
        Decision::new(
            NodeRole::WaitingForLeader,
            vec![Action::RefuseRequest {
                reason: format!("force-leader refused: {why}"),
            }],
            "force-leader refused",
        )
    };
    if let Some(l) = &dcs.leader {
        return refuse(format!(
            "{} is the leader (term {}); force-leader only acts when there is none",
            l.name, l.term
        ));
    }
    if !matches!(obs.local.pg, PgState::Standby | PgState::Streaming) {
        return refuse("PostgreSQL is not running on this node (its position is unknown)".into());
    }
    let mine = obs.local.position;
    if let Some(m) = dcs
        .members
        .iter()
        .find(|m| m.guid != obs.me && m.position > mine)
    {
        return refuse(format!(
            "{} is more advanced ({} on timeline {} > {} on timeline {}); run force-leader there",
            m.name, m.position.lsn, m.position.timeline, mine.lsn, mine.timeline
        ));
    }
    Decision::new(
        NodeRole::WaitingForLeader,
        vec![Action::AcquireLeadership { term: dcs.term + 1 }],
        "force-leader: acquiring",
    )
}
