//! The leader's side of a planned switchover (`promote`, `demote`): check the request, time it
//! to the frontends' health checks, then step down. The target's side (acquire once it holds
//! the old leader's shutdown checkpoint) is part of the election in `decide`.

use super::{Action, DcsView, Observation};
use crate::model::{PgState, SwitchoverRequest};

/// Expected time from the old leader stopping PostgreSQL to the target answering `/leader` 200
/// (measured 0.35–0.55 s on the benchmark cluster). The target holds the frontends' checks until
/// it is writable, so a hand-over that runs long costs only its overrun; one that finishes early
/// costs the difference: the median is the right estimate.
pub const HANDOVER_MS: u64 = 450;
/// Longest a switchover start is delayed for timing (a bit over haproxy's 2 s interval).
pub const MAX_WAIT_MS: u64 = 2_500;
/// How long before a switchover's planned ready time the target starts holding checks; the
/// timing below assumes the same.
pub const PLANNED_HOLD_MS: u64 = 1_200;

/// Why the leader refuses a switchover it cannot carry out without loss.
pub const REFUSED: &str = "switchover refused by the leader: no streaming, failover-enabled follower to hand over to (see `larder cluster-status`)";
/// Right after a failover or switchover the followers re-attach within seconds: a request is
/// held this long for its target to stream before it is refused, rather than refusing a
/// command that would succeed a moment later.
pub const ATTACH_WAIT_MS: u64 = 15_000;

/// What the leader does about a pending switchover request: refuse it, time it, or step down
/// now. `None` when the steady leader actions should simply continue (timed start not reached).
pub(super) fn leader_actions(
    obs: &Observation,
    dcs: &DcsView,
    req: &SwitchoverRequest,
) -> Option<Vec<Action>> {
    let refuse = |reason: String| Some(vec![Action::RefuseSwitchover { reason }]);
    if !dcs.cluster_failover {
        return refuse(
            "cluster failover is disabled; enable it with `larder set-cluster-failover on` first"
                .into(),
        );
    }
    if let Some(t) = req
        .target
        .as_ref()
        .and_then(|t| dcs.members.iter().find(|m| &m.guid == t))
    {
        if !t.failover_enabled {
            return refuse(format!(
                "failover is disabled on {}; run `larder set-node-failover on` there first",
                t.name
            ));
        }
    }
    // On the leader's timeline: a standby still on an older one cannot receive the shutdown
    // checkpoint the hand-over waits for.
    let ready = |m: &crate::model::MemberStatus| {
        m.guid != obs.me
            && m.pg == PgState::Streaming
            && m.failover_enabled
            && m.position.timeline >= obs.local.position.timeline
    };
    let target_ok = match &req.target {
        Some(t) => dcs.members.iter().any(|m| &m.guid == t && ready(m)),
        None => dcs.members.iter().any(ready),
    };
    if obs.local.pg != PgState::Primary {
        return refuse(REFUSED.into());
    }
    if !target_ok {
        // Keep leading (and holding the request) while the target may still re-attach.
        if obs.now_unix_ms < req.requested_unix_ms + ATTACH_WAIT_MS {
            return None;
        }
        return refuse(REFUSED.into());
    }
    if let Some((scheduled, at_ms)) = &obs.local.switchover_scheduled {
        if scheduled == req {
            return (obs.now_ms >= *at_ms).then(|| {
                vec![Action::StepDown {
                    target: req.target.clone(),
                }]
            });
        }
    }
    // First sight of this request: time the start so the hand-over ends right before the
    // frontends' next checks of the target (clients keep writing to us meanwhile).
    let target_checks = req
        .target
        .as_ref()
        .and_then(|t| dcs.members.iter().find(|m| &m.guid == t))
        .map(|m| m.check_phases.clone())
        .unwrap_or_default();
    let delay = if obs.align_switchover {
        crate::check_phase::handover_delay_ms(
            &obs.own_checks,
            &target_checks,
            obs.now_unix_ms,
            HANDOVER_MS,
            PLANNED_HOLD_MS,
            MAX_WAIT_MS,
        )
    } else {
        0
    };
    let mut actions = vec![Action::ScheduleSwitchover {
        start_in_ms: delay,
        ready_unix_ms: obs.now_unix_ms + delay + HANDOVER_MS,
    }];
    if delay == 0 {
        actions.push(Action::StepDown {
            target: req.target.clone(),
        });
    }
    Some(actions)
}
