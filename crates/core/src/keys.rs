//! The etcd key layout, in one place, and the one parser of a `/larder/` prefix read
//! ([`DcsView::from_kvs`]) that the agent and the CLI share.
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | [`CLUSTER`] | secrets fingerprint | permanent |
//! | [`node`] | [`NodeRecord`] | until `remove-node` |
//! | [`voter`] | `1`, set once a node has streamed from a leader | until `remove-node` |
//! | [`LEADER`] | [`LeaderRecord`] | the leader lease |
//! | [`LAST_LEADER`] | [`LeaderRecord`] of the last acquisition | permanent, rewritten with [`TERM`] |
//! | [`TERM`] | last leadership term | permanent, +1 on every acquisition |
//! | [`status`] | [`MemberStatus`] | the member's status lease |
//! | [`FAILOVER`], [`node_failover`] | `on` / `off` | permanent |
//! | [`SWITCHOVER_REQUEST`], [`SWITCHOVER`], [`SWITCHOVER_REFUSED`] | planned switchover protocol | until consumed |
//! | [`SWITCHOVER_PLAN`] | [`SwitchoverPlan`] | the leader lease |
//! | [`JOIN_LOCK`] | the node joining | the joiner's lease |
//! | [`PROTOCOL`] | the cluster's protocol version | permanent, raised by upgrades |
//! | [`UPGRADE_LOCK`] | [`UpgradeLock`](crate::model::UpgradeLock) | the `upgrade` command's lease |
//! | [`HISTORY`] | [`History`](crate::history::History) (last 200 terms) | permanent, appended by each new leader |
//! | [`down_for_upgrade`] | [`DownForUpgrade`](crate::model::DownForUpgrade) | until that node's `upgrade` |
//! | [`PG_PASSWORD_ROTATION`] | the new PostgreSQL passwords, sealed | until every node switched to them |

use crate::decide::DcsView;
#[cfg(doc)]
use crate::model::LeaderRecord;
use crate::model::{
    DownForUpgrade, MemberStatus, NodeRecord, Switchover, SwitchoverPlan, SwitchoverRequest,
    UpgradeLock,
};

pub const PREFIX: &str = "/larder/";
pub const CLUSTER: &str = "/larder/cluster";
pub const LEADER: &str = "/larder/leader";
/// Who acquired the current [`TERM`]: with cluster failover off, that node alone may lead again
/// after a restart (re-acquiring is not a failover).
pub const LAST_LEADER: &str = "/larder/last-leader";
pub const TERM: &str = "/larder/term";
pub const FAILOVER: &str = "/larder/failover";
pub const SWITCHOVER: &str = "/larder/switchover";
pub const SWITCHOVER_REQUEST: &str = "/larder/switchover-request";
pub const SWITCHOVER_PLAN: &str = "/larder/switchover-plan";
/// Why the leader refused the last switchover request (read and cleared by the CLI).
pub const SWITCHOVER_REFUSED: &str = "/larder/switchover-refused";
pub const JOIN_LOCK: &str = "/larder/join-lock";
/// The cluster's protocol version (see [`crate::version`]).
pub const PROTOCOL: &str = "/larder/protocol";
/// The rolling upgrade in progress (see [`UpgradeLock`]).
pub const UPGRADE_LOCK: &str = "/larder/upgrade-lock";

/// The leadership history. Deliberately outside [`PREFIX`]: every agent reads that whole
/// prefix each loop iteration, and the history (tens of KB) changes only with the term.
pub const HISTORY: &str = "/larder-history";

pub const NODES_PREFIX: &str = "/larder/nodes/";
pub const STATUS_PREFIX: &str = "/larder/status/";
pub const VOTERS_PREFIX: &str = "/larder/voters/";
pub const NODE_FAILOVER_PREFIX: &str = "/larder/node-failover/";
pub const DOWN_PREFIX: &str = "/larder/down-for-upgrade/";
/// `rotate-certs`: a request for one node to re-issue its certificates, and its answer.
pub const CERT_ROTATION_PREFIX: &str = "/larder/cert-rotation/";
pub const CERT_ROTATED_PREFIX: &str = "/larder/cert-rotated/";
/// `rotate-secrets`: a request for one node to take a new secret, and its answer.
pub const SECRET_ROTATION_PREFIX: &str = "/larder/secret-rotation/";
pub const SECRET_ROTATED_PREFIX: &str = "/larder/secret-rotated/";
/// `rotate-secrets --postgresql` under way: its new passwords, sealed for the members, so a
/// run that stopped part-way is carried on by the next (from any member).
pub const PG_PASSWORD_ROTATION: &str = "/larder/pg-password-rotation";

pub fn node(guid: &str) -> String {
    format!("{NODES_PREFIX}{guid}")
}
pub fn status(guid: &str) -> String {
    format!("{STATUS_PREFIX}{guid}")
}
pub fn voter(guid: &str) -> String {
    format!("{VOTERS_PREFIX}{guid}")
}
pub fn node_failover(guid: &str) -> String {
    format!("{NODE_FAILOVER_PREFIX}{guid}")
}
pub fn down_for_upgrade(guid: &str) -> String {
    format!("{DOWN_PREFIX}{guid}")
}

pub fn cert_rotation(guid: &str) -> String {
    format!("{CERT_ROTATION_PREFIX}{guid}")
}

pub fn cert_rotated(guid: &str) -> String {
    format!("{CERT_ROTATED_PREFIX}{guid}")
}

pub fn secret_rotation(guid: &str) -> String {
    format!("{SECRET_ROTATION_PREFIX}{guid}")
}

pub fn secret_rotated(guid: &str) -> String {
    format!("{SECRET_ROTATED_PREFIX}{guid}")
}

impl Default for DcsView {
    /// An empty cluster: no leader, term 0, failover on (absent flags mean on).
    fn default() -> Self {
        DcsView {
            leader: None,
            last_leader: None,
            term: 0,
            members: vec![],
            voters: vec![],
            nodes: vec![],
            cluster_failover: true,
            node_failover: true,
            switchover: None,
            switchover_request: None,
            switchover_plan: None,
            protocol: None,
            upgrade_lock: None,
            down_for_upgrade: vec![],
        }
    }
}

impl DcsView {
    /// Parse one read of the whole [`PREFIX`] as seen by member `me` (whose node-failover flag
    /// is the one that counts). Values that do not parse are skipped: a member with a corrupt
    /// status counts as offline, which is the safe reading.
    pub fn from_kvs<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>, me: &str) -> DcsView {
        let mut view = DcsView::default();
        for (k, v) in kvs {
            match k {
                LEADER => view.leader = serde_json::from_slice(v).ok(),
                LAST_LEADER => view.last_leader = serde_json::from_slice(v).ok(),
                TERM => view.term = String::from_utf8_lossy(v).parse().unwrap_or(0),
                PROTOCOL => view.protocol = String::from_utf8_lossy(v).parse().ok(),
                FAILOVER => view.cluster_failover = v != b"off",
                SWITCHOVER => view.switchover = serde_json::from_slice::<Switchover>(v).ok(),
                SWITCHOVER_REQUEST => {
                    view.switchover_request = serde_json::from_slice::<SwitchoverRequest>(v).ok()
                }
                SWITCHOVER_PLAN => {
                    view.switchover_plan = serde_json::from_slice::<SwitchoverPlan>(v).ok()
                }
                UPGRADE_LOCK => view.upgrade_lock = serde_json::from_slice::<UpgradeLock>(v).ok(),
                _ => {
                    if let Some(g) = k.strip_prefix(STATUS_PREFIX) {
                        if let Ok(m) = serde_json::from_slice::<MemberStatus>(v) {
                            // A status under another member's key is not believed.
                            if m.guid == g {
                                view.members.push(m);
                            }
                        }
                    } else if let Some(g) = k.strip_prefix(DOWN_PREFIX) {
                        // Unreadable still means down: the safe reading (no election).
                        let d =
                            serde_json::from_slice::<DownForUpgrade>(v).unwrap_or(DownForUpgrade {
                                guid: g.to_string(),
                                name: g.to_string(),
                                was_leader: true,
                                since_unix_ms: 0,
                                returning: false,
                            });
                        if d.guid == g {
                            view.down_for_upgrade.push(d);
                        }
                    } else if let Some(g) = k.strip_prefix(VOTERS_PREFIX) {
                        view.voters.push(g.to_string());
                    } else if let Some(g) = k.strip_prefix(NODE_FAILOVER_PREFIX) {
                        if g == me {
                            view.node_failover = v != b"off";
                        }
                    } else if k.starts_with(NODES_PREFIX) {
                        if let Ok(n) = serde_json::from_slice::<NodeRecord>(v) {
                            view.nodes.push(n);
                        }
                    }
                }
            }
        }
        // Voters that were removed from the cluster no longer count.
        let nodes = &view.nodes;
        view.voters.retain(|g| nodes.iter().any(|n| &n.guid == g));
        view
    }

    /// The registered node named by `name`, its address or its GUID.
    pub fn find_node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes
            .iter()
            .find(|n| n.name == name || n.guid == name || n.address == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LeaderRecord;

    fn rec(guid: &str, term: u64) -> Vec<u8> {
        serde_json::to_vec(&LeaderRecord {
            guid: guid.into(),
            name: format!("n-{guid}"),
            address: "10.0.0.1".into(),
            term,
        })
        .unwrap()
    }

    #[test]
    fn parses_every_key_of_the_layout() {
        let node_a = serde_json::to_vec(&NodeRecord {
            guid: "a".into(),
            name: "be1".into(),
            address: "10.0.0.1".into(),
        })
        .unwrap();
        let leader = rec("a", 4);
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (node("a"), node_a),
            (voter("a"), b"1".to_vec()),
            // A voter whose registration was removed does not count.
            (voter("gone"), b"1".to_vec()),
            (LEADER.into(), leader.clone()),
            (LAST_LEADER.into(), leader),
            (TERM.into(), b"4".to_vec()),
            (FAILOVER.into(), b"off".to_vec()),
            (node_failover("a"), b"off".to_vec()),
            (node_failover("b"), b"on".to_vec()),
            (
                SWITCHOVER_REQUEST.into(),
                br#"{"target":"b","requested_unix_ms":5}"#.to_vec(),
            ),
        ];
        let v = DcsView::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), "a");
        assert_eq!(v.term, 4);
        assert_eq!(v.leader.as_ref().unwrap().guid, "a");
        assert_eq!(v.last_leader.as_ref().unwrap().term, 4);
        assert!(!v.cluster_failover);
        assert!(!v.node_failover, "a's own flag is off");
        assert_eq!(v.voters, vec!["a".to_string()]);
        assert_eq!(v.find_node("be1").unwrap().guid, "a");
        assert_eq!(v.switchover_request.unwrap().target.as_deref(), Some("b"));
    }

    #[test]
    fn upgrade_keys_parse_and_an_unreadable_down_record_still_blocks() {
        let lock = serde_json::to_vec(&UpgradeLock {
            guid: "b".into(),
            name: "be2".into(),
            started_unix_ms: 5,
        })
        .unwrap();
        let down = serde_json::to_vec(&DownForUpgrade {
            guid: "a".into(),
            name: "be1".into(),
            was_leader: false,
            since_unix_ms: 7,
            returning: false,
        })
        .unwrap();
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (UPGRADE_LOCK.into(), lock),
            (down_for_upgrade("a"), down),
            (down_for_upgrade("c"), b"garbage".to_vec()),
            // A record filed under another node's key is not believed.
            (
                down_for_upgrade("d"),
                serde_json::to_vec(&DownForUpgrade {
                    guid: "x".into(),
                    name: "x".into(),
                    was_leader: true,
                    since_unix_ms: 0,
                    returning: false,
                })
                .unwrap(),
            ),
        ];
        let v = DcsView::from_kvs(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())), "a");
        assert_eq!(v.upgrade_lock.unwrap().name, "be2");
        let down: Vec<(&str, bool)> = v
            .down_for_upgrade
            .iter()
            .map(|d| (d.guid.as_str(), d.was_leader))
            .collect();
        assert_eq!(down, vec![("a", false), ("c", true)]);
    }

    #[test]
    fn absent_keys_mean_a_fresh_cluster_with_failover_on() {
        let v = DcsView::from_kvs(std::iter::empty(), "a");
        assert_eq!(v, DcsView::default());
        assert!(v.cluster_failover && v.node_failover && v.leader.is_none());
    }
}
