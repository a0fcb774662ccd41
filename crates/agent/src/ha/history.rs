//! The history entry of a term this node won (`larder_core::history`): drafted when the term
//! is acquired, completed and appended in etcd once this node's PostgreSQL is first seen
//! writable — the end of the write gap.

use super::*;
use larder_core::history::{self, Acquisition, GapStart};

impl HaLoop {
    /// Each iteration with an etcd view: remember the leader's last writable moment, and when
    /// this node first saw no leader.
    pub(super) fn track_leader_for_history(&mut self, v: &DcsView) {
        let me = self.node.state.guid.as_str();
        match &v.leader {
            Some(_) => self.intent.no_leader_since_unix_ms = None,
            None => {
                self.intent
                    .no_leader_since_unix_ms
                    .get_or_insert_with(unix_ms);
            }
        }
        // While the key is gone, the previous leader may still post (deposed, PostgreSQL
        // down): that tells why it stopped.
        let leader = v.leader.as_ref().or(v.last_leader.as_ref());
        if let Some(l) = leader.filter(|l| l.guid != me) {
            self.intent.gap_seen =
                GapStart::observe(self.intent.gap_seen.take(), &l.guid, &v.members);
        }
    }

    /// Right after winning `term`: classify the hand-over while the view that led to it is at
    /// hand.
    pub(super) fn draft_history(&mut self, term: u64, view: Option<&DcsView>) {
        let Some(v) = view else {
            return;
        };
        let previous = v.last_leader.as_ref();
        let a = Acquisition {
            term,
            me_guid: &self.node.state.guid,
            me_name: &self.node.cfg.fqdn,
            previous: previous.map(|p| (p.guid.as_str(), p.name.as_str())),
            seen: self.intent.gap_seen.as_ref(),
            previous_status: previous.and_then(|p| v.members.iter().find(|m| m.guid == p.guid)),
            switchover: v.switchover.as_ref(),
            forced: matches!(self.request, Some((OperatorRequest::ForceLeader, _))),
            detected_unix_ms: self.intent.no_leader_since_unix_ms,
            acquired_unix_ms: unix_ms(),
        };
        self.intent.history_draft = Some(history::draft(&a));
    }

    /// After observing PostgreSQL: the first writable observation in the drafted term ends the
    /// write gap; the entry is appended in the background (never stalls the loop). A term lost
    /// before that is not recorded by this node.
    pub(super) fn record_history_when_writable(&mut self, pg: &Option<PgObservation>) {
        let Some(draft) = &self.intent.history_draft else {
            return;
        };
        let held = self.state.borrow().lease.map(|l| l.term);
        if held != Some(draft.term) {
            self.intent.history_draft = None;
            return;
        }
        if pg.as_ref().map(|p| p.state) != Some(PgState::Primary) {
            return;
        }
        let Some(draft) = self.intent.history_draft.take() else {
            return;
        };
        let entry = draft.writable_at(unix_ms());
        tracing::info!(
            term = entry.term,
            kind = entry.kind.as_str(),
            gap_ms = entry.gap_ms(),
            "{}",
            entry.reason
        );
        let dcs = self.dcs.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::history::append(&dcs, entry).await {
                tracing::warn!("recording the leadership history: {e}");
            }
        });
    }
}
