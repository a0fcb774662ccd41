//! pgBackRest on this node: its configuration file (written with PostgreSQL's, so archiving is
//! configured wherever PostgreSQL runs), its TLS server (supervised like the other services,
//! so other nodes can back up this node's PostgreSQL) and running it as PostgreSQL's OS user.
//! What goes in the file is `larder_core::backup`.

use crate::node::Node;
use crate::postgres::{chown, PgError};
use crate::supervisor::ServiceSpec;
use larder_core::backup::{self, Files};
use larder_core::backup_source::{BackupHost, ClientTls, CLIENT_CN};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The supervised pgBackRest TLS server.
pub const SERVICE: &str = "pgbackrest";

/// The node's pgBackRest config (beside PostgreSQL's TLS files: PostgreSQL's user must read
/// it when it runs `archive_command`).
pub fn conf_path(node: &Node) -> PathBuf {
    node.paths.data_dir().join("postgresql/pgbackrest.conf")
}

/// PostgreSQL's private copies of the node's TLS files (see `postgres::prepare_dirs`), and
/// pgBackRest's certificates beside them.
fn pg_tls_dir(node: &Node) -> PathBuf {
    node.paths.data_dir().join("postgresql/tls")
}

fn files(node: &Node) -> Files {
    let base = node.paths.data_dir().join("postgresql");
    let tls = pg_tls_dir(node);
    let path = |f: &str| tls.join(f).display().to_string();
    Files {
        tls_cert: path("pgbackrest-server.crt"),
        tls_key: path("pgbackrest-server.key"),
        tls_ca: path("ca.crt"),
        pg_data: node.paths.pg_data().display().to_string(),
        socket_dir: node.paths.pg_socket_dir().display().to_string(),
        log_dir: node
            .paths
            .service_log_dir("pgbackrest")
            .display()
            .to_string(),
        lock_dir: base.join("pgbackrest-lock").display().to_string(),
        spool_dir: base.join("pgbackrest-spool").display().to_string(),
    }
}

/// A repository on a file system (not an object store) that this node must be able to write.
fn posix_repo(node: &Node) -> bool {
    node.cfg
        .backup
        .pgbackrest
        .get("repo1-type")
        .is_none_or(|t| t == "posix" || t == "cifs")
}

/// Write the config (or remove it when backups are off). Returns the `archive_command`
/// PostgreSQL must use, if any.
pub fn write_conf(node: &Node) -> Result<Option<String>, PgError> {
    let conf = conf_path(node);
    if !node.cfg.backup.enabled() {
        let _ = std::fs::remove_file(&conf);
        return Ok(None);
    }
    let f = files(node);
    for d in [&f.log_dir, &f.lock_dir, &f.spool_dir] {
        std::fs::create_dir_all(d)?;
        chown(node, std::path::Path::new(d))?;
    }
    if posix_repo(node) {
        let repo = std::path::Path::new(&node.cfg.backup.repo_path);
        if !repo.exists() {
            std::fs::create_dir_all(repo)?;
            std::fs::set_permissions(repo, std::fs::Permissions::from_mode(0o750))?;
        }
        chown(node, repo)?;
    }
    write_certs(node, false)?;
    let text = backup::render_conf(&node.cfg, &f);
    if std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&conf, &text)?;
    }
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;
    chown(node, &conf)?;
    Ok(Some(backup::archive_command(&conf.display().to_string())))
}

/// The certificate this node presents to the other nodes' TLS servers.
pub fn client_tls(node: &Node) -> ClientTls {
    let tls = pg_tls_dir(node);
    let path = |f: &str| tls.join(f).display().to_string();
    ClientTls {
        cert: path("pgbackrest-client.crt"),
        key: path("pgbackrest-client.key"),
        ca: path("ca.crt"),
    }
}

/// Issues one certificate: (certificate PEM, key PEM).
type IssueFn<'a> = dyn Fn() -> Result<(String, String), crate::pki::PkiError> + 'a;

/// Issue the TLS server's certificate and the [`CLIENT_CN`] client certificate from the
/// cluster CA, beside PostgreSQL's copies (pgBackRest runs as PostgreSQL's user): once, or
/// again when `reissue` (`rotate-certs`; the TLS server reads them only when it starts).
pub fn write_certs(node: &Node, reissue: bool) -> Result<(), PgError> {
    let dir = pg_tls_dir(node);
    std::fs::create_dir_all(&dir)?;
    let ca_key = node.secrets.larder.ca_key_pem.expose();
    let validity = crate::pki::Validity::of(&node.cfg);
    let wanted: [(&str, &IssueFn); 2] = [
        ("pgbackrest-server", &|| {
            crate::pki::issue_pgbackrest_server_cert(
                ca_key,
                &node.cfg.fqdn,
                &node.cfg.publish_address,
                validity,
            )
        }),
        ("pgbackrest-client", &|| {
            crate::pki::issue_client_cert(ca_key, CLIENT_CN, validity)
        }),
    ];
    for (base, issue) in wanted {
        let (cert, key) = (
            dir.join(format!("{base}.crt")),
            dir.join(format!("{base}.key")),
        );
        if cert.exists() && key.exists() && !reissue {
            continue;
        }
        let (c, k) = issue()
            .map_err(|e| PgError::Command(format!("cannot issue the {base} certificate: {e}")))?;
        for (path, text) in [(&key, k), (&cert, c)] {
            crate::postgres::write_owned(node, path, text.as_bytes())?;
        }
    }
    Ok(())
}

/// What this node publishes, while its TLS server runs, so the others can back up its
/// PostgreSQL.
pub fn backup_host(node: &Node) -> BackupHost {
    BackupHost {
        port: node.cfg.backup.server_port,
        config: conf_path(node).display().to_string(),
        pg_path: node.paths.pg_data().display().to_string(),
        pg_socket: node.paths.pg_socket_dir().display().to_string(),
        pg_port: node.cfg.postgresql.port,
    }
}

/// The supervised `pgbackrest server`: as PostgreSQL's user (it reads the data directory for
/// backups from this node), with the superuser's password for the local connections remote
/// commands make (in its environment, never on a command line; the secrets file's current
/// one: `rotate-secrets --postgresql` restarts the server with the new one).
pub fn service_spec(node: &Node) -> ServiceSpec {
    ServiceSpec {
        args: vec![
            format!("--config={}", conf_path(node).display()),
            "server".into(),
        ],
        env: vec![
            ("HOME".into(), "/tmp".into()),
            (
                "PGPASSWORD".into(),
                node.secrets_now()
                    .postgresql
                    .db_superuser_password
                    .expose()
                    .to_string(),
            ),
        ],
        user: node.pg_user,
        cwd: Some(PathBuf::from("/tmp")),
        ..node.service_base(SERVICE, PathBuf::from("pgbackrest"))
    }
}

/// `pgbackrest --config=… --stanza=larder ARGS` as PostgreSQL's OS user, with the superuser's
/// password for the connections a backup makes (never on the command line): the one in
/// `node.secrets`, which `postgres::use_working_superuser_password` sets to the one the
/// server accepts.
pub fn command(node: &Node, args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("pgbackrest");
    cmd.arg(format!("--config={}", conf_path(node).display()))
        .arg(format!("--stanza={}", backup::STANZA))
        .args(args)
        .current_dir("/tmp")
        .env("HOME", "/tmp")
        .env(
            "PGPASSWORD",
            node.secrets.postgresql.db_superuser_password.expose(),
        );
    if let Some((uid, gid)) = node.pg_user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// After a promotion: push the older-timeline segments in `pg_wal` the old leader may never
/// have archived (see `larder_core::backup`), retrying for a while; what still fails is
/// recorded in `archive-gap` beside the config, which `backup` reports.
pub async fn catch_up_after_promotion(node: Node) {
    let marker = conf_path(&node).with_file_name("archive-gap");
    for attempt in 0..12u32 {
        match catch_up_once(&node).await {
            Ok(pushed) => {
                if pushed > 0 {
                    tracing::info!(
                        pushed,
                        "archived the previous timeline's remaining segments"
                    );
                }
                let _ = std::fs::remove_file(&marker);
                return;
            }
            Err(failed) => {
                tracing::warn!(attempt, "archiving after promotion: {failed}");
                let _ = std::fs::write(&marker, &failed);
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

async fn catch_up_once(node: &Node) -> Result<usize, String> {
    let wal = node.paths.pg_data().join("pg_wal");
    let control = tokio::process::Command::new(
        std::path::Path::new(&node.cfg.postgresql.bin_dir).join("pg_controldata"),
    )
    .arg(node.paths.pg_data())
    .output()
    .await
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&control.stdout).to_string();
    let timeline: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's TimeLineID:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("pg_controldata shows no timeline")?;
    let entries: Vec<(String, u64)> = std::fs::read_dir(&wal)
        .map_err(|e| format!("{}: {e}", wal.display()))?
        .flatten()
        .filter_map(|e| {
            let size = e.metadata().ok()?.len();
            Some((e.file_name().to_string_lossy().to_string(), size))
        })
        .collect();
    let todo = backup::catch_up_segments(entries.iter().map(|(n, s)| (n.as_str(), *s)), timeline);
    let mut failed = Vec::new();
    for seg in &todo {
        let path = wal.join(seg).display().to_string();
        let out = tokio::process::Command::from(command(node, &["archive-push", &path]))
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => failed.push(format!(
                "{seg}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => failed.push(format!("{seg}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(todo.len())
    } else {
        Err(failed.join("; "))
    }
}
