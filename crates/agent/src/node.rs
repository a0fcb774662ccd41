//! Everything one node's agent and CLI need to act: paths, configuration, secrets, identity,
//! and the OS user PostgreSQL runs as.

use larder_core::config::Config;
use larder_core::paths::Paths;
use larder_core::secrets::Secrets;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Identity and bootstrap facts, written once by create-cluster / join-cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// 32 hex characters, like Chef Backend's node GUIDs.
    pub guid: String,
    /// etcd `--initial-cluster` value used on first start.
    pub etcd_initial_cluster: String,
    /// `new` for the founding node, `existing` for joiners.
    pub etcd_initial_state: String,
    pub created_unix: u64,
    /// Set once this node's etcd member has run as a voter with data: from then on an etcd
    /// data directory without member data is lost data, never a cluster to bootstrap
    /// (`etcd_seat`).
    #[serde(default)]
    pub etcd_seated: bool,
    /// Client URLs of the etcd members last seen, so an agent started while its own member is
    /// down still reaches the others (the founder's `etcd_initial_cluster` names only itself).
    #[serde(default)]
    pub etcd_members: Vec<String>,
    /// The learner id a replacement of a lost member added, until it is a voter: it starts
    /// with an empty directory on purpose.
    #[serde(default)]
    pub etcd_replacing: Option<u64>,
}

impl NodeState {
    pub fn load(path: &Path) -> anyhow::Result<NodeState> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))
    }
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Write a file readable only by its owner (secrets, keys, node state).
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// A random 32-hex GUID.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random alphanumeric password of `n` characters.
pub fn new_password(n: usize) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut b = vec![0u8; n];
    fill_random(&mut b);
    b.iter()
        .map(|x| ALPHA[*x as usize % ALPHA.len()] as char)
        .collect()
}

/// Fresh search API credentials for a new cluster's secrets file.
pub fn new_search_credentials() -> (String, larder_core::secrets::Secret) {
    (
        SEARCH_USER_NAME.to_string(),
        larder_core::secrets::Secret::new(new_password(40)),
    )
}

/// The HTTP Basic user name a new cluster's search API accepts.
pub const SEARCH_USER_NAME: &str = "larder";

fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom is readable");
}

#[derive(Clone)]
pub struct Node {
    pub paths: Paths,
    pub cfg: Config,
    pub secrets: Secrets,
    pub state: NodeState,
    /// uid/gid PostgreSQL runs as (`postgres` when we are root, else ourselves).
    pub pg_user: Option<(u32, u32)>,
    /// What the listeners enforce (config and secrets together, `larder_core::security`).
    pub security: larder_core::security::Effective,
    /// The client method PostgreSQL's pg_hba.conf is written with, shared by every clone:
    /// `reconfigure` changes it under a running agent (whose `cfg` copies keep the value read
    /// at start), and everything that rewrites pg_hba.conf or posts this node's status reads
    /// it here.
    pg_auth: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Node {
    pub fn load(paths: &Paths) -> anyhow::Result<Node> {
        let cfg = Config::load(&paths.config_file())?;
        let secrets = Secrets::load(&paths.secrets_file())?;
        let state = NodeState::load(&paths.node_state_file())?;
        let security = larder_core::security::Effective::of(&cfg, &secrets)
            .map_err(|e| anyhow::anyhow!("{}: {e}", paths.config_file().display()))?;
        Ok(Node {
            paths: paths.clone(),
            secrets,
            state,
            pg_user: pg_os_user()?,
            security,
            pg_auth: std::sync::Arc::new(std::sync::Mutex::new(
                cfg.postgresql.client_auth_method.clone(),
            )),
            cfg,
        })
    }

    /// The client method pg_hba.conf is (being) written with; see the field.
    pub fn pg_auth(&self) -> String {
        self.pg_auth.lock().unwrap().clone()
    }

    pub fn set_pg_auth(&self, method: &str) {
        *self.pg_auth.lock().unwrap() = method.to_string();
    }

    /// This node's etcd endpoints: its own first, then the rest of the initial cluster (the
    /// member refresh keeps the list current while the agent runs).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        let mut urls = vec![self.etcd_client_url()];
        for part in self.state.etcd_initial_cluster.split(',') {
            if let Some((_, peer)) = part.split_once('=') {
                let client = peer.replace(
                    &format!(":{}", self.cfg.etcd.peer_port),
                    &format!(":{}", self.cfg.etcd.client_port),
                );
                if !urls.contains(&client) {
                    urls.push(client);
                }
            }
        }
        for u in &self.state.etcd_members {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        urls
    }

    /// An etcd client for this node (TLS with the cluster's certificates).
    pub fn dcs(&self) -> anyhow::Result<crate::dcs::Dcs> {
        Ok(crate::dcs::Dcs::new(
            self.etcd_endpoints(),
            self.tls()?,
            std::time::Duration::from_millis(self.cfg.leaderl.db_timeout),
        ))
    }

    /// The secrets as the file says now: `rotate-secrets` changes the file under a running
    /// agent, so what is handed to services and probes comes from here, not from the copy
    /// loaded at start (which it falls back to if the file cannot be read).
    pub fn secrets_now(&self) -> Secrets {
        Secrets::load(&self.paths.secrets_file()).unwrap_or_else(|e| {
            tracing::warn!("{e}; using the secrets read at start");
            self.secrets.clone()
        })
    }

    /// The CA certificates this node trusts: its installed `ca.crt` (the cluster CA and
    /// `ssl.ca`, written by create/join and `rotate-certs`, see `crate::identity`); the cluster
    /// CA alone if that file is missing. Read each time, so a rotation that changed it reaches
    /// every later copy.
    pub fn trust_pem(&self) -> String {
        std::fs::read_to_string(self.paths.tls_dir().join("ca.crt"))
            .ok()
            .filter(|t| t.contains("BEGIN CERTIFICATE"))
            .unwrap_or_else(|| self.secrets.larder.ca_cert_pem.clone())
    }

    pub fn tls(&self) -> anyhow::Result<crate::dcs::TlsFiles> {
        let dir = self.paths.tls_dir();
        Ok(crate::dcs::TlsFiles {
            ca_pem: self.trust_pem(),
            cert_pem: std::fs::read_to_string(dir.join("node.crt"))?,
            key_pem: std::fs::read_to_string(dir.join("node.key"))?,
        })
    }

    /// A supervised service of this node with the common settings: its log under
    /// `/var/log/larder/<name>` rotated by `log_rotation.*`, SIGTERM to stop, and — since nothing
    /// of this node may outlive its agent (a restarted agent must find the ports free and start
    /// from a known state) — killed with the agent.
    pub fn service_base(
        &self,
        name: &str,
        program: std::path::PathBuf,
    ) -> crate::supervisor::ServiceSpec {
        crate::supervisor::ServiceSpec {
            name: name.into(),
            program,
            args: vec![],
            env: vec![],
            user: None,
            cwd: None,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            pre_start: None,
            die_with_agent: true,
            log_dir: self.paths.service_log_dir(name),
            log_max_bytes: self.cfg.log_rotation.file_maxbytes,
            log_keep: self.cfg.log_rotation.num_to_keep,
        }
    }

    pub fn etcd_client_url(&self) -> String {
        format!(
            "https://{}:{}",
            url_host(&self.cfg.publish_address),
            self.cfg.etcd.client_port
        )
    }

    pub fn etcd_peer_url(&self) -> String {
        format!(
            "https://{}:{}",
            url_host(&self.cfg.publish_address),
            self.cfg.etcd.peer_port
        )
    }
}

/// IPv6 addresses need brackets inside URLs.
pub fn url_host(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// PostgreSQL refuses to run as root: when we are root it runs as the Debian `postgres` user.
pub fn pg_os_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let u = nix::unistd::User::from_name("postgres")?.ok_or_else(|| {
        anyhow::anyhow!(
            "the `postgres` OS user does not exist; install PostgreSQL 15 (apt-get install postgresql-15)"
        )
    })?;
    Ok(Some((u.uid.as_raw(), u.gid.as_raw())))
}
