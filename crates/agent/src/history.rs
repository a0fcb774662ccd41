//! The leadership history in etcd (`larder_core::history`): appending a won term's entry, and
//! the task that keeps a cached copy for `/metrics` and `/ui` and counts the hand-overs this
//! agent has seen (`larder_leader_changes_total`).
//!
//! The cache is read from etcd only when the term changes (and once a minute, in case a write
//! was missed), never per scrape. Counting: entries whose term is above the highest term
//! recorded when this agent first read the history, each counted once. Every agent that runs
//! throughout a hand-over therefore counts it once; aggregate across nodes with `max`.

use crate::dcs::{keys, Dcs, DcsError};
use crate::state::{Sensors, Snapshot};
use larder_core::history::{Entry, History, Kind, MAX_ENTRIES};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the history task last read, and what it counted.
#[derive(Debug, Clone, Default)]
pub struct HistoryCache {
    pub history: History,
    /// Hand-overs counted since this agent started, by (kind, from, to).
    pub changes: BTreeMap<(Kind, String, String), u64>,
    /// Highest term already counted (`None` until the first successful read).
    counted_through: Option<u64>,
    pub error: Option<String>,
}

impl HistoryCache {
    /// Take a fresh read: the first read only sets where counting starts.
    pub fn update(&mut self, h: History) {
        match self.counted_through {
            None => self.counted_through = Some(h.max_term()),
            Some(t) => {
                for e in h.after(t) {
                    let key = (e.kind, e.from.clone().unwrap_or_default(), e.to.clone());
                    *self.changes.entry(key).or_default() += 1;
                }
                self.counted_through = Some(t.max(h.max_term()));
            }
        }
        self.history = h;
        self.error = None;
    }
}

/// Read the stored history (an absent key is an empty one).
pub async fn read(dcs: &Dcs) -> Result<History, anyhow::Error> {
    let raw = dcs.get(keys::HISTORY).await?.map(|kv| kv.value);
    Ok(History::parse(raw.as_deref())?)
}

/// Append `entry` with a compare-and-swap on the whole value (retried when another writer got
/// in between; a term already recorded is left alone). An unreadable stored history is
/// replaced: it is informational, and leaving it would stop all further recording.
pub async fn append(dcs: &Dcs, entry: Entry) -> Result<(), DcsError> {
    for _ in 0..5 {
        let raw = dcs.get(keys::HISTORY).await?.map(|kv| kv.value);
        let mut h = match History::parse(raw.as_deref()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("{e}; starting a new history");
                History::default()
            }
        };
        if !h.append(entry.clone(), MAX_ENTRIES) {
            return Ok(());
        }
        let new = h.to_bytes();
        let written = match &raw {
            None => dcs.create(keys::HISTORY, &new, None).await?,
            Some(old) => dcs.replace_if(keys::HISTORY, old, &new).await?,
        };
        if written {
            return Ok(());
        }
    }
    Err(DcsError::Etcd(
        "the leadership history kept changing under five attempts to append to it".into(),
    ))
}

/// Keeps `sensors.history` current: re-read when the term changes, every second until the
/// new term's entry is there (the new leader writes it once its PostgreSQL is writable), and
/// once a minute otherwise.
pub async fn run(
    dcs: Dcs,
    mut ha: tokio::sync::watch::Receiver<Snapshot>,
    sensors: Arc<Sensors>,
    shutdown: CancellationToken,
) {
    loop {
        let term = ha.borrow().term;
        let complete = match read(&dcs).await {
            Ok(h) => {
                let done = h.max_term() >= term;
                sensors.history.lock().unwrap().update(h);
                done
            }
            Err(e) => {
                sensors.history.lock().unwrap().error = Some(format!("{e:#}"));
                false
            }
        };
        let wait = if complete {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(1)
        };
        let term_changed = async {
            loop {
                if ha.changed().await.is_err() {
                    // The loop is gone (shutting down): let the timer or the token end us.
                    std::future::pending::<()>().await;
                }
                if ha.borrow().term != term {
                    return;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = term_changed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(term: u64, kind: Kind, from: &str, to: &str) -> Entry {
        Entry {
            term,
            kind,
            from: Some(from.into()),
            to: to.into(),
            reason: String::new(),
            gap_start_unix_ms: None,
            gap_end_unix_ms: 0,
            detected_unix_ms: None,
            acquired_unix_ms: 0,
        }
    }

    #[test]
    fn counts_only_hand_overs_after_the_first_read_and_each_once() {
        let mut h = History::default();
        h.append(e(1, Kind::Initial, "", "a"), 10);
        let mut c = HistoryCache::default();
        c.update(h.clone());
        assert!(
            c.changes.is_empty(),
            "what happened before the agent started is not counted"
        );
        h.append(e(2, Kind::Failover, "a", "b"), 10);
        c.update(h.clone());
        c.update(h.clone());
        h.append(e(3, Kind::Switchover, "b", "a"), 10);
        c.update(h);
        let got: Vec<_> = c
            .changes
            .iter()
            .map(|((k, f, t), n)| (k.as_str(), f.as_str(), t.as_str(), *n))
            .collect();
        assert_eq!(
            got,
            vec![("failover", "a", "b", 1), ("switchover", "b", "a", 1)]
        );
    }
}
