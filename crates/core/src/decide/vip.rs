//! The virtual IP that follows the leader (`vip`, `vip_interface`): when this node holds it.
//!
//! The VIP is part of leadership and is fenced with it (docs/architecture.md, "The VIP and its
//! timing"). Two deadlines bound it, both earlier than the fencing deadline:
//!
//! - **Soft (this loop):** the leader holds the VIP only while `now < fence_deadline −
//!   vip_margin_ms` and its PostgreSQL is observed writable; at that instant (the loop wakes at
//!   it) and on every other way out of leadership — fence, release, step-down, shutdown,
//!   down-for-upgrade, a non-leader that finds it (a restarted node) — it is removed, before
//!   anything else the decision does.
//! - **Hard (the kernel):** the address is added, and refreshed, with a kernel lifetime
//!   (`valid_lft`) that ends no later than `fence_deadline − KERNEL_SLACK_MS`. A frozen or
//!   killed agent cannot refresh it, so the kernel removes it before the lease could expire on
//!   etcd's side — i.e. before any other node could be elected and add it.
//!
//! Lifetimes are whole seconds (the kernel's unit). When less than a whole second fits before
//! the hard bound, the lifetime is simply not extended: the address keeps the expiry it was
//! given, which already lies before the (older, earlier) fencing deadline.

use super::{Action, Decision, Observation};
use crate::model::{NodeRole, PgState};

/// What the loop observed about the VIP (present only when a VIP is configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipView {
    /// The address is on `vip_interface` now.
    pub present: bool,
    /// `leaderl.vip_margin_ms`: the soft deadline lies this long before the fencing deadline.
    pub margin_ms: u64,
}

/// How late the kernel may remove an expired address, plus the time to run `ip`: it checks
/// lifetimes on a timer rounded up to at most a quarter second (measured: 30 ms late).
pub const KERNEL_SLACK_MS: u64 = 300;

/// The kernel lifetime (whole seconds) that ends no later than `fence_deadline −
/// KERNEL_SLACK_MS` when set at `now`; 0 when not even one second fits.
pub fn lifetime_s(now_ms: u64, fence_deadline_ms: u64) -> u32 {
    let room = fence_deadline_ms.saturating_sub(now_ms + KERNEL_SLACK_MS);
    (room / 1000).min(u32::MAX as u64) as u32
}

/// Adds the VIP actions to a decision: `RemoveVip` first (before a fence or step-down stops
/// PostgreSQL), `AddVip`/`RenewVip` last (a failing `ip` must not hold back the leader's
/// replication settings).
pub(super) fn apply(obs: &Observation, mut d: Decision) -> Decision {
    let Some(vip) = obs.vip else {
        return d;
    };
    match hold(obs, &d, vip) {
        Hold::Drop(reason) => {
            if vip.present {
                d.actions.insert(0, Action::RemoveVip { reason });
            }
        }
        Hold::Keep(lifetime) => match (vip.present, lifetime) {
            (false, 0) => {}
            (false, s) => d.actions.push(Action::AddVip { lifetime_s: s }),
            // Less than a second of lease left for the kernel bound: keep the expiry it has.
            (true, 0) => {}
            (true, s) => d.actions.push(Action::RenewVip { lifetime_s: s }),
        },
    }
    d
}

enum Hold {
    Keep(u32),
    Drop(String),
}

fn hold(obs: &Observation, d: &Decision, vip: VipView) -> Hold {
    let Some(lease) = obs.lease else {
        return Hold::Drop("this node does not hold the leader lease".into());
    };
    if d.role != NodeRole::Leader {
        return Hold::Drop(format!("no longer the leader: {}", d.reason));
    }
    let leaving = d.actions.iter().find(|a| {
        matches!(
            a,
            Action::Fence { .. }
                | Action::ReleaseLeadership
                | Action::StepDown { .. }
                | Action::StopForShutdown
                | Action::StopPostgres
        )
    });
    if let Some(a) = leaving {
        return Hold::Drop(format!("leaving leadership ({a:?})"));
    }
    if obs.local.pg != PgState::Primary {
        return Hold::Drop("PostgreSQL is not writable yet".into());
    }
    if obs.now_ms + vip.margin_ms >= lease.fence_deadline_ms {
        return Hold::Drop(format!(
            "lease renewal is late: the VIP goes {} ms before the fencing deadline",
            vip.margin_ms
        ));
    }
    Hold::Keep(lifetime_s(obs.now_ms, lease.fence_deadline_ms))
}

/// What the agent does with the VIP when it shuts down: remove it first.
pub fn on_shutdown(present: bool) -> Vec<Action> {
    if present {
        vec![Action::RemoveVip {
            reason: "agent shutdown".into(),
        }]
    } else {
        vec![]
    }
}

/// The instant (monotonic ms) the loop must wake to drop a held VIP (the soft deadline).
pub fn soft_deadline_ms(fence_deadline_ms: u64, margin_ms: u64) -> u64 {
    fence_deadline_ms.saturating_sub(margin_ms)
}

#[cfg(test)]
mod tests;
