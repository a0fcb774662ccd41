//! The read-only status page on the health API (`GET /ui`): one HTML page with its CSS and
//! JavaScript compiled in (`ui/`), no external assets, so it works offline. The page polls
//! `GET /ui/data` (below) every two seconds and draws the cluster table, each node's checks,
//! the replication lag of the last minutes and the failover timeline.
//!
//! `/ui/data` is built from cached state like `/metrics`: the loop's snapshot, the history
//! cache, and the lag samples kept here by [`sample_lag`].

use crate::state::{Sensors, Snapshot};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The page's files: (content type, body).
pub const INDEX_HTML: (&str, &str) = ("text/html; charset=utf-8", include_str!("ui/index.html"));
pub const STYLE_CSS: (&str, &str) = ("text/css; charset=utf-8", include_str!("ui/style.css"));
pub const APP_JS: (&str, &str) = ("text/javascript; charset=utf-8", include_str!("ui/app.js"));

/// One lag sample every this often...
pub const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// ...kept this many times: the last five minutes.
pub const LAG_SAMPLES: usize = 150;

/// Replication lag per member (bytes behind the leader, as each member posts it), sampled by
/// [`sample_lag`], its only writer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LagHistory {
    /// Wall-clock time of each sample, oldest first.
    pub at_unix_ms: VecDeque<u64>,
    /// Per member name, one value per sample (`None`: no lag known then).
    pub series: BTreeMap<String, VecDeque<Option<u64>>>,
}

impl LagHistory {
    /// Add one sample of `(member, lag)`; members absent from it get `None`.
    pub fn push(&mut self, at_unix_ms: u64, lags: &[(String, Option<u64>)], keep: usize) {
        let n = self.at_unix_ms.len();
        self.at_unix_ms.push_back(at_unix_ms);
        for (name, _) in lags {
            self.series
                .entry(name.clone())
                .or_insert_with(|| VecDeque::from(vec![None; n]));
        }
        for (name, s) in self.series.iter_mut() {
            s.push_back(lags.iter().find(|(m, _)| m == name).and_then(|(_, l)| *l));
        }
        while self.at_unix_ms.len() > keep {
            self.at_unix_ms.pop_front();
            for s in self.series.values_mut() {
                s.pop_front();
            }
        }
        // A member gone for the whole window has nothing left to draw.
        self.series.retain(|_, s| s.iter().any(|v| v.is_some()));
    }
}

/// Samples the members' posted lag every [`LAG_INTERVAL`] (the leader as 0).
pub async fn sample_lag(
    ha: tokio::sync::watch::Receiver<Snapshot>,
    sensors: Arc<Sensors>,
    shutdown: CancellationToken,
) {
    loop {
        let lags: Vec<(String, Option<u64>)> = {
            let s = ha.borrow();
            let leader = s.leader.as_ref().map(|l| l.guid.clone());
            s.members
                .iter()
                .map(|m| {
                    let lag = match Some(&m.guid) == leader.as_ref() {
                        true => Some(0),
                        false => m.lag_bytes,
                    };
                    (m.name.clone(), lag)
                })
                .collect()
        };
        sensors
            .lag
            .lock()
            .unwrap()
            .push(crate::clock::unix_ms(), &lags, LAG_SAMPLES);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}

#[derive(Debug, Serialize)]
struct Member {
    name: String,
    address: String,
    online: bool,
    leader: bool,
    role: Option<String>,
    pg: Option<String>,
    timeline: Option<u32>,
    lsn: Option<String>,
    lag_bytes: Option<u64>,
    term: Option<u64>,
    version: Option<String>,
    failover_enabled: Option<bool>,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn member_checks(m: &larder_core::model::MemberStatus, now_unix: u64) -> Vec<Check> {
    use larder_core::model::PgState;
    let age = now_unix.saturating_sub(m.updated_unix_ms);
    vec![
        Check {
            name: "postgresql",
            ok: matches!(m.pg, PgState::Primary | PgState::Streaming),
            detail: m.pg.as_str().into(),
        },
        Check {
            name: "etcd",
            ok: m.etcd_ok,
            detail: if m.etcd_ok { "reachable" } else { "failing" }.into(),
        },
        Check {
            name: "search",
            ok: m.search_ok,
            detail: if m.search_ok {
                "answers"
            } else {
                "not answering"
            }
            .into(),
        },
        Check {
            name: "eligible",
            ok: m.eligible,
            detail: if m.eligible {
                "may lead"
            } else {
                "may not lead"
            }
            .into(),
        },
        Check {
            name: "status",
            ok: age < 10_000,
            detail: format!("posted {:.1} s ago", age as f64 / 1000.0),
        },
    ]
}

/// The JSON the page draws.
pub fn data(s: &Snapshot, sensors: &Sensors, me: &str) -> serde_json::Value {
    let now = crate::clock::unix_ms();
    let leader = s.leader.as_ref().map(|l| l.guid.clone());
    let mut members: Vec<Member> = s
        .members
        .iter()
        .map(|m| Member {
            name: m.name.clone(),
            address: m.address.clone(),
            online: true,
            leader: Some(&m.guid) == leader.as_ref(),
            role: Some(m.role.as_str().into()),
            pg: Some(m.pg.as_str().into()),
            timeline: Some(m.position.timeline),
            lsn: Some(m.position.lsn.to_string()),
            lag_bytes: m.lag_bytes,
            term: Some(m.term),
            version: Some(m.version.clone()),
            failover_enabled: Some(m.failover_enabled),
            checks: member_checks(m, now),
        })
        .collect();
    for n in &s.nodes {
        if !s.members.iter().any(|m| m.guid == n.guid) {
            members.push(Member {
                name: n.name.clone(),
                address: n.address.clone(),
                online: false,
                leader: false,
                role: None,
                pg: None,
                timeline: None,
                lsn: None,
                lag_bytes: None,
                term: None,
                version: None,
                failover_enabled: None,
                checks: vec![],
            });
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let history = sensors.history.lock().unwrap().history.entries.clone();
    let lag = sensors.lag.lock().unwrap().clone();
    serde_json::json!({
        "node": me,
        "now_unix_ms": now,
        "term": s.term,
        "leader": s.leader.as_ref().map(|l| l.name.clone()),
        "cluster_failover": s.cluster_failover,
        "upgrade": s.upgrade.lock.as_ref().map(|l| l.name.clone()),
        "down_for_upgrade": s.upgrade.down.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "reason": s.reason,
        "last_error": s.last_error,
        "members": members,
        "lag": lag,
        "history": history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_history_aligns_members_and_keeps_the_window() {
        let mut h = LagHistory::default();
        h.push(1, &[("a".into(), Some(0))], 3);
        h.push(2, &[("a".into(), Some(0)), ("b".into(), Some(10))], 3);
        // b joined later: padded with None so every series has one value per sample.
        assert_eq!(h.series["b"], VecDeque::from(vec![None, Some(10)]));
        h.push(3, &[("a".into(), Some(0))], 3);
        h.push(4, &[("a".into(), Some(0))], 3);
        assert_eq!(h.at_unix_ms, VecDeque::from(vec![2, 3, 4]));
        assert_eq!(h.series["b"], VecDeque::from(vec![Some(10), None, None]));
        h.push(5, &[("a".into(), Some(0))], 3);
        h.push(6, &[("a".into(), Some(0))], 3);
        assert!(!h.series.contains_key("b"), "gone for the whole window");
    }

    #[test]
    fn assets_are_self_contained() {
        for (_, asset) in [INDEX_HTML, STYLE_CSS, APP_JS] {
            assert!(
                !asset.contains("http://") && !asset.contains("https://"),
                "external reference"
            );
        }
        assert!(INDEX_HTML.1.contains("viewport"), "readable on a phone");
    }
}
