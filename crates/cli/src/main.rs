//! `larder` — the chef-backend-ctl compatible operator CLI and the agent entry point.
//! Invoked as `chef-backend-ctl` (a link) it behaves identically.

mod agent_client;
mod agent_log;
mod agent_process;
mod backup;
mod bootstrap;
mod cluster_ops;
mod dev;
mod gather_logs;
mod ha_status;
mod history;
mod import_chef;
mod local;
mod progress;
mod prompt;
mod recovery;
mod report;
mod restore_dump;
mod rotate_certs;
mod rotate_secrets;
mod seal;
mod server_config;
mod upgrade;

use clap::{Parser, Subcommand};
use larder_core::paths::Paths;

#[derive(Parser)]
#[command(
    name = "larder",
    version,
    about = "Larder: a high-availability backend cluster for Chef Infra Server (chef-backend-ctl compatible)"
)]
pub struct Cli {
    /// Root under which /etc/larder, /var/opt/larder, /var/log/larder and /run/larder live.
    #[arg(long, global = true, env = "LARDER_ROOT", default_value = "/")]
    root: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Initialise the cluster on this first node, which becomes leader.
    CreateCluster(bootstrap::CreateArgs),
    /// Join this node to the cluster of PEER using the shared secrets file.
    JoinCluster(bootstrap::JoinArgs),
    /// Remove a (down) node's etcd membership, replication slot and status.
    RemoveNode {
        node: String,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(short, long)]
        yes: bool,
    },
    /// Local services and the distributed view (`--json` for machines).
    Status {
        service: Option<String>,
        #[arg(long)]
        simple: bool,
        #[arg(long)]
        json: bool,
    },
    /// One row per cluster member: Name IP GUID Role PG ES.
    ClusterStatus {
        #[arg(long)]
        json: bool,
    },
    /// Leadership history: who led each term, why it changed hands, each write gap.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Rotate a secret without cutting off frontends: the new search password is accepted
    /// beside the old on every node until `--finish`.
    RotateSecrets {
        /// The search API's HTTP Basic password.
        #[arg(long)]
        search: bool,
        /// The PostgreSQL passwords (the superuser's and the replication role's), in one run:
        /// frontends need the new password for their next connections.
        #[arg(long)]
        postgresql: bool,
        /// With --search: drop the old value everywhere (after the frontends moved over).
        #[arg(long)]
        finish: bool,
    },
    /// Re-issue the node certificates from the cluster CA, one node at a time (followers
    /// first, the leader last), with no restart and no failover.
    RotateCerts {
        /// Only this node (name, address or GUID).
        #[arg(long)]
        node: Option<String>,
        /// Validity of the new certificates in days (default: each node's ssl.duration_days).
        #[arg(long)]
        days: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Leader steps down; a follower takes over with zero loss.
    Demote,
    /// Planned switchover to NODE (name or GUID) with zero loss.
    Promote { node: String },
    /// Take leadership on this node when no leader exists and it is the most advanced.
    ForceLeader,
    /// Allow or block automatic failover cluster-wide (on/off/true/false/enabled/disabled).
    SetClusterFailover { state: String },
    /// Allow or block this node becoming leader.
    SetNodeFailover { state: String },
    /// Print chef-server.rb for a Chef frontend.
    GenServerConfig {
        fqdn: String,
        #[arg(short = 'f', long)]
        file: Option<String>,
        /// chef-backend: Chef Infra Server ≤ 14 keys (`opscode_solr4`); opensearch: Chef 15
        /// (`opensearch['external_url']`, `search_provider 'opensearch'`).
        #[arg(long, value_enum, default_value = "chef-backend")]
        style: server_config::Style,
    },
    /// Print every larder.toml setting with its default and an explanation.
    GenSampleBackendConfig,
    /// Print the effective configuration.
    ShowConfig,
    /// Apply larder.toml changes, reloading or restarting only what changed.
    Reconfigure,
    /// Re-sync this node's PostgreSQL from the leader (rewind, or full copy with --force-basebackup).
    PgsqlFollow {
        /// The current leader (name, address or GUID); refused if it names another node.
        leader: Option<String>,
        #[arg(long)]
        force_basebackup: bool,
        /// Print each state change of the re-sync.
        #[arg(long)]
        verbose: bool,
    },
    /// Stop everything and remove data and logs, keeping a copy of the configuration.
    Cleanse {
        /// chef-backend-ctl's flag for external data; refused (Larder keeps none elsewhere).
        #[arg(long)]
        with_external: bool,
        #[arg(short, long)]
        yes: bool,
    },
    /// Stop the agent and every service, keeping data.
    Uninstall,
    /// Rebuild this node's search index from PostgreSQL.
    Reindex {
        /// Print the result as JSON (and no progress).
        #[arg(long)]
        json: bool,
    },
    /// After installing a new package: restart this node on it and verify it rejoined (one
    /// node at a time; `--failover` on the leader hands leadership over first).
    Upgrade {
        /// On the leader: a planned switchover to the most advanced follower first.
        #[arg(long)]
        failover: bool,
        /// Upgrade a follower although cluster failover is on.
        #[arg(short, long)]
        yes: bool,
        /// Seconds to wait for the rejoin to verify.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Print the result as JSON (and no progress).
        #[arg(long)]
        json: bool,
    },
    /// Full-downtime upgrade, step 1: take this node down (the leader first, then each
    /// follower); then `upgrade` on the followers, the old leader last.
    DownForUpgrade,
    /// Back up the cluster with pgBackRest (full, diff or incr; `--list` shows the backups).
    Backup(backup::BackupArgs),
    /// Build a new single-node cluster on this node from a backup (optionally to a point in
    /// time); the other nodes then join it.
    Restore(backup::RestoreArgs),
    /// Collect logs, redacted configuration, status and diagnostics into one support tarball.
    GatherLogs(gather_logs::GatherArgs),
    /// Write larder.toml and Larder's secrets from a Chef Backend node's chef-backend.rb and
    /// chef-backend-secrets.json (same PostgreSQL passwords).
    ImportChefBackend(import_chef::ImportArgs),
    /// Legacy Chef HA status checks: one line per check, exit 0 only when all pass.
    HaStatus {
        #[arg(long)]
        json: bool,
    },
    /// Start a service (or all).
    Start { service: Option<String> },
    /// Stop a service (or all).
    Stop { service: Option<String> },
    /// Restart a service (or all).
    Restart { service: Option<String> },
    /// Send SIGKILL to a service.
    Kill { service: Option<String> },
    /// Send SIGTERM to a service.
    Term { service: Option<String> },
    /// Send SIGHUP to a service.
    Hup { service: Option<String> },
    /// Send SIGINT to a service.
    Int { service: Option<String> },
    /// Start a service without restarting it when it exits.
    Once { service: Option<String> },
    /// Follow a service's log (all services without an argument).
    Tail { service: Option<String> },
    /// List supervised services.
    ServiceList { service: Option<String> },
    /// Run the node agent in the foreground (what create-cluster starts).
    Agent,
    /// A local cluster on this machine for trying Larder.
    Dev {
        #[command(subcommand)]
        cmd: dev::DevCmd,
    },
    /// The search service process (started by the agent).
    #[command(hide = true)]
    SearchService {
        /// Settings file written by the agent.
        #[arg(long)]
        settings: String,
    },
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Invoked as chef-backend-ctl: same CLI, same behaviour.
    let cli = Cli::parse();
    let paths = Paths::new(&cli.root);
    let filter = std::env::var("LARDER_LOG").unwrap_or_else(|_| "info".into());
    let builder =
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter));
    if matches!(cli.cmd, Cmd::Agent) {
        // The agent's log is rotated like the service logs (and stamped the same way).
        let log = agent_log::AgentLog::open(&paths);
        builder
            .without_time()
            .with_ansi(false)
            .with_writer(move || log.clone())
            .init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match rt.block_on(run(cli.cmd, paths)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Whether the command was asked for JSON: it then prints no progress.
fn wants_json(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Status { json, .. }
        | Cmd::ClusterStatus { json }
        | Cmd::History { json }
        | Cmd::RotateCerts { json, .. }
        | Cmd::HaStatus { json }
        | Cmd::Reindex { json }
        | Cmd::Upgrade { json, .. } => *json,
        Cmd::Backup(a) => a.json,
        Cmd::Restore(a) => a.json,
        _ => false,
    }
}

async fn run(cmd: Cmd, paths: Paths) -> anyhow::Result<()> {
    if wants_json(&cmd) {
        progress::quiet();
    }
    match cmd {
        Cmd::CreateCluster(a) => bootstrap::create_cluster(&paths, a).await,
        Cmd::JoinCluster(a) => bootstrap::join_cluster(&paths, a).await,
        Cmd::RemoveNode { node, yes } => cluster_ops::remove_node(&paths, &node, yes).await,
        Cmd::Status {
            service,
            simple,
            json,
        } => report::status(&paths, service.as_deref(), simple, json).await,
        Cmd::ClusterStatus { json } => report::cluster_status(&paths, json).await,
        Cmd::History { json } => history::history(&paths, json).await,
        Cmd::RotateSecrets {
            search,
            postgresql,
            finish,
        } => rotate_secrets::rotate_secrets(&paths, search, postgresql, finish).await,
        Cmd::RotateCerts { node, days, json } => {
            rotate_certs::rotate_certs(&paths, node, days, json).await
        }
        Cmd::Demote => cluster_ops::switchover(&paths, None).await,
        Cmd::Promote { node } => cluster_ops::switchover(&paths, Some(node)).await,
        Cmd::ForceLeader => cluster_ops::force_leader(&paths).await,
        Cmd::SetClusterFailover { state } => cluster_ops::set_failover(&paths, &state, true).await,
        Cmd::SetNodeFailover { state } => cluster_ops::set_failover(&paths, &state, false).await,
        Cmd::GenServerConfig { fqdn, file, style } => {
            server_config::gen_server_config(&paths, &fqdn, file.as_deref(), style).await
        }
        Cmd::GenSampleBackendConfig => {
            print!("{}", larder_core::config::sample_config());
            Ok(())
        }
        Cmd::ShowConfig => local::show_config(&paths),
        Cmd::Reconfigure => local::reconfigure(&paths).await,
        Cmd::PgsqlFollow {
            leader,
            force_basebackup,
            verbose,
        } => cluster_ops::pgsql_follow(&paths, leader.as_deref(), force_basebackup, verbose).await,
        Cmd::Cleanse { with_external, yes } => {
            if with_external {
                anyhow::bail!("--with-external does not apply to Larder: every service's data (PostgreSQL, etcd, search) lives on this node and `cleanse` removes all of it; run `larder cleanse --yes`");
            }
            local::cleanse(&paths, yes).await
        }
        Cmd::Uninstall => local::uninstall(&paths).await,
        Cmd::Reindex { json } => local::reindex(&paths, json).await,
        Cmd::Upgrade {
            failover,
            yes,
            timeout,
            json,
        } => {
            let args = upgrade::Args {
                failover,
                yes,
                timeout: std::time::Duration::from_secs(timeout),
                json,
            };
            upgrade::upgrade(&paths, args).await
        }
        Cmd::DownForUpgrade => upgrade::down_for_upgrade(&paths).await,
        Cmd::Backup(a) => backup::backup(&paths, a).await,
        Cmd::Restore(a) => backup::restore(&paths, a).await,
        Cmd::GatherLogs(a) => gather_logs::gather_logs(&paths, a).await,
        Cmd::ImportChefBackend(a) => import_chef::import_chef_backend(&paths, a),
        Cmd::HaStatus { json } => ha_status::ha_status(&paths, json).await,
        Cmd::Start { service } => local::service_verb(&paths, "start", service).await,
        Cmd::Stop { service } => local::service_verb(&paths, "stop", service).await,
        Cmd::Restart { service } => local::service_verb(&paths, "restart", service).await,
        Cmd::Kill { service } => local::service_verb(&paths, "kill", service).await,
        Cmd::Term { service } => local::service_verb(&paths, "term", service).await,
        Cmd::Hup { service } => local::service_verb(&paths, "hup", service).await,
        Cmd::Int { service } => local::service_verb(&paths, "int", service).await,
        Cmd::Once { service } => local::service_verb(&paths, "once", service).await,
        Cmd::Tail { service } => local::tail(&paths, service.as_deref()),
        Cmd::ServiceList { service } => local::service_list(&paths, service.as_deref()).await,
        Cmd::Agent => larder_agent::agent::run(paths).await,
        Cmd::Dev { cmd } => dev::run(cmd).await,
        Cmd::SearchService { settings } => {
            local::search_service(std::path::Path::new(&settings)).await
        }
    }
}
