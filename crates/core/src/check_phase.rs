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

/// One periodic checker (a frontend's haproxy) as seen by a node: its last check and period.
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
#[derive(Debug, Default, Clone)]
pub struct CheckTracker {
    streams: HashMap<String, VecDeque<u64>>,
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
/// How long before a check of the old leader the hand-over must have begun for that check to
/// see 503 (the loop wakes and flips its role with some latency; a check that still sees 200
/// keeps the frontend on the old leader for a whole period).
const OLD_LEAD_MS: u64 = 150;
/// Shortest period taken for a health-check rhythm (Chef frontends use 2 s).
const MIN_PERIOD_MS: u64 = 1_000;

impl CheckTracker {
    pub fn record(&mut self, client: &str, unix_ms: u64) {
        if !self.streams.contains_key(client) && self.streams.len() >= MAX_CLIENTS {
            // Forget the client heard from least recently.
            if let Some(oldest) = self
                .streams
                .iter()
                .min_by_key(|(_, v)| v.back().copied().unwrap_or(0))
                .map(|(k, _)| k.clone())
            {
                self.streams.remove(&oldest);
            }
        }
        let v = self.streams.entry(client.to_string()).or_default();
        v.push_back(unix_ms);
        while v.len() > KEEP {
            v.pop_front();
        }
    }

    /// The checkers that keep a steady period between 1 and 10 s, heard from within the
    /// last three periods: each one's latest check and period.
    pub fn phases(&self, now_unix_ms: u64) -> Vec<CheckPhase> {
        let mut out: Vec<CheckPhase> = self
            .streams
            .iter()
            .flat_map(|(client, v)| {
                let a: Vec<u64> = v.iter().copied().collect();
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

/// Whether some arrival lies within the tolerance of `t`.
fn has_arrival_near(arrivals: &[u64], t: u64) -> bool {
    arrivals.iter().any(|a| a.abs_diff(t) <= TOLERANCE_MS)
}

/// Split one client's arrivals into checkers sharing a period: the smallest period `p` such
/// that every arrival (with room for it) has a predecessor `p` earlier, seen over at least
/// three rounds; then one checker per arrival in the last round.
fn steady_phases(arrivals: &[u64], now: u64) -> Vec<CheckPhase> {
    let Some(&last) = arrivals.last() else {
        return vec![];
    };
    let first = arrivals[0];
    let mut candidates: Vec<u64> = arrivals
        .iter()
        .map(|a| last - a)
        .filter(|d| (MIN_PERIOD_MS..=10_000).contains(d))
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    for p in candidates {
        // At least three full rounds observed.
        if last - first < 3 * p {
            continue;
        }
        let with_room: Vec<u64> = arrivals
            .iter()
            .copied()
            .filter(|a| *a >= first + p - TOLERANCE_MS.min(p))
            .collect();
        if with_room
            .iter()
            .all(|a| has_arrival_near(arrivals, a.saturating_sub(p)))
        {
            let round: Vec<CheckPhase> = arrivals
                .iter()
                .filter(|a| **a + p > last + TOLERANCE_MS)
                .map(|a| CheckPhase {
                    client: String::new(),
                    last_unix_ms: *a,
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
/// frontends of that time from the start; never more than `max_wait_ms`; 0 when nothing is
/// known about the target's checks.
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
    let mut clients: Vec<&str> = new.iter().map(|p| p.client.as_str()).collect();
    clients.sort_unstable();
    clients.dedup();
    let now = now_unix_ms;
    let cost = |d: u64| -> u64 {
        let start = now + d;
        clients
            .iter()
            .map(|c| {
                let moved_off = old
                    .iter()
                    .filter(|p| p.client == *c)
                    .map(|p| answered_at(p, start + OLD_LEAD_MS, hold_ms, now))
                    .max()
                    .unwrap_or(start);
                let moved_on = new
                    .iter()
                    .filter(|p| p.client == *c)
                    .map(|p| answered_at(p, start + handover_ms, hold_ms, now))
                    .max()
                    .unwrap_or(start);
                moved_off.max(moved_on) - start
            })
            .sum()
    };
    // The cost only changes where a change lands on a check (it is seen at once) or a hold
    // just reaches back to one: try those starts.
    let mut candidates = vec![0];
    for p in old.iter().chain(new.iter()) {
        let lead = if new.contains(p) {
            handover_ms
        } else {
            OLD_LEAD_MS
        };
        for back in [0, hold_ms] {
            // Starts `d` with now + d + lead - back = a check.
            let mut at = next_check(p, now + lead.saturating_sub(back));
            while at + back <= now + lead + max_wait_ms {
                if at + back >= now + lead {
                    candidates.push(at + back - lead - now);
                }
                at += p.period_ms;
            }
        }
    }
    let mut best = (cost(0), 0);
    for d in candidates {
        let c = cost(d);
        if c < best.0 || (c == best.0 && d < best.1) {
            best = (c, d);
        }
    }
    best.1
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
        // hand-over 500 ms; both hold checks up to 1_500 ms. A start at 11_500 has the old
        // leader's check of 10_300 held until 11_650 and the target's check of 12_000 answered
        // on arrival right as it becomes writable: the frontend moves in exactly the hand-over.
        let old = [ph("fe", 10_300)];
        let new = [ph("fe", 10_000)];
        let now = 10_050;
        let d = handover_delay_ms(&old, &new, now, 500, 1_500, 2_500);
        assert_eq!(d, 1_450);
        let window = |d: u64| {
            let s = now + d;
            answered_at(&old[0], s + OLD_LEAD_MS, 1_500, now).max(answered_at(
                &new[0],
                s + 500,
                1_500,
                now,
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
        let total = |d: u64| -> u64 {
            let s = now + d;
            ["a", "b"]
                .iter()
                .map(|c| {
                    let o = old.iter().find(|p| p.client == *c).unwrap();
                    let n = new.iter().find(|p| p.client == *c).unwrap();
                    next_check(o, s + OLD_LEAD_MS).max(next_check(n, s + 500)) - s
                })
                .sum()
        };
        let d = handover_delay_ms(&old, &new, now, 500, 0, 2_500);
        for other in 0..=2_500 {
            assert!(total(other) >= total(d), "start {other} beats {d}");
        }
    }
}
