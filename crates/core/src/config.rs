//! `larder.toml`: the node configuration, named after Chef Backend's `chef-backend.rb`.
//!
//! Parsing is strict: an unknown or mistyped key is an error naming `file:line` and the closest
//! valid key, because a silently ignored typo in an HA setting (say `leader_tll_seconds`) is
//! exactly the kind of mistake that shows up only during an outage.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Problems found while loading or validating a configuration file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: invalid value for `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("cannot read {file}: {message}")]
    Io { file: String, message: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IpVersion {
    Ipv4,
    Ipv6,
}

/// How commits are acknowledged; see docs/architecture.md "Replication modes" for what each
/// mode can lose.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// `ANY k (followers)` with k = floor(N/2): every acknowledged commit is on a majority.
    Quorum,
    /// Every follower must acknowledge: any surviving follower holds every commit.
    Strict,
    /// Asynchronous: commits not yet streamed when the leader dies are lost.
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of this node in the cluster (etcd member name, status tables).
    pub fqdn: String,
    /// Address other nodes and frontends use to reach this node; every service binds it.
    pub publish_address: String,
    pub ip_version: IpVersion,
    /// Mask secrets in `show-config` and logs.
    pub hide_sensitive: bool,
    /// Virtual IP that follows the leader (legacy Chef HA pattern); empty = none.
    pub vip: String,
    pub vip_interface: String,
    /// Programs run on role changes (cloud IP moves, notifications); see docs/vip.md.
    pub hooks: HooksConfig,
    pub postgresql: PostgresqlConfig,
    pub etcd: EtcdConfig,
    pub leaderl: LeaderlConfig,
    pub elasticsearch: SearchConfig,
    pub log_rotation: LogRotation,
    pub backup: BackupConfig,
    pub ssl: SslConfig,
}

/// The node certificates Larder issues from the cluster CA (`create-cluster`, `join-cluster`,
/// `rotate-certs`); Chef Backend's `ssl.duration`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SslConfig {
    /// Validity of a newly issued node certificate, in days.
    pub duration_days: u32,
    /// The operator's own PKI: this node's certificate (PEM, leaf first, then any
    /// intermediates) and key, used instead of one issued from the cluster CA. Empty = issue.
    pub certificate: String,
    pub certificate_key: String,
    /// CA certificates (PEM) every node trusts besides the cluster CA: the operator CA that
    /// issued `certificate`s. Set it on every node before any node uses such a certificate.
    pub ca: String,
}

impl Default for SslConfig {
    fn default() -> Self {
        SslConfig {
            duration_days: 3650,
            certificate: String::new(),
            certificate_key: String::new(),
            ca: String::new(),
        }
    }
}

impl SslConfig {
    /// The operator's certificate and key files, when this node uses its own PKI.
    pub fn operator_cert(&self) -> Option<(&str, &str)> {
        (!self.certificate.is_empty())
            .then_some((self.certificate.as_str(), self.certificate_key.as_str()))
    }
}

/// Backups and WAL archiving through pgBackRest (`larder backup`, `larder restore`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// The pgBackRest repository: a directory every node can write (a mount shared by the
    /// nodes, so archiving follows the leader), or empty for no backups. With
    /// `backup.pgbackrest` options (`repo1-type = "s3"`, …) it is the path inside the store.
    pub repo_path: String,
    /// Full backups kept (older ones and their WAL are expired after each backup).
    pub retention_full: u32,
    /// Port of the pgBackRest TLS server the agent runs on the publish address while backups
    /// are configured: the node taking a backup reaches the other nodes' PostgreSQL through
    /// it (TLS with cluster certificates only).
    pub server_port: u16,
    /// Extra pgBackRest options for the `[global]` section, passed through unchanged
    /// (`repo1-type`, `repo1-s3-bucket`, `process-max`, …).
    pub pgbackrest: std::collections::BTreeMap<String, String>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            repo_path: String::new(),
            retention_full: 2,
            server_port: crate::backup_source::DEFAULT_SERVER_PORT,
            pgbackrest: Default::default(),
        }
    }
}

impl BackupConfig {
    pub fn enabled(&self) -> bool {
        !self.repo_path.is_empty()
    }
}

/// Role-change hooks: executable paths (empty = none), run with the role, term, leader and VIP
/// in their environment, killed after `timeout_ms`. A hook never delays fencing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub on_promote: String,
    pub on_demote: String,
    pub on_fence: String,
    pub on_start: String,
    pub timeout_ms: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            on_promote: String::new(),
            on_demote: String::new(),
            on_fence: String::new(),
            on_start: String::new(),
            timeout_ms: 10_000,
        }
    }
}

impl HooksConfig {
    /// (event, path) of every configured hook.
    pub fn configured(&self) -> Vec<(&'static str, &str)> {
        [
            ("on_promote", self.on_promote.as_str()),
            ("on_demote", self.on_demote.as_str()),
            ("on_fence", self.on_fence.as_str()),
            ("on_start", self.on_start.as_str()),
        ]
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresqlConfig {
    pub port: u16,
    pub db_superuser: String,
    pub replication_user: String,
    /// Each entry yields `host all all X scram-sha-256` and `hostssl replication replicator X`.
    pub md5_auth_cidr_addresses: Vec<String>,
    pub synchronous_mode: SyncMode,
    pub max_wal_senders: u32,
    pub max_replication_slots: u32,
    pub max_connections: u32,
    pub work_mem: String,
    pub shared_buffers: String,
    /// Caps the WAL a replication slot may pin, so a dead follower cannot fill the disk.
    pub max_slot_wal_keep_size: String,
    pub wal_keep_size: String,
    pub bin_dir: String,
    /// Client lines in pg_hba.conf are `hostssl` (TLS required) rather than `host`. Unset:
    /// on for clusters whose secrets file carries search credentials (created by a release
    /// with issue 17), off for older clusters, whose frontends may connect without TLS
    /// (chef-server's `postgresql['sslmode']` defaults to `disable`). See `crate::security`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_ssl: Option<bool>,
    /// Password method of client lines: `scram-sha-256`, or `md5` for old clients only.
    pub client_auth_method: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub client_port: u16,
    pub peer_port: u16,
    /// Raft heartbeat in milliseconds.
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    pub election_timeout: u64,
    pub snapshot_count: u64,
    pub binary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderlConfig {
    pub http_port: u16,
    /// Empty means the publish address.
    pub http_address: String,
    /// TTL of the etcd lease that holds leadership.
    pub leader_ttl_seconds: u64,
    /// Cadence of the HA loop and of lease renewals.
    pub loop_interval_ms: u64,
    /// The leader stops writes this long before its lease can expire (measured from the last
    /// renewal it saw succeed), covering PostgreSQL stop time and clock-rate drift.
    pub fence_margin_ms: u64,
    /// The leader removes the VIP this long before its fencing deadline (see `decide::vip`).
    pub vip_margin_ms: u64,
    /// Timeout of a single etcd or PostgreSQL call made by the loop.
    pub db_timeout: u64,
    /// A follower pointed at the leader that has not streamed for this long is rewound (its
    /// history may have forked). Generous: a follower re-attaching after a failover must not be
    /// rewound needlessly; former primaries are rewound at once through the diverged marker.
    pub rejoin_timeout_ms: u64,
    /// Time a planned switchover's start to the frontends' health-check rhythm (see
    /// `check_phase`). Off: the hand-over starts at once (the benchmark's baseline).
    pub align_switchover_to_checks: bool,
    pub required_active_followers: u32,
    /// Networks that may read `/status`, `/cluster`, `/metrics` and `/ui` on the health API
    /// without authentication (the cluster's members always may). `/leader`, `/replica`,
    /// `/health` and `/v2/members` stay open: frontends' haproxy needs them.
    pub status_allowed_cidrs: Vec<String>,
    pub health_check: HealthCheckConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub interval_seconds: u64,
    pub max_pgsql_failures: u32,
    pub max_etcd_failures: u32,
    pub max_elasticsearch_failures: u32,
    pub max_bytes_behind_leader: u64,
    pub fatal_system_checks: bool,
    pub disk_min_space_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub enable: bool,
    pub port: u16,
    /// Elasticsearch major version the search API claims to be (5, 6 or 7).
    pub major_version: u8,
    /// HTTPS on `port` with the node certificate. Unset: like `postgresql.require_ssl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
    /// HTTP Basic authentication with the secrets file's `elasticsearch.auth_username` /
    /// `auth_password`. Unset: like `postgresql.require_ssl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_auth: Option<bool>,
    /// An extra plain-HTTP listener on 127.0.0.1 only (0 = none), for a frontend on the same
    /// host whose haproxy or client cannot speak TLS. Authentication still applies.
    pub plain_http_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogRotation {
    pub file_maxbytes: u64,
    pub num_to_keep: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fqdn: String::new(),
            publish_address: String::new(),
            ip_version: IpVersion::Ipv4,
            hide_sensitive: true,
            vip: String::new(),
            vip_interface: String::new(),
            hooks: HooksConfig::default(),
            postgresql: PostgresqlConfig::default(),
            etcd: EtcdConfig::default(),
            leaderl: LeaderlConfig::default(),
            elasticsearch: SearchConfig::default(),
            log_rotation: LogRotation::default(),
            backup: BackupConfig::default(),
            ssl: SslConfig::default(),
        }
    }
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        PostgresqlConfig {
            port: 5432,
            db_superuser: "chef_pgsql".into(),
            replication_user: "replicator".into(),
            md5_auth_cidr_addresses: vec!["samehost".into(), "samenet".into()],
            synchronous_mode: SyncMode::Quorum,
            max_wal_senders: 12,
            max_replication_slots: 12,
            max_connections: 350,
            work_mem: "8MB".into(),
            shared_buffers: "128MB".into(),
            max_slot_wal_keep_size: "2GB".into(),
            wal_keep_size: "256MB".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            require_ssl: None,
            client_auth_method: "scram-sha-256".into(),
        }
    }
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            client_port: 2379,
            peer_port: 2380,
            heartbeat_interval: 100,
            // With heartbeats every 100 ms a member is declared lost after 0.5–1 s; pre-vote
            // keeps a member that merely missed heartbeats from disrupting a healthy leader.
            election_timeout: 500,
            snapshot_count: 5000,
            binary: "/usr/bin/etcd".into(),
        }
    }
}

impl Default for LeaderlConfig {
    fn default() -> Self {
        LeaderlConfig {
            http_port: 7331,
            http_address: String::new(),
            // 3 s: a 2 s lease (fencing 1.3 s after the last renewal was sent) fenced a healthy
            // leader once under 50 ms ± 50 ms jitter on every link plus CPU load; 3 s held
            // through the 10-minute jitter run (docs/benchmarks.md, "No spurious failover").
            leader_ttl_seconds: 3,
            loop_interval_ms: 300,
            // Covers noticing the deadline (the loop wakes at it) and an immediate shutdown
            // (~0.1 s), and leaves 1.7 s of renewal failures to ride out an etcd election.
            fence_margin_ms: 1000,
            // Covers `ip addr del` and the loop waking at the VIP deadline.
            vip_margin_ms: 300,
            db_timeout: 500,
            rejoin_timeout_ms: 15_000,
            align_switchover_to_checks: true,
            required_active_followers: 0,
            status_allowed_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            health_check: HealthCheckConfig::default(),
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval_seconds: 1,
            max_pgsql_failures: 3,
            max_etcd_failures: 5,
            max_elasticsearch_failures: 5,
            max_bytes_behind_leader: 52_428_800,
            fatal_system_checks: false,
            disk_min_space_mb: 250,
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            enable: true,
            port: 9200,
            major_version: 7,
            ssl: None,
            require_auth: None,
            plain_http_port: 0,
        }
    }
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            file_maxbytes: 104_857_600,
            num_to_keep: 10,
        }
    }
}

impl Config {
    /// The VIP and hook settings (the host checks — interface present, address free — are the
    /// agent's, `larder_agent::vip::check_host`).
    fn validate_vip(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        for (event, path) in self.hooks.configured() {
            if !path.starts_with('/') {
                return Err(bad(
                    &format!("hooks.{event}"),
                    format!("{path:?} must be an absolute path"),
                ));
            }
        }
        if self.hooks.timeout_ms == 0 {
            return Err(bad("hooks.timeout_ms", "must be at least 1 ms".into()));
        }
        if self.vip.is_empty() {
            if !self.vip_interface.is_empty() {
                return Err(bad(
                    "vip_interface",
                    "set without `vip`: set both or neither".into(),
                ));
            }
            return Ok(());
        }
        let vip: IpAddr = self
            .vip
            .parse()
            .map_err(|_| bad("vip", format!("{:?} is not an IP address", self.vip)))?;
        if !vip.is_ipv4() {
            return Err(bad(
                "vip",
                format!("{vip}: only IPv4 VIPs are supported (announced by gratuitous ARP)"),
            ));
        }
        if self.publish_address.parse::<IpAddr>().ok() == Some(vip) {
            return Err(bad(
                "vip",
                format!("{vip} is this node's publish_address; the VIP must be a spare address"),
            ));
        }
        let i = &self.vip_interface;
        if i.is_empty() {
            return Err(bad(
                "vip_interface",
                "required with `vip` (join-cluster -i IFACE)".into(),
            ));
        }
        if i.len() > 15
            || !i
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(bad(
                "vip_interface",
                format!("{i:?} is not an interface name"),
            ));
        }
        // The leader must be able to hold the VIP for a whole second (the kernel lifetime's
        // unit) after one missed renewal, before the hard bound in front of the fencing
        // deadline; otherwise it could never be added.
        let l = &self.leaderl;
        let steady = (l.leader_ttl_seconds * 1000)
            .saturating_sub(l.fence_margin_ms + l.loop_interval_ms + l.vip_margin_ms);
        let need = 1000 + crate::decide::vip::KERNEL_SLACK_MS;
        if steady < need {
            return Err(bad(
                "leaderl.vip_margin_ms",
                format!(
                    "with a VIP the lease must leave {need} ms after leaderl.fence_margin_ms, one leaderl.loop_interval_ms and leaderl.vip_margin_ms ({steady} ms left); raise leaderl.leader_ttl_seconds or lower the margins"
                ),
            ));
        }
        Ok(())
    }
}

/// Every valid dotted key with its default and a one-line explanation, for
/// `gen-sample-backend-config` and for "did you mean" suggestions.
pub const KEY_DOCS: &[(&str, &str)] = &[
    (
        "fqdn",
        "name of this node in the cluster (defaults to the host name)",
    ),
    (
        "publish_address",
        "address peers and frontends use to reach this node; every service binds it",
    ),
    ("ip_version", "ipv4 or ipv6"),
    ("hide_sensitive", "mask secrets in show-config output"),
    (
        "vip",
        "virtual IP that follows the leader (legacy Chef HA pattern); empty = none",
    ),
    (
        "vip_interface",
        "interface the VIP is added to (join-cluster -i); required with vip",
    ),
    (
        "hooks.on_promote",
        "program run when this node becomes the writable leader; empty = none",
    ),
    (
        "hooks.on_demote",
        "program run when this node hands leadership over (switchover, shutdown)",
    ),
    (
        "hooks.on_fence",
        "program run after this node fenced itself (lease lost)",
    ),
    ("hooks.on_start", "program run when the agent starts"),
    (
        "hooks.timeout_ms",
        "a hook still running after this long is killed, ms",
    ),
    ("postgresql.port", "PostgreSQL port"),
    (
        "postgresql.db_superuser",
        "superuser Chef frontends log in as",
    ),
    ("postgresql.replication_user", "role followers stream as"),
    (
        "postgresql.md5_auth_cidr_addresses",
        "client networks allowed in pg_hba.conf (samehost, samenet or CIDRs)",
    ),
    (
        "postgresql.synchronous_mode",
        "quorum (no acknowledged write lost), strict (all followers ack) or off (async)",
    ),
    (
        "postgresql.max_wal_senders",
        "max_wal_senders of PostgreSQL",
    ),
    (
        "postgresql.max_replication_slots",
        "max_replication_slots of PostgreSQL",
    ),
    (
        "postgresql.max_connections",
        "max_connections of PostgreSQL",
    ),
    ("postgresql.work_mem", "work_mem of PostgreSQL"),
    ("postgresql.shared_buffers", "shared_buffers of PostgreSQL"),
    (
        "postgresql.max_slot_wal_keep_size",
        "WAL a follower's slot may pin before it must re-clone",
    ),
    (
        "postgresql.wal_keep_size",
        "WAL kept for followers without a slot (rewind, catch-up)",
    ),
    (
        "postgresql.bin_dir",
        "directory of the PostgreSQL 15 binaries",
    ),
    (
        "postgresql.require_ssl",
        "client lines are hostssl (TLS required); unset = on for clusters created with search credentials, off for older ones",
    ),
    (
        "postgresql.client_auth_method",
        "password method for clients: scram-sha-256, or md5 for old clients only",
    ),
    ("etcd.client_port", "etcd client port"),
    ("etcd.peer_port", "etcd peer port"),
    ("etcd.heartbeat_interval", "etcd raft heartbeat, ms"),
    ("etcd.election_timeout", "etcd raft election timeout, ms"),
    ("etcd.snapshot_count", "etcd snapshot count"),
    ("etcd.binary", "path of the etcd 3.4 binary"),
    (
        "leaderl.http_port",
        "health API port (frontends' haproxy checks GET /leader here)",
    ),
    (
        "leaderl.http_address",
        "health API bind address; empty = publish_address",
    ),
    (
        "leaderl.leader_ttl_seconds",
        "TTL of the leadership lease; bounds unplanned failover time",
    ),
    (
        "leaderl.loop_interval_ms",
        "HA loop and lease renewal cadence, ms",
    ),
    (
        "leaderl.fence_margin_ms",
        "the leader stops writes this long before its lease can expire, ms",
    ),
    (
        "leaderl.vip_margin_ms",
        "the leader removes the VIP this long before its fencing deadline, ms",
    ),
    (
        "leaderl.db_timeout",
        "timeout of one etcd or PostgreSQL call, ms",
    ),
    (
        "leaderl.rejoin_timeout_ms",
        "a follower not streaming from the leader for this long is rewound, ms",
    ),
    (
        "leaderl.align_switchover_to_checks",
        "time a planned switchover's start to the frontends' health checks (false: start at once)",
    ),
    (
        "leaderl.required_active_followers",
        "/leader answers 503 until this many followers stream",
    ),
    (
        "leaderl.status_allowed_cidrs",
        "networks that may read /status, /cluster, /metrics, /ui on the health API (members always may); others get 403",
    ),
    (
        "leaderl.health_check.interval_seconds",
        "seconds between health checks",
    ),
    (
        "leaderl.health_check.max_pgsql_failures",
        "failed PostgreSQL checks before the node is unhealthy",
    ),
    (
        "leaderl.health_check.max_etcd_failures",
        "failed etcd checks before the node is unhealthy",
    ),
    (
        "leaderl.health_check.max_elasticsearch_failures",
        "failed search checks before search is reported unhealthy (never fails over PostgreSQL)",
    ),
    (
        "leaderl.health_check.max_bytes_behind_leader",
        "a follower further behind than this is not eligible",
    ),
    (
        "leaderl.health_check.fatal_system_checks",
        "treat low disk space as unhealthy",
    ),
    (
        "leaderl.health_check.disk_min_space_mb",
        "free space below which a disk is reported low",
    ),
    ("elasticsearch.enable", "run the search service"),
    ("elasticsearch.port", "search API port"),
    (
        "elasticsearch.major_version",
        "Elasticsearch major the search API reports: 5, 6 or 7",
    ),
    (
        "elasticsearch.ssl",
        "HTTPS on the search port; unset = like postgresql.require_ssl",
    ),
    (
        "elasticsearch.require_auth",
        "HTTP Basic authentication (secrets file elasticsearch.auth_username/auth_password); unset = like postgresql.require_ssl",
    ),
    (
        "elasticsearch.plain_http_port",
        "extra plain-HTTP search listener on 127.0.0.1 only, for a co-located frontend; 0 = none",
    ),
    (
        "log_rotation.file_maxbytes",
        "rotate a service log at this size",
    ),
    ("log_rotation.num_to_keep", "rotated logs kept per service"),
    (
        "backup.repo_path",
        "pgBackRest repository: a directory all nodes mount (archiving follows the leader); empty = no backups",
    ),
    ("backup.retention_full", "full backups kept"),
    (
        "ssl.duration_days",
        "validity in days of node certificates issued from the cluster CA (create, join, rotate-certs)",
    ),
    (
        "ssl.certificate",
        "this node's certificate from your own PKI (PEM path, leaf then intermediates; SAN = publish address, server and client auth); empty = issued from the cluster CA",
    ),
    ("ssl.certificate_key", "the key of ssl.certificate (PEM path)"),
    (
        "ssl.ca",
        "CA certificates (PEM path) trusted besides the cluster CA; set on every node before any uses ssl.certificate",
    ),
    (
        "backup.server_port",
        "pgBackRest TLS server port on the publish address (backups from a follower reach the other nodes through it)",
    ),
    (
        "backup.pgbackrest",
        "extra pgBackRest [global] options passed through (repo1-type, repo1-s3-bucket, ...)",
    ),
];

impl Config {
    /// Parse and validate a config file's text. `file` is used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| parse_error(text, file, &e))?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Config::parse(&text, &file)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config always serializes")
    }

    /// Cross-field rules. Errors name the key and say what would be valid.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };
        if !(2..=36_500).contains(&self.ssl.duration_days) {
            // Under two days `status` would warn about a certificate it just issued forever.
            return Err(bad(
                "ssl.duration_days",
                format!(
                    "{} is out of range: give a validity between 2 and 36500 days (3650 is the default)",
                    self.ssl.duration_days
                ),
            ));
        }
        for (key, path) in [
            ("ssl.certificate", &self.ssl.certificate),
            ("ssl.certificate_key", &self.ssl.certificate_key),
            ("ssl.ca", &self.ssl.ca),
        ] {
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad(
                    key,
                    format!("{path:?} is not an absolute path; give the PEM file's absolute path"),
                ));
            }
        }
        if self.ssl.certificate.is_empty() != self.ssl.certificate_key.is_empty() {
            return Err(bad(
                "ssl.certificate",
                "ssl.certificate and ssl.certificate_key go together: set both (your certificate and its key) or neither (Larder issues one from the cluster CA)".into(),
            ));
        }
        if !self.ssl.certificate.is_empty() && self.ssl.ca.is_empty() {
            return Err(bad(
                "ssl.ca",
                "ssl.certificate needs ssl.ca, the CA that issued it: every node must trust it (set ssl.ca on every node first)".into(),
            ));
        }
        for (k, v) in &self.backup.pgbackrest {
            crate::backup::check_option(k, v)
                .map_err(|m| bad(&format!("backup.pgbackrest.{k}"), m))?;
        }
        if self.backup.enabled() && !self.backup.repo_path.starts_with('/') {
            return Err(bad(
                "backup.repo_path",
                format!(
                    "{:?} is not an absolute path; give the repository directory (shared by the nodes) as an absolute path",
                    self.backup.repo_path
                ),
            ));
        }
        if self.fqdn.is_empty() {
            return Err(bad("fqdn", "must not be empty".into()));
        }
        if !self
            .fqdn
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(bad(
                "fqdn",
                format!(
                    "{:?} may only hold letters, digits, '-', '_' and '.'",
                    self.fqdn
                ),
            ));
        }
        let addr: IpAddr = self.publish_address.parse().map_err(|_| {
            bad(
                "publish_address",
                format!("{:?} is not an IP address", self.publish_address),
            )
        })?;
        match (self.ip_version, addr) {
            (IpVersion::Ipv4, IpAddr::V6(_)) | (IpVersion::Ipv6, IpAddr::V4(_)) => {
                return Err(bad(
                    "ip_version",
                    format!(
                        "{:?} does not match publish_address {}",
                        self.ip_version, self.publish_address
                    ),
                ))
            }
            _ => {}
        }
        if !self.leaderl.http_address.is_empty()
            && self.leaderl.http_address.parse::<IpAddr>().is_err()
        {
            return Err(bad(
                "leaderl.http_address",
                format!("{:?} is not an IP address", self.leaderl.http_address),
            ));
        }
        for entry in &self.leaderl.status_allowed_cidrs {
            entry.parse::<ipnet::IpNet>().map_err(|_| {
                bad(
                    "leaderl.status_allowed_cidrs",
                    format!("{entry:?} is not a CIDR (like 10.0.0.0/8 or ::1/128)"),
                )
            })?;
        }
        if !["scram-sha-256", "md5"].contains(&self.postgresql.client_auth_method.as_str()) {
            return Err(bad(
                "postgresql.client_auth_method",
                format!(
                    "{:?} is not supported; use \"scram-sha-256\" (default) or \"md5\" (old clients only)",
                    self.postgresql.client_auth_method
                ),
            ));
        }
        for entry in &self.postgresql.md5_auth_cidr_addresses {
            validate_hba_address(entry)
                .map_err(|m| bad("postgresql.md5_auth_cidr_addresses", m))?;
        }
        let ports = [
            ("postgresql.port", self.postgresql.port),
            ("etcd.client_port", self.etcd.client_port),
            ("etcd.peer_port", self.etcd.peer_port),
            ("leaderl.http_port", self.leaderl.http_port),
            ("elasticsearch.port", self.elasticsearch.port),
            (
                "elasticsearch.plain_http_port",
                self.elasticsearch.plain_http_port,
            ),
        ];
        for (i, (k, p)) in ports.iter().enumerate() {
            if *p == 0 && *k == "elasticsearch.plain_http_port" {
                continue;
            }
            if *p == 0 {
                return Err(bad(k, "port 0 is not allowed".into()));
            }
            if let Some((k2, _)) = ports[..i].iter().find(|(_, p2)| p2 == p) {
                return Err(bad(k, format!("port {p} is already used by `{k2}`")));
            }
        }
        if self.etcd.heartbeat_interval == 0
            || self.etcd.election_timeout < 5 * self.etcd.heartbeat_interval
        {
            return Err(bad(
                "etcd.election_timeout",
                format!(
                    "{} ms must be at least 5 x etcd.heartbeat_interval ({} ms)",
                    self.etcd.election_timeout, self.etcd.heartbeat_interval
                ),
            ));
        }
        let l = &self.leaderl;
        let ttl_ms = l.leader_ttl_seconds * 1000;
        // etcd refuses (raises) lease TTLs below 1.5 election timeouts; a TTL it silently
        // raised would break the fencing arithmetic below.
        let min_ttl_ms = self.etcd.election_timeout * 3 / 2;
        if ttl_ms < min_ttl_ms {
            return Err(bad(
                "leaderl.leader_ttl_seconds",
                format!(
                    "{}s is below etcd's minimum lease of 1.5 x etcd.election_timeout ({} ms)",
                    l.leader_ttl_seconds, min_ttl_ms
                ),
            ));
        }
        if l.loop_interval_ms < 50 {
            return Err(bad(
                "leaderl.loop_interval_ms",
                "must be at least 50 ms".into(),
            ));
        }
        if l.db_timeout == 0 || l.db_timeout > ttl_ms {
            return Err(bad(
                "leaderl.db_timeout",
                format!("{} ms must be between 1 and the lease TTL", l.db_timeout),
            ));
        }
        // Fencing rule: the leader must get at least two renewal attempts before it fences,
        // and must fence (stop writes) fence_margin_ms before the lease can expire.
        if 2 * l.loop_interval_ms + l.fence_margin_ms > ttl_ms {
            return Err(bad(
                "leaderl.leader_ttl_seconds",
                format!(
                    "lease of {} ms is too short: it must cover 2 x leaderl.loop_interval_ms ({} ms) + leaderl.fence_margin_ms ({} ms)",
                    ttl_ms, l.loop_interval_ms, l.fence_margin_ms
                ),
            ));
        }
        // The raft leader lives on another node than the Larder leader (see the agent's
        // raft_placement), so losing that node pauses lease renewals for one etcd election
        // (up to 2 x election_timeout): the leader must ride it out without fencing.
        let ride_out = ttl_ms
            .saturating_sub(l.fence_margin_ms)
            .saturating_sub(l.loop_interval_ms);
        if ride_out < 2 * self.etcd.election_timeout {
            return Err(bad(
                "leaderl.leader_ttl_seconds",
                format!(
                    "lease of {} ms leaves {} ms (after leaderl.fence_margin_ms and one leaderl.loop_interval_ms) to ride out an etcd election, which can take 2 x etcd.election_timeout = {} ms; raise the lease or lower etcd.election_timeout",
                    ttl_ms,
                    ride_out,
                    2 * self.etcd.election_timeout
                ),
            ));
        }
        self.validate_vip(file)?;
        if l.rejoin_timeout_ms < 1_000 {
            return Err(bad(
                "leaderl.rejoin_timeout_ms",
                format!(
                    "{} ms would rewind followers that are only re-attaching; use at least 1000",
                    l.rejoin_timeout_ms
                ),
            ));
        }
        if l.fence_margin_ms < 200 {
            return Err(bad(
                "leaderl.fence_margin_ms",
                "must be at least 200 ms: PostgreSQL needs time to stop before the lease expires"
                    .into(),
            ));
        }
        if l.health_check.interval_seconds == 0 {
            return Err(bad(
                "leaderl.health_check.interval_seconds",
                "must be at least 1".into(),
            ));
        }
        if ![5u8, 6, 7].contains(&self.elasticsearch.major_version) {
            return Err(bad(
                "elasticsearch.major_version",
                format!(
                    "{} is not supported; use 5, 6 or 7",
                    self.elasticsearch.major_version
                ),
            ));
        }
        if self.log_rotation.file_maxbytes < 4096 {
            return Err(bad(
                "log_rotation.file_maxbytes",
                "must be at least 4096 bytes".into(),
            ));
        }
        if self.postgresql.max_wal_senders < 2 {
            return Err(bad(
                "postgresql.max_wal_senders",
                "must be at least 2 (one follower plus a base backup)".into(),
            ));
        }
        Ok(())
    }

    /// The address the health API binds.
    pub fn http_address(&self) -> &str {
        if self.leaderl.http_address.is_empty() {
            &self.publish_address
        } else {
            &self.leaderl.http_address
        }
    }

    /// `show-config` text; secrets never live in the config, so nothing needs masking here,
    /// but the rendering is kept in one place should that change.
    pub fn render(&self) -> String {
        self.to_toml()
    }
}

/// Checks one `md5_auth_cidr_addresses` entry: `samehost`, `samenet`, `all`, or a CIDR.
/// `text` (a larder.toml) with top-level string keys set, everything else — comments, order,
/// tables — kept as the operator wrote it: an existing `key = …` line before the first table
/// header is replaced, a missing key is added just before that header.
pub fn set_top_level_strings(text: &str, kv: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, value) in kv {
        let line = format!("{key} = {}", toml::Value::String(value.to_string()));
        let first_table = lines
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(lines.len());
        let existing = lines[..first_table].iter().position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match existing {
            Some(i) => lines[i] = line,
            None => {
                // Beside the other top-level keys, not after the blank line that ends them.
                let mut at = first_table;
                while at > 0 && lines[at - 1].trim().is_empty() {
                    at -= 1;
                }
                lines.insert(at, line)
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

pub fn validate_hba_address(entry: &str) -> Result<(), String> {
    match entry {
        "samehost" | "samenet" | "all" => Ok(()),
        _ => entry.parse::<ipnet::IpNet>().map(|_| ()).map_err(|_| {
            format!(
                "{entry:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8) nor samehost/samenet/all"
            )
        }),
    }
}

fn parse_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1);
    let raw = e.message().to_string();
    let message = match unknown_key(&raw) {
        Some((key, expected)) => {
            let suggestion = expected
                .iter()
                .map(|cand| (strsim::jaro_winkler(&key, cand), cand))
                .filter(|(score, _)| *score > 0.7)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| format!("; did you mean `{c}`?"))
                .unwrap_or_else(|| format!("; valid keys here: {}", expected.join(", ")));
            format!("unknown key `{key}`{suggestion}")
        }
        None => raw,
    };
    ConfigError::Parse {
        file: file.to_string(),
        line,
        message,
    }
}

/// Extracts the key and the list of expected keys from serde's unknown-field message
/// ("unknown field `x`, expected one of `a`, `b`").
fn unknown_key(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let key = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    Some((key, expected))
}

/// `gen-sample-backend-config`: every key with its default and explanation, as valid TOML.
pub fn sample_config() -> String {
    let defaults = Config {
        fqdn: "backend1.example.com".into(),
        publish_address: "192.0.2.10".into(),
        ..Config::default()
    };
    let value = toml::Value::try_from(&defaults).expect("serializable");
    let mut out = String::from(
        "# larder.toml — every setting with its default.\n# Keys follow chef-backend.rb names.\n\n",
    );
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    if let toml::Value::Table(t) = &value {
        emit_table(&mut out, "", t, &mut tables);
    }
    while !tables.is_empty() {
        let (prefix, t) = tables.remove(0);
        out.push_str(&format!("\n[{prefix}]\n"));
        let mut nested = Vec::new();
        emit_table(&mut out, &prefix, t, &mut nested);
        tables.splice(0..0, nested);
    }
    out
}

fn emit_table<'a>(
    out: &mut String,
    prefix: &str,
    t: &'a toml::Table,
    nested: &mut Vec<(String, &'a toml::Table)>,
) {
    for (k, v) in t {
        let dotted = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(sub) = v {
            nested.push((dotted, sub));
            continue;
        }
        if let Some((_, doc)) = KEY_DOCS.iter().find(|(key, _)| *key == dotted) {
            out.push_str(&format!("# {doc}\n"));
        }
        out.push_str(&format!("{k} = {v}\n"));
    }
    // Keys whose default depends on the cluster (unset in the file) are shown commented out.
    for (key, value) in UNSET_BY_DEFAULT {
        if let Some((table, leaf)) = key.rsplit_once('.') {
            if table == prefix && !t.contains_key(leaf) {
                if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| k == key) {
                    out.push_str(&format!("# {doc}\n"));
                }
                out.push_str(&format!("# {leaf} = {value}\n"));
            }
        }
    }
}

/// Keys left unset by default, with the value a new cluster gets (see `crate::security`).
const UNSET_BY_DEFAULT: &[(&str, &str)] = &[
    ("postgresql.require_ssl", "true"),
    ("elasticsearch.ssl", "true"),
    ("elasticsearch.require_auth", "true"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn top_level_edit_keeps_comments_and_tables() {
        let text = "# my node\nfqdn = \"a\" # name\nvip_interface=\"eth0\"\n\n[leaderl]\n# tuned\nvip = 1\n";
        let out = set_top_level_strings(text, &[("vip_interface", "eth1"), ("vip", "10.0.0.5")]);
        assert_eq!(
            out,
            "# my node\nfqdn = \"a\" # name\nvip_interface = \"eth1\"\nvip = \"10.0.0.5\"\n\n[leaderl]\n# tuned\nvip = 1\n"
        );
        let top: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(top["vip"].as_str(), Some("10.0.0.5"));
        assert_eq!(top["vip_interface"].as_str(), Some("eth1"));
        assert_eq!(top["leaderl"]["vip"].as_integer(), Some(1));
        // `vipx = …` is another key, not `vip`.
        let out = set_top_level_strings("vipx = \"1\"\n", &[("vip", "2")]);
        assert_eq!(out, "vipx = \"1\"\nvip = \"2\"\n");
    }

    use super::*;

    fn minimal() -> String {
        "fqdn = \"n1\"\npublish_address = \"127.0.0.2\"\n".to_string()
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::parse(&minimal(), "larder.toml").unwrap();
        assert_eq!(c.postgresql.port, 5432);
        assert_eq!(c.postgresql.synchronous_mode, SyncMode::Quorum);
        assert_eq!(c.http_address(), "127.0.0.2");
    }

    #[test]
    fn unknown_top_level_key_names_line_and_suggestion() {
        let text = format!("{}fqnd = \"x\"\n", minimal());
        let err = Config::parse(&text, "/etc/larder/larder.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/larder/larder.toml:3:"), "{msg}");
        assert!(msg.contains("unknown key `fqnd`"), "{msg}");
        assert!(msg.contains("did you mean `fqdn`"), "{msg}");
    }

    #[test]
    fn unknown_nested_key_names_line_and_suggestion() {
        let text = format!("{}\n[leaderl]\nleader_tll_seconds = 5\n", minimal());
        let msg = Config::parse(&text, "c.toml").unwrap_err().to_string();
        assert!(msg.starts_with("c.toml:5:"), "{msg}");
        assert!(msg.contains("did you mean `leader_ttl_seconds`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = format!("{}[postgresql]\nport = \"five\"\n", minimal());
        let msg = Config::parse(&text, "c.toml").unwrap_err().to_string();
        assert!(msg.starts_with("c.toml:4:"), "{msg}");
    }

    #[test]
    fn malformed_toml_names_line() {
        let text = format!("{}[etcd\n", minimal());
        let msg = Config::parse(&text, "c.toml").unwrap_err().to_string();
        assert!(msg.starts_with("c.toml:3:"), "{msg}");
    }

    fn invalid_key(extra: &str) -> String {
        let text = format!("{}{}", minimal(), extra);
        match Config::parse(&text, "c.toml").unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected validation error, got {other}"),
        }
    }

    #[test]
    fn every_validation_rule_names_its_key() {
        assert_eq!(
            Config::parse("publish_address = \"127.0.0.2\"\n", "c").unwrap_err(),
            ConfigError::Invalid {
                file: "c".into(),
                key: "fqdn".into(),
                message: "must not be empty".into()
            }
        );
        let e = Config::parse("fqdn = \"a b\"\npublish_address = \"127.0.0.2\"\n", "c");
        assert!(matches!(e, Err(ConfigError::Invalid { ref key, .. }) if key == "fqdn"));
        let cases = [
            ("ip_version = \"ipv6\"\n", "ip_version"),
            (
                "[leaderl]\nhttp_address = \"nope\"\n",
                "leaderl.http_address",
            ),
            (
                "[postgresql]\nmd5_auth_cidr_addresses = [\"10.0.0.0/33\"]\n",
                "postgresql.md5_auth_cidr_addresses",
            ),
            ("[postgresql]\nport = 2379\n", "etcd.client_port"),
            ("[elasticsearch]\nport = 0\n", "elasticsearch.port"),
            ("[etcd]\nelection_timeout = 200\n", "etcd.election_timeout"),
            (
                "[etcd]\nelection_timeout = 1000\n",
                "leaderl.leader_ttl_seconds",
            ),
            (
                "[leaderl]\nleader_ttl_seconds = 1\n",
                "leaderl.leader_ttl_seconds",
            ),
            (
                "[leaderl]\nleader_ttl_seconds = 2\nloop_interval_ms = 600\n",
                "leaderl.leader_ttl_seconds",
            ),
            (
                "[leaderl]\nloop_interval_ms = 10\n",
                "leaderl.loop_interval_ms",
            ),
            (
                "[leaderl]\nfence_margin_ms = 100\n",
                "leaderl.fence_margin_ms",
            ),
            ("[leaderl]\ndb_timeout = 0\n", "leaderl.db_timeout"),
            (
                "[leaderl.health_check]\ninterval_seconds = 0\n",
                "leaderl.health_check.interval_seconds",
            ),
            (
                "[elasticsearch]\nmajor_version = 2\n",
                "elasticsearch.major_version",
            ),
            (
                "[log_rotation]\nfile_maxbytes = 10\n",
                "log_rotation.file_maxbytes",
            ),
            (
                "[postgresql]\nmax_wal_senders = 1\n",
                "postgresql.max_wal_senders",
            ),
            (
                "[postgresql]\nclient_auth_method = \"trust\"\n",
                "postgresql.client_auth_method",
            ),
            (
                "[leaderl]\nstatus_allowed_cidrs = [\"10.0.0.1\"]\n",
                "leaderl.status_allowed_cidrs",
            ),
            (
                "[elasticsearch]\nplain_http_port = 5432\n",
                "elasticsearch.plain_http_port",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(invalid_key(extra), key, "case {extra:?}");
        }
        let msg = Config::parse(&format!("{}fqdn2=1\n", "publish_address = \"x\"\n"), "c")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("c:2"), "{msg}");
    }

    #[test]
    fn publish_address_must_be_ip() {
        let e = Config::parse("fqdn = \"n\"\npublish_address = \"host\"\n", "c").unwrap_err();
        assert!(e.to_string().contains("`publish_address`"), "{e}");
    }

    #[test]
    fn hba_entries() {
        assert!(validate_hba_address("samehost").is_ok());
        assert!(validate_hba_address("10.1.0.0/16").is_ok());
        assert!(validate_hba_address("fd00::/8").is_ok());
        assert!(validate_hba_address("10.1.0.0").is_err());
        assert!(validate_hba_address("samenets").is_err());
    }

    #[test]
    fn sample_config_documents_every_key_and_round_trips() {
        let s = sample_config();
        for (k, _) in KEY_DOCS {
            let leaf = k.rsplit('.').next().unwrap();
            // A free-form table (`backup.pgbackrest`) appears as its header.
            assert!(
                s.contains(&format!("\n{leaf} = "))
                    || s.contains(&format!("\n# {leaf} = "))
                    || s.contains(&format!("\n[{k}]")),
                "missing {k}"
            );
        }
        let c = Config::parse(&s, "sample").unwrap();
        assert_eq!(c.fqdn, "backend1.example.com");
        assert!(s.contains("[leaderl.health_check]"));
    }

    #[test]
    fn operator_certificates_are_all_or_nothing_and_absolute() {
        let base = "fqdn = \"n1\"\npublish_address = \"10.0.0.1\"\n[ssl]\n";
        let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), "t.toml");
        let c = parse("certificate = \"/c.pem\"\ncertificate_key = \"/k.pem\"\nca = \"/ca.pem\"\n")
            .unwrap();
        assert_eq!(c.ssl.operator_cert(), Some(("/c.pem", "/k.pem")));
        // Trusting an operator CA before using its certificates is the first step.
        assert_eq!(
            parse("ca = \"/ca.pem\"\n").unwrap().ssl.operator_cert(),
            None
        );
        for (extra, key, says) in [
            (
                "certificate = \"/c.pem\"\nca = \"/ca.pem\"\n",
                "ssl.certificate",
                "go together",
            ),
            (
                "certificate = \"/c.pem\"\ncertificate_key = \"/k.pem\"\n",
                "ssl.ca",
                "needs ssl.ca",
            ),
            ("ca = \"ca.pem\"\n", "ssl.ca", "absolute"),
            ("duration_days = 1\n", "ssl.duration_days", "out of range"),
        ] {
            match parse(extra) {
                Err(ConfigError::Invalid {
                    key: k, message, ..
                }) => {
                    assert_eq!(k, key, "{extra}");
                    assert!(message.contains(says), "{extra}: {message}");
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_serialized_key_is_documented() {
        let v = toml::Value::try_from(Config::default()).unwrap();
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let d = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if v.is_table() {
                        walk(&d, v, out)
                    } else {
                        out.push(d)
                    }
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &v, &mut keys);
        for k in keys {
            assert!(
                KEY_DOCS.iter().any(|(d, _)| *d == k),
                "undocumented key {k}"
            );
        }
    }
}
