//! `status`, `cluster-status` and `gen-server-config`: read the agent's view and render it.

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
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"services": rows, "disks": disks, "ha": s.ha, "upgrade": s.upgrade})
            )?
        );
    } else if simple {
        for r in &rows {
            println!("{}: {}", r.service, status::local_status(r));
        }
    } else {
        print!("{}", status::render_status(&rows, &disks));
    }
    Ok(())
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

/// chef-server.rb for a frontend, exactly the keys Chef's `use_chef_backend` mode reads.
pub fn server_config(
    fqdn: &str,
    members: &[String],
    superuser: &str,
    password: &str,
    pg_port: u16,
    es_port: u16,
    discovery_port: u16,
) -> String {
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# chef-server.rb for a Chef Infra Server frontend of this Larder cluster.\nfqdn \"{fqdn}\"\nuse_chef_backend true\nchef_backend_members [{list}]\n\nhaproxy['remote_postgresql_port'] = {pg_port}\nhaproxy['remote_elasticsearch_port'] = {es_port}\n# Member discovery: frontends GET http://MEMBER:PORT/v2/members (etcd's v2 shape). Larder's\n# etcd accepts only TLS clients with a cluster certificate; its health API serves the list.\nhaproxy['etcd_port'] = {discovery_port}\n\n# PostgreSQL is the cluster's, reached through the local haproxy.\npostgresql['external'] = true\npostgresql['vip'] = '127.0.0.1'\npostgresql['db_superuser'] = '{superuser}'\npostgresql['db_superuser_password'] = '{password}'\n\n# Search is Larder's Elasticsearch-compatible service, written in batches.\nopscode_solr4['external'] = true\nopscode_solr4['external_url'] = 'http://127.0.0.1:{es_port}'\nopscode_erchef['search_provider'] = 'elasticsearch'\nopscode_erchef['search_queue_mode'] = 'batch'\n\nbookshelf['storage_type'] = :sql\n\n# No message queue in this topology.\nrabbitmq['enable'] = false\nrabbitmq['management_enabled'] = false\nrabbitmq['queue_length_monitor_enabled'] = false\nopscode_expander['enable'] = false\ndark_launch['actions'] = false\n\nopscode_erchef['nginx_bookshelf_caching'] = :on\nopscode_erchef['s3_url_expiry_window_size'] = '50%'\n"
    )
}

pub async fn gen_server_config(
    paths: &Paths,
    fqdn: &str,
    file: Option<&str>,
) -> anyhow::Result<()> {
    require_configured(paths)?;
    let node = larder_agent::node::Node::load(paths)?;
    let s = agent_status(paths).await?;
    let nodes = &s.nodes;
    if nodes.is_empty() {
        bail!("the cluster has no registered members yet (is the agent connected to etcd?); see `larder status`");
    }
    let members: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let text = server_config(
        fqdn,
        &members,
        &node.cfg.postgresql.db_superuser,
        node.secrets.postgresql.db_superuser_password.expose(),
        node.cfg.postgresql.port,
        node.cfg.elasticsearch.port,
        node.cfg.leaderl.http_port,
    );
    match file {
        Some(f) => {
            larder_agent::node::write_private(std::path::Path::new(f), text.as_bytes())?;
            eprintln!("wrote {f} (mode 0600: it holds the database superuser password)");
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn server_config_has_every_frontend_key() {
        let t = server_config(
            "fe1.example.com",
            &["10.0.0.1".into(), "10.0.0.2".into()],
            "chef_pgsql",
            "pw",
            5432,
            9200,
            7331,
        );
        for key in [
            "fqdn \"fe1.example.com\"",
            "use_chef_backend true",
            "chef_backend_members [\"10.0.0.1\", \"10.0.0.2\"]",
            "haproxy['remote_postgresql_port'] = 5432",
            "haproxy['remote_elasticsearch_port'] = 9200",
            "haproxy['etcd_port'] = 7331",
            "postgresql['external'] = true",
            "postgresql['vip'] = '127.0.0.1'",
            "postgresql['db_superuser'] = 'chef_pgsql'",
            "postgresql['db_superuser_password'] = 'pw'",
            "opscode_solr4['external'] = true",
            "opscode_solr4['external_url'] = 'http://127.0.0.1:9200'",
            "opscode_erchef['search_provider'] = 'elasticsearch'",
            "opscode_erchef['search_queue_mode'] = 'batch'",
            "bookshelf['storage_type'] = :sql",
            "rabbitmq['enable'] = false",
            "rabbitmq['management_enabled'] = false",
            "rabbitmq['queue_length_monitor_enabled'] = false",
            "opscode_expander['enable'] = false",
            "dark_launch['actions'] = false",
            "opscode_erchef['nginx_bookshelf_caching'] = :on",
            "opscode_erchef['s3_url_expiry_window_size'] = '50%'",
        ] {
            assert!(t.contains(key), "missing {key}");
        }
    }
}
