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
/// running, and positions are what it waits for). Node requests are counted in `sensors`.
pub async fn run(
    dcs: Dcs,
    state: tokio::sync::watch::Receiver<Snapshot>,
    wake: Arc<Notify>,
    sensors: Arc<Sensors>,
    shutdown: CancellationToken,
) {
    let mut facts: HashMap<String, String> = HashMap::new();
    while !shutdown.is_cancelled() {
        let (url, mut stream) = match dcs.watch_prefix(keys::PREFIX).await {
            Ok(w) => w,
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
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).to_string();
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
    }
}
