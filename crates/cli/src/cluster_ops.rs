//! Cluster-wide operator verbs: switchover (`promote`, `demote`), `force-leader`,
//! failover flags, `remove-node`, `pgsql-follow`.

use crate::agent_client::{agent_status, wait_for};
use anyhow::bail;
use larder_agent::clock::unix_ms;
use larder_agent::control::{self, Request};
use larder_agent::dcs::{keys, Dcs};
use larder_agent::node::Node;
use larder_core::model::SwitchoverRequest;
use larder_core::model::{LeaderRecord, NodeRecord};
use larder_core::model::{MemberStatus, PgState};
use larder_core::paths::Paths;
use std::time::{Duration, Instant};

/// An etcd client for CLI use: this node's certificate, every known member.
pub fn cli_dcs(paths: &Paths) -> anyhow::Result<(Node, Dcs)> {
    if !paths.node_state_file().exists() {
        bail!(
            "this node is not configured (no {}); run create-cluster or join-cluster first",
            paths.node_state_file().display()
        );
    }
    let node = Node::load(paths)?;
    let mut urls = vec![node.etcd_client_url()];
    if let Ok(t) = std::fs::read_to_string(paths.run_dir().join("etcd-endpoints")) {
        for u in t.lines() {
            if !urls.iter().any(|x| x == u) {
                urls.push(u.to_string());
            }
        }
    }
    let dcs = Dcs::new(urls, node.tls()?, Duration::from_secs(2));
    Ok((node, dcs))
}

pub fn parse_state(s: &str) -> anyhow::Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "enabled" | "enable" => Ok(true),
        "off" | "false" | "disabled" | "disable" => Ok(false),
        other => bail!(
            "{other:?} is not a failover state; use on, off, true, false, enabled or disabled"
        ),
    }
}

pub async fn set_failover(paths: &Paths, state: &str, cluster: bool) -> anyhow::Result<()> {
    let on = parse_state(state)?;
    let (node, dcs) = cli_dcs(paths)?;
    let key = if cluster {
        keys::FAILOVER.to_string()
    } else {
        keys::node_failover(&node.state.guid)
    };
    dcs.put(&key, if on { b"on" } else { b"off" }, None).await?;
    println!(
        "{} failover {}",
        if cluster {
            "cluster".to_string()
        } else {
            format!("node {}", node.cfg.fqdn)
        },
        if on { "enabled" } else { "disabled" }
    );
    Ok(())
}

async fn nodes(dcs: &Dcs) -> anyhow::Result<Vec<NodeRecord>> {
    Ok(dcs
        .get_prefix(keys::NODES_PREFIX)
        .await?
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

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

/// `promote NODE` (target given) or `demote` (any follower).
pub async fn switchover(paths: &Paths, target: Option<String>) -> anyhow::Result<()> {
    let (_node, dcs) = cli_dcs(paths)?;
    if dcs
        .get(keys::FAILOVER)
        .await?
        .is_some_and(|kv| kv.value == b"off")
    {
        bail!(
            "cluster failover is disabled; enable it with `larder set-cluster-failover on` first"
        );
    }
    let all = nodes(&dcs).await?;
    let Some(old) = leader(&dcs).await? else {
        bail!("there is no leader to hand over from; use `larder force-leader` on the most advanced node");
    };
    let target_guid = match &target {
        Some(t) => {
            let n = find(&all, t)?;
            if n.guid == old.guid {
                println!("{} is already the leader", n.name);
                return Ok(());
            }
            if dcs
                .get(&keys::node_failover(&n.guid))
                .await?
                .is_some_and(|kv| kv.value == b"off")
            {
                bail!(
                    "failover is disabled on {}; run `larder set-node-failover on` there first",
                    n.name
                );
            }
            Some(n.guid.clone())
        }
        None => None,
    };
    // Check first: a switchover needs a streaming, failover-enabled follower to hand over to.
    // Right after a failover or switchover followers re-attach within seconds: wait for that
    // (bounded) rather than refuse a command that would succeed a moment later.
    let ready =
        |m: &MemberStatus| m.guid != old.guid && m.pg == PgState::Streaming && m.failover_enabled;
    let attach_deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let ok = loop {
        let statuses: Vec<MemberStatus> = dcs
            .get_prefix(keys::STATUS_PREFIX)
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let ok = match &target_guid {
            Some(t) => statuses.iter().any(|m| &m.guid == t && ready(m)),
            None => statuses.iter().any(ready),
        };
        if ok || std::time::Instant::now() >= attach_deadline {
            break ok;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    if !ok {
        bail!("no streaming, failover-enabled follower {}to hand over to yet; wait until `larder cluster-status` shows it as follower and retry", target.as_deref().map(|t| format!("({t}) ")).unwrap_or_default());
    }
    let _ = dcs.delete(keys::SWITCHOVER_REFUSED).await;
    let req = SwitchoverRequest {
        target: target_guid.clone(),
        requested_unix_ms: unix_ms(),
    };
    dcs.put(keys::SWITCHOVER_REQUEST, &serde_json::to_vec(&req)?, None)
        .await?;
    eprintln!("switchover requested from {} (term {})", old.name, old.term);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(l) = leader(&dcs).await? {
            if l.term > old.term {
                if target_guid.as_ref().is_some_and(|t| *t != l.guid) {
                    bail!("{} became leader instead of the requested node", l.name);
                }
                println!(
                    "{} is the leader (term {}), handed over in {:.2}s",
                    l.name,
                    l.term,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
        }
        if let Some(kv) = dcs.get(keys::SWITCHOVER_REFUSED).await? {
            let _ = dcs.delete(keys::SWITCHOVER_REFUSED).await;
            bail!("{}", String::from_utf8_lossy(&kv.value));
        }
        if Instant::now() > deadline {
            let _ = dcs.delete(keys::SWITCHOVER_REQUEST).await;
            bail!("no new leader was elected within 30s; check `larder cluster-status` (the target must be a streaming follower with failover enabled)");
        }
    }
}

pub async fn force_leader(paths: &Paths) -> anyhow::Result<()> {
    let r = control::call(&paths.agent_socket(), &Request::ForceLeader).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    wait_for(
        paths,
        Duration::from_secs(30),
        "this node to accept writes",
        |s| s["ha"]["writable_leader"] == true,
    )
    .await?;
    Ok(())
}

/// `pgsql-follow [LEADER] [--force-basebackup] [--verbose]`. LEADER (name, address or GUID, as
/// chef-backend-ctl took the leader's IP) must be the current leader: this node always follows
/// the elected leader, so naming another one is refused rather than silently ignored.
pub async fn pgsql_follow(
    paths: &Paths,
    leader_arg: Option<&str>,
    force_basebackup: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    if let Some(want) = leader_arg {
        let (_, dcs) = cli_dcs(paths)?;
        let Some(l) = leader(&dcs).await? else {
            bail!("there is no leader to follow right now; nothing was changed (see `larder cluster-status`)");
        };
        if want != l.name && want != l.address && want != l.guid {
            bail!(
                "{want} is not the leader: the leader is {} ({}); this node always follows the elected leader. Run `larder pgsql-follow` without an argument, or `larder promote {want}` first; nothing was changed",
                l.name,
                l.address
            );
        }
    }
    let r = control::call(&paths.agent_socket(), &Request::Resync { force_basebackup }).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    eprintln!("{}", r.message);
    let bar = crate::progress::CopyBar::new();
    let mut saw_copy = false;
    let mut last_line: Option<String> = None;
    wait_for(
        paths,
        Duration::from_secs(3600),
        "PostgreSQL to stream from the leader",
        |s| {
            bar.update_from_status(s);
            if verbose {
                let line = format!(
                    "role {} · postgresql {} · {}",
                    s["ha"]["role"].as_str().unwrap_or("?"),
                    s["ha"]["postgresql"]["state"].as_str().unwrap_or("?"),
                    s["ha"]["reason"].as_str().unwrap_or("")
                );
                if last_line.as_deref() != Some(line.as_str()) {
                    eprintln!("      {line}");
                    last_line = Some(line);
                }
            }
            if s["ha"]["role"] == "syncing" {
                saw_copy = true;
            }
            saw_copy && s["ha"]["postgresql"]["state"] == "streaming"
        },
    )
    .await?;
    bar.finish();
    println!("following the leader");
    Ok(())
}

pub async fn remove_node(paths: &Paths, name: &str, yes: bool) -> anyhow::Result<()> {
    let (me, dcs) = cli_dcs(paths)?;
    let all = nodes(&dcs).await?;
    let n = find(&all, name)?.clone();
    if n.guid == me.state.guid {
        bail!(
            "remove-node must run on another cluster member, not on {} itself",
            n.name
        );
    }
    if dcs.get(&keys::status(&n.guid)).await?.is_some() {
        bail!("{} is still running (its agent posts status); stop it first (`larder uninstall` on that node), then retry", n.name);
    }
    crate::prompt::confirm(
        &format!(
            "remove {} ({}, {}) from the cluster? It must then be cleansed before it can join again",
            n.name, n.address, n.guid
        ),
        yes,
        "--yes",
    )?;
    let members = dcs.members().await?;
    if let Some(m) = members.iter().find(|m| {
        m.name == n.name
            || m.peer_urls
                .iter()
                .any(|u| u.contains(&format!("//{}:", larder_agent::node::url_host(&n.address))))
    }) {
        dcs.member_remove(m.id).await?;
    }
    dcs.delete(&keys::voter(&n.guid)).await?;
    dcs.delete(&keys::node_failover(&n.guid)).await?;
    dcs.delete(&keys::node(&n.guid)).await?;
    // The leader drops the replication slot of members that are no longer registered.
    let _ = agent_status(paths).await;
    println!(
        "removed {} ({}) from the cluster; its replication slot is dropped by the leader",
        n.name, n.guid
    );
    Ok(())
}
