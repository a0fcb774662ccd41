//! Operator verbs that change the cluster, carried out by the local agent for the CLI (which
//! no longer writes etcd itself): failover flags, planned switchovers, removing a node.
//!
//! These write operator *intent* into etcd; every leadership decision that follows is made by
//! the core in some node's HA loop (a switchover request is checked, timed and executed by the
//! leader's loop; its refusal comes back through [`keys::SWITCHOVER_REFUSED`]).

use crate::clock::unix_ms;
use crate::dcs::{keys, Dcs};
use crate::node::{url_host, Node};
use larder_core::model::{LeaderRecord, NodeRecord, SwitchoverRequest};
use std::time::{Duration, Instant};

/// How long `promote`/`demote` wait for the hand-over to complete (the leader holds a request
/// up to 15 s for the target to re-attach, then times it and steps down).
const SWITCHOVER_WAIT: Duration = Duration::from_secs(45);

fn find<'a>(nodes: &'a [NodeRecord], name: &str) -> anyhow::Result<&'a NodeRecord> {
    nodes
        .iter()
        .find(|n| n.name == name || n.guid == name || n.address == name)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown node {name:?}; cluster members: {}",
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

async fn leader(dcs: &Dcs) -> anyhow::Result<Option<LeaderRecord>> {
    Ok(dcs
        .get(keys::LEADER)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

async fn nodes(dcs: &Dcs) -> anyhow::Result<Vec<NodeRecord>> {
    Ok(dcs
        .get_prefix(keys::NODES_PREFIX)
        .await?
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// `set-cluster-failover` / `set-node-failover` (this node).
pub async fn set_failover(
    dcs: &Dcs,
    node: &Node,
    cluster: bool,
    on: bool,
) -> anyhow::Result<String> {
    let key = if cluster {
        keys::FAILOVER.to_string()
    } else {
        keys::node_failover(&node.state.guid)
    };
    dcs.put(&key, if on { b"on" } else { b"off" }, None).await?;
    Ok(format!(
        "{} failover {}",
        if cluster {
            "cluster".to_string()
        } else {
            format!("node {}", node.cfg.fqdn)
        },
        if on { "enabled" } else { "disabled" }
    ))
}

/// `promote NODE` (target given) or `demote` (any follower): write the request, then follow it
/// until a new term starts or the leader refuses it (its reasons come from the core).
pub async fn switchover(dcs: &Dcs, target: Option<&str>) -> anyhow::Result<String> {
    let Some(old) = leader(dcs).await? else {
        anyhow::bail!("there is no leader to hand over from; use `larder force-leader` on the most advanced node");
    };
    let target_guid = match target {
        Some(t) => {
            let all = nodes(dcs).await?;
            let n = find(&all, t)?;
            if n.guid == old.guid {
                return Ok(format!("{} is already the leader", n.name));
            }
            Some(n.guid.clone())
        }
        None => None,
    };
    let _ = dcs.delete(keys::SWITCHOVER_REFUSED).await;
    let req = SwitchoverRequest {
        target: target_guid.clone(),
        requested_unix_ms: unix_ms(),
    };
    dcs.put(keys::SWITCHOVER_REQUEST, &serde_json::to_vec(&req)?, None)
        .await?;
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(l) = leader(dcs).await? {
            if l.term > old.term {
                if target_guid.as_ref().is_some_and(|t| *t != l.guid) {
                    anyhow::bail!("{} became leader instead of the requested node", l.name);
                }
                return Ok(format!(
                    "switchover from {} (term {}): {} is the leader (term {}), handed over in {:.2}s",
                    old.name,
                    old.term,
                    l.name,
                    l.term,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if let Some(kv) = dcs.get(keys::SWITCHOVER_REFUSED).await? {
            let _ = dcs.delete(keys::SWITCHOVER_REFUSED).await;
            anyhow::bail!("{}", String::from_utf8_lossy(&kv.value));
        }
        if started.elapsed() > SWITCHOVER_WAIT {
            let _ = dcs.delete(keys::SWITCHOVER_REQUEST).await;
            anyhow::bail!("no new leader within {}s; check `larder cluster-status` (the target must be a streaming follower with failover enabled)", SWITCHOVER_WAIT.as_secs());
        }
    }
}

/// `remove-node NODE`: refuse this node itself and any node still running; with `apply`
/// false only check and describe what would be removed (the CLI asks for confirmation).
pub async fn remove_node(dcs: &Dcs, me: &Node, name: &str, apply: bool) -> anyhow::Result<String> {
    let all = nodes(dcs).await?;
    let n = find(&all, name)?.clone();
    if n.guid == me.state.guid {
        anyhow::bail!(
            "remove-node must run on another cluster member, not on {} itself",
            n.name
        );
    }
    if dcs.get(&keys::status(&n.guid)).await?.is_some() {
        anyhow::bail!("{} is still running (its agent posts status); stop it first (`larder uninstall` on that node), then retry", n.name);
    }
    if !apply {
        return Ok(format!("{} ({}, {})", n.name, n.address, n.guid));
    }
    let members = dcs.members().await?;
    if let Some(m) = members.iter().find(|m| {
        m.name == n.name
            || m.peer_urls
                .iter()
                .any(|u| u.contains(&format!("//{}:", url_host(&n.address))))
    }) {
        dcs.member_remove(m.id).await?;
    }
    dcs.delete(&keys::voter(&n.guid)).await?;
    dcs.delete(&keys::node_failover(&n.guid)).await?;
    dcs.delete(&keys::node(&n.guid)).await?;
    // The leader's loop drops the replication slot of members that are no longer registered.
    Ok(format!(
        "removed {} ({}) from the cluster; its replication slot is dropped by the leader",
        n.name, n.guid
    ))
}
