//! `status` and `cluster-status`: read the agent's view and render it.

use crate::agent_client::agent_status;
use anyhow::bail;
use larder_agent::control::AgentStatus;
use larder_core::model::MemberStatus;
use larder_core::paths::Paths;
use larder_core::status::{self, ClusterRow, DiskRow, ServiceRow};

pub fn require_configured(paths: &Paths) -> anyhow::Result<()> {
    if !paths.node_state_file().exists() {
        bail!("this node is not configured (no {}); run `larder create-cluster` or `larder join-cluster` first", paths.node_state_file().display());
    }
    Ok(())
}

pub async fn status(
    paths: &Paths,
    service: Option<&str>,
    simple: bool,
    json: bool,
) -> anyhow::Result<()> {
    require_configured(paths)?;
    let s = agent_status(paths).await?;
    let (nodes, members) = (&s.nodes, &s.members);
    let per_node: Vec<Option<&MemberStatus>> = nodes
        .iter()
        .map(|n| members.iter().find(|m| m.guid == n.guid))
        .collect();
    let total = nodes.len().max(1);
    let etcd_members = s.etcd_members.len();
    let etcd_healthy = per_node
        .iter()
        .filter(|m| m.map(|m| m.etcd_ok).unwrap_or(false))
        .count();
    let search_online = per_node
        .iter()
        .filter(|m| m.map(|m| m.search_ok).unwrap_or(false))
        .count();
    let now = larder_agent::clock::unix_ms() / 1000;
    let mut rows = Vec::new();
    for svc in &s.services {
        let name = svc.name.clone();
        if service
            .is_some_and(|want| want != name && !(want == "search" && name == "elasticsearch"))
        {
            continue;
        }
        let distributed = match name.as_str() {
            "leaderl" => status::leaderl_summary(&per_node),
            "postgresql" => status::postgresql_summary(&per_node),
            "etcd" => status::etcd_summary(etcd_healthy, etcd_members.max(total)),
            "elasticsearch" => status::search_summary(search_online, total),
            _ => String::new(),
        };
        rows.push(ServiceRow {
            service: name,
            running: svc.running,
            pid: svc.pid,
            seconds_in_state: now.saturating_sub(svc.since_unix),
            distributed,
        });
    }
    let order = |n: &str| {
        ["leaderl", "etcd", "postgresql", "elasticsearch"]
            .iter()
            .position(|x| *x == n)
            .unwrap_or(9)
    };
    rows.sort_by_key(|r| order(&r.service));
    if service.is_some() && rows.is_empty() {
        bail!(
            "unknown service {:?}; services: leaderl, etcd, postgresql, elasticsearch",
            service.unwrap_or_default()
        );
    }
    let disks: Vec<DiskRow> = [paths.log_dir(), paths.data_dir()]
        .iter()
        .map(|p| {
            let free = larder_agent::disk::free_mb(p).unwrap_or(0);
            DiskRow {
                path: p.display().to_string(),
                free_mb: free,
                ok: free >= 250,
            }
        })
        .collect();
    let security = security_report(paths, now as i64);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"services": rows, "disks": disks, "ha": s.ha, "upgrade": s.upgrade, "security": security})
            )?
        );
    } else if simple {
        for r in &rows {
            println!("{}: {}", r.service, status::local_status(r));
        }
    } else {
        print!("{}", status::render_status(&rows, &disks));
        print_security(&security);
    }
    Ok(())
}

/// What this node's listeners enforce and when its certificate expires (`status`), with a
/// warning for anything left open and for a certificate expiring within 30 days.
fn security_report(paths: &Paths, now_unix: i64) -> serde_json::Value {
    let node = match larder_agent::node::Node::load(paths) {
        Ok(n) => n,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let sec = node.security;
    let mut warnings = sec.warnings();
    let cert = std::fs::read_to_string(paths.tls_dir().join("node.crt"))
        .map_err(|e| e.to_string())
        .and_then(|pem| larder_agent::pki::not_after_unix(&pem).map_err(|e| e.to_string()));
    let (not_after, days_left) = match &cert {
        Ok(t) => {
            let days = (t - now_unix).div_euclid(86_400);
            if days < larder_agent::pki::EXPIRY_WARNING_DAYS {
                warnings.push(format!(
                    "the node certificate expires in {days} days: run `larder rotate-certs`"
                ));
            }
            (Some(unix_date(*t)), Some(days))
        }
        Err(e) => {
            warnings.push(format!("cannot read the node certificate: {e}"));
            (None, None)
        }
    };
    serde_json::json!({
        "search_tls": sec.search_tls,
        "search_auth": sec.search_auth,
        "postgresql_require_ssl": sec.pg_require_ssl,
        "postgresql_auth_method": node.cfg.postgresql.client_auth_method,
        "certificate_not_after": not_after,
        "certificate_days_left": days_left,
        "warnings": warnings,
    })
}

fn print_security(v: &serde_json::Value) {
    if let Some(e) = v["error"].as_str() {
        println!("Security: unknown ({e})");
        return;
    }
    let on = |k: &str| v[k].as_bool().unwrap_or(false);
    println!(
        "Security: search {} {}; PostgreSQL clients {} ({})",
        if on("search_tls") {
            "HTTPS"
        } else {
            "plain HTTP"
        },
        if on("search_auth") {
            "with authentication"
        } else {
            "WITHOUT authentication"
        },
        if on("postgresql_require_ssl") {
            "TLS required"
        } else {
            "TLS optional"
        },
        v["postgresql_auth_method"].as_str().unwrap_or("?"),
    );
    if let (Some(d), Some(n)) = (
        v["certificate_not_after"].as_str(),
        v["certificate_days_left"].as_i64(),
    ) {
        println!("Node certificate expires {d} (in {n} days)");
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        println!("Warning: {}", w.as_str().unwrap_or_default());
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC).
pub(crate) fn unix_date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| d.date().to_string())
        .unwrap_or_else(|_| format!("@{t}"))
}

pub fn cluster_rows(s: &AgentStatus) -> Vec<ClusterRow> {
    let (nodes, members) = (&s.nodes, &s.members);
    // The column says whether the node may be promoted automatically: both flags count.
    let cluster_failover = s.ha.cluster_failover;
    nodes
        .iter()
        .map(|n| {
            let m = members.iter().find(|m| m.guid == n.guid);
            let role = m
                .map(|m| m.role.as_str().to_string())
                .unwrap_or_else(|| "offline".into());
            let pg = match m.map(|m| m.pg) {
                Some(larder_core::model::PgState::Primary) => "leader",
                Some(larder_core::model::PgState::Streaming) => "follower",
                Some(larder_core::model::PgState::Standby) => "syncing",
                Some(larder_core::model::PgState::Empty) => "syncing",
                Some(larder_core::model::PgState::Stopped) | None => "down",
            };
            let es = match m {
                Some(m) if m.search_ok && m.role == larder_core::model::NodeRole::Leader => {
                    "master"
                }
                Some(m) if m.search_ok => "not_master",
                _ => "down",
            };
            ClusterRow {
                name: n.name.clone(),
                ip: n.address.clone(),
                guid: n.guid.clone(),
                role,
                pg: pg.into(),
                es: es.into(),
                online: m.is_some(),
                lag_bytes: m.and_then(|m| m.lag_bytes),
                timeline: m.map(|m| m.position.timeline).unwrap_or(0),
                lsn: m.map(|m| m.position.lsn.to_string()).unwrap_or_default(),
                term: m.map(|m| m.term).unwrap_or(0),
                failover: cluster_failover && m.map(|m| m.failover_enabled).unwrap_or(true),
                version: m.map(|m| m.version.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

pub async fn cluster_status(paths: &Paths, json: bool) -> anyhow::Result<()> {
    require_configured(paths)?;
    let s = agent_status(paths).await?;
    let rows = cluster_rows(&s);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
            "leader": s.ha.leader, "term": s.ha.term,
            "cluster_failover": s.ha.cluster_failover, "nodes": rows,
            "vip": s.ha.vip.as_ref().map(|v| serde_json::json!({"address": v.address, "interface": v.interface,
                "held_by": s.members.iter().filter(|m| m.vip_held).map(|m| m.name.clone()).collect::<Vec<_>>()}))}))?
        );
    } else {
        print!("{}", status::render_cluster(&rows));
        let mut versions: Vec<&str> = rows
            .iter()
            .filter(|r| r.online)
            .map(|r| {
                if r.version.is_empty() {
                    "unknown"
                } else {
                    r.version.as_str()
                }
            })
            .collect();
        versions.sort_unstable();
        versions.dedup();
        if versions.len() > 1 {
            println!("Warning: members run different Larder versions ({}); finish the upgrade (`larder upgrade` on each remaining node).", versions.join(", "));
        }
        if let Some(v) = &s.ha.vip {
            let holders: Vec<&str> = s
                .members
                .iter()
                .filter(|m| m.vip_held)
                .map(|m| m.name.as_str())
                .collect();
            println!(
                "VIP {} ({}): {}",
                v.address,
                v.interface,
                if holders.is_empty() {
                    "held by no member".to_string()
                } else {
                    format!("held by {}", holders.join(", "))
                }
            );
        }
        if !s.ha.cluster_failover {
            println!("Cluster failover is OFF: no node takes over automatically (the last leader still leads again after a restart). Turn it back on with `larder set-cluster-failover on`.");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_dates() {
        assert_eq!(super::unix_date(0), "1970-01-01");
        assert_eq!(super::unix_date(4_859_740_800), "2124-01-01");
        assert_eq!(super::unix_date(951_782_400), "2000-02-29");
    }
}
