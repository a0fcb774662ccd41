//! Rendering of PostgreSQL's `pg_hba.conf` and the Larder-managed part of `postgresql.conf`.

use crate::config::Config;

/// `pg_hba.conf`: local socket access for the agent, then for every configured network one
/// password line for clients (`hostssl` when `require_ssl`, see `crate::security`) and one
/// TLS-only replication line. A `hostssl` line matches only TLS connections, so with it a
/// plain connection from those networks finds no line and is refused.
pub fn render_hba(cfg: &Config, require_ssl: bool) -> String {
    let pg = &cfg.postgresql;
    let client_type = if require_ssl { "hostssl" } else { "host   " };
    let method = &pg.client_auth_method;
    let mut out = String::from(
        "# Managed by Larder from postgresql.md5_auth_cidr_addresses; edits are overwritten.\n\
         # TYPE   DATABASE     USER         ADDRESS        METHOD\n\
         local    all          all                         scram-sha-256\n",
    );
    let mut entries: Vec<&str> = pg
        .md5_auth_cidr_addresses
        .iter()
        .map(String::as_str)
        .collect();
    // Peers always need to reach each other; the agent's own TCP checks use the publish
    // address, which `samehost` covers.
    if !entries.contains(&"samehost") {
        entries.insert(0, "samehost");
    }
    for addr in entries {
        out.push_str(&format!(
            "{client_type}  all          all          {addr:<14} {method}\n"
        ));
        out.push_str(&format!(
            "hostssl  replication  {:<12} {addr:<14} scram-sha-256\n",
            pg.replication_user
        ));
    }
    out
}

/// Settings Larder owns in `postgresql.conf` (written to `larder.conf`, included last).
pub fn render_postgresql_conf(
    cfg: &Config,
    socket_dir: &str,
    tls_cert: &str,
    tls_key: &str,
    ca: &str,
    archive_command: Option<&str>,
) -> String {
    let pg = &cfg.postgresql;
    // The primary archives (pgBackRest refuses `always`: a standby's copy of a segment may
    // differ from the primary's); after a failover the new leader archives what the old one
    // never did (`crate::backup`). Off without a repository: with archiving on and nowhere to
    // put it, WAL would pile up until the disk is full.
    let archive = match archive_command {
        Some(cmd) => [
            "archive_mode = on".to_string(),
            format!("archive_command = '{}'", cmd.replace('\'', "''")),
        ],
        None => [
            "archive_mode = off".to_string(),
            "archive_command = ''".to_string(),
        ],
    };
    let lines = [
        // With a VIP, the address comes and goes after PostgreSQL started (it cannot bind an
        // address the host does not have yet): listen on every address; pg_hba.conf still
        // decides who may connect.
        if cfg.vip.is_empty() {
            format!("listen_addresses = '{}'", cfg.publish_address)
        } else {
            "listen_addresses = '*'".into()
        },
        format!("port = {}", pg.port),
        format!("unix_socket_directories = '{socket_dir}'"),
        format!("max_connections = {}", pg.max_connections),
        format!("shared_buffers = '{}'", pg.shared_buffers),
        format!("work_mem = '{}'", pg.work_mem),
        "password_encryption = 'scram-sha-256'".into(),
        "ssl = on".into(),
        format!("ssl_cert_file = '{tls_cert}'"),
        format!("ssl_key_file = '{tls_key}'"),
        format!("ssl_ca_file = '{ca}'"),
        "wal_level = replica".into(),
        "wal_log_hints = on".into(),
        "hot_standby = on".into(),
        "hot_standby_feedback = on".into(),
        format!("max_wal_senders = {}", pg.max_wal_senders),
        format!("max_replication_slots = {}", pg.max_replication_slots),
        format!("max_slot_wal_keep_size = '{}'", pg.max_slot_wal_keep_size),
        format!("wal_keep_size = '{}'", pg.wal_keep_size),
        "synchronous_commit = on".into(),
        "recovery_target_timeline = 'latest'".into(),
        "wal_receiver_status_interval = 1s".into(),
        // After a failover the WAL receiver must retry the new leader at once, not in 5 s.
        "wal_retrieve_retry_interval = 500ms".into(),
        "wal_receiver_timeout = 10s".into(),
        "wal_sender_timeout = 10s".into(),
        "tcp_keepalives_idle = 60".into(),
        "tcp_keepalives_interval = 15".into(),
        "tcp_keepalives_count = 2".into(),
        "logging_collector = off".into(),
        "log_line_prefix = '%m [%p] %q%u@%d '".into(),
    ];
    let mut out = String::from("# Managed by Larder; edits are overwritten.\n");
    for l in lines.into_iter().chain(archive) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `synchronous_standby_names` for `ANY k (names)`; empty when asynchronous.
pub fn synchronous_standby_names(k: usize, names: &[String]) -> String {
    if k == 0 || names.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("ANY {k} ({})", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(entries: &[&str]) -> Config {
        let mut c = Config {
            fqdn: "n1".into(),
            publish_address: "10.0.0.1".into(),
            ..Config::default()
        };
        c.postgresql.md5_auth_cidr_addresses = entries.iter().map(|s| s.to_string()).collect();
        c
    }

    #[test]
    fn hba_requires_tls_for_clients_when_asked() {
        let mut c = cfg(&["10.1.0.0/16"]);
        let h = render_hba(&c, true);
        assert!(!h.lines().any(|l| l.starts_with("host ")), "{h}");
        let clients: Vec<_> = h
            .lines()
            .filter(|l| {
                l.starts_with("hostssl") && l.contains(" all ") && !l.contains("replication")
            })
            .collect();
        assert_eq!(clients.len(), 2, "{h}");
        assert!(clients.iter().all(|l| l.ends_with("scram-sha-256")), "{h}");
        c.postgresql.client_auth_method = "md5".into();
        let h = render_hba(&c, true);
        assert!(
            h.lines()
                .any(|l| l.starts_with("hostssl") && l.ends_with(" md5")),
            "{h}"
        );
        // Replication stays scram whatever old clients need.
        assert!(h
            .lines()
            .filter(|l| l.contains("replication"))
            .all(|l| l.ends_with("scram-sha-256")));
    }

    #[test]
    fn hba_has_one_host_and_one_hostssl_line_per_entry() {
        let h = render_hba(&cfg(&["samehost", "10.1.0.0/16"]), false);
        let host: Vec<_> = h.lines().filter(|l| l.starts_with("host ")).collect();
        let ssl: Vec<_> = h.lines().filter(|l| l.starts_with("hostssl")).collect();
        assert_eq!(host.len(), 2);
        assert_eq!(ssl.len(), 2);
        assert!(host[1].contains("10.1.0.0/16") && host[1].ends_with("scram-sha-256"));
        assert!(ssl[1].contains("replication") && ssl[1].contains("replicator"));
        assert!(!h.contains("md5 ") && !h.contains("trust"));
    }

    #[test]
    fn hba_always_allows_samehost() {
        let h = render_hba(&cfg(&["192.168.0.0/24"]), false);
        assert!(h
            .lines()
            .any(|l| l.starts_with("host ") && l.contains("samehost")));
    }

    #[test]
    fn sync_names() {
        assert_eq!(synchronous_standby_names(0, &["a".into()]), "");
        assert_eq!(
            synchronous_standby_names(1, &["a".into(), "b".into()]),
            "ANY 1 (\"a\", \"b\")"
        );
    }

    #[test]
    fn conf_binds_publish_address_and_enables_tls() {
        let c = render_postgresql_conf(&cfg(&[]), "/run/x", "/c.pem", "/k.pem", "/ca.pem", None);
        assert!(c.contains("archive_mode = off\n"), "{c}");
        let a = render_postgresql_conf(
            &cfg(&[]),
            "/run/x",
            "/c.pem",
            "/k.pem",
            "/ca.pem",
            Some("pgbackrest --config=/p/it's.conf archive-push %p"),
        );
        assert!(a.contains("archive_mode = on\n"), "{a}");
        assert!(
            a.contains("archive_command = 'pgbackrest --config=/p/it''s.conf archive-push %p'\n"),
            "{a}"
        );
        assert!(c.contains("listen_addresses = '10.0.0.1'"));
        let mut with_vip = cfg(&[]);
        with_vip.vip = "10.0.0.100".into();
        let c = render_postgresql_conf(&with_vip, "/run/x", "/c.pem", "/k.pem", "/ca.pem", None);
        assert!(c.contains("listen_addresses = '*'"));
        assert!(c.contains("ssl = on"));
        assert!(c.contains("wal_log_hints = on"));
    }
}
