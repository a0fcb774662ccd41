//! `create-cluster --quorum-loss-recovery`: a majority of the members is gone for good, so
//! etcd has no quorum and nothing — not even `force-leader` — can act. On a survivor: report
//! what it holds and what may be lost, rebuild etcd as a one-member cluster from this member's
//! data (`--force-new-cluster`), drop the lost members from the cluster and lead it. The lost
//! members can then only come back through `cleanse` + `join-cluster` (or `join-cluster
//! --recovery`): their etcd members were removed, so their agents can never reach a quorum or
//! a lease with the old data.

use crate::agent_client::{agent_status, wait_for};
use crate::progress::Steps;
use anyhow::{bail, Context};
use larder_agent::dcs::{keys, Dcs};
use larder_agent::node::Node;
use larder_core::decide::DcsView;
use larder_core::paths::Paths;
use std::time::{Duration, Instant};

fn local_dcs(node: &Node) -> anyhow::Result<Dcs> {
    Ok(Dcs::new(
        vec![node.etcd_client_url()],
        node.tls()?,
        Duration::from_secs(2),
    ))
}

async fn has_quorum(dcs: &Dcs) -> bool {
    tokio::time::timeout(Duration::from_secs(5), dcs.get(keys::CLUSTER))
        .await
        .is_ok_and(|r| r.is_ok())
}

pub async fn quorum_loss_recovery(paths: &Paths, yes: bool) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    let mut node = Node::load(paths)?;
    if !crate::agent_process::agent_alive(paths) {
        crate::agent_process::start_agent(paths)?;
        wait_for(paths, Duration::from_secs(20), "the agent", |_| true).await?;
    }
    let dcs = local_dcs(&node)?;
    if has_quorum(&dcs).await {
        bail!("etcd still has a quorum, so this is not a quorum loss: replace a lost node with `larder remove-node NODE` and `larder join-cluster` (or `force-leader` when no leader is elected); nothing was changed");
    }
    let kvs = dcs
        .get_prefix_local(keys::PREFIX)
        .await
        .context("cannot read this node's own etcd member (is etcd running? `larder status`)")?;
    let me = node.state.guid.clone();
    let view = DcsView::from_kvs(
        kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        &me,
    );
    let lost: Vec<_> = view
        .nodes
        .iter()
        .filter(|n| n.guid != me)
        .cloned()
        .collect();
    let st = agent_status(paths).await.ok();
    let position = st
        .as_ref()
        .and_then(|s| s.ha.postgresql.as_ref())
        .map(|p| format!("{} on timeline {}", p.lsn, p.timeline))
        .unwrap_or_else(|| "unknown (PostgreSQL is not running)".into());
    let held = view
        .last_leader
        .as_ref()
        .is_some_and(|l| l.guid == me && l.term == view.term);
    eprintln!("This node: {} — WAL position {position}.", node.cfg.fqdn);
    eprintln!(
        "Members to drop: {}.",
        lost.iter()
            .map(|n| format!("{} ({})", n.name, n.address))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if held {
        eprintln!("This node held the last leadership term (term {}): every acknowledged commit was flushed here first, so nothing acknowledged is lost.", view.term);
        crate::prompt::confirm_on_terminal(
            "rebuild the cluster around this node and drop the members above?",
            yes,
        )?;
    } else {
        let leader = view
            .last_leader
            .as_ref()
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "another member".into());
        let risk = format!("This node was a follower (the last leader was {leader}). In quorum mode every acknowledged commit reached a majority of the voters; with that majority gone, this node may lack commits only the lost members had received, and they would be lost.");
        if !yes {
            bail!("{risk}\nRerun with --yes to accept that risk (or recover on the old leader if it survives); nothing was changed");
        }
        eprintln!("{risk} Accepted with --yes.");
    }

    let mut steps = Steps::new(5);
    steps.step("stopping the agent");
    crate::agent_process::stop_agent(paths, false).await?;
    steps.step("keeping a copy of etcd's data");
    let data = node.paths.etcd_data();
    let copy = data.with_file_name(format!(
        "etcd-before-recovery-{}",
        larder_agent::clock::unix_ms() / 1000
    ));
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy)
        .status()
        .context("cannot run cp")?;
    if !st.success() {
        bail!(
            "copying {} to {} failed; nothing else was changed",
            data.display(),
            copy.display()
        );
    }
    steps.step("rebuilding etcd as a one-member cluster from this member's data");
    let mut etcd = start_forced_etcd(&node)?;
    let result = rebuild(&node, &dcs, &lost).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(etcd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = etcd.wait();
    result?;
    node.state.etcd_initial_cluster = format!("{}={}", node.cfg.fqdn, node.etcd_peer_url());
    node.state.save(&paths.node_state_file())?;
    steps.step("starting the agent and electing this node");
    crate::agent_process::start_agent(paths)?;
    wait_for(paths, Duration::from_secs(90), "this node to lead", |s| {
        s.ha.writable_leader
    })
    .await?;
    steps.finish(&format!(
        "{} leads a one-node cluster. The dropped members cannot rejoin as they are: on each, `larder cleanse` then `larder join-cluster {} -s {}` (etcd's old data is kept in {})",
        node.cfg.fqdn,
        node.cfg.publish_address,
        paths.secrets_file().display(),
        copy.display()
    ));
    Ok(())
}

/// etcd with `--force-new-cluster`: the same member, its data kept, every other member
/// removed from the membership.
fn start_forced_etcd(node: &Node) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let account = larder_agent::etcd::prepare(node)?;
    let spec = larder_agent::etcd::service_spec(node, account);
    std::fs::create_dir_all(&spec.log_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_dir.join("force-new-cluster.log"))?;
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .arg("--force-new-cluster")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    if let Some((uid, gid)) = spec.user {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().context("cannot start etcd")
}

/// In the one-member etcd: remove what described the lost members, and give the cluster a new
/// identity (a generation the old members never saw).
async fn rebuild(
    node: &Node,
    dcs: &Dcs,
    lost: &[larder_core::model::NodeRecord],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_quorum(dcs).await {
        if Instant::now() > deadline {
            bail!(
                "etcd did not come up as a one-member cluster within 30 s; see {}",
                node.paths
                    .service_log_dir("etcd")
                    .join("force-new-cluster.log")
                    .display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in dcs.members().await? {
        if m.name != node.cfg.fqdn {
            dcs.member_remove(m.id).await?;
        }
    }
    for n in lost {
        for k in [
            keys::node(&n.guid),
            keys::voter(&n.guid),
            keys::status(&n.guid),
            keys::node_failover(&n.guid),
            keys::down_for_upgrade(&n.guid),
        ] {
            dcs.delete(&k).await?;
        }
    }
    if let Some(kv) = dcs.get(keys::LEADER).await? {
        let l: Option<larder_core::model::LeaderRecord> = serde_json::from_slice(&kv.value).ok();
        if l.is_none_or(|l| l.guid != node.state.guid) {
            dcs.delete(keys::LEADER).await?;
        }
    }
    for k in [
        keys::SWITCHOVER,
        keys::SWITCHOVER_REQUEST,
        keys::SWITCHOVER_PLAN,
        keys::UPGRADE_LOCK,
        keys::JOIN_LOCK,
    ] {
        dcs.delete(k).await?;
    }
    let mut cluster: serde_json::Value = dcs
        .get(keys::CLUSTER)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    cluster["generation"] = serde_json::json!(format!(
        "{:016x}",
        larder_agent::clock::unix_ms() ^ u64::from(std::process::id()) << 40
    ));
    cluster["recovered_unix"] = serde_json::json!(larder_agent::clock::unix_ms() / 1000);
    cluster["recovered_on"] = serde_json::json!(node.cfg.fqdn);
    dcs.put(keys::CLUSTER, cluster.to_string().as_bytes(), None)
        .await?;
    Ok(())
}
