//! Rendering of PostgreSQL's `pg_hba.conf` and the Larder-managed part of `postgresql.conf`.

use crate::config::Config;

/// `pg_hba.conf`: local socket access for the agent, then for every configured network one
/// password line for clients (`hostssl` when `require_ssl`, see `crate::security`) and one
/// TLS-only replication line. A `hostssl` line matches only TLS connections, so with it a
/// plain connection from those networks finds no line and is refused.
///
/// The local line uses the clients' method too: the agent and the search service log in as
/// the superuser, whose password is stored md5 under `md5` (see [`PasswordHash`]), and a
/// scram-sha-256 line refuses an md5-stored password. Replication stays scram-sha-256 (its
/// role's password is always stored SCRAM, `create_roles`).
pub fn render_hba(cfg: &Config, require_ssl: bool) -> String {
    let pg = &cfg.postgresql;
    let client_type = if require_ssl { "hostssl" } else { "host   " };
    let method = &pg.client_auth_method;
    let mut out = format!(
        "# Managed by Larder from postgresql.md5_auth_cidr_addresses; edits are overwritten.\n\
         # TYPE   DATABASE     USER         ADDRESS        METHOD\n\
         local    all          all                         {method}\n",
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
        // What a password set without saying how is stored as (Chef's own roles, created by
        // the frontends through the superuser): md5 clients need md5-stored passwords.
        format!(
            "password_encryption = '{}'",
            PasswordHash::of_method(&pg.client_auth_method).encryption()
        ),
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

/// How PostgreSQL stores a role's password (`pg_authid.rolpassword`). An `md5` hba line
/// accepts both (it runs SCRAM for a SCRAM-stored password); a `scram-sha-256` line refuses an
/// md5-stored one; and only an md5-stored password lets an md5-only client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordHash {
    Md5,
    Scram,
}

impl PasswordHash {
    /// The hash that `postgresql.client_auth_method` needs.
    pub fn of_method(method: &str) -> PasswordHash {
        if method == "md5" {
            PasswordHash::Md5
        } else {
            PasswordHash::Scram
        }
    }

    /// The kind of a stored `rolpassword`; `None` for no password (or one Larder never
    /// writes, such as plain text).
    pub fn of_stored(rolpassword: &str) -> Option<PasswordHash> {
        if rolpassword.starts_with("md5") && rolpassword.len() == 35 {
            Some(PasswordHash::Md5)
        } else if rolpassword.starts_with("SCRAM-SHA-256$") {
            Some(PasswordHash::Scram)
        } else {
            None
        }
    }

    /// The `password_encryption` value that stores a password this way.
    pub fn encryption(self) -> &'static str {
        match self {
            PasswordHash::Md5 => "md5",
            PasswordHash::Scram => "scram-sha-256",
        }
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encryption())
    }
}

/// How the leader stores the superuser's password, from the client method of its own
/// pg_hba.conf (`mine`) and each other member's (as they post it, empty from older
/// releases). The password replicates to every node, so md5 only once every member's lines
/// accept an md5-stored password (they post `md5` only after reloading md5 lines); SCRAM as
/// soon as one wants scram-sha-256 (a node switching to scram waits for the SCRAM hash before
/// it reloads its lines, see the agent's `reconfigure`).
pub fn wanted_superuser_hash<'a>(
    mine: &'a str,
    others: impl IntoIterator<Item = &'a str>,
) -> PasswordHash {
    let all_md5 = std::iter::once(mine)
        .chain(others)
        .all(|m| PasswordHash::of_method(m) == PasswordHash::Md5);
    if all_md5 {
        PasswordHash::Md5
    } else {
        PasswordHash::Scram
    }
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
        // The agent's own socket line follows: a scram line would refuse the md5-stored
        // superuser password.
        let local: Vec<_> = h.lines().filter(|l| l.starts_with("local")).collect();
        assert_eq!(local.len(), 1, "{h}");
        assert!(local[0].ends_with(" md5"), "{h}");
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
        assert!(h
            .lines()
            .any(|l| l.starts_with("local") && l.ends_with(" scram-sha-256")));
    }

    #[test]
    fn password_encryption_follows_the_client_method() {
        let mut c = cfg(&[]);
        let conf = |c: &Config| render_postgresql_conf(c, "/run/x", "/c", "/k", "/ca", None);
        assert!(
            conf(&c).contains("password_encryption = 'scram-sha-256'\n"),
            "{}",
            conf(&c)
        );
        c.postgresql.client_auth_method = "md5".into();
        assert!(
            conf(&c).contains("password_encryption = 'md5'\n"),
            "{}",
            conf(&c)
        );
    }

    #[test]
    fn stored_hash_kinds() {
        use PasswordHash::*;
        assert_eq!(
            PasswordHash::of_stored("md5d0763edaa9d9bd2a9516280e9044d885"),
            Some(Md5)
        );
        assert_eq!(
            PasswordHash::of_stored("SCRAM-SHA-256$4096:c2FsdA==$a:b"),
            Some(Scram)
        );
        assert_eq!(PasswordHash::of_stored(""), None);
        assert_eq!(PasswordHash::of_stored("md5-but-not-a-hash"), None);
        assert_eq!(PasswordHash::of_method("md5"), Md5);
        assert_eq!(PasswordHash::of_method("scram-sha-256"), Scram);
        assert_eq!(Md5.encryption(), "md5");
    }

    #[test]
    fn the_superuser_is_stored_md5_only_when_every_member_accepts_md5() {
        use PasswordHash::*;
        assert_eq!(wanted_superuser_hash("md5", []), Md5);
        assert_eq!(wanted_superuser_hash("md5", ["md5", "md5"]), Md5);
        // One member still on scram lines (or switching to them), or a member of an older
        // release that posts nothing: SCRAM, which every line accepts.
        assert_eq!(
            wanted_superuser_hash("md5", ["md5", "scram-sha-256"]),
            Scram
        );
        assert_eq!(wanted_superuser_hash("md5", ["md5", ""]), Scram);
        assert_eq!(wanted_superuser_hash("scram-sha-256", ["md5"]), Scram);
        assert_eq!(wanted_superuser_hash("scram-sha-256", []), Scram);
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
