//! Which listeners are protected, and how, for one node: the effective TLS and authentication
//! settings (from larder.toml and the secrets file) and the health API's read ACL.
//!
//! Upgrade rule. Clusters created before issue 17 have frontends configured for plain search
//! and optional PostgreSQL TLS (chef-server's `postgresql['sslmode']` defaults to `disable`).
//! Turning TLS on under them would cut every frontend at the package upgrade. Such a cluster
//! is recognised by its secrets file, which is the same on every node and has no search
//! credentials: unset keys then keep the old behaviour, cluster-wide. A cluster created now
//! gets the credentials, so unset keys mean TLS and authentication everywhere. Explicit keys
//! always win.

use crate::config::Config;
use crate::secrets::Secrets;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecurityError {
    #[error("elasticsearch.require_auth is on but the secrets file has no elasticsearch.auth_username and elasticsearch.auth_password; add both to the secrets file on every node (or set elasticsearch.require_auth = false), then restart the agent")]
    NoSearchCredentials,
}

/// What this node's listeners enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// HTTPS on the search port.
    pub search_tls: bool,
    /// HTTP Basic authentication on every search listener.
    pub search_auth: bool,
    /// Client lines in pg_hba.conf are `hostssl`.
    pub pg_require_ssl: bool,
}

impl Effective {
    pub fn of(cfg: &Config, secrets: &Secrets) -> Result<Effective, SecurityError> {
        let secure_default = secrets.elasticsearch.has_credentials();
        let e = Effective {
            search_tls: cfg.elasticsearch.ssl.unwrap_or(secure_default),
            search_auth: cfg.elasticsearch.require_auth.unwrap_or(secure_default),
            pg_require_ssl: cfg.postgresql.require_ssl.unwrap_or(secure_default),
        };
        if e.search_auth && !secrets.elasticsearch.has_credentials() {
            return Err(SecurityError::NoSearchCredentials);
        }
        Ok(e)
    }

    /// Warnings for `status`: what is left open on purpose or by upgrade.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.search_tls {
            w.push("search (elasticsearch.port) speaks plain HTTP: set elasticsearch.ssl = true once the frontends use https".to_string());
        }
        if !self.search_auth {
            w.push("search accepts unauthenticated requests: add search credentials to the secrets file and set elasticsearch.require_auth = true".to_string());
        }
        if !self.pg_require_ssl {
            w.push("PostgreSQL accepts clients without TLS: set postgresql.require_ssl = true once the frontends use postgresql['sslmode'] = 'require'".to_string());
        }
        w
    }
}

/// May `peer` read the health API's detailed endpoints? Allowed networks, or a member.
pub fn status_allowed(peer: IpAddr, cidrs: &[String], members: &[IpAddr]) -> bool {
    let peer = canonical(peer);
    members.iter().any(|m| canonical(*m) == peer)
        || cidrs
            .iter()
            .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
            .any(|n| n.contains(&peer))
}

/// An IPv4 peer of a dual-stack socket arrives as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    fn secrets(with_credentials: bool) -> Secrets {
        let mut s = Secrets::default();
        if with_credentials {
            s.elasticsearch.auth_username = "larder".into();
            s.elasticsearch.auth_password = Secret::new("pw");
        }
        s
    }

    #[test]
    fn new_clusters_are_secure_old_ones_keep_working() {
        let cfg = Config::default();
        let new = Effective::of(&cfg, &secrets(true)).unwrap();
        assert!(new.search_tls && new.search_auth && new.pg_require_ssl);
        assert!(new.warnings().is_empty());
        let old = Effective::of(&cfg, &secrets(false)).unwrap();
        assert!(!old.search_tls && !old.search_auth && !old.pg_require_ssl);
        assert_eq!(old.warnings().len(), 3);
    }

    #[test]
    fn explicit_keys_win() {
        let mut cfg = Config::default();
        cfg.elasticsearch.ssl = Some(true);
        cfg.postgresql.require_ssl = Some(true);
        let e = Effective::of(&cfg, &secrets(false)).unwrap();
        assert!(e.search_tls && e.pg_require_ssl && !e.search_auth);
        cfg.postgresql.require_ssl = Some(false);
        assert!(!Effective::of(&cfg, &secrets(true)).unwrap().pg_require_ssl);
    }

    #[test]
    fn auth_without_credentials_names_the_fix() {
        let mut cfg = Config::default();
        cfg.elasticsearch.require_auth = Some(true);
        let e = Effective::of(&cfg, &secrets(false)).unwrap_err();
        assert!(e.to_string().contains("elasticsearch.auth_password"), "{e}");
    }

    #[test]
    fn status_acl() {
        let cidrs = vec!["127.0.0.0/8".to_string(), "10.1.0.0/16".to_string()];
        let members: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap()];
        let ok = |s: &str| status_allowed(s.parse().unwrap(), &cidrs, &members);
        assert!(ok("127.0.0.1") && ok("10.1.2.3") && ok("192.0.2.7"));
        assert!(ok("::ffff:10.1.2.3"));
        assert!(!ok("192.0.2.8") && !ok("10.2.0.1") && !ok("::1"));
    }
}
