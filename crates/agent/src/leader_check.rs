//! `GET /leader` answered the moment its answer changes.
//!
//! Chef frontends' haproxy checks `/leader` every 2 s per server (`inter 2s rise 1 fall 1`) and
//! moves traffic only on a check's answer. However fast an election or a hand-over, a frontend
//! starts using the new leader at its next check of it: on average a second later, up to two.
//! So when this node's answer is about to change — no leader is elected and this node may
//! win, this node leads but its PostgreSQL is not writable yet, a switchover to this node was
//! requested, or this leader's planned hand-over starts within the hold — a check is held open
//! and answered as soon as the answer changes, or after [`HOLD_MAX`] with whatever is true
//! then. haproxy's check timeout is `inter` (2 s) when `timeout check` is unset, as in Chef's
//! configuration, so a held check never times out.
//!
//! Safety does not depend on this: every answer is the writable-leader test evaluated when it
//! is sent ([`Shared::is_writable_leader`]); holding only changes *when* a frontend learns it.
//! Tools that want an instant sample (the fault suite's samplers) ask `/leader?wait=0`.

use crate::ha::Shared;
use larder_core::model::NodeRole;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a check is held: well inside haproxy's 2 s check timeout, leaving room for a slow
/// link and the TCP handshake, which count against the same timeout.
pub const HOLD_MAX: Duration = Duration::from_millis(1_500);
/// How often a held check re-reads the loop's state. Polling, not a notification: the answer
/// depends on state written from several tasks (loop, lease renewal) and on the clock.
const POLL: Duration = Duration::from_millis(20);
/// How long a seen switchover request keeps the target holding checks: it is deleted when the
/// hand-over starts, and the old leader's record of it only appears after PostgreSQL stopped.
const REQUEST_MEMORY: Duration = Duration::from_secs(2);

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
pub fn hold(s: &Shared, me: &str, required_followers: u32, now: Instant) -> Hold {
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
        && s.switchover_seen
            .as_ref()
            .map(|(target, at)| {
                target.as_deref().map(|t| t == me).unwrap_or(true)
                    && now.duration_since(*at) <= REQUEST_MEMORY
            })
            .unwrap_or(false);
    if electing || targeted {
        Hold::UntilWritable
    } else {
        Hold::No
    }
}

/// The `/leader` answer (writable leader or not), held per [`hold`] when `may_hold`.
pub async fn answer(
    shared: &Mutex<Shared>,
    me: &str,
    required_followers: u32,
    may_hold: bool,
) -> bool {
    let until = Instant::now() + HOLD_MAX;
    loop {
        let (ok, h) = {
            let s = shared.lock().unwrap();
            let now = Instant::now();
            (
                s.is_writable_leader(required_followers),
                if may_hold {
                    hold(&s, me, required_followers, now)
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
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::LeaseInfo;
    use crate::postgres::PgObservation;
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
        })
    }

    fn standby() -> Shared {
        Shared {
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

    fn writable_leader() -> Shared {
        Shared {
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
        assert_eq!(hold(&standby(), "me", 0, Instant::now()), Hold::No);
    }

    #[test]
    fn running_standby_holds_while_no_leader_is_elected() {
        let mut s = standby();
        s.leader = None;
        assert_eq!(hold(&s, "me", 0, Instant::now()), Hold::UntilWritable);
        // Not if it cannot win: PostgreSQL down, or failover disabled.
        let mut down = s.clone();
        down.pg = None;
        assert_eq!(hold(&down, "me", 0, Instant::now()), Hold::No);
        let mut off = s.clone();
        off.node_failover = false;
        assert_eq!(hold(&off, "me", 0, Instant::now()), Hold::No);
    }

    #[test]
    fn switchover_target_holds_only_for_its_own_recent_request() {
        let now = Instant::now();
        let mut s = standby();
        s.switchover_seen = Some((Some("me".into()), now));
        assert_eq!(hold(&s, "me", 0, now), Hold::UntilWritable);
        s.switchover_seen = Some((None, now));
        assert_eq!(
            hold(&s, "me", 0, now),
            Hold::UntilWritable,
            "demote: any follower"
        );
        s.switchover_seen = Some((Some("third".into()), now));
        assert_eq!(hold(&s, "me", 0, now), Hold::No);
        s.switchover_seen = Some((Some("me".into()), now));
        assert_eq!(
            hold(&s, "me", 0, now + REQUEST_MEMORY + Duration::from_millis(1)),
            Hold::No
        );
    }

    #[test]
    fn leader_holds_only_right_before_its_hand_over() {
        let now = Instant::now();
        let mut s = writable_leader();
        assert_eq!(hold(&s, "me", 0, now), Hold::No);
        s.switchover_starts = Some(now + HOLD_MAX + Duration::from_millis(200));
        assert_eq!(hold(&s, "me", 0, now), Hold::No);
        s.switchover_starts = Some(now + Duration::from_millis(300));
        assert_eq!(hold(&s, "me", 0, now), Hold::UntilNotWritable);
        // Once it stepped down, the deposed leader answers at once.
        s.role = Some(NodeRole::DeposedLeader);
        assert_eq!(hold(&s, "me", 0, now), Hold::No);
    }

    #[test]
    fn leader_not_yet_writable_holds() {
        let mut s = writable_leader();
        s.pg = pg(PgState::Standby);
        assert_eq!(hold(&s, "me", 0, Instant::now()), Hold::UntilWritable);
    }

    #[tokio::test]
    async fn held_check_answers_when_the_node_becomes_writable() {
        let mut s = standby();
        s.leader = None;
        let shared = std::sync::Arc::new(Mutex::new(s));
        let started = Instant::now();
        let writer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                *shared.lock().unwrap() = writable_leader();
            })
        };
        assert!(answer(&shared, "me", 0, true).await);
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
        let shared = Mutex::new(s);
        let started = Instant::now();
        assert!(!answer(&shared, "me", 0, false).await);
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!answer(&shared, "me", 0, true).await);
        assert!(started.elapsed() >= HOLD_MAX - POLL);
    }
}
