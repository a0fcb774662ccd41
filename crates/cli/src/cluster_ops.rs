//! Cluster-wide operator verbs: switchover (`promote`, `demote`), `force-leader`,
//! failover flags, `remove-node`, `pgsql-follow`. Each is a request to this node's agent
//! (`larder_agent::operator`, or the HA loop for leadership changes); the CLI never writes etcd
//! for a configured node.

use crate::agent_client::{agent_status, wait_for};
use anyhow::bail;
use larder_agent::control::{self, Request};
use larder_core::model::PgState;
use larder_core::paths::Paths;
use std::time::Duration;

pub fn parse_state(s: &str) -> anyhow::Result<bool> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "enabled" | "enable" => Ok(true),
        "off" | "false" | "disabled" | "disable" => Ok(false),
        other => bail!(
            "{other:?} is not a failover state; use on, off, true, false, enabled or disabled"
        ),
    }
}

/// Send one request to this node's agent; its refusal becomes the error.
async fn ask(paths: &Paths, req: &Request) -> anyhow::Result<String> {
    crate::report::require_configured(paths)?;
    let r = control::call(&paths.agent_socket(), req).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    Ok(r.message)
}

pub async fn set_failover(paths: &Paths, state: &str, cluster: bool) -> anyhow::Result<()> {
    let on = parse_state(state)?;
    println!(
        "{}",
        ask(paths, &Request::SetFailover { cluster, on }).await?
    );
    Ok(())
}

/// `promote NODE` (target given) or `demote` (any follower). The local agent writes the
/// request; the leader's core checks it, times it and hands over, or says why not.
pub async fn switchover(paths: &Paths, target: Option<String>) -> anyhow::Result<()> {
    eprintln!(
        "switchover requested{}; waiting for the hand-over",
        target
            .as_deref()
            .map(|t| format!(" to {t}"))
            .unwrap_or_default()
    );
    println!("{}", ask(paths, &Request::Switchover { target }).await?);
    Ok(())
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
        |s| s.ha.writable_leader,
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
        let s = agent_status(paths).await?;
        let Some(l) = s.ha.leader else {
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
                    s.ha.role.as_deref().unwrap_or("?"),
                    s.pg_state()
                        .map(|p| format!("{p:?}").to_lowercase())
                        .unwrap_or_else(|| "down".into()),
                    s.ha.reason
                );
                if last_line.as_deref() != Some(line.as_str()) {
                    eprintln!("      {line}");
                    last_line = Some(line);
                }
            }
            if s.ha.role.as_deref() == Some("syncing") {
                saw_copy = true;
            }
            saw_copy && s.pg_state() == Some(PgState::Streaming)
        },
    )
    .await?;
    bar.finish();
    println!("following the leader");
    Ok(())
}

pub async fn remove_node(paths: &Paths, name: &str, yes: bool) -> anyhow::Result<()> {
    let what = ask(
        paths,
        &Request::RemoveNode {
            node: name.into(),
            apply: false,
        },
    )
    .await?;
    crate::prompt::confirm(
        &format!(
            "remove {what} from the cluster? It must then be cleansed before it can join again"
        ),
        yes,
        "--yes",
    )?;
    let done = ask(
        paths,
        &Request::RemoveNode {
            node: name.into(),
            apply: true,
        },
    )
    .await?;
    // Refresh: the leader drops the removed member's replication slot on its next loop.
    let _ = agent_status(paths).await;
    println!("{done}");
    Ok(())
}
