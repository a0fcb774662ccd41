//! The checker: what must hold of a history once the cluster is healed.
//!
//! 1. Every acknowledged id (client write or direct probe) is present on the final leader and
//!    on every follower. Unknown ids may be present or absent. Failed ids must be absent.
//! 2. No two writers in overlapping terms: PostgreSQL bumps the timeline on every promotion,
//!    so an acknowledged write carries (node, timeline). Two different nodes acknowledging
//!    on the same timeline, or a node on an older timeline acknowledging a write that
//!    started after another node had acknowledged on a newer one, is split brain.
//! 3. The health endpoint, as the suite's own sampler sees it: two nodes claiming leadership
//!    (runs of 2xx answers) over overlapping spans. Every overlap is recorded in
//!    [`Report::claim_overlaps`]; one longer than the tolerance is a violation of the
//!    one-leader-answer contract. It is not the safety proof (rule 2 is): haproxy checks each
//!    server on its own schedule with `rise 1`, so it *can* hold two servers UP during a
//!    shorter overlap — what haproxy itself did is recorded separately (`routing`).
//!
//! A violation carries the part of the history that shows it.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{format_entries, Entry, Op, OpKind, Outcome};

#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: &'static str,
    pub message: String,
    /// Formatted history lines around the violation.
    pub excerpt: String,
}

#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub writes: Counts,
    pub probes: Counts,
    /// Acknowledged ids missing from at least one node.
    pub lost: u64,
    /// Longest gap between two consecutive acknowledged client writes (µs) and where.
    pub longest_gap_us: u64,
    pub longest_gap_at_us: u64,
    /// Every span in which the sampler saw two nodes answer the leader check with 2xx/3xx:
    /// (node index, node index, from µs, to µs), violations or not.
    pub claim_overlaps: Vec<(u32, u32, u64, u64)>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Ids present on each node at the end; `None` when the node could not be read (a checker
/// that cannot read a node cannot vouch for it, so that is a violation too).
pub type FinalState = Vec<(String, Option<HashSet<i64>>)>;

pub fn ops(entries: &[Entry]) -> impl Iterator<Item = &Op> {
    entries.iter().filter_map(|e| match e {
        Entry::Op(o) => Some(o),
        _ => None,
    })
}

/// Lines of the history within `[from, to]` µs, plus the ops with the given ids.
pub fn excerpt(entries: &[Entry], from_us: u64, to_us: u64, ids: &[i64], limit: usize) -> String {
    let idset: HashSet<i64> = ids.iter().copied().collect();
    let picked: Vec<&Entry> = entries
        .iter()
        .filter(|e| match e {
            Entry::Op(o) => {
                idset.contains(&o.id)
                    || (o.kind != OpKind::Health && o.end_us >= from_us && o.start_us <= to_us)
            }
            Entry::Event(ev) => ev.at_us >= from_us.saturating_sub(5_000_000) && ev.at_us <= to_us,
            Entry::Search(_) => false,
        })
        .take(limit)
        .collect();
    format_entries(&picked)
}

/// Longest gap between consecutive acknowledged client writes whose later end lies in
/// `[from_us, to_us]`. Returns (gap, end of the write before the gap).
pub fn longest_gap(entries: &[Entry], from_us: u64, to_us: u64) -> (u64, u64) {
    longest_gap_of(entries, from_us, to_us, None)
}

/// When acknowledged client writes ended, sorted: every writer's, or only those of frontend
/// `frontend` (its client host; see `workload::frontend_of`).
fn write_ends(entries: &[Entry], frontend: Option<u32>) -> Vec<u64> {
    let mut ends: Vec<u64> = ops(entries)
        .filter(|o| o.kind == OpKind::Write && o.outcome == Outcome::Ok)
        .filter(|o| frontend.is_none_or(|f| crate::workload::frontend_of(o.process) == f))
        .map(|o| o.end_us)
        .collect();
    ends.sort_unstable();
    ends
}

/// [`longest_gap`] of one frontend's writers (`Some(k)`) or of all (`None`).
pub fn longest_gap_of(
    entries: &[Entry],
    from_us: u64,
    to_us: u64,
    frontend: Option<u32>,
) -> (u64, u64) {
    let ends = write_ends(entries, frontend);
    let mut best = (0, 0);
    for w in ends.windows(2) {
        if w[1] >= from_us && w[0] <= to_us && w[1] - w[0] > best.0 {
            best = (w[1] - w[0], w[0]);
        }
    }
    best
}

/// Longest gap between consecutive acknowledged client writes whose later write ended in
/// `(from_us, to_us]`: the outage a fault at `from_us` caused, when `to_us` is the next
/// fault (whose own outage ends after it) or the end of the history.
pub fn longest_gap_ending_in(entries: &[Entry], from_us: u64, to_us: u64) -> u64 {
    longest_gap_ending_in_of(entries, from_us, to_us, None)
}

/// [`longest_gap_ending_in`] of one frontend's writers (`Some(k)`) or of all (`None`).
pub fn longest_gap_ending_in_of(
    entries: &[Entry],
    from_us: u64,
    to_us: u64,
    frontend: Option<u32>,
) -> u64 {
    write_ends(entries, frontend)
        .windows(2)
        .filter(|w| w[1] > from_us && w[1] <= to_us)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

pub fn check(entries: &[Entry], finals: &FinalState, dual_leader_tolerance_us: u64) -> Report {
    let mut r = Report::default();
    for o in ops(entries) {
        let c = match o.kind {
            OpKind::Write => &mut r.writes,
            OpKind::Probe => &mut r.probes,
            OpKind::Health => continue,
        };
        match o.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Unknown => c.unknown += 1,
        }
    }
    let (gap, at) = longest_gap(entries, 0, u64::MAX);
    r.longest_gap_us = gap;
    r.longest_gap_at_us = at;
    check_durability(entries, finals, &mut r);
    check_terms(entries, &mut r);
    check_health(entries, dual_leader_tolerance_us, &mut r);
    r
}

fn check_durability(entries: &[Entry], finals: &FinalState, r: &mut Report) {
    let acked: Vec<&Op> = ops(entries)
        .filter(|o| o.kind != OpKind::Health && o.outcome == Outcome::Ok)
        .collect();
    let failed: Vec<&Op> = ops(entries)
        .filter(|o| o.kind != OpKind::Health && o.outcome == Outcome::Failed)
        .collect();
    let mut lost: HashSet<i64> = HashSet::new();
    for (node, ids) in finals {
        let Some(ids) = ids else {
            r.violations.push(Violation {
                kind: "unreadable-node",
                message: format!("could not read the final state of {node}"),
                excerpt: String::new(),
            });
            continue;
        };
        let missing: Vec<&Op> = acked
            .iter()
            .copied()
            .filter(|o| !ids.contains(&o.id))
            .collect();
        if !missing.is_empty() {
            lost.extend(missing.iter().map(|o| o.id));
            let first = missing[0];
            let sample: Vec<i64> = missing.iter().take(20).map(|o| o.id).collect();
            r.violations.push(Violation {
                kind: "lost-acknowledged-write",
                message: format!(
                    "{} acknowledged id(s) missing on {node} (first: {} acked at {:.3}s)",
                    missing.len(),
                    first.id,
                    first.end_us as f64 / 1e6
                ),
                excerpt: excerpt(
                    entries,
                    first.start_us.saturating_sub(2_000_000),
                    first.end_us + 2_000_000,
                    &sample,
                    80,
                ),
            });
        }
        let present: Vec<&Op> = failed
            .iter()
            .copied()
            .filter(|o| ids.contains(&o.id))
            .collect();
        if let Some(first) = present.first() {
            r.violations.push(Violation {
                kind: "failed-write-present",
                message: format!(
                    "{} write(s) reported as failed are present on {node} (first: {})",
                    present.len(),
                    first.id
                ),
                excerpt: excerpt(entries, first.start_us, first.end_us, &[first.id], 40),
            });
        }
    }
    r.lost = lost.len() as u64;
}

fn check_terms(entries: &[Entry], r: &mut Report) {
    // timeline -> node that acknowledged on it (first seen op)
    let mut owner: BTreeMap<u32, &Op> = BTreeMap::new();
    let mut acked: Vec<&Op> = ops(entries)
        .filter(|o| o.kind != OpKind::Health && o.outcome == Outcome::Ok)
        .filter(|o| o.node.is_some() && o.timeline.is_some())
        .collect();
    acked.sort_by_key(|o| o.end_us);
    for o in &acked {
        let tl = o.timeline.unwrap_or(0);
        match owner.get(&tl) {
            Some(first) if first.node != o.node => {
                r.violations.push(Violation {
                    kind: "two-writers-same-term",
                    message: format!(
                        "timeline {tl}: writes acknowledged by {} and by {}",
                        first.node.as_deref().unwrap_or("?"),
                        o.node.as_deref().unwrap_or("?")
                    ),
                    excerpt: excerpt(
                        entries,
                        o.start_us.saturating_sub(1_000_000),
                        o.end_us,
                        &[first.id, o.id],
                        60,
                    ),
                });
                return;
            }
            Some(_) => {}
            None => {
                owner.insert(tl, o);
            }
        }
    }
    // Older term acknowledging after a newer term's acknowledgement ended.
    let mut newest_end: HashMap<u32, u64> = HashMap::new();
    for o in &acked {
        let tl = o.timeline.unwrap_or(0);
        let e = newest_end.entry(tl).or_insert(o.end_us);
        *e = (*e).min(o.end_us);
    }
    for o in &acked {
        let tl = o.timeline.unwrap_or(0);
        if let Some((newer_tl, first_end)) = newest_end
            .iter()
            .filter(|(t, _)| **t > tl)
            .map(|(t, e)| (*t, *e))
            .min_by_key(|(_, e)| *e)
        {
            if o.start_us > first_end {
                r.violations.push(Violation {
                    kind: "stale-term-write",
                    message: format!(
                        "{} acknowledged id {} on timeline {tl} at {:.3}s, after timeline {newer_tl} had acknowledged writes at {:.3}s",
                        o.node.as_deref().unwrap_or("?"),
                        o.id,
                        o.end_us as f64 / 1e6,
                        first_end as f64 / 1e6
                    ),
                    excerpt: excerpt(entries, first_end.saturating_sub(1_000_000), o.end_us, &[o.id], 60),
                });
                return;
            }
        }
    }
}

fn check_health(entries: &[Entry], tolerance_us: u64, r: &mut Report) {
    // Per node, maximal runs of consecutive 2xx/3xx samples become "claimed leader"
    // intervals [first start, last end]; any other answer (or none) ends a run. Nodes are
    // sampled independently, so intervals are compared in time, never by sample index.
    let mut per_node: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for o in ops(entries).filter(|o| o.kind == OpKind::Health) {
        per_node.entry(o.process).or_default().push(o);
    }
    let mut claims: Vec<(u32, u64, u64)> = Vec::new();
    for (node, samples) in per_node.iter_mut() {
        samples.sort_by_key(|o| o.start_us);
        let mut run: Option<(u64, u64)> = None;
        for o in samples.iter() {
            let leader = o.status.is_some_and(|s| (200..400).contains(&s));
            run = match (run, leader) {
                (None, true) => Some((o.start_us, o.end_us)),
                (Some((a, _)), true) => Some((a, o.end_us)),
                (Some((a, b)), false) => {
                    claims.push((*node, a, b));
                    None
                }
                (None, false) => None,
            };
        }
        if let Some((a, b)) = run {
            claims.push((*node, a, b));
        }
    }
    for (i, x) in claims.iter().enumerate() {
        for y in &claims[i + 1..] {
            if x.0 == y.0 {
                continue;
            }
            let from = x.1.max(y.1);
            let to = x.2.min(y.2);
            if to > from {
                r.claim_overlaps.push((x.0, y.0, from, to));
            }
            if to > from
                && to - from > tolerance_us
                && r.violations.iter().all(|v| v.kind != "two-healthy-leaders")
            {
                r.violations.push(Violation {
                    kind: "two-healthy-leaders",
                    message: format!(
                        "nodes #{} and #{} both answered the leader check with 2xx/3xx from {:.3}s to {:.3}s ({:.3}s, tolerance {:.3}s)",
                        x.0 + 1,
                        y.0 + 1,
                        from as f64 / 1e6,
                        to as f64 / 1e6,
                        (to - from) as f64 / 1e6,
                        tolerance_us as f64 / 1e6
                    ),
                    excerpt: excerpt_with_health(entries, from.saturating_sub(1_000_000), to, 80),
                });
            }
        }
    }
}

/// Like [`excerpt`] but with the health samples (for leader-check violations).
pub fn excerpt_with_health(entries: &[Entry], from_us: u64, to_us: u64, limit: usize) -> String {
    let picked: Vec<&Entry> = entries
        .iter()
        .filter(|e| match e {
            Entry::Op(o) => o.kind == OpKind::Health && o.end_us >= from_us && o.start_us <= to_us,
            Entry::Event(ev) => ev.at_us >= from_us.saturating_sub(5_000_000) && ev.at_us <= to_us,
            Entry::Search(_) => false,
        })
        .take(limit)
        .collect();
    format_entries(&picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        kind: OpKind,
        id: i64,
        s: u64,
        e: u64,
        out: Outcome,
        node: &str,
        tl: Option<u32>,
    ) -> Entry {
        Entry::Op(Op {
            kind,
            id,
            process: 0,
            start_us: s,
            end_us: e,
            outcome: out,
            node: Some(node.into()),
            timeline: tl,
            status: None,
            error: None,
        })
    }

    #[test]
    fn each_frontend_has_its_own_gap() {
        // Frontend 1 (processes 0..) writes throughout; frontend 2 (processes 100..) stops
        // for 900 µs. Together the writes show no gap longer than 100 µs.
        let mut h = Vec::new();
        for t in (0..2_000u64).step_by(100) {
            h.push(op(
                OpKind::Write,
                t as i64,
                t,
                t + 1,
                Outcome::Ok,
                "a",
                Some(1),
            ));
            if !(500..1_400).contains(&t) {
                let mut e = op(
                    OpKind::Write,
                    10_000 + t as i64,
                    t,
                    t + 2,
                    Outcome::Ok,
                    "a",
                    Some(1),
                );
                if let Entry::Op(o) = &mut e {
                    o.process = crate::workload::FRONTEND_STRIDE;
                }
                h.push(e);
            }
        }
        assert_eq!(longest_gap_of(&h, 0, 2_000, None).0, 100);
        assert_eq!(longest_gap_of(&h, 0, 2_000, Some(0)).0, 100);
        assert_eq!(longest_gap_of(&h, 0, 2_000, Some(1)).0, 1_000);
        assert_eq!(longest_gap_ending_in_of(&h, 0, 2_000, Some(1)), 1_000);
        assert_eq!(longest_gap_ending_in_of(&h, 0, 2_000, Some(2)), 0);
    }

    fn all(ids: &[i64]) -> Option<HashSet<i64>> {
        Some(ids.iter().copied().collect())
    }

    #[test]
    fn acknowledged_write_missing_is_lost_unknown_is_not() {
        let h = vec![
            op(OpKind::Write, 1, 0, 10, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 2, 10, 20, Outcome::Unknown, "a", None),
            op(OpKind::Write, 3, 20, 30, Outcome::Ok, "a", Some(1)),
        ];
        let ok = check(
            &h,
            &vec![("a".into(), all(&[1, 3])), ("b".into(), all(&[1, 2, 3]))],
            2,
        );
        assert!(ok.ok(), "{:?}", ok.violations);
        let bad = check(
            &h,
            &vec![("a".into(), all(&[1])), ("b".into(), all(&[1, 3]))],
            2,
        );
        assert_eq!(bad.lost, 1);
        assert_eq!(bad.violations[0].kind, "lost-acknowledged-write");
        assert!(bad.violations[0].excerpt.contains("id=3"));
    }

    #[test]
    fn failed_write_present_and_unreadable_node_are_violations() {
        let h = vec![op(OpKind::Write, 7, 0, 10, Outcome::Failed, "a", None)];
        let r = check(&h, &vec![("a".into(), all(&[7])), ("b".into(), None)], 0);
        let kinds: Vec<_> = r.violations.iter().map(|v| v.kind).collect();
        assert!(kinds.contains(&"failed-write-present"));
        assert!(kinds.contains(&"unreadable-node"));
    }

    #[test]
    fn two_nodes_on_one_timeline_is_split_brain() {
        let h = vec![
            op(OpKind::Probe, 1, 0, 10, Outcome::Ok, "a", Some(2)),
            op(OpKind::Probe, 2, 0, 10, Outcome::Ok, "b", Some(2)),
        ];
        let r = check(&h, &vec![("a".into(), all(&[1, 2]))], 0);
        assert_eq!(r.violations[0].kind, "two-writers-same-term");
    }

    #[test]
    fn old_term_writing_after_new_term_is_split_brain_but_handover_is_not() {
        let handover = vec![
            op(OpKind::Write, 1, 0, 10, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 2, 5, 20, Outcome::Ok, "b", Some(2)),
            // in flight on the old leader while the new one took over: overlapping, allowed
            op(OpKind::Write, 3, 15, 25, Outcome::Ok, "a", Some(1)),
        ];
        let r = check(&handover, &vec![("b".into(), all(&[1, 2, 3]))], 0);
        assert!(r.ok(), "{:?}", r.violations);
        let mut split = handover.clone();
        split.push(op(OpKind::Probe, 4, 30, 35, Outcome::Ok, "a", Some(1)));
        let r = check(&split, &vec![("b".into(), all(&[1, 2, 3, 4]))], 0);
        assert_eq!(r.violations[0].kind, "stale-term-write");
    }

    #[test]
    fn outage_after_the_action_returned_is_still_measured() {
        // fault at 100; writes still succeed at 150 and 160, then the outage 160..2000; the
        // next fault at 3000 starts an outage that ends after it and must not count.
        let h = vec![
            op(OpKind::Write, 1, 0, 90, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 2, 100, 150, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 6, 152, 160, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 3, 1990, 2000, Outcome::Ok, "b", Some(2)),
            op(OpKind::Write, 4, 2990, 2995, Outcome::Ok, "b", Some(2)),
            op(OpKind::Write, 5, 9000, 9010, Outcome::Ok, "c", Some(3)),
        ];
        assert_eq!(
            longest_gap(&h, 100, 150).0,
            60,
            "the old, undercounting view"
        );
        assert_eq!(longest_gap_ending_in(&h, 100, 3000), 1840);
    }

    #[test]
    fn gap_is_measured_between_acknowledged_writes() {
        let h = vec![
            op(OpKind::Write, 1, 0, 10, Outcome::Ok, "a", Some(1)),
            op(OpKind::Write, 2, 10, 500, Outcome::Failed, "a", None),
            op(OpKind::Write, 3, 500, 900, Outcome::Ok, "b", Some(2)),
            op(OpKind::Write, 4, 900, 910, Outcome::Ok, "b", Some(2)),
        ];
        assert_eq!(longest_gap(&h, 0, u64::MAX), (890, 10));
        assert_eq!(longest_gap(&h, 905, u64::MAX), (10, 900));
    }

    #[test]
    fn health_overlap_is_judged_in_time_not_by_sample_index() {
        let mk = |p: u32, t: u64, s: Option<u16>| {
            Entry::Op(Op {
                kind: OpKind::Health,
                id: 0,
                process: p,
                start_us: t,
                end_us: t + 10,
                outcome: Outcome::Ok,
                node: Some(format!("n{p}")),
                timeline: None,
                status: s,
                error: None,
            })
        };
        // node 0 answers 200 until 1 s, then times out; node 1 answers 200 from 3 s on.
        // Node 0 has fewer samples (timeouts take longer), so indices would misalign.
        let mut h = Vec::new();
        for k in 0..10 {
            h.push(mk(0, k * 100_000, Some(200)));
        }
        h.push(mk(0, 2_000_000, None));
        for k in 0..30 {
            h.push(mk(1, k * 100_000, Some(503)));
            h.push(mk(1, 3_000_000 + k * 100_000, Some(200)));
        }
        assert!(check(&h, &vec![], 200_000).ok());
        // a real overlap of 0.5 s
        h.push(mk(0, 3_000_000, Some(200)));
        h.push(mk(0, 3_500_000, Some(200)));
        let r = check(&h, &vec![], 200_000);
        assert_eq!(r.violations[0].kind, "two-healthy-leaders");
        assert!(check(&h, &vec![], 1_000_000).ok());
    }
}
