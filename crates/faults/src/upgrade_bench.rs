//! Helpers of the rolling-upgrade benchmark (`bench/upgrade/run.sh`, driven by
//! `bench/upgrade/bench.py`): the haproxy configuration of a Chef frontend for a cluster on
//! loopback addresses, rendered by the same code as every other run ([`crate::haproxy`]).

use crate::haproxy::{chef_services, render_config_on, HealthCheck};
use anyhow::{bail, Result};

/// `servers` are `NAME=IP`; with `pg_only` only PostgreSQL (5432) is proxied.
pub fn haproxy_config(bind: &str, servers: &[String], pg_only: bool) -> Result<String> {
    let mut nodes = Vec::new();
    for s in servers {
        let Some((name, ip)) = s.split_once('=') else {
            bail!("--server {s}: expected NAME=IP");
        };
        if name.is_empty() || ip.parse::<std::net::IpAddr>().is_err() {
            bail!("--server {s}: expected NAME=IP with an IP address");
        }
        nodes.push((name.to_string(), ip.to_string()));
    }
    let services: Vec<_> = chef_services()
        .into_iter()
        .filter(|s| !pg_only || s.port == 5432)
        .collect();
    Ok(render_config_on(
        bind,
        &nodes,
        &HealthCheck::larder(),
        &services,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_chef_check_for_each_server() {
        let c = haproxy_config(
            "127.0.50.100",
            &["n1=127.0.50.2".into(), "n2=127.0.50.3".into()],
            true,
        )
        .unwrap();
        assert!(c.contains("bind 127.0.50.100:5432"));
        assert!(c.contains("inter 2s rise 1 fall 1 on-marked-down shutdown-sessions"));
        assert!(c.contains("server n2 127.0.50.3:5432 check port 7331"));
        assert!(!c.contains(":9200"));
    }

    #[test]
    fn rejects_a_server_without_an_address() {
        assert!(haproxy_config("127.0.0.1", &["n1".into()], false).is_err());
        assert!(haproxy_config("127.0.0.1", &["n1=host".into()], false).is_err());
    }
}
