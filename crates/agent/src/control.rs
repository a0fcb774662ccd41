//! The agent's control socket: a root-only (0600) unix socket speaking one JSON request and
//! one JSON response per connection. Every CLI verb that acts on a configured node goes through
//! it (the CLI writes etcd only while bootstrapping a node that has no agent yet).

use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Local status: services, HA state.
    Status,
    /// runit-style verb on one service or all (`service: None`).
    Service {
        verb: String,
        service: Option<String>,
    },
    /// Re-read larder.toml and apply what changed.
    Reconfigure,
    /// Stop every service and exit.
    Shutdown,
    /// Take leadership if no leader exists and this node is the most advanced reachable one.
    ForceLeader,
    /// Re-sync PostgreSQL from the leader (`pgsql-follow`).
    Resync { force_basebackup: bool },
    /// `set-cluster-failover` (`cluster`) or `set-node-failover` (this node).
    SetFailover { cluster: bool, on: bool },
    /// `promote NODE` (`target`) or `demote` (none): answered once the hand-over is done.
    Switchover { target: Option<String> },
    /// `remove-node NODE`; with `apply: false` only checked and described.
    RemoveNode { node: String, apply: bool },
    /// `down-for-upgrade`: record this node as down (order checked), stop its services;
    /// answered once PostgreSQL is stopped.
    DownForUpgrade,
    /// The end of `upgrade` on a node that was down for upgrade (order checked again).
    UpgradeDone,
    /// The leadership history, read from etcd (`larder history`).
    History,
    /// `rotate-certs`: every node (or only `node`) re-issues its certificates, one at a time;
    /// answered when all are done, with each node's old and new certificate.
    RotateCerts {
        node: Option<String>,
        days: Option<u32>,
    },
    /// `rotate-secrets --search`: a new search password accepted on every node beside the
    /// old (`finish: false`), or the old dropped everywhere (`finish: true`).
    RotateSearchPassword { finish: bool },
    /// `rotate-secrets --postgresql`: new passwords for the superuser and the replication
    /// role on every node (or carry on a rotation that stopped part-way).
    RotatePostgresqlPasswords,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Response {
        Response {
            ok: true,
            message: message.into(),
            data,
        }
    }
    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the Larder agent is not running (no socket at {0}); start it with `larder start` or check `larder tail agent`")]
    NotRunning(String),
    #[error("permission denied on {0}: run as root")]
    Permission(String),
    #[error("agent socket error: {0}")]
    Io(String),
}

/// Send one request to the local agent.
pub async fn call(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    let s = socket.display().to_string();
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::Permission(s))
        }
        Err(_) => return Err(ControlError::NotRunning(s)),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Io(e.to_string()))?;
    line.push('\n');
    w.write_all(line.as_bytes())
        .await
        .map_err(|e| ControlError::Io(e.to_string()))?;
    let mut reader = BufReader::new(r);
    let mut resp = String::new();
    reader
        .read_line(&mut resp)
        .await
        .map_err(|e| ControlError::Io(e.to_string()))?;
    serde_json::from_str(&resp).map_err(|e| ControlError::Io(format!("bad response: {e}")))
}

/// Bind the socket with mode 0600 (only root, the agent's user, may talk to it).
pub fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(socket);
    let l = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Read one request from an accepted connection and answer it with `handle`.
pub async fn serve_one<F, Fut>(stream: tokio::net::UnixStream, handle: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req).await,
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    if let Ok(mut s) = serde_json::to_string(&resp) {
        s.push('\n');
        let _ = w.write_all(s.as_bytes()).await;
    }
}

/// What `Request::Status` answers (and `status --json` prints): this node's services and HA
/// state, and the cluster view the agent last read. Shared by agent and CLI, so neither reads
/// the other's JSON by string paths.
// Every field defaults: a status from an agent of the previous release (which lacks the
// newer fields) still parses, so `upgrade` can read it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentStatus {
    /// `leaderl` (the agent itself) first, then every supervised service.
    pub services: Vec<crate::supervisor::ServiceState>,
    pub ha: HaStatus,
    pub members: Vec<larder_core::model::MemberStatus>,
    pub nodes: Vec<larder_core::model::NodeRecord>,
    pub voters: Vec<String>,
    pub etcd_members: Vec<EtcdMemberRow>,
    pub upgrade: UpgradeState,
}

/// Upgrades in progress (see `larder_core::decide::upgrade`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpgradeState {
    /// The node whose rolling `upgrade` is running.
    pub lock: Option<larder_core::model::UpgradeLock>,
    /// Nodes down for a full-downtime upgrade.
    pub down: Vec<larder_core::model::DownForUpgrade>,
}

impl AgentStatus {
    pub fn service(&self, name: &str) -> Option<&crate::supervisor::ServiceState> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn service_running(&self, name: &str) -> bool {
        self.service(name).is_some_and(|s| s.running)
    }
    /// PostgreSQL's state as this node's loop last saw it.
    pub fn pg_state(&self) -> Option<larder_core::model::PgState> {
        self.ha.postgresql.as_ref().map(|p| p.state)
    }
}

/// This node's HA state (also `GET /status` on the health API).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HaStatus {
    pub name: String,
    /// Release and build of the running agent (`0.1.0+1a2b3c4d`, see `build::version`).
    pub version: String,
    pub guid: String,
    /// Chef Backend's role names (`leader`, `follower`, `waiting_for_leader`, …).
    pub role: Option<String>,
    pub reason: String,
    pub writable_leader: bool,
    pub term: u64,
    pub leader: Option<larder_core::model::LeaderRecord>,
    pub postgresql: Option<PgStatus>,
    pub etcd_ok: bool,
    pub search_ok: bool,
    pub cluster_failover: bool,
    pub node_failover: bool,
    pub copy_progress: Option<crate::postgres::CopyProgress>,
    pub last_error: Option<String>,
    pub loop_age_ms: Option<u64>,
    /// Frontends' `/leader` check rhythm as seen here (times planned switchovers).
    pub frontend_checks: Vec<larder_core::check_phase::CheckPhase>,
    /// The VIP that follows the leader (`None`: none configured).
    pub vip: Option<VipStatus>,
    /// The last role-change hook that ran and how it ended.
    pub last_hook: Option<crate::hooks::HookReport>,
}

/// The configured VIP and whether it is on this node's interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub address: String,
    pub interface: String,
    pub present: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgStatus {
    pub state: larder_core::model::PgState,
    pub timeline: u32,
    pub lsn: String,
    pub streaming_followers: Vec<String>,
    pub synchronous_standby_names: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EtcdMemberRow {
    pub name: String,
    pub id: String,
    pub learner: bool,
    pub client_urls: Vec<String>,
}
