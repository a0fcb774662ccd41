//! Leadership history: one entry per acquired term, kept in etcd ([`crate::keys::HISTORY`]),
//! bounded to the last [`MAX_ENTRIES`], printed by `larder history` and drawn by the status
//! page.
//!
//! The node that wins a term writes its entry once its PostgreSQL is writable, so the entry can
//! carry the *write gap* as the cluster saw it: from the last moment the previous leader was
//! seen writable to the moment the new one is. How each end is measured is in
//! [`GapStart`] and docs/architecture.md ("Observability").

use crate::model::{MemberStatus, NodeRole, PgState, Switchover};
use serde::{Deserialize, Serialize};

/// How many entries etcd keeps (the oldest are dropped): a few KB each time a term is won,
/// read only when the term changes and by `larder history`.
pub const MAX_ENTRIES: usize = 200;

/// Why leadership changed hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The cluster's first leader (no previous one).
    Initial,
    /// The previous leader stopped leading without handing over (lease expired, PostgreSQL
    /// down, fenced).
    Failover,
    /// A planned hand-over (`promote`, `demote`, `upgrade --failover`).
    Switchover,
    /// `force-leader`.
    Force,
    /// The node that led the previous term leads again (its agent or host restarted).
    Restart,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Initial,
        Kind::Failover,
        Kind::Switchover,
        Kind::Force,
        Kind::Restart,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Initial => "initial",
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
            Kind::Force => "force",
            Kind::Restart => "restart",
        }
    }
}

/// One acquired term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: u64,
    pub kind: Kind,
    /// Name of the previous leader (`None` for the first leader).
    pub from: Option<String>,
    /// Name of the node that acquired the term.
    pub to: String,
    pub reason: String,
    /// When the previous leader was last seen writable (see [`GapStart`]); `None` when nobody
    /// led before or nothing was seen.
    pub gap_start_unix_ms: Option<u64>,
    /// When the new leader first observed its PostgreSQL writable.
    pub gap_end_unix_ms: u64,
    /// When the new leader first saw no leader key (the start of its election).
    pub detected_unix_ms: Option<u64>,
    /// When the new leader won the term in etcd.
    pub acquired_unix_ms: u64,
}

impl Entry {
    /// The write gap in milliseconds (`None` without a known start).
    pub fn gap_ms(&self) -> Option<u64> {
        self.gap_start_unix_ms
            .map(|s| self.gap_end_unix_ms.saturating_sub(s))
    }
}

/// The bounded history as stored (oldest first, one entry per term).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
#[error("the leadership history in etcd is unreadable: {0}")]
pub struct HistoryError(String);

impl History {
    /// Parse the stored value; an absent key is an empty history.
    pub fn parse(value: Option<&[u8]>) -> Result<History, HistoryError> {
        match value {
            None => Ok(History::default()),
            Some(v) => serde_json::from_slice(v).map_err(|e| HistoryError(e.to_string())),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("history serializes")
    }

    /// Add `entry` keeping at most `max` entries in term order. Returns false (and changes
    /// nothing) when its term is already recorded: appending is retried after a lost
    /// compare-and-swap, and a retry must not record a term twice.
    pub fn append(&mut self, entry: Entry, max: usize) -> bool {
        if self.entries.iter().any(|e| e.term == entry.term) {
            return false;
        }
        let at = self.entries.partition_point(|e| e.term < entry.term);
        self.entries.insert(at, entry);
        if self.entries.len() > max {
            let drop = self.entries.len() - max;
            self.entries.drain(..drop);
        }
        true
    }

    pub fn last(&self) -> Option<&Entry> {
        self.entries.last()
    }

    /// Entries of terms after `term` (what a node has not counted yet).
    pub fn after(&self, term: u64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.term > term)
    }

    pub fn max_term(&self) -> u64 {
        self.entries.iter().map(|e| e.term).max().unwrap_or(0)
    }
}

/// What a would-be leader remembers of the previous leader between iterations: the last
/// status it saw that leader post as a writable primary. That status is posted every loop
/// iteration, so it is at most one loop interval older than the leader's last writable moment
/// (a killed leader posts nothing more; a leader that steps down posts `deposed_leader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapStart {
    pub guid: String,
    pub name: String,
    pub last_writable_unix_ms: u64,
    /// Its PostgreSQL as its last status showed it (`Primary` unless it went down first).
    pub last_pg: PgState,
}

impl GapStart {
    /// Update from one view of the members: the leader's status, if it is there.
    pub fn observe(
        prev: Option<GapStart>,
        leader_guid: &str,
        members: &[MemberStatus],
    ) -> Option<GapStart> {
        let Some(m) = members.iter().find(|m| m.guid == leader_guid) else {
            return prev;
        };
        let writable = m.role == NodeRole::Leader && m.pg == PgState::Primary;
        let same = prev.as_ref().is_some_and(|p| p.guid == m.guid);
        match (writable, same) {
            (true, _) => Some(GapStart {
                guid: m.guid.clone(),
                name: m.name.clone(),
                last_writable_unix_ms: m.updated_unix_ms,
                last_pg: m.pg,
            }),
            // Still posting, no longer writable: keep its last writable moment, note why.
            (false, true) => prev.map(|p| GapStart { last_pg: m.pg, ..p }),
            (false, false) => prev,
        }
    }
}

/// What the winner of a term knows when it wins.
#[derive(Debug, Clone)]
pub struct Acquisition<'a> {
    pub term: u64,
    pub me_guid: &'a str,
    pub me_name: &'a str,
    /// Who acquired the previous term (`/larder/last-leader`).
    pub previous: Option<(&'a str, &'a str)>,
    /// The previous leader's last writable moment, as this node saw it.
    pub seen: Option<&'a GapStart>,
    /// Whether the previous leader still posts a status (its agent runs).
    pub previous_status: Option<&'a MemberStatus>,
    /// A planned switchover record of the previous term.
    pub switchover: Option<&'a Switchover>,
    /// The term was taken by `force-leader`.
    pub forced: bool,
    pub detected_unix_ms: Option<u64>,
    pub acquired_unix_ms: u64,
}

/// Kind and reason of an acquisition, and the start of its write gap.
pub fn classify(a: &Acquisition) -> (Kind, Option<String>, String, Option<u64>) {
    let Some((prev_guid, prev_name)) = a.previous else {
        return (
            Kind::Initial,
            None,
            "first leader of the cluster".into(),
            None,
        );
    };
    let from = Some(prev_name.to_string());
    let start = a
        .seen
        .filter(|s| s.guid == prev_guid)
        .map(|s| s.last_writable_unix_ms);
    let planned = a
        .switchover
        .filter(|s| s.from == prev_guid && s.term + 1 == a.term);
    if a.forced {
        return (
            Kind::Force,
            from,
            format!("force-leader on {}", a.me_name),
            start,
        );
    }
    if let Some(sw) = planned {
        let reason = match &sw.target {
            Some(_) => format!("operator switchover (promote {})", a.me_name),
            None => format!("operator demote of {prev_name}"),
        };
        // Without a status seen, the record's write time bounds the start from above
        // (written right after the old leader's PostgreSQL stopped).
        let start = start.or(Some(
            sw.deadline_unix_ms.saturating_sub(SWITCHOVER_WINDOW_MS),
        ));
        return (Kind::Switchover, from, reason, start);
    }
    if prev_guid == a.me_guid {
        return (
            Kind::Restart,
            from,
            format!(
                "{} led the previous term and leads again (agent or host restart)",
                a.me_name
            ),
            start,
        );
    }
    let seen_pg = a.seen.filter(|s| s.guid == prev_guid).map(|s| s.last_pg);
    let reason = match (a.previous_status, seen_pg) {
        // Still posting itself as the writable leader after its key went: that status is the
        // last one it posted before it stopped (a live leader that gives up posts
        // `deposed_leader` within a loop iteration); its status lease just outlived the key.
        (Some(st), _) if st.role == NodeRole::Leader && st.pg == PgState::Primary => {
            format!("lease expired: {prev_name} stopped renewing (agent or host down)")
        }
        (Some(st), _) if st.pg != PgState::Primary => format!(
            "PostgreSQL on {prev_name} down ({}): it gave up leadership",
            st.pg.as_str()
        ),
        (Some(_), _) => format!("{prev_name} gave up leadership (fenced or lost etcd)"),
        (None, Some(pg)) if pg != PgState::Primary => {
            format!(
                "PostgreSQL on {prev_name} down ({}), then its lease expired",
                pg.as_str()
            )
        }
        (None, _) => format!("lease expired: {prev_name} stopped renewing (agent or host down)"),
    };
    (Kind::Failover, from, reason, start.or(a.detected_unix_ms))
}

/// How long a switchover record restricts who may lead (its deadline is written this long
/// after the old leader stopped PostgreSQL; see `ha/execute.rs` `step_down`).
pub const SWITCHOVER_WINDOW_MS: u64 = 15_000;

/// The entry for an acquisition, before its PostgreSQL is writable (see
/// [`Entry::writable_at`]).
pub fn draft(a: &Acquisition) -> Entry {
    let (kind, from, reason, start) = classify(a);
    Entry {
        term: a.term,
        kind,
        from,
        to: a.me_name.to_string(),
        reason,
        gap_start_unix_ms: start,
        gap_end_unix_ms: 0,
        detected_unix_ms: a.detected_unix_ms,
        acquired_unix_ms: a.acquired_unix_ms,
    }
}

impl Entry {
    /// Complete a [`draft`]: the new leader's PostgreSQL was first seen writable at `ms`.
    pub fn writable_at(mut self, ms: u64) -> Entry {
        self.gap_end_unix_ms = ms;
        // A clock that stepped between the two readings must not give a negative gap.
        self.gap_start_unix_ms = self.gap_start_unix_ms.map(|s| s.min(ms));
        self
    }
}

/// `1.234s`, `850ms`, `2m03s`: durations as `larder history` prints them.
pub fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lsn, WalPosition};

    fn entry(a: &Acquisition, writable: u64) -> Entry {
        draft(a).writable_at(writable)
    }

    fn e(term: u64) -> Entry {
        Entry {
            term,
            kind: Kind::Failover,
            from: Some("a".into()),
            to: "b".into(),
            reason: "r".into(),
            gap_start_unix_ms: Some(1000),
            gap_end_unix_ms: 3500,
            detected_unix_ms: None,
            acquired_unix_ms: 3000,
        }
    }

    fn status(guid: &str, role: NodeRole, pg: PgState, at: u64) -> MemberStatus {
        MemberStatus {
            name: format!("n-{guid}"),
            updated_unix_ms: at,
            ..MemberStatus::test_member(guid, role, pg)
        }
    }

    #[test]
    fn append_is_bounded_ordered_and_idempotent() {
        let mut h = History::default();
        for t in 1..=250 {
            assert!(h.append(e(t), MAX_ENTRIES));
        }
        assert_eq!(h.entries.len(), MAX_ENTRIES);
        assert_eq!(h.entries[0].term, 51, "the oldest are dropped");
        assert!(
            !h.append(e(250), MAX_ENTRIES),
            "a retried append records nothing"
        );
        assert_eq!(h.entries.len(), MAX_ENTRIES);
        let mut h = History::default();
        h.append(e(5), 10);
        h.append(e(3), 10);
        h.append(e(4), 10);
        let terms: Vec<u64> = h.entries.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![3, 4, 5]);
        assert_eq!(h.after(3).count(), 2);
        assert_eq!(h.max_term(), 5);
    }

    #[test]
    fn stored_form_round_trips_and_garbage_is_an_error() {
        let mut h = History::default();
        h.append(e(1), 10);
        assert_eq!(History::parse(Some(&h.to_bytes())).unwrap(), h);
        assert_eq!(History::parse(None).unwrap(), History::default());
        let err = History::parse(Some(b"{nope")).unwrap_err().to_string();
        assert!(err.contains("unreadable"), "{err}");
        assert_eq!(e(1).gap_ms(), Some(2500));
    }

    #[test]
    fn gap_start_keeps_the_last_writable_moment() {
        let members = vec![status("a", NodeRole::Leader, PgState::Primary, 100)];
        let g = GapStart::observe(None, "a", &members).unwrap();
        assert_eq!(g.last_writable_unix_ms, 100);
        // Deposed, still posting: the writable moment stays, the PostgreSQL state is noted.
        let members = vec![status("a", NodeRole::DeposedLeader, PgState::Stopped, 400)];
        let g = GapStart::observe(Some(g), "a", &members).unwrap();
        assert_eq!(
            (g.last_writable_unix_ms, g.last_pg),
            (100, PgState::Stopped)
        );
        // Its status gone (lease expired): nothing changes.
        assert_eq!(GapStart::observe(Some(g.clone()), "a", &[]), Some(g));
        // A different leader that is not writable yet says nothing.
        let members = vec![status("b", NodeRole::Leader, PgState::Standby, 500)];
        assert_eq!(GapStart::observe(None, "b", &members), None);
    }

    fn acq<'a>(seen: Option<&'a GapStart>, st: Option<&'a MemberStatus>) -> Acquisition<'a> {
        Acquisition {
            term: 3,
            me_guid: "b",
            me_name: "n-b",
            previous: Some(("a", "n-a")),
            seen,
            previous_status: st,
            switchover: None,
            forced: false,
            detected_unix_ms: Some(2000),
            acquired_unix_ms: 2500,
        }
    }

    #[test]
    fn classifies_every_kind_of_hand_over() {
        let seen = GapStart {
            guid: "a".into(),
            name: "n-a".into(),
            last_writable_unix_ms: 1000,
            last_pg: PgState::Primary,
        };
        // Killed leader: status gone, lease expired; gap from its last writable post.
        let en = entry(&acq(Some(&seen), None), 3000);
        assert_eq!(en.kind, Kind::Failover);
        assert!(en.reason.starts_with("lease expired: n-a"), "{}", en.reason);
        assert_eq!((en.gap_ms(), en.from.as_deref()), (Some(2000), Some("n-a")));
        // PostgreSQL crashed on a live leader that gave up.
        let st = status("a", NodeRole::DeposedLeader, PgState::Stopped, 1500);
        let (k, _, reason, _) = classify(&acq(Some(&seen), Some(&st)));
        assert_eq!(k, Kind::Failover);
        assert!(
            reason.contains("PostgreSQL on n-a down (stopped)"),
            "{reason}"
        );
        // Its status outlived the key still saying "writable leader": it stopped, not gave up.
        let stale = status("a", NodeRole::Leader, PgState::Primary, 1000);
        let (_, _, reason, _) = classify(&acq(Some(&seen), Some(&stale)));
        assert!(reason.starts_with("lease expired"), "{reason}");
        // Nothing seen of the previous leader: the gap starts at detection.
        assert_eq!(entry(&acq(None, None), 3000).gap_start_unix_ms, Some(2000));
        // A switchover of the previous term.
        let sw = Switchover {
            target: Some("b".into()),
            term: 2,
            min_position: WalPosition {
                timeline: 1,
                lsn: Lsn(5),
            },
            from: "a".into(),
            deadline_unix_ms: 16_200,
        };
        let mut a = acq(None, None);
        a.switchover = Some(&sw);
        let en = entry(&a, 1500);
        assert_eq!(en.kind, Kind::Switchover);
        assert_eq!(en.reason, "operator switchover (promote n-b)");
        assert_eq!(en.gap_ms(), Some(300), "record time bounds the start");
        // A stale record of an older term is not this hand-over.
        let old = Switchover {
            term: 1,
            ..sw.clone()
        };
        a.switchover = Some(&old);
        assert_eq!(classify(&a).0, Kind::Failover);
        a.forced = true;
        assert_eq!(classify(&a).0, Kind::Force);
        let mut a = acq(None, None);
        a.me_guid = "a";
        assert_eq!(classify(&a).0, Kind::Restart);
        a.previous = None;
        assert_eq!(classify(&a).0, Kind::Initial);
        // A clock step never gives a negative gap.
        assert_eq!(entry(&acq(Some(&seen), None), 500).gap_ms(), Some(0));
    }

    #[test]
    fn durations_print_like_patronictl_history() {
        assert_eq!(format_ms(850), "850ms");
        assert_eq!(format_ms(1234), "1.234s");
        assert_eq!(format_ms(123_000), "2m03s");
        assert_eq!(format_ms(3_660_000), "1h01m");
    }
}
