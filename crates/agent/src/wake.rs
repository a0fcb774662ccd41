//! Wakes the HA loop the moment etcd changes in a way that needs a decision now.
//!
//! The loop polls every `loop_interval_ms`; on its own that adds up to one interval per step of
//! a failover (see the leader key vanish, post a position, see the others' positions, acquire,
//! promote). A prefix watch turns each step into one etcd round trip. The watch only
//! accelerates: if it breaks, the loop still polls, so correctness never depends on it.

use crate::dcs::{keys, Dcs};
use crate::state::{Sensors, Snapshot};
use larder_core::model::MemberStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Keys whose every change needs an immediate decision.
fn always_wakes(key: &str) -> bool {
    key == keys::LEADER
        || key == keys::SWITCHOVER
        || key == keys::SWITCHOVER_REQUEST
        || key == keys::TERM
        || key == keys::FAILOVER
        || key.starts_with(keys::NODE_FAILOVER_PREFIX)
}

/// The part of a member's status an election looks at (not its sequence number or clock, which
/// change on every publish and would wake every loop several times per interval).
fn election_facts(value: &[u8]) -> Option<String> {
    let m: MemberStatus = serde_json::from_slice(value).ok()?;
    Some(format!(
        "{:?}|{:?}|{}|{}|{}|{:?}|{}",
        m.role, m.pg, m.position.timeline, m.position.lsn.0, m.term, m.leader_seen, m.eligible
    ))
}

/// Keys of requests addressed to one node (`node_requests`): their servers are told.
fn is_node_request(key: &str) -> bool {
    key.starts_with(keys::CERT_ROTATION_PREFIX) || key.starts_with(keys::SECRET_ROTATION_PREFIX)
}

/// Run until `shutdown`: watch `/larder/` and notify `wake` on relevant changes. Status
/// changes of other members wake the loop only while no leader is known (an election is
/// running, and positions are what it waits for). Node requests are counted in `sensors`,
/// and every change a decision could read is recorded in `sensors.watch` (so the loop can
/// reuse the view its last status write read back); `me` is this node's guid.
pub async fn run(
    dcs: Dcs,
    state: tokio::sync::watch::Receiver<Snapshot>,
    wake: Arc<Notify>,
    sensors: Arc<Sensors>,
    me: String,
    shutdown: CancellationToken,
) {
    let own_status = keys::status(&me);
    let mut facts: HashMap<String, String> = HashMap::new();
    // Each status key's last content apart from its clocks (`ha::status_facts`).
    let mut news: HashMap<String, Vec<u8>> = HashMap::new();
    while !shutdown.is_cancelled() {
        let (url, mut stream) = match dcs.watch_prefix(keys::PREFIX).await {
            Ok(w) => {
                sensors.watch.lock().unwrap().live_since = Some(std::time::Instant::now());
                w
            }
            Err(_) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = stream.message() => {
                    let Ok(Some(resp)) = msg else { break };
                    if resp.canceled() {
                        break;
                    }
                    let leaderless = state.borrow().leader.is_none();
                    let mut wanted = false;
                    let mut changed_rev = 0;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).to_string();
                        let put = ev.event_type() == etcd_client::EventType::Put;
                        if is_news(&mut news, &own_status, &key, put, kv.value()) {
                            changed_rev = changed_rev.max(kv.mod_revision());
                        }
                        if always_wakes(&key) {
                            wanted = true;
                        } else if is_node_request(&key) {
                            sensors.requests.send_modify(|n| *n = n.wrapping_add(1));
                        } else if key.starts_with(keys::STATUS_PREFIX) {
                            let f = election_facts(kv.value()).unwrap_or_default();
                            let changed = facts.get(&key) != Some(&f);
                            facts.insert(key, f);
                            wanted |= changed && leaderless;
                        }
                    }
                    if changed_rev > 0 {
                        let mut cursor = sensors.watch.lock().unwrap();
                        cursor.changed_rev = cursor.changed_rev.max(changed_rev);
                    }
                    if wanted {
                        wake.notify_one();
                    }
                }
                // Follow the member the loop's calls use: a watch on a dead member is silent.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if dcs.current_url() != url {
                        break;
                    }
                }
            }
        }
        // Changes from here until the next watch starts would go unseen.
        sensors.watch.lock().unwrap().live_since = None;
    }
}

/// Whether a change of `key` could matter to a decision: anything but this node's own status
/// writes (the loop wrote them) and statuses whose clocks alone moved (a follower's
/// heartbeat). `news` keeps each status's last facts; a key seen for the first time is news.
fn is_news(
    news: &mut HashMap<String, Vec<u8>>,
    own_status: &str,
    key: &str,
    put: bool,
    value: &[u8],
) -> bool {
    if !key.starts_with(keys::STATUS_PREFIX) {
        return true;
    }
    if !put {
        news.remove(key);
        return true;
    }
    if key == own_status {
        return false;
    }
    let facts = serde_json::from_slice::<MemberStatus>(value)
        .map(|s| crate::ha::status_facts(&s))
        .unwrap_or_else(|_| value.to_vec());
    news.insert(key.to_string(), facts.clone()) != Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WatchCursor;
    use std::time::Instant;

    fn status(guid: &str, lsn: u64, updated: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "guid": guid, "name": guid, "address": "10.0.0.1",
            "role": "follower", "pg": "streaming", "position": {"timeline": 1, "lsn": lsn},
            "eligible": true, "failover_enabled": true, "term": 3, "leader_seen": "l",
            "voter": true, "lag_bytes": 0, "search_ok": true, "etcd_ok": true, "seq": updated,
            "updated_unix_ms": updated,
        }))
        .unwrap()
    }

    #[test]
    fn a_heartbeat_is_not_news_but_a_moved_position_or_a_vanished_status_is() {
        let mut news = HashMap::new();
        let own = keys::status("me");
        let other = keys::status("b");
        assert!(is_news(&mut news, &own, &other, true, &status("b", 10, 1)));
        assert!(!is_news(&mut news, &own, &other, true, &status("b", 10, 2)));
        assert!(is_news(&mut news, &own, &other, true, &status("b", 11, 3)));
        assert!(is_news(&mut news, &own, &other, false, b""));
        // The loop's own writes are not news; its status vanishing (lease lost) is.
        assert!(!is_news(&mut news, &own, &own, true, &status("me", 1, 1)));
        assert!(is_news(&mut news, &own, &own, false, b""));
        // Every other key is news on every change.
        assert!(is_news(&mut news, &own, keys::LEADER, true, b"x"));
        assert!(is_news(&mut news, &own, keys::LEADER, true, b"x"));
    }

    #[test]
    fn a_view_holds_only_while_the_watch_was_live_before_it_and_saw_nothing_after() {
        let before = Instant::now();
        let read = before + Duration::from_millis(5);
        let mut c = WatchCursor::default();
        assert!(
            !c.unchanged_since(read, 7),
            "no watch: nothing can be vouched for"
        );
        c.live_since = Some(before);
        c.changed_rev = 7;
        assert!(c.unchanged_since(read, 7));
        c.changed_rev = 8;
        assert!(!c.unchanged_since(read, 7), "a change after the read");
        c.changed_rev = 7;
        c.live_since = Some(read + Duration::from_millis(1));
        assert!(
            !c.unchanged_since(read, 7),
            "the watch restarted after the read: changes in between went unseen"
        );
    }
}
