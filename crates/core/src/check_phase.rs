//! When to hand over in a planned switchover, given the frontends' health-check rhythm.
//!
//! Chef frontends route through haproxy checking `GET /leader` every 2 s per server (`inter 2s
//! rise 1 fall 1`). However fast the database hand-over, a frontend keeps writes away from the
//! new leader until its next check of that server: on average one second, up to two. The
//! target node sees those checks arrive, so it learns each frontend's phase; the old leader
//! then starts the hand-over just early enough for it to finish right before the checks come.
//! Clients keep writing to the old leader while it waits, so the wait costs nothing but
//! command latency. Only the timing of a planned switchover changes; no safety rule depends
//! on it, and a wrong clock or a missed estimate just costs the usual check interval.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// One periodic checker (a frontend's haproxy) as seen by a node: when its last check was
/// answered and its period (the next check arrives one period after that answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPhase {
    /// Who checks (address and user agent): the same frontend checks every node.
    #[serde(default)]
    pub client: String,
    pub last_unix_ms: u64,
    pub period_ms: u64,
}

/// Arrival times of `/leader` requests per client (address + user agent), kept short.
///
/// One client may run several checkers: a Chef frontend's haproxy checks `/leader` from both
/// its PostgreSQL and its search backend, each every 2 s, at unrelated phases.
///
/// Each check is kept as (arrival, answer) times: haproxy schedules a server's next check
/// `inter` after the previous one *completed*, so a check this node held open pushes the next
/// one back. Predicting from answers keeps the rhythm known across held checks.
#[derive(Debug, Default, Clone)]
pub struct CheckTracker {
    streams: HashMap<String, VecDeque<Check>>,
}

/// One check as seen by the node: when it arrived and when it was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Check {
    arrived: u64,
    answered: u64,
}

/// Arrivals kept per client: enough for a few rounds of several interleaved checkers.
const KEEP: usize = 24;
/// Bound on tracked clients (a scan of the port must not grow memory).
const MAX_CLIENTS: usize = 64;
/// How far a check may stray from its predicted time and still count as on rhythm.
const TOLERANCE_MS: u64 = 50;
/// Checkers one client may run: a Chef frontend checks from two backends. A client with more
/// "checkers" is a fast poller whose arrivals happen to fit a slower grid, not haproxy.
const MAX_CHECKERS_PER_CLIENT: usize = 3;
/// How soon after the start the old leader answers 503 (its loop flips the role; a held check
/// is answered at the next poll). It stops PostgreSQL only after that.
const OLD_LEAD_MS: u64 = 50;
/// What a frontend loses when its haproxy still routes to the old leader after PostgreSQL
/// stopped there: a refused connection is retried on the same server after haproxy's 1 s
/// turn-around, so the client's write stalls about that long.
const REFUSED_RETRY_MS: u64 = 1_000;
/// How long after the start is decided the nodes can be counted on to hold checks: the plan
/// reaches the target through etcd. A check predicted earlier is assumed answered at once.
const NOTICE_MS: u64 = 100;
/// Margin between the hold the nodes apply and the hold the plan counts on: a check predicted
/// right at the edge of a hold may arrive a few milliseconds outside it.
const HOLD_MARGIN_MS: u64 = 200;
/// Shortest period taken for a health-check rhythm (Chef frontends use 2 s).
const MIN_PERIOD_MS: u64 = 1_000;
/// haproxy's default `inter`, and Chef's. Periods from here up are tried first: haproxy
/// spreads a process's first checks evenly over `inter`, so a frontend's two checkers of one
/// server (its PostgreSQL and search backends) start exactly half a period apart and
/// together fit a 1 s grid. Taken as one 1 s checker, the plan would count on whichever
/// check comes first, which may be the search backend's while writes wait for the other.
/// Read as two checkers of twice the period, the same arrivals are predicted and the plan
/// waits for both; a real 1 s checker read that way costs at most its own second.
const PREFERRED_MIN_PERIOD_MS: u64 = 2_000;

impl CheckTracker {
    /// A check answered at once.
    pub fn record(&mut self, client: &str, unix_ms: u64) {
        self.record_answered(client, unix_ms, unix_ms);
    }

    /// A check that arrived at `arrived_unix_ms` and was answered at `answered_unix_ms`.
    pub fn record_answered(&mut self, client: &str, arrived_unix_ms: u64, answered_unix_ms: u64) {
        if !self.streams.contains_key(client) && self.streams.len() >= MAX_CLIENTS {
            // Forget the client heard from least recently.
            if let Some(oldest) = self
                .streams
                .iter()
                .min_by_key(|(_, v)| v.back().map(|c| c.answered).unwrap_or(0))
                .map(|(k, _)| k.clone())
            {
                self.streams.remove(&oldest);
            }
        }
        let v = self.streams.entry(client.to_string()).or_default();
        let check = Check {
            arrived: arrived_unix_ms,
            answered: answered_unix_ms.max(arrived_unix_ms),
        };
        // Kept in answer order: a held check may be answered after a later one arrived.
        let at = v
            .iter()
            .rposition(|c| c.answered <= check.answered)
            .map_or(0, |i| i + 1);
        v.insert(at, check);
        while v.len() > KEEP {
            v.pop_front();
        }
    }

    /// The checkers that keep a steady period between 1 and 10 s, heard from within the
    /// last three periods: each one's latest answer and period (the next check comes one
    /// period after the latest answer).
    pub fn phases(&self, now_unix_ms: u64) -> Vec<CheckPhase> {
        let mut out: Vec<CheckPhase> = self
            .streams
            .iter()
            .flat_map(|(client, v)| {
                let a: Vec<Check> = v.iter().copied().collect();
                let mut p = steady_phases(&a, now_unix_ms);
                for c in &mut p {
                    c.client = client.clone();
                }
                p
            })
            .collect();
        out.sort_by_key(|p| (p.period_ms, p.last_unix_ms));
        out
    }
}

/// Whether some check was answered within the tolerance of `t`.
fn has_answer_near(checks: &[Check], t: u64) -> bool {
    checks
        .iter()
        .any(|c| c.answered.abs_diff(t) <= TOLERANCE_MS)
}

/// Split one client's checks into checkers sharing a period: the smallest period `p` (of
/// 2 s or more if one fits, see [`PREFERRED_MIN_PERIOD_MS`]) such that every check (with room
/// for it) arrived `p` after an earlier check was answered, seen over at least three rounds;
/// then one checker per check not yet followed by another.
fn steady_phases(checks: &[Check], now: u64) -> Vec<CheckPhase> {
    let Some(last) = checks.iter().map(|c| c.arrived).max() else {
        return vec![];
    };
    let first = checks.iter().map(|c| c.answered).min().unwrap_or(last);
    let mut candidates: Vec<u64> = checks
        .iter()
        .filter(|c| c.answered <= last)
        .map(|c| last - c.answered)
        .filter(|d| (MIN_PERIOD_MS..=10_000).contains(d))
        .collect();
    candidates.sort_unstable_by_key(|&d| (d < PREFERRED_MIN_PERIOD_MS, d));
    candidates.dedup();
    for p in candidates {
        // At least three full rounds observed.
        if last.saturating_sub(first) < 3 * p {
            continue;
        }
        let all_follow = checks
            .iter()
            .filter(|c| c.arrived >= first + p - TOLERANCE_MS.min(p))
            .all(|c| has_answer_near(checks, c.arrived.saturating_sub(p)));
        if all_follow {
            let round: Vec<CheckPhase> = checks
                .iter()
                .filter(|c| c.answered + p > last + TOLERANCE_MS)
                .map(|c| CheckPhase {
                    client: String::new(),
                    last_unix_ms: c.answered,
                    period_ms: p,
                })
                .collect();
            if now.saturating_sub(last) > 3 * p || round.len() > MAX_CHECKERS_PER_CLIENT {
                return vec![];
            }
            return round;
        }
    }
    vec![]
}

/// The first predicted check of `p` at or after `t`.
fn next_check(p: &CheckPhase, t: u64) -> u64 {
    if p.last_unix_ms >= t {
        return p.last_unix_ms;
    }
    let k = (t - p.last_unix_ms).div_ceil(p.period_ms);
    p.last_unix_ms + k * p.period_ms
}

/// When a check of `p` sees a state that changes at `ready`, for a node that holds checks
/// arriving up to `hold_ms` before the change (and after `known`, when it learned of it) and
/// answers them at the change: the first check at or after `ready`, or the change itself if a
/// check is held for it.
fn answered_at(p: &CheckPhase, ready: u64, hold_ms: u64, known: u64) -> u64 {
    next_check(p, known.max(ready.saturating_sub(hold_ms))).max(ready)
}

/// How long to wait before starting a hand-over that takes `handover_ms`, given the checks
/// the old leader (`old`) and the target (`new`) receive, both holding checks up to `hold_ms`
/// before their answer changes (0: no holding). A frontend has moved when its check of the
/// old leader has seen 503 (until then its pooled sessions stay there, failing) *and* its
/// check of the target has seen 200 after the hand-over. The delay minimises the sum over
/// frontends of that time from the start, among the delays that leave no frontend's time
/// longer than with no delay; never more than `max_wait_ms`; 0 when nothing is known about
/// the target's checks.
pub fn handover_delay_ms(
    old: &[CheckPhase],
    new: &[CheckPhase],
    now_unix_ms: u64,
    handover_ms: u64,
    hold_ms: u64,
    max_wait_ms: u64,
) -> u64 {
    if new.is_empty() {
        return 0;
    }
    let m = Moves::new(old, new, now_unix_ms, handover_ms, hold_ms);
    // Starting at once is what a frontend gets without the alignment. A start that shortens
    // the total but lengthens one frontend's gap trades that frontend's writes for another's:
    // refused, since every frontend carries its own clients.
    let unaligned = m.costs(0);
    let mut best = (unaligned.iter().sum::<u64>(), 0);
    for d in m.candidates(max_wait_ms) {
        let c = m.costs(d);
        if c.iter().zip(&unaligned).any(|(a, b)| a > b) {
            continue;
        }
        let total = c.iter().sum();
        if total < best.0 || (total == best.0 && d < best.1) {
            best = (total, d);
        }
    }
    best.1
}

/// The model behind [`handover_delay_ms`]: when each frontend moves for a given start.
struct Moves<'a> {
    old: &'a [CheckPhase],
    new: &'a [CheckPhase],
    /// The frontends, one per client the target hears from.
    clients: Vec<&'a str>,
    now: u64,
    /// When the nodes can be counted on to hold checks.
    known: u64,
    handover_ms: u64,
    /// The hold the plan counts on (the nodes' hold less a margin).
    hold_ms: u64,
}

impl<'a> Moves<'a> {
    fn new(
        old: &'a [CheckPhase],
        new: &'a [CheckPhase],
        now: u64,
        handover_ms: u64,
        hold_ms: u64,
    ) -> Self {
        let mut clients: Vec<&str> = new.iter().map(|p| p.client.as_str()).collect();
        clients.sort_unstable();
        clients.dedup();
        Moves {
            old,
            new,
            clients,
            now,
            known: now + NOTICE_MS,
            handover_ms,
            hold_ms: hold_ms.saturating_sub(HOLD_MARGIN_MS),
        }
    }

    /// Each frontend's time to move (in `clients` order), from the start of the hand-over,
    /// for a start `d` after now.
    fn costs(&self, d: u64) -> Vec<u64> {
        let start = self.now + d;
        let (hold, known) = (self.hold_ms, self.known);
        self.clients
            .iter()
            .map(|c| {
                let moved_off = self
                    .old
                    .iter()
                    .filter(|p| p.client == *c)
                    .map(|p| {
                        let at = answered_at(p, start + OLD_LEAD_MS, hold, known);
                        if at > start + OLD_LEAD_MS {
                            at + REFUSED_RETRY_MS
                        } else {
                            at
                        }
                    })
                    .max()
                    .unwrap_or(start);
                let moved_on = self
                    .new
                    .iter()
                    .filter(|p| p.client == *c)
                    .map(|p| answered_at(p, start + self.handover_ms, hold, known))
                    .max()
                    .unwrap_or(start);
                moved_off.max(moved_on) - start
            })
            .collect()
    }

    /// The starts worth scoring, up to `max_wait_ms`: the cost only changes where a change
    /// lands on a check (it is seen at once) or a hold just reaches back to one.
    fn candidates(&self, max_wait_ms: u64) -> Vec<u64> {
        let now = self.now;
        let mut out = vec![0];
        for p in self.old.iter().chain(self.new.iter()) {
            let lead = if self.new.contains(p) {
                self.handover_ms
            } else {
                OLD_LEAD_MS
            };
            for back in [0, self.hold_ms] {
                // Starts `d` with now + d + lead - back = a check.
                let mut at = next_check(p, now + lead.saturating_sub(back));
                while at + back <= now + lead + max_wait_ms {
                    if at + back >= now + lead {
                        out.push(at + back - lead - now);
                    }
                    at += p.period_ms;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(client: &str, start: u64, period: u64, n: u64) -> CheckTracker {
        let mut t = CheckTracker::default();
        for i in 0..n {
            t.record(client, start + i * period);
        }
        t
    }

    #[test]
    fn steady_checker_is_recognised_and_noise_is_not() {
        let t = tracker("10.0.0.9 -", 1_000, 2_010, 5);
        assert_eq!(
            t.phases(9_100),
            vec![CheckPhase {
                client: "10.0.0.9 -".into(),
                last_unix_ms: 9_040,
                period_ms: 2_010
            }]
        );
        // Too few rounds, stale, or too fast: no phase.
        assert!(tracker("a", 0, 2_000, 3).phases(4_100).is_empty());
        assert!(tracker("a", 0, 2_000, 5).phases(8_000 + 6_001).is_empty());
        assert!(tracker("a", 0, 100, 5).phases(450).is_empty());
        // A client polling every 250 ms fits a 1 s grid of four "checkers": not haproxy.
        assert!(tracker("cli", 0, 250, 24).phases(5_800).is_empty());
        // An off-rhythm arrival breaks it.
        let mut t = CheckTracker::default();
        for at in [0, 2_000, 2_700, 4_000, 6_000, 8_000] {
            t.record("a", at);
        }
        assert!(t.phases(8_100).is_empty());
    }

    #[test]
    fn interleaved_checkers_of_one_client_are_separated() {
        // A frontend's PostgreSQL and search backends both check every 2 s, 700 ms apart.
        let mut t = CheckTracker::default();
        for i in 0..5u64 {
            t.record("fe", 1_000 + i * 2_000);
            t.record("fe", 1_700 + i * 2_000);
        }
        assert_eq!(
            t.phases(10_000),
            vec![
                CheckPhase {
                    client: "fe".into(),
                    last_unix_ms: 9_000,
                    period_ms: 2_000
                },
                CheckPhase {
                    client: "fe".into(),
                    last_unix_ms: 9_700,
                    period_ms: 2_000
                }
            ]
        );
    }

    #[test]
    fn checkers_half_a_period_apart_are_not_taken_for_one_fast_checker() {
        // haproxy starts a frontend's PostgreSQL and search checks of one server 1 s apart
        // (its 6 checks spread over the 2 s `inter`): together a 1 s grid.
        let mut t = CheckTracker::default();
        for i in 0..6u64 {
            t.record("fe", 1_000 + i * 2_000);
            t.record("fe", 2_003 + i * 2_000);
        }
        let phases = t.phases(12_100);
        assert_eq!(
            phases,
            vec![
                CheckPhase {
                    client: "fe".into(),
                    last_unix_ms: 11_000,
                    period_ms: 2_000
                },
                CheckPhase {
                    client: "fe".into(),
                    last_unix_ms: 12_003,
                    period_ms: 2_000
                }
            ]
        );
        // So a hand-over counts on both checks: the one that sees the change first is not
        // enough, whichever backend it belongs to.
        let m = Moves::new(&[], &phases, 12_100, 500, 0);
        assert_eq!(m.costs(0), vec![14_003 - 12_100]);
        // A single checker polling every second is read as two 2 s checkers: the arrivals
        // are predicted all the same.
        let p = tracker("one", 0, 1_000, 12).phases(11_100);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|c| c.period_ms == 2_000));
    }

    #[test]
    fn a_held_check_shifts_the_rhythm_without_losing_it() {
        // haproxy: next check = previous answer + 2_000. The fourth check was held 700 ms.
        let mut t = CheckTracker::default();
        let mut at = 1_000;
        for i in 0..6 {
            let held = if i == 3 { 700 } else { 0 };
            t.record_answered("fe", at, at + held);
            at += held + 2_000;
        }
        // Answers: 1_000, 3_000, 5_000, 7_700, 9_700, 11_700.
        assert_eq!(
            t.phases(12_000),
            vec![CheckPhase {
                client: "fe".into(),
                last_unix_ms: 11_700,
                period_ms: 2_000
            }]
        );
        assert_eq!(next_check(&t.phases(12_000)[0], 12_000), 13_700);
    }

    #[test]
    fn two_jittered_checkers_of_one_frontend_are_both_found() {
        // haproxy's PostgreSQL and search backends both check /leader, 700 ms apart, each
        // every 2 s plus a few ms of scheduling jitter.
        let mut t = CheckTracker::default();
        let (mut a, mut b) = (1_000u64, 1_700u64);
        let mut seed = 7u64;
        let mut jitter = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) % 7
        };
        let mut arrivals = vec![];
        for _ in 0..12 {
            arrivals.push(a);
            arrivals.push(b);
            a += 2_000 + jitter();
            b += 2_000 + jitter();
        }
        arrivals.sort_unstable();
        for at in &arrivals {
            t.record_answered("fe", *at, *at + 1);
        }
        let phases = t.phases(arrivals.last().unwrap() + 100);
        assert_eq!(phases.len(), 2, "{phases:?}");
        assert!(phases
            .iter()
            .all(|p| (2_000..=2_007).contains(&p.period_ms)));
    }

    #[test]
    fn tracker_memory_is_bounded() {
        let mut t = CheckTracker::default();
        for i in 0..1_000u64 {
            t.record(&format!("client {i}"), i);
        }
        assert!(t.streams.len() <= MAX_CLIENTS);
        assert!(t.streams.contains_key("client 999"));
    }

    fn ph(client: &str, last: u64) -> CheckPhase {
        CheckPhase {
            client: client.into(),
            last_unix_ms: last,
            period_ms: 2_000,
        }
    }

    #[test]
    fn no_rhythm_means_no_wait() {
        assert_eq!(handover_delay_ms(&[], &[], 1_000, 500, 0, 2_500), 0);
        assert_eq!(
            handover_delay_ms(&[ph("fe", 0)], &[], 1_000, 500, 0, 2_500),
            0
        );
    }

    #[test]
    fn target_checks_only_the_hand_over_ends_just_before_its_check() {
        // Target checked at ...,10_000, 12_000; now 10_100; hand-over 500 ms.
        let d = handover_delay_ms(&[], &[ph("fe", 10_000)], 10_100, 500, 0, 2_500);
        assert_eq!(d, 1_400); // start 11_500, writable 12_000 = the check
        assert_eq!(
            handover_delay_ms(&[], &[ph("fe", 10_000)], 11_500, 500, 0, 2_500),
            0
        );
        assert!(handover_delay_ms(&[], &[ph("fe", 10_000)], 10_100, 500, 0, 1_000) <= 1_000);
    }

    #[test]
    fn the_old_leaders_check_counts_too() {
        // Old leader checked at 10_000 + 2k, target at 10_300 + 2k; hand-over 500 ms.
        // Starting at 11_800 (target ready 12_300 = its check; the old one checked at 12_000,
        // 200 ms after the start) moves the frontend in 500 ms. Every start is scored and
        // none beats it.
        let old = [ph("fe", 10_000)];
        let new = [ph("fe", 10_300)];
        let now = 10_050;
        let d = handover_delay_ms(&old, &new, now, 500, 0, 2_500);
        let window = |d: u64| {
            let s = now + d;
            next_check(&old[0], s + OLD_LEAD_MS).max(next_check(&new[0], s + 500)) - s
        };
        assert_eq!(window(d), 500, "start {d}");
        for other in 0..=2_500 {
            assert!(window(other) >= window(d), "start {other} beats {d}");
        }
    }

    #[test]
    fn held_checks_let_the_hand_over_be_seen_as_it_happens() {
        // Old leader checked at 10_300 + 2k, target at 10_000 + 2k (10_000 already passed);
        // hand-over 500 ms; both hold checks up to 1_700 ms, of which the plan counts on 1_500
        // (HOLD_MARGIN_MS). A start at 11_500 has the old
        // leader's check of 10_300 held until 11_650 and the target's check of 12_000 answered
        // on arrival right as it becomes writable: the frontend moves in exactly the hand-over.
        let old = [ph("fe", 10_300)];
        let new = [ph("fe", 10_000)];
        let now = 10_050;
        let d = handover_delay_ms(&old, &new, now, 500, 1_700, 2_500);
        assert_eq!(d, 1_450);
        let known = now + NOTICE_MS;
        let window = |d: u64| {
            let s = now + d;
            answered_at(&old[0], s + OLD_LEAD_MS, 1_500, known).max(answered_at(
                &new[0],
                s + 500,
                1_500,
                known,
            )) - s
        };
        assert_eq!(window(d), 500);
        for other in 0..=2_500 {
            assert!(window(other) >= window(d), "start {other} beats {d}");
        }
        // Without holding, the best start leaves a longer window.
        let d0 = handover_delay_ms(&old, &new, now, 500, 0, 2_500);
        let s0 = now + d0;
        assert!(
            next_check(&old[0], s0 + OLD_LEAD_MS).max(next_check(&new[0], s0 + 500)) - s0 > 500
        );
    }

    #[test]
    fn a_check_at_the_edge_of_the_hold_is_not_counted_on() {
        // Target checked at 10_000 + 2k; now 9_500; hand-over 500; hold 1_200 of which 1_000
        // counts: every start whose ready time holds the 10_000 check for more than 1_000 ms
        // is scored as waiting for the 12_000 check.
        let new = [ph("fe", 8_000)];
        let known = 9_500 + NOTICE_MS;
        for d in 0..=2_500u64 {
            let ready = 9_500 + d + 500;
            let seen = answered_at(&new[0], ready, 1_000, known);
            if ready > 11_000 && ready < 12_000 {
                assert_eq!(seen, 12_000, "ready {ready}");
            }
        }
        let d = handover_delay_ms(&[], &new, 9_500, 500, 1_200, 2_500);
        assert!(9_500 + d + 500 <= 11_000, "d {d}");
    }

    #[test]
    fn a_check_before_the_request_was_known_is_not_held() {
        // The target's check at 10_000 came before the request (now 10_050): it was answered
        // long ago, so only its next one, at 12_000, can see the hand-over.
        let p = ph("fe", 10_000);
        assert_eq!(answered_at(&p, 10_600, 1_500, 10_050), 12_000);
        assert_eq!(answered_at(&p, 10_600, 1_500, 9_900), 10_600);
        assert_eq!(answered_at(&p, 10_600, 0, 9_900), 12_000);
    }

    #[test]
    fn several_frontends_minimise_the_total_gap() {
        let old = [ph("a", 0), ph("b", 900)];
        let new = [ph("a", 300), ph("b", 1_700)];
        let now = 100;
        let m = Moves::new(&old, &new, now, 500, 0);
        let total = |d: u64| -> u64 { m.costs(d).iter().sum() };
        let d = handover_delay_ms(&old, &new, now, 500, 0, 2_500);
        assert!(total(d) < total(0), "the wait {d} gains nothing");
        let unaligned = m.costs(0);
        for other in 0..=2_500 {
            let c = m.costs(other);
            if c.iter().zip(&unaligned).all(|(a, b)| a <= b) {
                assert!(total(other) >= total(d), "start {other} beats {d}");
            }
        }
    }

    /// The start that minimises the total alone, over the same candidates.
    fn best_total(m: &Moves, max_wait_ms: u64) -> u64 {
        let mut best = (m.costs(0).iter().sum::<u64>(), 0);
        for d in m.candidates(max_wait_ms) {
            let t: u64 = m.costs(d).iter().sum();
            if t < best.0 || (t == best.0 && d < best.1) {
                best = (t, d);
            }
        }
        best.1
    }

    #[test]
    fn no_frontend_waits_longer_than_with_no_alignment() {
        // Two frontends at every combination of phases (200 ms steps) on both nodes, with and
        // without holding: each one's gap at the chosen start is at most its gap when the
        // hand-over starts at once, and the total never grows.
        let now = 10_000;
        let mut traded = 0;
        for hold in [0, 1_700] {
            for oa in (0..2_000).step_by(200) {
                for na in (0..2_000).step_by(200) {
                    for ob in (100..2_000).step_by(200) {
                        for nb in (100..2_000).step_by(200) {
                            let old = [ph("a", now - oa), ph("b", now - ob)];
                            let new = [ph("a", now - na), ph("b", now - nb)];
                            let m = Moves::new(&old, &new, now, 500, hold);
                            let at_once = m.costs(0);
                            let d = handover_delay_ms(&old, &new, now, 500, hold, 2_500);
                            let chosen = m.costs(d);
                            for (c, z) in chosen.iter().zip(&at_once) {
                                assert!(
                                    c <= z,
                                    "hold {hold} phases {oa} {na} {ob} {nb}: start {d} \
                                     gives {chosen:?}, at once {at_once:?}"
                                );
                            }
                            let by_total = m.costs(best_total(&m, 2_500));
                            if by_total.iter().zip(&at_once).any(|(c, z)| c > z) {
                                traded += 1;
                            }
                        }
                    }
                }
            }
        }
        // The rule matters: minimising the total alone would make some frontend worse.
        assert!(traded > 0);
    }
}
