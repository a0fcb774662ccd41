//! The supervised search service: `larder search-service` run as its own unprivileged user
//! ([`accounts::SEARCH_USER`]).
//!
//! That user cannot read `/etc/larder` (the secrets file, the node key), so the agent hands the
//! service exactly what it needs in a settings file only the service's user can read, rewritten
//! before every start.

use crate::accounts::{self, Account};
use crate::node::Node;
use crate::supervisor::ServiceSpec;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const SERVICE: &str = "elasticsearch";

/// What the search service process needs, and nothing more.
#[derive(Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The search port on the publish address: HTTPS when `tls` is set.
    pub listen: String,
    /// Certificate chain and key copied where the service's user can read them.
    #[serde(default)]
    pub tls: Option<larder_search::tls::TlsFiles>,
    /// Accepted HTTP Basic credentials; empty = no authentication.
    #[serde(default)]
    pub auth: Vec<larder_search::auth::Credential>,
    /// `elasticsearch.plain_http_port` on 127.0.0.1, when configured.
    #[serde(default)]
    pub plain_listen: Option<String>,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    /// The superuser's staged password during `rotate-secrets --postgresql`, tried when
    /// `pg_password` is refused; the running service re-reads both from this file before
    /// each new connection (`larder_search::PgTarget::password_file`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pg_next_password: String,
    pub index_dir: PathBuf,
    pub es_major: u8,
    pub cluster_name: String,
    pub node_name: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .field("plain_listen", &self.plain_listen)
            .field("pg_host", &self.pg_host)
            .field("pg_user", &self.pg_user)
            .field("pg_password", &"********")
            .field("index_dir", &self.index_dir)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn of(node: &Node) -> Settings {
        let secrets = node.secrets_now();
        let sec = &secrets.elasticsearch;
        Settings {
            listen: format!(
                "{}:{}",
                crate::node::url_host(&node.cfg.publish_address),
                node.cfg.elasticsearch.port
            ),
            tls: node.security.search_tls.then(|| tls_files(node)),
            auth: if node.security.search_auth {
                // During `rotate-secrets` the replaced password is accepted too.
                [&sec.auth_password, &sec.previous_auth_password]
                    .into_iter()
                    .filter(|p| !p.expose().is_empty())
                    .map(|p| larder_search::auth::Credential {
                        username: sec.auth_username.clone(),
                        password: p.expose().to_string(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            plain_listen: (node.cfg.elasticsearch.plain_http_port != 0)
                .then(|| format!("127.0.0.1:{}", node.cfg.elasticsearch.plain_http_port)),
            pg_host: node.paths.pg_socket_dir().display().to_string(),
            pg_port: node.cfg.postgresql.port,
            pg_user: node.cfg.postgresql.db_superuser.clone(),
            pg_password: secrets
                .postgresql
                .db_superuser_password
                .expose()
                .to_string(),
            pg_next_password: secrets
                .postgresql
                .next_db_superuser_password
                .expose()
                .to_string(),
            index_dir: node.paths.search_index(),
            es_major: node.cfg.elasticsearch.major_version,
            cluster_name: sec.cluster_name.clone(),
            node_name: node.cfg.fqdn.clone(),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the search service settings {}: {e} (the agent writes them before it starts the service)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))
    }
}

/// The settings file the agent writes for the service.
pub fn settings_file(node: &Node) -> PathBuf {
    node.paths.data_dir().join("search/service.json")
}

/// Where the service reads its certificate chain and key.
fn tls_files(node: &Node) -> larder_search::tls::TlsFiles {
    let dir = node.paths.data_dir().join("search/tls");
    larder_search::tls::TlsFiles {
        cert_chain: dir.join("chain.pem"),
        key: dir.join("key.pem"),
    }
}

/// Copy the node certificate (with its CA) and key where the service's user can read them.
/// The service picks up new files at its next handshake (`larder_search::tls`), so this is
/// also how a re-issued certificate reaches it.
pub fn write_tls(node: &Node, account: Option<Account>) -> anyhow::Result<()> {
    let files = tls_files(node);
    let src = node.paths.tls_dir();
    let cert = std::fs::read_to_string(src.join("node.crt"))?;
    let key = std::fs::read_to_string(src.join("node.key"))?;
    // An issued certificate is sent with the cluster CA; an operator's file already holds
    // its leaf and intermediates.
    let chain = if !crate::pki::issued_by(&cert, &node.secrets.larder.ca_cert_pem) {
        cert
    } else {
        format!("{}\n{}", cert.trim_end(), node.secrets.larder.ca_cert_pem)
    };
    // Key first: a handshake between the two writes fails to load the pair and keeps the old.
    accounts::write_owned(&files.key, key.as_bytes(), account, accounts::SEARCH_USER)?;
    accounts::write_owned(
        &files.cert_chain,
        chain.as_bytes(),
        account,
        accounts::SEARCH_USER,
    )?;
    Ok(())
}

/// Create the account, the service's directories (owned by it) and its settings file.
pub fn prepare(node: &Node) -> anyhow::Result<Option<Account>> {
    let account = accounts::ensure(accounts::SEARCH_USER)?;
    let dir = node.paths.data_dir().join("search");
    std::fs::create_dir_all(node.paths.search_index())?;
    std::fs::create_dir_all(dir.join("tls"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(dir.join("tls"), std::fs::Permissions::from_mode(0o700))?;
    accounts::chown_tree(&dir, account, accounts::SEARCH_USER)?;
    if node.security.search_tls {
        write_tls(node, account)?;
    }
    write_settings(node, account)?;
    Ok(account)
}

/// (Re)write the service's settings file; the running service re-reads the accepted
/// credentials from it when it changes (`larder_search::auth::Accepted`).
pub fn write_settings(node: &Node, account: Option<Account>) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&Settings::of(node))?;
    accounts::write_owned(&settings_file(node), &json, account, accounts::SEARCH_USER)
}

/// Give the index (rebuilt by `larder reindex` as root) back to the service's user.
pub fn own_index(node: &Node) -> anyhow::Result<()> {
    let account = accounts::ensure(accounts::SEARCH_USER)?;
    accounts::chown_tree(
        &node.paths.data_dir().join("search"),
        account,
        accounts::SEARCH_USER,
    )?;
    Ok(())
}

/// True when every directory above `path` and the file itself can be searched/executed by
/// anyone (the service's user is neither owner nor in the group of a build tree under /root).
fn world_executable(path: &Path) -> bool {
    let ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    ok(path) && path.ancestors().skip(1).all(ok)
}

/// The program the service runs: the agent's own executable. When the service's user cannot
/// reach it (a build tree under a 0700 home), a copy in the node's run directory, so the service
/// never needs to run as root.
pub fn program(node: &Node, account: Option<Account>) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if account.is_none() || world_executable(&exe) {
        return Ok(exe);
    }
    let dir = node.paths.run_dir().join("bin");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join("larder");
    let tmp = dir.join("larder.tmp");
    let _ = std::fs::remove_file(&tmp);
    // A hard link (same file system) costs nothing when the file itself may be run by others
    // and only its directories were out of reach. Otherwise a copy.
    let others_may_run = std::fs::metadata(&exe)?.permissions().mode() & 0o001 != 0;
    if !others_may_run || std::fs::hard_link(&exe, &tmp).is_err() {
        std::fs::copy(&exe, &tmp).map_err(|e| {
            anyhow::anyhow!("cannot copy {} to {}: {e}", exe.display(), tmp.display())
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, &copy)?;
    Ok(copy)
}

pub fn service_spec(node: &Node, account: Option<Account>, program: PathBuf) -> ServiceSpec {
    ServiceSpec {
        args: vec![
            "--root".into(),
            node.paths.root().display().to_string(),
            "search-service".into(),
            "--settings".into(),
            settings_file(node).display().to_string(),
        ],
        env: vec![],
        user: account.map(|a| (a.uid, a.gid)),
        cwd: Some(node.paths.data_dir().join("search")),
        ..node.service_base(SERVICE, program)
    }
}

/// `GET path` of this node's search service over the same TLS and with the same credentials
/// a frontend uses (trusting the node's CAs): the status code and body, or `None` when it did
/// not answer within 2 s.
pub async fn get(node: &Node, path: &str) -> Option<(u16, String)> {
    let secrets = node.secrets_now();
    let s = &secrets.elasticsearch;
    let creds = node
        .security
        .search_auth
        .then(|| (s.auth_username.as_str(), s.auth_password.expose()));
    get_as(node, &node.cfg.publish_address, path, creds).await
}

/// `GET path` of the search service of the node at `address` (this node's port and TLS
/// setting), with `creds` as HTTP Basic credentials.
pub async fn get_as(
    node: &Node,
    address: &str,
    path: &str,
    creds: Option<(&str, &str)>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = format!(
        "{}:{}",
        crate::node::url_host(address),
        node.cfg.elasticsearch.port
    );
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some((user, password)) = creds {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let mut answer = Vec::new();
        // HTTP/1.0: the service closes the connection after the answer.
        if node.security.search_tls {
            let connector = tokio_rustls::TlsConnector::from(probe_config(&node.trust_pem())?);
            let ip: std::net::IpAddr = address.parse().ok()?;
            let mut s = connector
                .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                .await
                .ok()?;
            s.write_all(req.as_bytes()).await.ok()?;
            // A peer closing without close_notify still delivered what it sent.
            let _ = s.read_to_end(&mut answer).await;
        } else {
            let mut s = tcp;
            s.write_all(req.as_bytes()).await.ok()?;
            s.read_to_end(&mut answer).await.ok()?;
        }
        let text = String::from_utf8_lossy(&answer).to_string();
        let code: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The agent's own health check of its search service: `GET /`, 2xx = healthy.
pub async fn probe(node: &Node) -> bool {
    get(node, "/")
        .await
        .is_some_and(|(code, _)| (200..300).contains(&code))
}

/// The probe's client configuration for `ca_pem`, kept while the trust stays the same: the
/// probe runs every second, and a kept configuration resumes its TLS session instead of
/// verifying the service's certificate chain again each time.
fn probe_config(ca_pem: &str) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    type Kept = Option<(String, std::sync::Arc<rustls::ClientConfig>)>;
    static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(None);
    let mut kept = KEPT.lock().unwrap();
    if let Some((pem, cfg)) = kept.as_ref() {
        if pem == ca_pem {
            return Some(cfg.clone());
        }
    }
    let cfg = client_config(ca_pem).ok()?;
    *kept = Some((ca_pem.to_string(), cfg.clone()));
    Some(cfg)
}

/// A rustls client trusting only `ca_pem` (the cluster CA).
pub fn client_config(ca_pem: &str) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}
