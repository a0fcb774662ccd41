//! `GET /leader` answered the moment its answer changes.
//!
//! Chef frontends' haproxy checks `/leader` every 2 s per server (`inter 2s rise 1 fall 1`) and
//! moves traffic only on a check's answer. However fast an election or a hand-over, a frontend
//! starts using the new leader at its next check of it: on average a second later, up to two.
//! So when this node's answer is about to change — no leader is elected and this node may
//! win, the leader stopped renewing and its lease is about to run out, this node leads but its PostgreSQL is not writable yet, the leader's published switchover plan
//! makes this node writable shortly, or this leader's planned hand-over starts within the
//! hold — a check is held open and answered as soon as the answer changes, or after
//! [`HOLD_MAX`] with whatever is true then. haproxy's check timeout is `inter` (2 s) when
//! `timeout check` is unset, as in Chef's configuration, so a held check never times out.
//!
//! Holding is not free: haproxy schedules the next check `inter` after the previous one
//! *completed* (measured with haproxy 2.6), so a hold that ends without a change pushes that
//! node's next check back by the hold. Holds therefore start only shortly before the change
//! is expected (a switchover's planned ready time, the lease expiry the leader last posted) or
//! while it is imminent (an election under way). A live leader posts a new expiry every loop,
//! so its followers never come near it.
//!
//! Safety does not depend on this: every answer is the writable-leader test evaluated when it
//! is sent ([`Snapshot::is_writable_leader`]); holding only changes *when* a frontend learns it.
//! Tools that want an instant sample (the fault suite's samplers) ask `/leader?wait=0`.

use crate::state::Snapshot;
use larder_core::model::NodeRole;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a check is held: well inside haproxy's 2 s check timeout, leaving room for a slow
/// link and the TCP handshake, which count against the same timeout.
pub const HOLD_MAX: Duration = Duration::from_millis(1_500);
/// Longest a held check waits before re-reading the loop's snapshot: it wakes on every new
/// snapshot, but the answer also depends on the clock (the lease deadline), which sends none.
pub const POLL: Duration = Duration::from_millis(20);
/// How long before a switchover's planned ready time the target starts holding checks; the
/// planner (`check_phase::handover_delay_ms`) assumes the same. Less than [`HOLD_MAX`], so a
/// hand-over somewhat slower than planned is still answered within the hold.
pub const PLANNED_HOLD: Duration = Duration::from_millis(larder_core::decide::PLANNED_HOLD_MS);
/// After its planned ready time, how long a switchover plan still makes the target hold.
const PLAN_LATE: Duration = Duration::from_secs(3);

/// Window around the lease expiry a leader last posted in which a follower holds checks: the
/// lease may have been renewed once more after that post (up to a loop, 300 ms), etcd removes
/// an expired lease on its next 500 ms scan, and the election plus promotion take ~150 ms; so
/// the new leader is writable 0–1 s after the posted expiry. Holds start 400 ms before it, so
/// one held from the start still ends after the latest expected promotion.
const EXPIRY_HOLD_BEFORE_MS: u64 = 400;
const EXPIRY_HOLD_AFTER_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Answer now.
    No,
    /// Not writable now, but may become the writable leader shortly.
    UntilWritable,
    /// Writable now, but hands over within the hold.
    UntilNotWritable,
}

/// Whether a check arriving now should wait for the answer to change.
pub fn hold(
    s: &Snapshot,
    me: &str,
    required_followers: u32,
    now: Instant,
    now_unix_ms: u64,
) -> Hold {
    if s.is_writable_leader(required_followers) {
        return match s.switchover_starts {
            Some(at) if at <= now + HOLD_MAX => Hold::UntilNotWritable,
            _ => Hold::No,
        };
    }
    if s.role == Some(NodeRole::Leader) {
        // Holding the leader key while PostgreSQL comes up or followers attach.
        return Hold::UntilWritable;
    }
    let leader_is_me = s.leader.as_ref().map(|l| l.guid == me).unwrap_or(false);
    let running = s.pg.is_some();
    let electing = s.leader.is_none() && running && s.cluster_failover && s.node_failover;
    let targeted = !leader_is_me
        && running
        && s.switchover_plan
            .as_ref()
            .map(|p| {
                p.target.as_deref().map(|t| t == me).unwrap_or(true)
                    && now_unix_ms + PLANNED_HOLD.as_millis() as u64 >= p.ready_unix_ms
                    && now_unix_ms <= p.ready_unix_ms + PLAN_LATE.as_millis() as u64
            })
            .unwrap_or(false);
    let lease_ending = !leader_is_me
        && running
        && s.node_failover
        && s.cluster_failover
        && s.leader_lease_expires_unix_ms
            .map(|e| {
                now_unix_ms + EXPIRY_HOLD_BEFORE_MS >= e && now_unix_ms <= e + EXPIRY_HOLD_AFTER_MS
            })
            .unwrap_or(false);
    if electing || targeted || lease_ending {
        Hold::UntilWritable
    } else {
        Hold::No
    }
}

/// The `/leader` answer (writable leader or not), held per [`hold`] when `may_hold`.
pub async fn answer_logged(
    state: &watch::Receiver<Snapshot>,
    me: &str,
    required_followers: u32,
    may_hold: bool,
) -> bool {
    let start = Instant::now();
    let ok = answer(state, me, required_followers, may_hold).await;
    let held = start.elapsed();
    if held >= POLL {
        // Rare (only around a change of leader) and what explains a frontend's timing.
        tracing::info!(
            held_ms = held.as_millis() as u64,
            leader = ok,
            "answered a held /leader check"
        );
    }
    ok
}

pub async fn answer(
    state: &watch::Receiver<Snapshot>,
    me: &str,
    required_followers: u32,
    may_hold: bool,
) -> bool {
    let until = Instant::now() + HOLD_MAX;
    let mut state = state.clone();
    loop {
        let (ok, h) = {
            let s = state.borrow_and_update();
            let now = Instant::now();
            (
                s.is_writable_leader(required_followers),
                if may_hold {
                    hold(&s, me, required_followers, now, crate::clock::unix_ms())
                } else {
                    Hold::No
                },
            )
        };
        let waiting = match h {
            Hold::No => false,
            Hold::UntilWritable => !ok,
            Hold::UntilNotWritable => ok,
        };
        if !waiting || Instant::now() + POLL > until {
            return ok;
        }
        // A closed channel (agent shutting down) leaves the clock to end the wait.
        let _ = tokio::time::timeout(POLL, state.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PgObservation;
    use crate::state::LeaseInfo;
    use larder_core::model::{LeaderRecord, Lsn, PgState, WalPosition};

    fn pg(state: PgState) -> Option<PgObservation> {
        Some(PgObservation {
            state,
            position: WalPosition {
                timeline: 1,
                lsn: Lsn(0),
            },
            streaming_followers: vec![],
            sync_standby_names: String::new(),
            physical_slots: vec![],
            detail: Default::default(),
        })
    }

    fn standby() -> Snapshot {
        Snapshot {
            role: Some(NodeRole::Follower),
            pg: pg(PgState::Streaming),
            cluster_failover: true,
            node_failover: true,
            leader: Some(leader_record("other")),
            ..Default::default()
        }
    }

    fn leader_record(guid: &str) -> LeaderRecord {
        LeaderRecord {
            guid: guid.into(),
            name: guid.into(),
            address: String::new(),
            term: 1,
        }
    }

    fn writable_leader() -> Snapshot {
        Snapshot {
            role: Some(NodeRole::Leader),
            pg: pg(PgState::Primary),
            lease: Some(LeaseInfo {
                id: 1,
                term: 1,
                fence_deadline: Instant::now() + Duration::from_secs(3),
            }),
            leader: Some(leader_record("me")),
            cluster_failover: true,
            node_failover: true,
            ..Default::default()
        }
    }

    #[test]
    fn follower_of_a_live_leader_answers_at_once() {
        assert_eq!(hold(&standby(), "me", 0, Instant::now(), 0), Hold::No);
    }

    #[test]
    fn running_standby_holds_while_no_leader_is_elected() {
        let mut s = standby();
        s.leader = None;
        assert_eq!(hold(&s, "me", 0, Instant::now(), 0), Hold::UntilWritable);
        // Not if it cannot win: PostgreSQL down, or failover disabled.
        let mut down = s.clone();
        down.pg = None;
        assert_eq!(hold(&down, "me", 0, Instant::now(), 0), Hold::No);
        let mut off = s.clone();
        off.node_failover = false;
        assert_eq!(hold(&off, "me", 0, Instant::now(), 0), Hold::No);
    }

    #[test]
    fn switchover_target_holds_shortly_before_the_planned_ready_time() {
        let now = Instant::now();
        let ready = 100_000;
        let plan = |target: Option<&str>| {
            Some(larder_core::model::SwitchoverPlan {
                target: target.map(str::to_string),
                ready_unix_ms: ready,
            })
        };
        let mut s = standby();
        s.switchover_plan = plan(Some("me"));
        let early = ready - PLANNED_HOLD.as_millis() as u64 - 1;
        assert_eq!(hold(&s, "me", 0, now, early), Hold::No, "too early");
        assert_eq!(hold(&s, "me", 0, now, early + 1), Hold::UntilWritable);
        assert_eq!(hold(&s, "me", 0, now, ready + 500), Hold::UntilWritable);
        let stale = ready + PLAN_LATE.as_millis() as u64 + 1;
        assert_eq!(hold(&s, "me", 0, now, stale), Hold::No, "plan went stale");
        s.switchover_plan = plan(None);
        assert_eq!(hold(&s, "me", 0, now, ready), Hold::UntilWritable, "demote");
        s.switchover_plan = plan(Some("third"));
        assert_eq!(hold(&s, "me", 0, now, ready), Hold::No, "someone else's");
    }

    #[test]
    fn follower_holds_only_near_the_expiry_of_a_leader_that_stopped_renewing() {
        let now = Instant::now();
        let mut s = standby();
        let e = 100_000;
        s.leader_lease_expires_unix_ms = Some(e);
        // A live leader's posted expiry stays ~TTL ahead: no hold.
        assert_eq!(hold(&s, "me", 0, now, e - 2_700), Hold::No);
        assert_eq!(
            hold(&s, "me", 0, now, e - EXPIRY_HOLD_BEFORE_MS - 1),
            Hold::No
        );
        assert_eq!(
            hold(&s, "me", 0, now, e - EXPIRY_HOLD_BEFORE_MS),
            Hold::UntilWritable
        );
        assert_eq!(
            hold(&s, "me", 0, now, e + EXPIRY_HOLD_AFTER_MS),
            Hold::UntilWritable
        );
        assert_eq!(
            hold(&s, "me", 0, now, e + EXPIRY_HOLD_AFTER_MS + 1),
            Hold::No
        );
        s.pg = None;
        assert_eq!(
            hold(&s, "me", 0, now, e),
            Hold::No,
            "cannot win without PostgreSQL"
        );
    }

    #[test]
    fn leader_holds_only_right_before_its_hand_over() {
        let now = Instant::now();
        let mut s = writable_leader();
        assert_eq!(hold(&s, "me", 0, now, 0), Hold::No);
        s.switchover_starts = Some(now + HOLD_MAX + Duration::from_millis(200));
        assert_eq!(hold(&s, "me", 0, now, 0), Hold::No);
        s.switchover_starts = Some(now + Duration::from_millis(300));
        assert_eq!(hold(&s, "me", 0, now, 0), Hold::UntilNotWritable);
        // Once it stepped down, the deposed leader answers at once.
        s.role = Some(NodeRole::DeposedLeader);
        assert_eq!(hold(&s, "me", 0, now, 0), Hold::No);
    }

    #[test]
    fn leader_not_yet_writable_holds() {
        let mut s = writable_leader();
        s.pg = pg(PgState::Standby);
        assert_eq!(hold(&s, "me", 0, Instant::now(), 0), Hold::UntilWritable);
    }

    #[tokio::test]
    async fn held_check_answers_when_the_node_becomes_writable() {
        let mut s = standby();
        s.leader = None;
        let (tx, rx) = watch::channel(s);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send_replace(writable_leader());
            tx
        });
        assert!(answer(&rx, "me", 0, true).await);
        let took = started.elapsed();
        writer.await.unwrap();
        assert!(
            took >= Duration::from_millis(200) && took < HOLD_MAX,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn held_check_gives_up_after_the_hold_and_wait_0_never_holds() {
        let mut s = standby();
        s.leader = None;
        let (_tx, rx) = watch::channel(s);
        let started = Instant::now();
        assert!(!answer(&rx, "me", 0, false).await);
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!answer(&rx, "me", 0, true).await);
        assert!(started.elapsed() >= HOLD_MAX - POLL);
    }
}
