//! `upgrade [--failover]` and `down-for-upgrade`: the two upgrade procedures of Chef Backend's
//! documentation, run after the new package is installed (this binary is the new release).
//!
//! Rolling: preconditions first (nothing changes when one fails), then the upgrade lock
//! (`larder_agent::upgrade`), a planned switchover when this node leads (`--failover`), the
//! agent restarted on this binary, and the rejoin verified: streaming from the leader, caught up
//! within `max_bytes_behind_leader`, a voter. Exit 0 only when verified.
//!
//! Full downtime: `down-for-upgrade` on the leader, then each follower; `upgrade` on the
//! followers, then the old leader, which leads again.
//!
//! The lock is taken here rather than by the agent: the agent being replaced may be the
//! previous release, which has no such request. Everything else goes through the agent.

use crate::agent_client::agent_status;
use crate::progress::Steps;
use anyhow::{bail, Context};
use larder_agent::control::{self, AgentStatus, Request};
use larder_agent::node::Node;
use larder_core::model::PgState;
use larder_core::paths::Paths;
use std::time::{Duration, Instant};

pub struct Args {
    pub failover: bool,
    pub yes: bool,
    pub timeout: Duration,
    /// Print the result as JSON (progress is off then, see `progress::quiet`).
    pub json: bool,
}

/// The end of a successful upgrade: the last progress line, or with `--json` the result.
fn done(steps: &Steps, args: &Args, new: &str, msg: &str) {
    steps.finish(msg);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"upgraded": true, "version": new, "result": msg})
        );
    }
}

async fn ask(paths: &Paths, req: &Request) -> anyhow::Result<String> {
    let r = control::call(&paths.agent_socket(), req).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    Ok(r.message)
}

fn pg_name(s: &AgentStatus) -> String {
    s.pg_state()
        .map(|p| format!("{p:?}").to_lowercase())
        .unwrap_or_else(|| "down".into())
}

/// Follow the agent's status until `check` says done (`Ok(true)`), printing each new state
/// line; `Err` from `check` is a definite failure.
async fn follow(
    paths: &Paths,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&AgentStatus) -> (bool, String),
) -> anyhow::Result<AgentStatus> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let line = match agent_status(paths).await {
            Ok(s) => {
                let (done, line) = check(&s);
                if done {
                    return Ok(s);
                }
                line
            }
            Err(e) => format!("agent not answering yet ({e})"),
        };
        if line != last {
            crate::progress::note(&line);
            last = line;
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not done after {}s (last state: {last})",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restart the agent (and with it every service) on the installed binary: this one.
async fn restart_agent(paths: &Paths) -> anyhow::Result<()> {
    crate::agent_process::stop_agent(paths, false).await?;
    crate::agent_process::start_agent(paths)?;
    Ok(())
}

pub async fn upgrade(paths: &Paths, args: Args) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    let node = Node::load(paths)?;
    let me = node.state.guid.clone();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let new = larder_agent::build::version_of(&exe)
        .with_context(|| format!("cannot read {}", exe.display()))?;
    // A stopped agent (a reboot with the new package installed) is upgraded like a running
    // one, from what etcd said last time it ran: nothing to check against, so start it first.
    let st = match agent_status(paths).await {
        Ok(s) => s,
        Err(_) => {
            eprintln!("the agent is not running: starting it on {new} to read the cluster state");
            crate::agent_process::start_agent(paths)?;
            follow(paths, Duration::from_secs(60), "the agent to start", |s| {
                (s.ha.term > 0 || !s.nodes.is_empty(), s.ha.reason.clone())
            })
            .await?
        }
    };
    if let Some(mine) = st.upgrade.down.iter().find(|d| d.guid == me) {
        return downtime_upgrade(paths, &st, mine.was_leader, &new, &args).await;
    }
    if !st.upgrade.down.is_empty() {
        let names: Vec<&str> = st.upgrade.down.iter().map(|d| d.name.as_str()).collect();
        bail!(
            "a full-downtime upgrade is in progress (down for upgrade: {}); run `larder down-for-upgrade` on this node too, then `larder upgrade` on the followers and the old leader last; nothing was changed",
            names.join(", ")
        );
    }
    let leads = st.ha.role.as_deref() == Some("leader");
    let multi = st.nodes.len() > 1;
    let name = node.cfg.fqdn.clone();
    if leads && multi && !args.failover {
        bail!(
            "{name} is the leader. Upgrade it last, with a planned switchover first:\n  larder set-cluster-failover on\n  larder upgrade --failover      # on {name}: hands leadership to the most advanced follower, then upgrades {name}\n  larder set-cluster-failover off\nNothing was changed."
        );
    }
    if leads && multi && !st.ha.cluster_failover {
        bail!("`upgrade --failover` hands leadership over, which needs cluster failover on: run `larder set-cluster-failover on`, then retry (and `larder set-cluster-failover off` after); nothing was changed");
    }
    if !leads && st.ha.cluster_failover && !args.failover && !args.yes {
        bail!("cluster failover is on: the documented procedure upgrades followers with it off, so no failover starts while a node restarts. Run `larder set-cluster-failover off` first, or pass --yes to upgrade with failover on; nothing was changed");
    }
    let handover = leads && multi;
    let mut steps = Steps::new(if handover { 5 } else { 4 });
    steps.step("taking the upgrade lock (one node at a time)");
    let dcs = node.dcs()?;
    let lock = larder_agent::upgrade::acquire_lock(&dcs, &node).await?;
    if handover {
        steps.step("handing leadership to the most advanced follower");
        if let Err(e) = ask(paths, &Request::Switchover { target: None }).await {
            lock.release().await?;
            bail!("the switchover did not happen, so nothing was upgraded: {e:#}");
        }
    }
    steps.step(&format!(
        "restarting the agent and services on {new} (was {})",
        if st.ha.version.is_empty() {
            "unknown"
        } else {
            st.ha.version.as_str()
        }
    ));
    if let Err(e) = restart_agent(paths).await {
        lock.keep_after_failure().await?;
        bail!("restarting the agent failed: {e:#}; the upgrade lock stays held by {name} until `larder upgrade` succeeds here");
    }
    let result = verify_rolling(paths, &mut steps, &me, &new, multi, args.timeout).await;
    match result {
        Ok(summary) => {
            lock.release().await?;
            done(
                &steps,
                &args,
                &new,
                &format!("upgraded {name} to {new}: {summary}"),
            );
            Ok(())
        }
        Err(e) => {
            lock.keep_after_failure().await?;
            bail!("{e:#}\nThe agent runs {new} but its rejoin is not verified. The upgrade lock stays held by {name}, so no other node is upgraded meanwhile; fix what is named above (`larder status`, `larder tail`) and run `larder upgrade` here again.");
        }
    }
}

/// After the restart: the new build answers, the schema is understood, and the node serves
/// again (a follower streaming, caught up and voting; a single node writable).
async fn verify_rolling(
    paths: &Paths,
    steps: &mut Steps,
    me: &str,
    new: &str,
    multi: bool,
    timeout: Duration,
) -> anyhow::Result<String> {
    steps.step("checking the cluster schema");
    let s = follow(
        paths,
        Duration::from_secs(60),
        "the new agent to answer",
        |s| (s.ha.version == new, format!("agent {}", s.ha.version)),
    )
    .await?;
    let recorded = s
        .members
        .iter()
        .map(|m| m.protocol)
        .filter(|p| *p > 0)
        .min()
        .unwrap_or(larder_core::version::PROTOCOL);
    crate::progress::note(&format!(
        "this build speaks protocol {} (cluster members: {}); {}",
        larder_core::version::PROTOCOL,
        recorded,
        if recorded == larder_core::version::PROTOCOL {
            "nothing to migrate"
        } else {
            "the leader raises the cluster's protocol once every member runs it"
        }
    ));
    steps.step("verifying the rejoin");
    let max_lag = Node::load(paths)?
        .cfg
        .leaderl
        .health_check
        .max_bytes_behind_leader;
    let s = follow(paths, timeout, "the rejoin", |s| {
        let lag = s
            .members
            .iter()
            .find(|m| m.guid == me)
            .and_then(|m| m.lag_bytes);
        let line = format!(
            "role {} · postgresql {} · lag {} · {}",
            s.ha.role.as_deref().unwrap_or("?"),
            pg_name(s),
            lag.map(|l| format!("{l} B")).unwrap_or_else(|| "-".into()),
            s.ha.reason
        );
        let done = if multi {
            s.ha.role.as_deref() == Some("follower")
                && s.pg_state() == Some(PgState::Streaming)
                && lag.is_some_and(|l| l <= max_lag)
                && s.voters.iter().any(|v| v == me)
        } else {
            s.ha.writable_leader
        };
        (done, line)
    })
    .await?;
    Ok(if multi {
        let leader = s.ha.leader.map(|l| l.name).unwrap_or_default();
        let lag = s
            .members
            .iter()
            .find(|m| m.guid == me)
            .and_then(|m| m.lag_bytes)
            .unwrap_or(0);
        format!("streaming from {leader}, {lag} bytes behind, voting")
    } else {
        "the single node is writable again".into()
    })
}

/// `upgrade` on a node that is down for upgrade: the followers first, the old leader last.
async fn downtime_upgrade(
    paths: &Paths,
    st: &AgentStatus,
    was_leader: bool,
    new: &str,
    args: &Args,
) -> anyhow::Result<()> {
    let me = st.ha.guid.clone();
    let others: Vec<&str> = st
        .upgrade
        .down
        .iter()
        .filter(|d| d.guid != me)
        .map(|d| d.name.as_str())
        .collect();
    if was_leader && !others.is_empty() {
        bail!(
            "this node was the leader: upgrade it last. Run `larder upgrade` on {} first; nothing was changed",
            others.join(", ")
        );
    }
    let mut steps = Steps::new(3);
    steps.step(&format!("restarting the agent and services on {new}"));
    restart_agent(paths).await?;
    follow(
        paths,
        Duration::from_secs(60),
        "the new agent to answer",
        |s| (s.ha.version == new, format!("agent {}", s.ha.version)),
    )
    .await?;
    steps.step("bringing the node back (down-for-upgrade record cleared)");
    let next = ask(paths, &Request::UpgradeDone).await?;
    if was_leader {
        steps.step("waiting for the cluster to elect its leader and this node to serve");
        let s = follow(paths, args.timeout, "the cluster to come back", |s| {
            let serving = s.ha.writable_leader
                || (s.ha.role.as_deref() == Some("follower")
                    && s.pg_state() == Some(PgState::Streaming));
            (
                serving && s.ha.leader.is_some(),
                format!(
                    "role {} · postgresql {} · {}",
                    s.ha.role.as_deref().unwrap_or("?"),
                    pg_name(s),
                    s.ha.reason
                ),
            )
        })
        .await?;
        let leader = s.ha.leader.map(|l| l.name).unwrap_or_default();
        let mut versions: Vec<&str> = s.members.iter().map(|m| m.version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        done(
            &steps,
            args,
            new,
            &format!(
                "upgraded to {new}; {leader} leads (members run {})",
                versions.join(", ")
            ),
        );
    } else {
        steps.step("waiting for PostgreSQL to run as a standby");
        follow(paths, args.timeout, "PostgreSQL to start", |s| {
            (
                matches!(
                    s.pg_state(),
                    Some(PgState::Standby) | Some(PgState::Streaming)
                ),
                format!("postgresql {} · {}", pg_name(s), s.ha.reason),
            )
        })
        .await?;
        done(&steps, args, new, &format!("upgraded to {new}; {next}"));
    }
    Ok(())
}

/// `down-for-upgrade`: through the agent, which checks the order and stops the services.
pub async fn down_for_upgrade(paths: &Paths) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    let st = agent_status(paths).await?;
    // Builds that know down-for-upgrade post `RELEASE+BUILD`.
    if !st.ha.version.contains('+') {
        bail!("this node's agent ({}) predates down-for-upgrade; upgrade it with the rolling procedure (`larder upgrade`) instead", st.ha.version);
    }
    let mut steps = Steps::new(1);
    steps.step("recording the node as down for upgrade and stopping PostgreSQL and search");
    let msg = ask(paths, &Request::DownForUpgrade).await?;
    steps.finish(&msg);
    println!("{msg}");
    Ok(())
}
