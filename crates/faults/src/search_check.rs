//! The search checker: what must hold of the search workload's history once the cluster is
//! healed and every node's index has caught up.
//!
//! 1. Every document a `_bulk` acknowledged (HTTP 200) is found by the search of the leader
//!    and of every follower, unless a later bulk deleted it (acknowledged or unknown).
//! 2. No document an acknowledged bulk deleted is found on any node.
//! 3. `_bulk` never answered 200 for a batch that is not in PostgreSQL: in the leader's change
//!    log (`search_log`), every document of an acknowledged bulk has its row, live unless it
//!    was deleted since, a tombstone when an acknowledged delete removed it.
//! 4. A bulk classified `failed` (nothing sent, or refused by a follower) left no row.
//! 5. An acknowledged bulk has no per-item error (Chef reads only the 200).
//! 6. A node (or the leader's PostgreSQL) that cannot be read is a violation: the checker
//!    cannot vouch for it.
//!
//! Unknown outcomes (timeouts, connections lost after sending, other errors) may go either
//! way.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::checker::{Counts, Violation};
use crate::history::{format_entries, Entry, Outcome, SearchKind, SearchOp};

/// What the acknowledged history requires of the final state.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Acknowledged and not deleted by any bulk that may have applied: must be found.
    pub live: BTreeSet<String>,
    /// Deleted by an acknowledged bulk: must not be found, tombstone in the log.
    pub deleted: BTreeSet<String>,
    /// Written by an acknowledged bulk whose deletion is unknown: either way.
    pub maybe_deleted: BTreeSet<String>,
    /// Written by a failed bulk: no row may exist.
    pub never_written: BTreeSet<String>,
}

fn search_ops(entries: &[Entry]) -> impl Iterator<Item = &SearchOp> {
    entries.iter().filter_map(|e| match e {
        Entry::Search(s) => Some(s),
        _ => None,
    })
}

impl Expect {
    pub fn from_entries(entries: &[Entry]) -> Expect {
        let mut acked = BTreeSet::new();
        let mut del_ok = BTreeSet::new();
        let mut del_unknown = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for o in search_ops(entries).filter(|o| o.kind == SearchKind::Bulk) {
            match o.outcome {
                Outcome::Ok => {
                    acked.extend(o.written.iter().cloned());
                    del_ok.extend(o.deleted.iter().cloned());
                }
                Outcome::Unknown => del_unknown.extend(o.deleted.iter().cloned()),
                Outcome::Failed => failed.extend(o.written.iter().cloned()),
            }
        }
        let mut e = Expect {
            never_written: failed,
            ..Default::default()
        };
        for id in acked {
            if del_ok.contains(&id) {
                e.deleted.insert(id);
            } else if del_unknown.contains(&id) {
                e.maybe_deleted.insert(id);
            } else {
                e.live.insert(id);
            }
        }
        e
    }

    /// Every node was read, finds every live document and no deleted one.
    pub fn converged(&self, nodes: &[(String, Result<HashSet<String>, String>)]) -> bool {
        !nodes.is_empty() && self.lagging(nodes).is_empty()
    }

    /// The nodes that do not answer what the history requires yet, each with what is off
    /// ("n2: 13 live missing, 0 deleted found" or "n3: unreadable: …").
    pub fn lagging(&self, nodes: &[(String, Result<HashSet<String>, String>)]) -> Vec<String> {
        // Disagreement on documents the two counts before do not cover.
        let others: BTreeSet<String> = not_everywhere(nodes)
            .into_iter()
            .filter(|id| !self.live.contains(id) && !self.deleted.contains(id))
            .collect();
        nodes
            .iter()
            .filter_map(|(name, r)| match r {
                Ok(found) => {
                    let missing = self.live.iter().filter(|id| !found.contains(*id)).count();
                    let resurrected = self.deleted.iter().filter(|id| found.contains(*id)).count();
                    let lacks = others
                        .iter()
                        .filter(|id| !found.contains(id.as_str()))
                        .count();
                    (missing + resurrected + lacks > 0).then(|| {
                        format!("{name}: {missing} live missing, {resurrected} deleted found, {lacks} found elsewhere missing")
                    })
                }
                Err(e) => Some(format!("{name}: unreadable: {e}")),
            })
            .collect()
    }
}

/// Ids that some readable node finds and another readable node does not. After the heal
/// every node follows the same log, so whatever the outcome of the bulk that wrote them, the
/// nodes must agree.
pub fn not_everywhere(nodes: &[(String, Result<HashSet<String>, String>)]) -> BTreeSet<String> {
    let sets: Vec<&HashSet<String>> = nodes.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let mut out = BTreeSet::new();
    for s in &sets {
        for id in s.iter() {
            if sets.iter().any(|o| !o.contains(id)) {
                out.insert(id.clone());
            }
        }
    }
    out
}

#[derive(Debug, Clone, Default)]
pub struct SearchReport {
    pub bulks: Counts,
    pub queries: Counts,
    /// Documents written by acknowledged bulks.
    pub acked_docs: u64,
    /// Deletes in acknowledged bulks.
    pub acked_deletes: u64,
    /// Acknowledged live documents missing from at least one node.
    pub lost: u64,
    /// Acknowledged-deleted documents found on at least one node.
    pub deleted_found: u64,
    /// Documents of acknowledged bulks whose log row is missing or in the wrong state.
    pub not_in_pg: u64,
    /// Documents (of bulks with any outcome) found on some nodes and not on others, beyond
    /// those already counted as lost or deleted-found.
    pub disagree: u64,
    pub violations: Vec<Violation>,
}

impl SearchReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// At most this many ids are named in a violation message.
const NAMED: usize = 10;

fn name_some<'a>(ids: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&String> = ids.into_iter().collect();
    let mut s = v
        .iter()
        .take(NAMED)
        .map(|x| x.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if v.len() > NAMED {
        s.push_str(&format!(" … ({} in all)", v.len()));
    }
    s
}

/// The history's search requests that wrote or deleted any of `ids`.
fn excerpt(entries: &[Entry], ids: &BTreeSet<&String>) -> String {
    let picked: Vec<&Entry> = entries
        .iter()
        .filter(|e| match e {
            Entry::Search(s) => s
                .written
                .iter()
                .chain(s.deleted.iter())
                .any(|id| ids.contains(id)),
            _ => false,
        })
        .take(20)
        .collect();
    format_entries(&picked)
}

/// Judges the history against the final reads: `nodes` (name, ids its search found, or the
/// error reading it) and the leader's log rows (id → tombstone), `None` when not read.
pub fn check(
    entries: &[Entry],
    nodes: &[(String, Result<HashSet<String>, String>)],
    log: Option<&Result<HashMap<String, bool>, String>>,
) -> SearchReport {
    let mut r = SearchReport::default();
    for o in search_ops(entries) {
        let c = match o.kind {
            SearchKind::Bulk => &mut r.bulks,
            SearchKind::Query => &mut r.queries,
        };
        match o.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Unknown => c.unknown += 1,
        }
        if o.kind == SearchKind::Bulk && o.outcome == Outcome::Ok {
            r.acked_docs += o.written.len() as u64;
            r.acked_deletes += o.deleted.len() as u64;
            if !o.item_errors.is_empty() || o.error.is_some() {
                r.violations.push(Violation {
                    kind: "bulk-item-error",
                    message: format!(
                        "a _bulk answered 200 at {:.3}s with failed items {:?}{}",
                        o.end_us as f64 / 1e6,
                        o.item_errors,
                        o.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                    excerpt: format_entries(&[&Entry::Search(o.clone())]),
                });
            }
        }
    }
    let expect = Expect::from_entries(entries);
    let mut lost: HashSet<&String> = HashSet::new();
    let mut deleted_found: HashSet<&String> = HashSet::new();
    for (node, seen) in nodes {
        let found = match seen {
            Ok(f) => f,
            Err(e) => {
                r.violations.push(Violation {
                    kind: "search-node-unreadable",
                    message: format!("{node}: the search index could not be read: {e}"),
                    excerpt: String::new(),
                });
                continue;
            }
        };
        let missing: BTreeSet<&String> = expect
            .live
            .iter()
            .filter(|id| !found.contains(*id))
            .collect();
        if !missing.is_empty() {
            r.violations.push(Violation {
                kind: "search-lost",
                message: format!(
                    "{node}: {} acknowledged document(s) not found: {}",
                    missing.len(),
                    name_some(missing.iter().copied())
                ),
                excerpt: excerpt(entries, &missing.iter().copied().take(NAMED).collect()),
            });
            lost.extend(missing);
        }
        let resurrected: BTreeSet<&String> = expect
            .deleted
            .iter()
            .filter(|id| found.contains(*id))
            .collect();
        if !resurrected.is_empty() {
            r.violations.push(Violation {
                kind: "search-deleted-found",
                message: format!(
                    "{node}: {} document(s) whose delete was acknowledged are found: {}",
                    resurrected.len(),
                    name_some(resurrected.iter().copied())
                ),
                excerpt: excerpt(entries, &resurrected.iter().copied().take(NAMED).collect()),
            });
            deleted_found.extend(resurrected);
        }
    }
    r.lost = lost.len() as u64;
    r.deleted_found = deleted_found.len() as u64;
    // Divergence the two rules above do not cover: documents of unknown (or failed) bulks,
    // or of unknown deletes, that one node shows and another does not.
    let split: BTreeSet<String> = not_everywhere(nodes)
        .into_iter()
        .filter(|id| !expect.live.contains(id) && !expect.deleted.contains(id))
        .collect();
    for (node, seen) in nodes {
        let Ok(found) = seen else { continue };
        let lacks: BTreeSet<&String> = split.iter().filter(|id| !found.contains(*id)).collect();
        if !lacks.is_empty() {
            r.violations.push(Violation {
                kind: "search-nodes-disagree",
                message: format!(
                    "{node}: {} document(s) other nodes find are not found here (their bulk's outcome was not acknowledged, but every node follows the same log): {}",
                    lacks.len(),
                    name_some(lacks.iter().copied())
                ),
                excerpt: excerpt(entries, &lacks.iter().copied().take(NAMED).collect()),
            });
        }
    }
    r.disagree = split.len() as u64;
    let indexed_failed: BTreeSet<&String> = expect
        .never_written
        .iter()
        .filter(|id| {
            nodes
                .iter()
                .any(|(_, r)| r.as_ref().is_ok_and(|f| f.contains(*id)))
        })
        .collect();
    if !indexed_failed.is_empty() {
        r.violations.push(Violation {
            kind: "failed-bulk-applied",
            message: format!(
                "{} documents of a _bulk classified failed are found by a node's search: {}",
                indexed_failed.len(),
                name_some(indexed_failed.iter().copied())
            ),
            excerpt: excerpt(
                entries,
                &indexed_failed.iter().copied().take(NAMED).collect(),
            ),
        });
    }
    match log {
        None | Some(Err(_)) => r.violations.push(Violation {
            kind: "search-log-unreadable",
            message: format!(
                "the leader's search_log could not be read: {}",
                match log {
                    Some(Err(e)) => e.as_str(),
                    _ => "no leader",
                }
            ),
            excerpt: String::new(),
        }),
        Some(Ok(rows)) => {
            let missing: BTreeSet<&String> = expect
                .live
                .iter()
                .chain(expect.maybe_deleted.iter())
                .chain(expect.deleted.iter())
                .filter(|id| !rows.contains_key(*id))
                .collect();
            let tombstoned: BTreeSet<&String> = expect
                .live
                .iter()
                .filter(|id| rows.get(*id) == Some(&true))
                .collect();
            let still_live: BTreeSet<&String> = expect
                .deleted
                .iter()
                .filter(|id| rows.get(*id) == Some(&false))
                .collect();
            r.not_in_pg = (missing.len() + tombstoned.len() + still_live.len()) as u64;
            for (set, kind, what) in [
                (&missing, "bulk-not-in-postgresql", "documents of a _bulk answered 200 have no row in the leader's search_log"),
                (&tombstoned, "bulk-not-in-postgresql", "documents of a _bulk answered 200, never deleted, are tombstones in the leader's search_log"),
                (&still_live, "delete-not-in-postgresql", "deletes of a _bulk answered 200 are live rows in the leader's search_log"),
            ] {
                if !set.is_empty() {
                    r.violations.push(Violation {
                        kind,
                        message: format!("{} {what}: {}", set.len(), name_some(set.iter().copied())),
                        excerpt: excerpt(entries, &set.iter().copied().take(NAMED).collect()),
                    });
                }
            }
            let applied: BTreeSet<&String> = expect
                .never_written
                .iter()
                .filter(|id| rows.contains_key(*id))
                .collect();
            if !applied.is_empty() {
                r.violations.push(Violation {
                    kind: "failed-bulk-applied",
                    message: format!(
                        "{} documents of a _bulk classified failed are in the leader's search_log: {}",
                        applied.len(),
                        name_some(applied.iter().copied())
                    ),
                    excerpt: excerpt(entries, &applied.iter().copied().take(NAMED).collect()),
                });
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(at: u64, outcome: Outcome, written: &[&str], deleted: &[&str]) -> Entry {
        Entry::Search(SearchOp {
            kind: SearchKind::Bulk,
            start_us: at,
            end_us: at + 10,
            outcome,
            status: (outcome == Outcome::Ok).then_some(200),
            written: written.iter().map(|s| s.to_string()).collect(),
            deleted: deleted.iter().map(|s| s.to_string()).collect(),
            item_errors: Vec::new(),
            hits: None,
            error: None,
        })
    }

    fn found(ids: &[&str]) -> Result<HashSet<String>, String> {
        Ok(ids.iter().map(|s| s.to_string()).collect())
    }

    fn rows(live: &[&str], dead: &[&str]) -> Result<HashMap<String, bool>, String> {
        Ok(live
            .iter()
            .map(|s| (s.to_string(), false))
            .chain(dead.iter().map(|s| (s.to_string(), true)))
            .collect())
    }

    fn kinds(r: &SearchReport) -> Vec<&'static str> {
        r.violations.iter().map(|v| v.kind).collect()
    }

    /// a, b, c acknowledged; b deleted by an acknowledged bulk.
    fn history() -> Vec<Entry> {
        vec![
            bulk(0, Outcome::Ok, &["a", "b", "c"], &[]),
            bulk(100, Outcome::Ok, &["d"], &["b"]),
        ]
    }

    #[test]
    fn a_converged_cluster_passes() {
        let h = history();
        let nodes = vec![
            ("n1".to_string(), found(&["a", "c", "d"])),
            ("n2".to_string(), found(&["a", "c", "d"])),
        ];
        let log = rows(&["a", "c", "d"], &["b"]);
        let r = check(&h, &nodes, Some(&log));
        assert!(r.ok(), "{:?}", kinds(&r));
        assert_eq!((r.bulks.ok, r.acked_docs, r.acked_deletes), (2, 4, 1));
        assert!(Expect::from_entries(&h).converged(&nodes));
    }

    #[test]
    fn an_acknowledged_document_missing_on_a_follower_is_lost() {
        let h = history();
        let nodes = vec![
            ("n1".to_string(), found(&["a", "c", "d"])),
            ("n2".to_string(), found(&["a", "d"])),
        ];
        let r = check(&h, &nodes, Some(&rows(&["a", "c", "d"], &["b"])));
        assert_eq!(kinds(&r), vec!["search-lost"]);
        assert_eq!(r.lost, 1);
        assert!(
            r.violations[0].message.starts_with("n2: 1 "),
            "{}",
            r.violations[0].message
        );
        assert!(
            r.violations[0].excerpt.contains("indexed 3"),
            "{}",
            r.violations[0].excerpt
        );
        assert!(!Expect::from_entries(&h).converged(&nodes));
        assert_eq!(
            Expect::from_entries(&h).lagging(&nodes),
            vec!["n2: 1 live missing, 0 deleted found, 0 found elsewhere missing".to_string()]
        );
    }

    #[test]
    fn a_document_deleted_with_an_acknowledged_bulk_must_stay_gone() {
        let h = history();
        let nodes = vec![("n1".to_string(), found(&["a", "b", "c", "d"]))];
        // And the log still holds it live.
        let r = check(&h, &nodes, Some(&rows(&["a", "b", "c", "d"], &[])));
        assert_eq!(
            kinds(&r),
            vec!["search-deleted-found", "delete-not-in-postgresql"]
        );
        assert_eq!((r.deleted_found, r.not_in_pg), (1, 1));
    }

    #[test]
    fn unknown_outcomes_go_either_way() {
        let mut h = history();
        // e's bulk timed out; c's delete timed out.
        h.push(bulk(200, Outcome::Unknown, &["e"], &["c"]));
        for (n1, log) in [
            (found(&["a", "d"]), rows(&["a", "d"], &["b", "c"])),
            (
                found(&["a", "c", "d", "e"]),
                rows(&["a", "c", "d", "e"], &["b"]),
            ),
        ] {
            let r = check(&h, &[("n1".to_string(), n1)], Some(&log));
            assert!(r.ok(), "{:?}", kinds(&r));
            assert_eq!(r.bulks.unknown, 1);
        }
        // But c's row must exist either way: its write was acknowledged.
        let r = check(
            &h,
            &[("n1".to_string(), found(&["a", "d"]))],
            Some(&rows(&["a", "d"], &["b"])),
        );
        assert_eq!(kinds(&r), vec!["bulk-not-in-postgresql"]);
    }

    #[test]
    fn nodes_must_agree_on_unknown_documents() {
        let mut h = history();
        h.push(bulk(200, Outcome::Unknown, &["e"], &["c"]));
        let log = rows(&["a", "c", "d", "e"], &["b"]);
        // Present everywhere or nowhere: fine.
        for ids in [&["a", "c", "d", "e"][..], &["a", "d"][..]] {
            let nodes = vec![
                ("n1".to_string(), found(ids)),
                ("n2".to_string(), found(ids)),
            ];
            let r = check(&h, &nodes, Some(&log));
            assert!(r.ok(), "{:?}", kinds(&r));
            assert!(Expect::from_entries(&h).converged(&nodes));
        }
        // e on n1 only, c (unknown delete) on n2 only.
        let nodes = vec![
            ("n1".to_string(), found(&["a", "d", "e"])),
            ("n2".to_string(), found(&["a", "c", "d"])),
        ];
        let r = check(&h, &nodes, Some(&log));
        assert_eq!(
            kinds(&r),
            vec!["search-nodes-disagree", "search-nodes-disagree"]
        );
        assert_eq!(r.disagree, 2);
        assert!(
            r.violations[0].message.starts_with("n1: 1 "),
            "{}",
            r.violations[0].message
        );
        assert!(
            r.violations[0].message.ends_with(": c"),
            "{}",
            r.violations[0].message
        );
        assert!(!Expect::from_entries(&h).converged(&nodes));
        // A failed bulk's document in an index.
        h.push(bulk(300, Outcome::Failed, &["f"], &[]));
        let nodes = vec![("n1".to_string(), found(&["a", "c", "d", "f"]))];
        let r = check(&h, &nodes, Some(&log));
        assert_eq!(kinds(&r), vec!["failed-bulk-applied"]);
    }

    #[test]
    fn a_200_not_in_postgresql_and_a_failed_bulk_applied_are_violations() {
        let mut h = history();
        h.push(bulk(300, Outcome::Failed, &["f"], &[]));
        let nodes = vec![("n1".to_string(), found(&["a", "c", "d"]))];
        // d's row is missing although n1's index has it; f's failed bulk left a row.
        let r = check(&h, &nodes, Some(&rows(&["a", "c", "f"], &["b"])));
        assert_eq!(
            kinds(&r),
            vec!["bulk-not-in-postgresql", "failed-bulk-applied"]
        );
        assert_eq!(r.not_in_pg, 1);
        assert!(
            r.violations[0].message.contains(": d"),
            "{}",
            r.violations[0].message
        );
        // A live row turned tombstone without any delete is as bad.
        let r = check(&h, &nodes, Some(&rows(&["a", "c"], &["b", "d"])));
        assert_eq!(kinds(&r), vec!["bulk-not-in-postgresql"]);
    }

    #[test]
    fn unreadable_nodes_and_item_errors_are_violations() {
        let mut h = history();
        if let Entry::Search(s) = &mut h[1] {
            s.item_errors = vec![("d".to_string(), 500)];
        }
        let nodes = vec![
            ("n1".to_string(), found(&["a", "c", "d"])),
            ("n3".to_string(), Err("connect refused".to_string())),
        ];
        let r = check(&h, &nodes, None);
        assert_eq!(
            kinds(&r),
            vec![
                "bulk-item-error",
                "search-node-unreadable",
                "search-log-unreadable"
            ]
        );
        assert!(!Expect::from_entries(&h).converged(&nodes));
        assert_eq!(
            Expect::from_entries(&h).lagging(&nodes),
            vec!["n3: unreadable: connect refused".to_string()]
        );
        assert!(!Expect::default().converged(&[]));
    }
}
