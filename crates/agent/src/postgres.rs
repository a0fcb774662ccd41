//! PostgreSQL 15 under Larder: initdb, the managed configuration, the supervised service,
//! observation over the local socket, promotion, and the two ways back into the cluster
//! (`pg_rewind`, `pg_basebackup`).

use crate::node::{write_private, Node};
use crate::supervisor::{PreStart, ServiceSpec};
use larder_core::model::{standby_name, LeaderRecord, Lsn, PgState, WalPosition};
use larder_core::pgconf::{self, PasswordHash};
use larder_core::secrets::Secret;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

pub const SERVICE: &str = "postgresql";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Command(String),
    #[error("PostgreSQL: {0}")]
    Sql(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn bin(node: &Node, name: &str) -> PathBuf {
    Path::new(&node.cfg.postgresql.bin_dir).join(name)
}

fn tls_dir(node: &Node) -> PathBuf {
    node.paths.data_dir().join("postgresql/tls")
}

pub(crate) fn chown(node: &Node, path: &Path) -> Result<(), PgError> {
    if let Some((uid, gid)) = node.pg_user {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| PgError::Command(format!("chown {}: {e}", path.display())))?;
    }
    Ok(())
}

fn chown_tree(node: &Node, path: &Path) -> Result<(), PgError> {
    chown(node, path)?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(node, &e?.path())?;
        }
    }
    Ok(())
}

/// Run a PostgreSQL tool as the PostgreSQL OS user; on failure the error carries its stderr.
async fn run_tool(
    node: &Node,
    program: PathBuf,
    args: &[String],
    env: &[(&str, String)],
) -> Result<String, PgError> {
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/tmp")
        .env("HOME", "/tmp");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = node.pg_user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| PgError::Command(format!("cannot run {}: {e}", program.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(PgError::Command(format!(
            "{} failed ({}): {}",
            program.file_name().unwrap_or_default().to_string_lossy(),
            out.status,
            stderr.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string() + &stderr)
}

/// tokio-postgres' Display says only "db error"; the server's message is what helps.
fn sql_err(e: tokio_postgres::Error) -> PgError {
    match e.as_db_error() {
        Some(db) => PgError::Sql(format!("{}: {}", db.code().code(), db.message())),
        None => PgError::Sql(e.to_string()),
    }
}

/// Directories PostgreSQL needs, owned by its OS user.
pub fn prepare_dirs(node: &Node) -> Result<(), PgError> {
    let p = &node.paths;
    for d in [p.pg_socket_dir(), tls_dir(node)] {
        std::fs::create_dir_all(&d)?;
        chown(node, &d)?;
    }
    let parent = p
        .pg_data()
        .parent()
        .expect("data has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&parent)?;
    chown(node, &parent)?;
    chown(node, parent.parent().expect("has parent"))?;
    install_certs(node)
}

/// PostgreSQL's copies of the node certificate and key (its user's, 0600, as it requires)
/// and of the CA, each replaced whole: PostgreSQL re-reads them on a reload and every new
/// replication connection reads the client pair, so neither may see half a file.
pub fn install_certs(node: &Node) -> Result<(), PgError> {
    let src = node.paths.tls_dir();
    let dir = tls_dir(node);
    let ca = node.trust_pem();
    let ca = ca.as_bytes();
    for (from, to) in [
        (Some("node.key"), "server.key"),
        (Some("node.crt"), "server.crt"),
        (None, "ca.crt"),
    ] {
        let data = match from {
            Some(f) => std::fs::read(src.join(f))?,
            None => ca.to_vec(),
        };
        write_owned(node, &dir.join(to), &data)?;
    }
    Ok(())
}

/// Write `path` 0600 and owned by PostgreSQL's user, replacing it in one rename.
pub(crate) fn write_owned(node: &Node, path: &Path, data: &[u8]) -> Result<(), PgError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    crate::node::write_private(&tmp, data).map_err(|e| PgError::Command(format!("{e:#}")))?;
    chown(node, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn has_data(node: &Node) -> bool {
    node.paths.pg_data().join("PG_VERSION").exists()
}

/// `initdb` with data checksums and scram-sha-256, superuser named after
/// `postgresql.db_superuser`.
pub async fn initdb(node: &Node) -> Result<(), PgError> {
    prepare_dirs(node)?;
    let data = node.paths.pg_data();
    std::fs::create_dir_all(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    chown(node, &data)?;
    let pwfile = tls_dir(node).join(".initdb-pw");
    write_private(
        &pwfile,
        node.secrets_now()
            .postgresql
            .db_superuser_password
            .expose()
            .as_bytes(),
    )
    .map_err(|e| PgError::Command(e.to_string()))?;
    chown(node, &pwfile)?;
    let res = run_tool(
        node,
        bin(node, "initdb"),
        &[
            "-D".into(),
            data.display().to_string(),
            "--data-checksums".into(),
            "--auth-local=scram-sha-256".into(),
            "--auth-host=scram-sha-256".into(),
            "--encoding=UTF8".into(),
            "--locale=C.UTF-8".into(),
            format!("--username={}", node.cfg.postgresql.db_superuser),
            format!("--pwfile={}", pwfile.display()),
        ],
        &[],
    )
    .await;
    let _ = std::fs::remove_file(&pwfile);
    res?;
    write_config(node)?;
    Ok(())
}

/// Write Larder's managed files into the data directory. Returns whether anything changed
/// (so `reconfigure` knows whether PostgreSQL needs a reload). The client method is the one
/// in effect ([`Node::pg_auth`]), not necessarily `node.cfg`'s.
pub fn write_config(node: &Node) -> Result<bool, PgError> {
    write_config_as(node, &node.pg_auth())
}

/// [`write_config`] with pg_hba.conf's client method (and `password_encryption`) `method`.
pub fn write_config_as(node: &Node, method: &str) -> Result<bool, PgError> {
    let mut cfg = node.cfg.clone();
    cfg.postgresql.client_auth_method = method.to_string();
    let data = node.paths.pg_data();
    let tls = tls_dir(node);
    let archive = crate::pgbackrest::write_conf(node)?;
    let conf = pgconf::render_postgresql_conf(
        &cfg,
        &node.paths.pg_socket_dir().display().to_string(),
        &tls.join("server.crt").display().to_string(),
        &tls.join("server.key").display().to_string(),
        &tls.join("ca.crt").display().to_string(),
        archive.as_deref(),
    );
    let mut changed = write_if_changed(node, &data.join("larder.conf"), &conf)?;
    changed |= write_if_changed(
        node,
        &data.join("pg_hba.conf"),
        &pgconf::render_hba(&cfg, node.security.pg_require_ssl),
    )?;
    let main = data.join("postgresql.conf");
    let text = std::fs::read_to_string(&main).unwrap_or_default();
    if !text.contains("include_if_exists = 'larder.conf'") {
        let text = format!(
            "{text}\n# Larder-managed settings and recovery target (keep these lines last)\ninclude_if_exists = 'larder.conf'\ninclude_if_exists = 'larder-recovery.conf'\n"
        );
        std::fs::write(&main, text)?;
        chown(node, &main)?;
        changed = true;
    }
    Ok(changed)
}

fn write_if_changed(node: &Node, path: &Path, text: &str) -> Result<bool, PgError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    chown(node, path)?;
    Ok(true)
}

pub fn standby_signal(node: &Node) -> PathBuf {
    node.paths.pg_data().join("standby.signal")
}

pub fn set_standby(node: &Node, on: bool) -> Result<(), PgError> {
    let p = standby_signal(node);
    if on {
        if !p.exists() {
            std::fs::write(&p, "")?;
            chown(node, &p)?;
        }
    } else if p.exists() {
        std::fs::remove_file(&p)?;
    }
    Ok(())
}

/// Point recovery at `leader` (or nowhere): `primary_conninfo` over TLS as the replication
/// user, with this node's slot and application name. The password is not in it but in
/// [`replication_passfile`] (PostgreSQL logs a changed `primary_conninfo` in full at a
/// reload): the secrets file's current one, which `rotate-secrets --postgresql` rewrites once
/// the new one is in the catalog. Returns whether the configuration changed (a reload is due).
pub fn write_follow_conf(node: &Node, leader: Option<&LeaderRecord>) -> Result<bool, PgError> {
    let path = node.paths.pg_data().join("larder-recovery.conf");
    let text = match leader {
        None => "# Managed by Larder: no leader to follow.\nprimary_conninfo = ''\nprimary_slot_name = ''\n".to_string(),
        Some(l) => {
            write_replication_passfile(node)?;
            let tls = tls_dir(node);
            let name = standby_name(&node.state.guid);
            format!(
                "# Managed by Larder: following {} (term {}).\nprimary_conninfo = 'host={} port={} user={} passfile={} application_name={} sslmode=verify-ca sslrootcert={} sslcert={} sslkey={} connect_timeout=2 keepalives_idle=5 keepalives_interval=2 keepalives_count=2'\nprimary_slot_name = '{}'\n",
                l.name,
                l.term,
                l.address,
                node.cfg.postgresql.port,
                node.cfg.postgresql.replication_user,
                replication_passfile(node).display(),
                name,
                tls.join("ca.crt").display(),
                tls.join("server.crt").display(),
                tls.join("server.key").display(),
                name
            )
        }
    };
    write_if_changed(node, &path, &text)
}

/// The libpq password file the WAL receiver reads at each connection (0600, PostgreSQL's user).
pub fn replication_passfile(node: &Node) -> PathBuf {
    tls_dir(node).join("replication.pgpass")
}

/// [`replication_passfile`] with the secrets file's current replication password, replaced
/// whole (a connection attempt never reads half a file) and only when it changes.
fn write_replication_passfile(node: &Node) -> Result<(), PgError> {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    let text = format!(
        "*:*:*:{}:{}\n",
        escape(&node.cfg.postgresql.replication_user),
        escape(node.secrets_now().postgresql.replication_password.expose())
    );
    let path = replication_passfile(node);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_owned(node, &path, text.as_bytes())
}

/// The supervised `postgres` process. `pre_start` decides primary vs standby on every start.
pub fn service_spec(node: &Node, pre_start: PreStart) -> ServiceSpec {
    ServiceSpec {
        args: vec!["-D".into(), node.paths.pg_data().display().to_string()],
        env: vec![],
        user: node.pg_user,
        cwd: Some(node.paths.pg_data()),
        // SIGINT is PostgreSQL's fast shutdown.
        stop_signal: nix::sys::signal::Signal::SIGINT,
        pre_start: Some(pre_start),
        ..node.service_base(SERVICE, bin(node, "postgres"))
    }
}

/// Connection over the local unix socket as the superuser.
pub async fn connect(node: &Node, timeout: Duration) -> Result<tokio_postgres::Client, PgError> {
    connect_as(node, timeout).await.map(|(c, _)| c)
}

/// [`connect`], and the password that was accepted: the secrets file's current one, or, when
/// the server refuses it (SQLSTATE 28P01) during `rotate-secrets --postgresql`, the staged one.
pub async fn connect_as(
    node: &Node,
    timeout: Duration,
) -> Result<(tokio_postgres::Client, Secret), PgError> {
    let secrets = node.secrets_now();
    let mut passwords = secrets
        .postgresql
        .superuser_passwords()
        .into_iter()
        .peekable();
    while let Some(password) = passwords.next() {
        let mut c = tokio_postgres::Config::new();
        c.host_path(node.paths.pg_socket_dir())
            .port(node.cfg.postgresql.port)
            .user(&node.cfg.postgresql.db_superuser)
            .password(password.expose())
            .dbname("postgres")
            .application_name("larder-agent")
            .connect_timeout(timeout);
        let (client, conn) = match tokio::time::timeout(timeout, c.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| PgError::Sql("connect timed out".into()))?
        {
            Ok(x) => x,
            Err(e) if is_auth_failure(&e) && passwords.peek().is_some() => continue,
            Err(e) => return Err(sql_err(e)),
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok((client, password.clone()));
    }
    unreachable!("superuser_passwords lists the current password")
}

fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
}

/// A PostgreSQL client program's stderr says the server refused the password.
fn refused_password(stderr: &str) -> bool {
    stderr.contains("password authentication failed")
}

/// For the tools that take the superuser's password in their environment (pgBackRest): the
/// one the local server accepts now, in `node.secrets` (unchanged when none connects).
pub async fn use_working_superuser_password(node: &mut Node) {
    if let Ok((_, password)) = connect_as(node, Duration::from_secs(5)).await {
        node.secrets.postgresql.db_superuser_password = password;
    }
}

/// What one observation of the local PostgreSQL found.
#[derive(Debug, Clone, PartialEq)]
pub struct PgObservation {
    pub state: PgState,
    pub position: WalPosition,
    /// Followers streaming from us (leader only), by application name.
    pub streaming_followers: Vec<String>,
    pub sync_standby_names: String,
    /// The physical replication slots that exist (what the leader's replication settings are
    /// compared against, so a steady leader sends no statement for them).
    pub physical_slots: Vec<String>,
    /// What only the metrics and the status page use (read in the same round trip).
    pub detail: PgDetail,
}

/// WAL positions, per-follower replication and pending restarts, for `/metrics` and `/ui`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgDetail {
    /// Primary: written (`pg_current_wal_lsn`) and flushed; standby: received and replayed.
    pub written: Option<Lsn>,
    pub flushed: Option<Lsn>,
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
    /// Settings changed in the configuration that take effect only after a restart.
    pub pending_restart: u32,
    /// Leader only: one row of `pg_stat_replication` per connected standby.
    pub replication: Vec<Replication>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replication {
    /// The standby's application name (`larder_<guid>`, see `model::standby_name`).
    pub application_name: String,
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    /// Bytes between the leader's current position and what the standby replayed.
    pub lag_bytes: u64,
    /// PostgreSQL's `replay_lag` (0 while idle: PostgreSQL clears it when nothing is sent).
    pub lag_seconds: f64,
}

/// What the loop observes PostgreSQL through: a connection and its observation queries,
/// prepared once (a query sent as text is parsed and described anew on every call, one more
/// round trip several times a second).
pub struct Observer {
    pub client: tokio_postgres::Client,
    state: tokio_postgres::Statement,
}

impl Observer {
    pub async fn prepare(client: tokio_postgres::Client) -> Result<Observer, PgError> {
        let state = client.prepare(OBSERVE_STATE).await.map_err(sql_err)?;
        Ok(Observer { client, state })
    }
}

/// A standby's timeline is the greatest of what PostgreSQL tells: the WAL receiver's (only while
/// it runs), the last restartpoint's and the minimum recovery point's (both lag: a standby that
/// followed a promotion keeps the old timeline there until its next restartpoint, minutes
/// later), and the timeline in the name of the newest WAL segment file holding its position:
/// received WAL is written to files named after its timeline, so that one is right after a
/// restart too. Reporting a lagging timeline once let a less advanced node win an election
/// (its own, correct, timeline compared higher) and lose acknowledged commits.
const OBSERVE_STATE: &str = "SELECT pg_is_in_recovery(),
                    CASE WHEN pg_is_in_recovery()
                         THEN greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), coalesce(pg_last_wal_replay_lsn(), '0/0'))::text
                         ELSE pg_current_wal_flush_lsn()::text END,
                    CASE WHEN pg_is_in_recovery()
                         THEN greatest((SELECT received_tli FROM pg_stat_wal_receiver),
                                       (SELECT timeline_id FROM pg_control_checkpoint()),
                                       (SELECT min_recovery_end_timeline FROM pg_control_recovery()),
                                       (SELECT max(('x' || substr(w.name, 1, 8))::bit(32)::int)
                                          FROM pg_ls_waldir() w,
                                               (SELECT greatest(greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'),
                                                                         coalesce(pg_last_wal_replay_lsn(), '0/0')) - '0/0'::pg_lsn - 1, 0) AS b,
                                                       (SELECT setting::numeric FROM pg_settings WHERE name = 'wal_segment_size') AS seg) p
                                         WHERE w.name ~ '^[0-9A-F]{24}$'
                                           AND substr(w.name, 9) = lpad(upper(to_hex(floor(p.b / 4294967296)::bigint)), 8, '0')
                                                                || lpad(upper(to_hex(floor(mod(p.b, 4294967296) / p.seg)::bigint)), 8, '0')))
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
                    coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
                    current_setting('synchronous_standby_names'),
                    CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,
                    CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn()::text END,
                    pg_last_wal_receive_lsn()::text,
                    pg_last_wal_replay_lsn()::text,
                    (SELECT count(*) FROM pg_settings WHERE pending_restart)::int,
                    CASE WHEN NOT pg_is_in_recovery() THEN
                      (SELECT coalesce(json_agg(json_build_array(
                                application_name, coalesce(state, ''), coalesce(sync_state, ''),
                                coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::float8,
                                coalesce(extract(epoch FROM replay_lag), 0)::float8)), '[]')
                         FROM pg_stat_replication)::text
                    END,
                    (SELECT coalesce(json_agg(slot_name::text), '[]')
                       FROM pg_replication_slots WHERE slot_type = 'physical')::text";

/// `pg_stat_replication` as the observation query returns it (one JSON array per standby, in
/// one round trip with the rest); `None` on a standby.
fn parse_replication(json: Option<&str>) -> Result<Vec<Replication>, PgError> {
    let Some(json) = json else {
        return Ok(vec![]);
    };
    let rows: Vec<(String, String, String, f64, f64)> = serde_json::from_str(json)
        .map_err(|e| PgError::Sql(format!("pg_stat_replication as JSON: {e}")))?;
    Ok(rows
        .into_iter()
        .map(
            |(application_name, state, sync_state, lag_bytes, lag_seconds)| Replication {
                application_name,
                state,
                sync_state,
                lag_bytes: lag_bytes.max(0.0) as u64,
                lag_seconds: lag_seconds.max(0.0),
            },
        )
        .collect())
}

pub async fn observe(o: &Observer) -> Result<PgObservation, PgError> {
    let row = o.client.query_one(&o.state, &[]).await.map_err(sql_err)?;
    let in_recovery: bool = row.get(0);
    let lsn: String = row.get(1);
    let tli: i32 = row.get(2);
    let streaming: bool = row.get(3);
    let ssn: String = row.get(4);
    let lsn_at = |i: usize| row.get::<_, Option<String>>(i).and_then(|s| Lsn::parse(&s));
    let detail = PgDetail {
        written: lsn_at(5),
        flushed: lsn_at(6),
        received: lsn_at(7),
        replayed: lsn_at(8),
        pending_restart: row.get::<_, i32>(9).max(0) as u32,
        replication: parse_replication(row.get::<_, Option<String>>(10).as_deref())?,
    };
    let physical_slots: Vec<String> = serde_json::from_str(row.get::<_, &str>(11))
        .map_err(|e| PgError::Sql(format!("pg_replication_slots as JSON: {e}")))?;
    let followers = detail
        .replication
        .iter()
        .filter(|r| r.state == "streaming")
        .map(|r| r.application_name.clone())
        .collect();
    Ok(PgObservation {
        state: match (in_recovery, streaming) {
            (false, _) => PgState::Primary,
            (true, true) => PgState::Streaming,
            (true, false) => PgState::Standby,
        },
        position: WalPosition {
            timeline: tli.max(0) as u32,
            lsn: Lsn::parse(&lsn).unwrap_or_default(),
        },
        streaming_followers: followers,
        sync_standby_names: ssn,
        physical_slots,
        detail,
    })
}

pub async fn promote(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let row = client
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await
        .map_err(sql_err)?;
    if row.get::<_, bool>(0) {
        // A promotion does not checkpoint at once; until it does, the control file still
        // names the old timeline and a pg_rewind against us would compute the wrong fork
        // point. Checkpoint now so deposed nodes can rewind immediately.
        client.batch_execute("CHECKPOINT").await.map_err(sql_err)?;
        Ok(())
    } else {
        Err(PgError::Sql("pg_promote did not finish within 30 s".into()))
    }
}

/// Serializes this agent's password changes: each reads the stored hash before it replaces
/// the password, and two interleaved could put back a password another just replaced.
static PASSWORD_CHANGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `role`'s stored password (`pg_authid.rolpassword`): `None` when the role does not exist,
/// `Some(None)` when it has no password.
async fn stored_password(
    client: &tokio_postgres::Client,
    role: &str,
) -> Result<Option<Option<String>>, PgError> {
    Ok(client
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(sql_err)?
        .map(|r| r.get(0)))
}

/// Whether `stored` (a `rolpassword`, md5 or SCRAM-SHA-256 as PostgreSQL makes them) was made
/// from `password`: which of the passwords a node knows the catalog holds, without trying to
/// log in with each.
pub fn password_matches(stored: &str, role: &str, password: &str) -> bool {
    match PasswordHash::of_stored(stored) {
        Some(PasswordHash::Md5) => {
            postgres_protocol::password::md5(password.as_bytes(), role) == stored
        }
        Some(PasswordHash::Scram) => scram_matches(stored, password),
        None => false,
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, 7677): StoredKey is
/// SHA-256(HMAC(SaltedPassword, "Client Key")), SaltedPassword PBKDF2-HMAC-SHA-256 of the
/// SASLprep'd password, as PostgreSQL computes it.
fn scram_matches(stored: &str, password: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let parse = || -> Option<(std::num::NonZeroU32, Vec<u8>, Vec<u8>)> {
        let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, _server_key) = keys.split_once(':')?;
        Some((
            iterations.parse().ok()?,
            b64.decode(salt).ok()?,
            b64.decode(stored_key).ok()?,
        ))
    };
    let Some((iterations, salt, stored_key)) = parse() else {
        return false;
    };
    // PostgreSQL hashes the raw bytes of a password SASLprep refuses.
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_string());
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        prepared.as_bytes(),
        &mut salted,
    );
    let client_key = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted),
        b"Client Key",
    );
    ring::digest::digest(&ring::digest::SHA256, client_key.as_ref()).as_ref() == stored_key
}

/// `statement` (ending in `PASSWORD`) with `password` stored as `hash`, in one implicit
/// transaction (run it with [`run_password_sql`]). A failed statement is not logged either
/// (`log_min_error_statement` would print its text, password included); `synchronous_commit =
/// local`: the HA loop must not block on followers that are still rewinding onto a new leader.
fn password_sql(statement: &str, password: &str, hash: PasswordHash) -> String {
    format!(
        "SET LOCAL log_min_error_statement = 'panic'; SET LOCAL synchronous_commit = 'local'; \
         SET LOCAL password_encryption = '{}'; {statement} '{}'",
        hash.encryption(),
        password.replace('\'', "''")
    )
}

/// Run [`password_sql`] text with statement logging off for this session first: a query
/// string is logged when it arrives, before any `SET` inside it could take effect.
async fn run_password_sql(client: &tokio_postgres::Client, sql: &str) -> Result<(), PgError> {
    client
        .batch_execute("SET log_statement = 'none'")
        .await
        .map_err(sql_err)?;
    client.batch_execute(sql).await.map_err(sql_err)
}

/// Roles created on the founding node (and replicated everywhere): the replication role,
/// whose password is always stored SCRAM (its lines are scram-sha-256 whatever the clients'
/// method). Set only when the stored password is none of this node's (current or staged), so
/// a new leader never undoes a password change the cluster already made.
pub async fn create_roles(node: &Node, client: &tokio_postgres::Client) -> Result<(), PgError> {
    let _one = PASSWORD_CHANGE.lock().await;
    let user = &node.cfg.postgresql.replication_user;
    let secrets = node.secrets_now();
    let current = secrets.postgresql.replication_password.expose();
    let known = secrets.postgresql.replication_passwords();
    let statement = match stored_password(client, user).await? {
        Some(Some(s))
            if PasswordHash::of_stored(&s) == Some(PasswordHash::Scram)
                && known.iter().any(|p| password_matches(&s, user, p.expose())) =>
        {
            return Ok(())
        }
        Some(_) => format!("ALTER ROLE \"{user}\" WITH REPLICATION LOGIN PASSWORD"),
        None => format!("CREATE ROLE \"{user}\" WITH REPLICATION LOGIN PASSWORD"),
    };
    run_password_sql(
        client,
        &password_sql(&statement, current, PasswordHash::Scram),
    )
    .await?;
    Ok(())
}

/// Leader: store the superuser's password as `wanted` when it is stored the other way (see
/// `pgconf::wanted_superuser_hash`). The password stays the same: the one of this node's that
/// the stored hash was made from is stored again. Returns whether it was re-hashed.
pub async fn ensure_superuser_hash(
    node: &Node,
    client: &tokio_postgres::Client,
    wanted: PasswordHash,
) -> Result<bool, PgError> {
    let _one = PASSWORD_CHANGE.lock().await;
    let user = &node.cfg.postgresql.db_superuser;
    let Some(Some(stored)) = stored_password(client, user).await? else {
        return Ok(false);
    };
    if PasswordHash::of_stored(&stored) == Some(wanted) {
        return Ok(false);
    }
    let secrets = node.secrets_now();
    // During `rotate-secrets --postgresql` the stored one may be the staged password.
    let Some(password) = secrets
        .postgresql
        .superuser_passwords()
        .into_iter()
        .find(|p| password_matches(&stored, user, p.expose()))
    else {
        // Not a password this node knows: storing ours would change it, not re-hash it.
        tracing::warn!("the superuser's stored password is none of this node's secrets file; not re-hashing it as {wanted}");
        return Ok(false);
    };
    run_password_sql(
        client,
        &password_sql(
            &format!("ALTER ROLE \"{user}\" PASSWORD"),
            password.expose(),
            wanted,
        ),
    )
    .await?;
    tracing::info!(
        "superuser password now stored as {wanted} (postgresql.client_auth_method of every member)"
    );
    Ok(true)
}

/// How this node's catalog stores the superuser's password (`None`: no password, or no
/// connection).
pub async fn superuser_hash(node: &Node) -> Option<PasswordHash> {
    let client = connect(node, Duration::from_secs(3)).await.ok()?;
    let stored = stored_password(&client, &node.cfg.postgresql.db_superuser)
        .await
        .ok()??;
    PasswordHash::of_stored(&stored?)
}

/// Leader, `rotate-secrets --postgresql`: both roles' new passwords in one transaction, the
/// superuser's stored as it is now (md5 or SCRAM, see `ensure_superuser_hash`), the
/// replication role's SCRAM. Existing sessions (frontends', replication) are not affected:
/// PostgreSQL checks a password only when a session starts.
pub async fn set_passwords(
    node: &Node,
    client: &tokio_postgres::Client,
    superuser: &str,
    replication: &str,
) -> Result<(), PgError> {
    let _one = PASSWORD_CHANGE.lock().await;
    let (su, repl) = (
        &node.cfg.postgresql.db_superuser,
        &node.cfg.postgresql.replication_user,
    );
    let su_hash = match stored_password(client, su).await? {
        Some(Some(s)) => PasswordHash::of_stored(&s),
        _ => None,
    }
    .unwrap_or(PasswordHash::of_method(&node.pg_auth()));
    let sql = format!(
        "{}; {}",
        password_sql(&format!("ALTER ROLE \"{su}\" PASSWORD"), superuser, su_hash),
        // Its own SET LOCALs again: the second SET of password_encryption wins.
        password_sql(
            &format!("ALTER ROLE \"{repl}\" WITH REPLICATION LOGIN PASSWORD"),
            replication,
            PasswordHash::Scram
        )
    );
    run_password_sql(client, &sql).await
}

/// Whether this node's catalog (replicated from the leader) holds these passwords for the
/// superuser and the replication role.
pub async fn catalog_holds(
    node: &Node,
    client: &tokio_postgres::Client,
    superuser: &str,
    replication: &str,
) -> Result<bool, PgError> {
    let pg = &node.cfg.postgresql;
    for (role, password) in [
        (&pg.db_superuser, superuser),
        (&pg.replication_user, replication),
    ] {
        match stored_password(client, role).await? {
            Some(Some(s)) if password_matches(&s, role, password) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// This standby's WAL receiver: its pid and status, `None` when there is none.
pub async fn wal_receiver(
    client: &tokio_postgres::Client,
) -> Result<Option<(i32, String)>, PgError> {
    Ok(client
        .query_opt("SELECT pid, status FROM pg_stat_wal_receiver", &[])
        .await
        .map_err(sql_err)?
        .map(|r| (r.get(0), r.get(1))))
}

/// Leader: `synchronous_standby_names`, and one physical slot per registered member, given
/// what this iteration's observation found (`observed`); sends nothing when that already
/// matches, which is every iteration of a steady leader.
pub async fn apply_replication(
    client: &tokio_postgres::Client,
    observed: &PgObservation,
    ssn: &str,
    slots: &[String],
) -> Result<(), PgError> {
    let sql = sql_err;
    if observed.sync_standby_names != ssn {
        // ALTER SYSTEM refuses to run inside a (multi-statement) transaction: two calls.
        client
            .batch_execute(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                ssn.replace('\'', "''")
            ))
            .await
            .map_err(sql)?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(sql)?;
    }
    let existing = &observed.physical_slots;
    for s in slots {
        if !existing.contains(s) {
            // `IF NOT EXISTS` by hand: a slot created since the observation is not an error.
            client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS
                       (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                    &[s],
                )
                .await
                .map_err(sql)?;
        }
    }
    // Slots of members that were removed would pin WAL forever: drop them (inactive only).
    for s in existing {
        if s.starts_with("larder_") && !slots.contains(s) {
            let _ = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[s],
                )
                .await;
        }
    }
    Ok(())
}

async fn controldata(node: &Node) -> Result<String, PgError> {
    run_tool(
        node,
        bin(node, "pg_controldata"),
        &["-D".into(), node.paths.pg_data().display().to_string()],
        &[("LC_ALL", "C".into())],
    )
    .await
}

/// `Database cluster state` from pg_controldata (e.g. "in production", "shut down in recovery").
pub async fn control_state(node: &Node) -> Result<String, PgError> {
    let out = controldata(node).await?;
    Ok(controldata_field(&out, "Database cluster state").unwrap_or_default())
}

pub fn controldata_field(out: &str, field: &str) -> Option<String> {
    out.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Latest checkpoint position (after a clean shutdown: the shutdown checkpoint).
pub async fn checkpoint_position(node: &Node) -> Result<WalPosition, PgError> {
    let out = controldata(node).await?;
    let lsn = controldata_field(&out, "Latest checkpoint location")
        .and_then(|s| Lsn::parse(&s))
        .ok_or_else(|| PgError::Command("pg_controldata: no checkpoint location".into()))?;
    let tli = controldata_field(&out, "Latest checkpoint's TimeLineID")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Ok(WalPosition { timeline: tli, lsn })
}

/// Files Larder or the operator configured, which pg_rewind / pg_basebackup would replace.
const KEEP_FILES: &[&str] = &[
    "postgresql.conf",
    "larder.conf",
    "larder-recovery.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "postgresql.auto.conf",
];

fn save_config_files(node: &Node) -> Vec<(String, Vec<u8>)> {
    KEEP_FILES
        .iter()
        .filter_map(|f| {
            std::fs::read(node.paths.pg_data().join(f))
                .ok()
                .map(|b| (f.to_string(), b))
        })
        .collect()
}

fn restore_config_files(node: &Node, saved: &[(String, Vec<u8>)]) -> Result<(), PgError> {
    for (f, b) in saved {
        // postgresql.auto.conf holds the old leader's synchronous_standby_names; a follower
        // must start without it, the next leader writes its own.
        if f == "postgresql.auto.conf" {
            continue;
        }
        let p = node.paths.pg_data().join(f);
        std::fs::write(&p, b)?;
        chown(node, &p)?;
    }
    let auto = node.paths.pg_data().join("postgresql.auto.conf");
    std::fs::write(&auto, "# Managed by Larder (ALTER SYSTEM)\n")?;
    chown(node, &auto)?;
    Ok(())
}

/// Bring a crashed (not cleanly shut down) data directory to a consistent stop so pg_rewind
/// accepts it: single-user mode runs crash recovery and exits.
async fn finish_crash_recovery(node: &Node) -> Result<(), PgError> {
    let state = control_state(node).await?;
    // pg_rewind takes a target shut down in recovery to end at its minimum recovery point and
    // reads none of its WAL beyond. A former primary stopped early in its crash recovery (as a
    // standby) still holds its own WAL past that point and replays it at its next start, past
    // the fork: "no rewind required", then a standby on a history the leader never had. So a
    // diverged directory replays all its local WAL first; the shutdown restartpoint then
    // flushes the pages that replay dirtied, which moves the minimum recovery point to its end.
    let diverged = crate::markers::diverged_marker(node).exists();
    if state == "shut down" || (state == "shut down in recovery" && !diverged) {
        return Ok(());
    }
    if state == "in archive recovery" || state == "shut down in recovery" {
        // A crashed standby: single-user crash recovery would write an end-of-recovery
        // checkpoint at the end of its partial WAL and fork it from the leader's history.
        // Run it as a standby without upstream until consistent, then stop it cleanly.
        write_follow_conf(node, None)?;
        set_standby(node, true)?;
        let data = node.paths.pg_data().display().to_string();
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}'",
            node.paths.pg_socket_dir().display()
        );
        // The postmaster inherits pg_ctl's stdout and stderr: left on our pipes, `pg_ctl
        // start` would not return before the server exits. It logs to its own file instead.
        let log = recovery_log(node)?;
        // A standby that needs WAL it never received cannot become consistent on its own:
        // give it a short while, then let the caller fall back to a fresh base backup. The
        // instance is stopped in every case (a timed-out `pg_ctl start` leaves it running).
        let started = run_tool(
            node,
            bin(node, "pg_ctl"),
            &[
                "-D".into(),
                data.clone(),
                "-w".into(),
                "-t".into(),
                "20".into(),
                "-o".into(),
                opts,
                "-l".into(),
                log.display().to_string(),
                "start".into(),
            ],
            &[],
        )
        .await;
        if started.is_ok() && diverged {
            replay_local_wal(node).await;
        }
        for mode in ["fast", "immediate"] {
            let args: Vec<String> = ["-D", data.as_str(), "-m", mode, "-w", "-t", "30", "stop"]
                .iter()
                .map(|x| x.to_string())
                .collect();
            if run_tool(node, bin(node, "pg_ctl"), &args, &[])
                .await
                .is_ok()
            {
                break;
            }
        }
        started?;
        return Ok(());
    }
    let had_standby = standby_signal(node).exists();
    set_standby(node, false)?;
    let r = run_tool(
        node,
        bin(node, "postgres"),
        &[
            "--single".into(),
            "-D".into(),
            node.paths.pg_data().display().to_string(),
            "-c".into(),
            "synchronous_standby_names=".into(),
            "postgres".into(),
        ],
        &[],
    )
    .await;
    if had_standby {
        set_standby(node, true)?;
    }
    r.map(|_| ())
}

/// The log of the standby-without-upstream runs above, next to PostgreSQL's own log and
/// writable by its OS user.
fn recovery_log(node: &Node) -> Result<PathBuf, PgError> {
    let dir = node.paths.service_log_dir(SERVICE);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("recovery.log");
    if !log.exists() {
        std::fs::write(&log, b"")?;
    }
    chown(node, &log)?;
    Ok(log)
}

/// Waits until a standby without upstream has replayed the WAL in its own `pg_wal`: its replay
/// position has not moved for a second (bounded by a minute; the caller stops it either way).
async fn replay_local_wal(node: &Node) {
    let Ok(c) = connect(node, Duration::from_secs(5)).await else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (String::new(), 0);
    while still < 5 && std::time::Instant::now() < deadline {
        let Ok(row) = c
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
        else {
            return;
        };
        let now: Option<String> = row.get(0);
        let now = now.unwrap_or_default();
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leader_conn(node: &Node, leader: &LeaderRecord) -> String {
    format!(
        "host={} port={} user={} dbname=postgres sslmode=verify-ca sslrootcert={} sslcert={} sslkey={} connect_timeout=5",
        leader.address,
        node.cfg.postgresql.port,
        node.cfg.postgresql.db_superuser,
        tls_dir(node).join("ca.crt").display(),
        tls_dir(node).join("server.crt").display(),
        tls_dir(node).join("server.key").display()
    )
}

/// pg_rewind onto the leader's history, keeping our configuration files. PostgreSQL must be
/// stopped.
pub async fn rewind(node: &Node, leader: &LeaderRecord) -> Result<String, PgError> {
    finish_crash_recovery(node).await?;
    let saved = save_config_files(node);
    let secrets = node.secrets_now();
    let mut passwords = secrets
        .postgresql
        .superuser_passwords()
        .into_iter()
        .peekable();
    let res = loop {
        let password = passwords.next().expect("the current password at least");
        let res = run_tool(
            node,
            bin(node, "pg_rewind"),
            &[
                "-D".into(),
                node.paths.pg_data().display().to_string(),
                format!("--source-server={}", leader_conn(node, leader)),
                "--progress".into(),
            ],
            &[("PGPASSWORD", password.expose().to_string())],
        )
        .await;
        // Refused at connect, before touching anything: the leader may hold the staged one.
        match &res {
            Err(PgError::Command(e)) if refused_password(e) && passwords.peek().is_some() => {}
            _ => break res,
        }
    };
    restore_config_files(node, &saved)?;
    set_standby(node, true)?;
    write_follow_conf(node, Some(leader))?;
    res
}

/// Progress of a running base backup, for the CLI's progress bar.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CopyProgress {
    pub done_kb: u64,
    pub total_kb: u64,
}

/// Parses pg_basebackup's `--progress` line: `12345/67890 kB (18%), 0/1 tablespace`.
pub fn parse_progress(line: &str) -> Option<CopyProgress> {
    let line = line.trim();
    let (done, rest) = line.split_once('/')?;
    let total = rest.split_whitespace().next()?;
    Some(CopyProgress {
        done_kb: done.trim().parse().ok()?,
        total_kb: total.parse().ok()?,
    })
}

/// Fresh copy from the leader. The previous data directory is kept as `data.previous` until
/// the copy succeeds (one generation, so a failed copy never loses the only data).
pub async fn basebackup(
    node: &Node,
    leader: &LeaderRecord,
    progress: impl Fn(CopyProgress) + Send + Sync,
) -> Result<(), PgError> {
    prepare_dirs(node)?;
    let data = node.paths.pg_data();
    let previous = data.with_file_name("data.previous");
    let saved = save_config_files(node);
    if data.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous)?;
        }
        std::fs::rename(&data, &previous)?;
    }
    let secrets = node.secrets_now();
    let mut passwords = secrets
        .postgresql
        .replication_passwords()
        .into_iter()
        .peekable();
    let failed = loop {
        let password = passwords.next().expect("the current password at least");
        match run_basebackup(node, leader, password.expose(), &progress).await? {
            None => break None,
            // Refused at connect (nothing copied): the leader may hold the staged one.
            Some(msg) if refused_password(&msg) && passwords.peek().is_some() => {
                let _ = std::fs::remove_dir_all(&data);
            }
            Some(msg) => break Some(msg),
        }
    };
    if let Some(msg) = failed {
        let _ = std::fs::remove_dir_all(&data);
        if previous.exists() {
            std::fs::rename(&previous, &data)?;
        }
        return Err(PgError::Command(format!(
            "pg_basebackup failed: {}",
            msg.trim()
        )));
    }
    restore_config_files(node, &saved)?;
    write_config(node)?;
    set_standby(node, true)?;
    write_follow_conf(node, Some(leader))?;
    chown_tree(node, &data)?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous)?;
    }
    Ok(())
}

/// One `pg_basebackup` run from `leader` into the data directory: `None` when it succeeded,
/// else its messages.
async fn run_basebackup(
    node: &Node,
    leader: &LeaderRecord,
    password: &str,
    progress: &(impl Fn(CopyProgress) + Send + Sync),
) -> Result<Option<String>, PgError> {
    let data = node.paths.pg_data();
    let mut cmd = tokio::process::Command::new(bin(node, "pg_basebackup"));
    cmd.args([
        "-D",
        &data.display().to_string(),
        "-h",
        &leader.address,
        "-p",
        &node.cfg.postgresql.port.to_string(),
        "-U",
        &node.cfg.postgresql.replication_user,
        "-X",
        "stream",
        "-c",
        "fast",
        "--progress",
        "--no-password",
    ])
    .env("PGPASSWORD", password)
    .env("PGSSLMODE", "verify-ca")
    .env("PGSSLROOTCERT", tls_dir(node).join("ca.crt"))
    .env("PGSSLCERT", tls_dir(node).join("server.crt"))
    .env("PGSSLKEY", tls_dir(node).join("server.key"))
    .env("PGAPPNAME", "larder-basebackup")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .current_dir("/tmp");
    if let Some((uid, gid)) = node.pg_user {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| PgError::Command(format!("cannot run pg_basebackup: {e}")))?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut all = String::new();
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    loop {
        let n = stderr.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let chunk = String::from_utf8_lossy(&buf[..n]).to_string();
        all.push_str(&chunk);
        pending.push_str(&chunk);
        // Progress lines end with '\r'; messages with '\n'.
        while let Some(i) = pending.find(['\r', '\n']) {
            let line: String = pending.drain(..=i).collect();
            if let Some(p) = parse_progress(&line) {
                progress(p);
            }
        }
    }
    let status = child.wait().await?;
    if status.success() {
        return Ok(None);
    }
    Ok(Some(
        all.lines()
            .filter(|l| !l.contains(" kB ("))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn replication_rows_come_as_one_json_array() {
        assert!(parse_replication(None).unwrap().is_empty());
        assert!(parse_replication(Some("[]")).unwrap().is_empty());
        let r = parse_replication(Some(
            r#"[["b2", "streaming", "quorum", 8192, 0.25], ["b3", "catchup", "async", -1, 0]]"#,
        ))
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (
                r[0].application_name.as_str(),
                r[0].state.as_str(),
                r[0].sync_state.as_str()
            ),
            ("b2", "streaming", "quorum")
        );
        assert_eq!((r[0].lag_bytes, r[0].lag_seconds), (8192, 0.25));
        assert_eq!(r[1].lag_bytes, 0, "a negative difference is no lag");
        assert!(parse_replication(Some("{}")).is_err());
    }
    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("  12345/67890 kB (18%), 0/1 tablespace\r"),
            Some(CopyProgress {
                done_kb: 12345,
                total_kb: 67890
            })
        );
        assert_eq!(parse_progress("pg_basebackup: starting"), None);
    }
    #[test]
    fn stored_passwords_are_matched_against_the_known_ones() {
        // As PostgreSQL stores them (postgres-protocol computes them the same way).
        let scram = postgres_protocol::password::scram_sha_256(b"s3cret-Pa55");
        assert!(scram.starts_with("SCRAM-SHA-256$4096:"), "{scram}");
        assert!(password_matches(&scram, "chef_pgsql", "s3cret-Pa55"));
        assert!(!password_matches(&scram, "chef_pgsql", "s3cret-Pa56"));
        let md5 = postgres_protocol::password::md5(b"s3cret-Pa55", "chef_pgsql");
        assert!(password_matches(&md5, "chef_pgsql", "s3cret-Pa55"));
        // The user name is md5's salt.
        assert!(!password_matches(&md5, "replicator", "s3cret-Pa55"));
        assert!(!password_matches(&md5, "chef_pgsql", "other"));
        for junk in [
            "",
            "SCRAM-SHA-256$x",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "s3cret-Pa55",
        ] {
            assert!(
                !password_matches(junk, "chef_pgsql", "s3cret-Pa55"),
                "{junk}"
            );
        }
        // A failing password statement does not leave its text in the log; the password is
        // quoted.
        let sql = password_sql("ALTER ROLE \"u\" PASSWORD", "it's", PasswordHash::Md5);
        assert!(
            sql.contains("SET LOCAL log_min_error_statement = 'panic'"),
            "{sql}"
        );
        assert!(
            sql.contains("SET LOCAL password_encryption = 'md5'"),
            "{sql}"
        );
        assert!(sql.ends_with("PASSWORD 'it''s'"), "{sql}");
    }

    #[test]
    fn controldata_parsing() {
        let out = "Database cluster state:               in production\nLatest checkpoint location:           0/3000060\n";
        assert_eq!(
            controldata_field(out, "Database cluster state").as_deref(),
            Some("in production")
        );
        assert_eq!(
            controldata_field(out, "Latest checkpoint location").as_deref(),
            Some("0/3000060")
        );
    }
}
