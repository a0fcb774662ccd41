//! `create-cluster` and `join-cluster`: check everything first, change nothing on refusal,
//! then write config, secrets and identity, start the agent and follow it to a working node.

use crate::agent_client::wait_for;
use crate::progress::Steps;
use anyhow::{bail, Context};
use larder_agent::dcs::{keys, Dcs, TlsFiles};
use larder_agent::node::{new_guid, new_password, url_host, write_private, NodeState};
use larder_agent::pki;
use larder_core::config::Config;
use larder_core::model::{NodeRecord, PgState};
use larder_core::paths::Paths;
use larder_core::secrets::{EtcdSecrets, LarderSecrets, PgSecrets, SearchSecrets, Secret, Secrets};
use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Rebuild the cluster around this surviving node after a majority of members is lost.
    #[arg(long)]
    quorum_loss_recovery: bool,
    #[arg(short, long)]
    yes: bool,
    /// Seconds to wait for etcd.
    #[arg(long, default_value_t = 30)]
    etcd_wait_time: u64,
    /// Seconds to wait for the search service.
    #[arg(long, default_value_t = 30)]
    elasticsearch_wait_time: u64,
    /// Address to publish (writes larder.toml when none exists).
    #[arg(short = 'p', long)]
    publish_address: Option<String>,
    /// Node name (writes larder.toml when none exists; default: host name).
    #[arg(long)]
    fqdn: Option<String>,
    /// Data to restore before the agent first starts (`larder restore`).
    #[arg(skip)]
    restore: Option<crate::backup::RestorePlan>,
}

/// `create-cluster` for `larder restore`: on restored data (`plan`; restore wrote the config
/// and secrets), or empty for `--from-pg-dump` (the dump is loaded once the node leads).
pub async fn create_cluster_for_restore(
    paths: &Paths,
    publish_address: Option<String>,
    fqdn: Option<String>,
    plan: Option<crate::backup::RestorePlan>,
) -> anyhow::Result<()> {
    create_cluster(
        paths,
        CreateArgs {
            quorum_loss_recovery: false,
            yes: true,
            etcd_wait_time: 30,
            elasticsearch_wait_time: 30,
            publish_address,
            fqdn,
            restore: plan,
        },
    )
    .await
}

#[derive(clap::Args)]
pub struct JoinArgs {
    /// Address of any current cluster member.
    peer: String,
    #[arg(short = 's', long = "secrets-file-path")]
    secrets_file_path: String,
    #[arg(short = 'p', long)]
    publish_address: Option<String>,
    /// Interface the cluster's VIP is added to on this node (the VIP itself is taken from
    /// larder.toml, or from the peer's `/status`).
    #[arg(short = 'i', long)]
    vip_interface: Option<String>,
    /// Re-join using this node's saved configuration after remove-node / cleanse.
    #[arg(long)]
    recovery: bool,
    #[arg(short, long)]
    yes: bool,
    #[arg(long)]
    fqdn: Option<String>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "larder".into())
}

/// The node's config: the existing larder.toml, or one generated from flags.
fn resolve_config(
    paths: &Paths,
    publish: Option<&str>,
    fqdn: Option<&str>,
) -> anyhow::Result<(Config, bool)> {
    let file = paths.config_file();
    if file.exists() {
        let cfg = Config::load(&file)?;
        if publish.is_some_and(|p| p != cfg.publish_address) {
            bail!(
                "{} already sets publish_address = {:?}; remove --publish-address or edit the file",
                file.display(),
                cfg.publish_address
            );
        }
        return Ok((cfg, false));
    }
    let Some(addr) = publish else {
        bail!("no configuration at {} and no --publish-address given; pass --publish-address IP (or write larder.toml; see `larder gen-sample-backend-config`)", file.display());
    };
    let ip: IpAddr = addr
        .parse()
        .with_context(|| format!("--publish-address {addr:?} is not an IP address"))?;
    let cfg = Config {
        fqdn: fqdn.map(str::to_string).unwrap_or_else(hostname),
        publish_address: addr.to_string(),
        ip_version: if ip.is_ipv6() {
            larder_core::config::IpVersion::Ipv6
        } else {
            larder_core::config::IpVersion::Ipv4
        },
        ..Config::default()
    };
    cfg.validate("--publish-address/--fqdn")?;
    Ok((cfg, true))
}

fn refuse_if_configured(paths: &Paths) -> anyhow::Result<()> {
    for p in [paths.node_state_file(), paths.pg_data(), paths.etcd_data()] {
        if p.exists() {
            bail!(
                "this node is already configured ({} exists); nothing was changed. To start over run `larder cleanse` first",
                p.display()
            );
        }
    }
    Ok(())
}

fn check_privileges(paths: &Paths) -> anyhow::Result<()> {
    for d in [
        paths.config_dir(),
        paths.data_dir(),
        paths.log_dir(),
        paths.run_dir(),
    ] {
        let mut p = d.as_path();
        while !p.exists() {
            p = p.parent().unwrap_or(std::path::Path::new("/"));
        }
        if nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_err() {
            bail!("no permission to create {} (parent {} is not writable): run as root, or pass --root DIR that you own", d.display(), p.display());
        }
    }
    if nix::unistd::geteuid().is_root() {
        larder_agent::node::pg_os_user()?;
    }
    Ok(())
}

/// Every port this node needs must be free on its address; name the one that is not.
pub fn check_ports(cfg: &Config) -> anyhow::Result<()> {
    let mut ports = vec![
        (cfg.etcd.client_port, "etcd client"),
        (cfg.etcd.peer_port, "etcd peer"),
        (cfg.postgresql.port, "postgresql"),
        (cfg.leaderl.http_port, "leaderl health API"),
        (cfg.elasticsearch.port, "search (elasticsearch)"),
    ];
    if cfg.backup.enabled() {
        ports.push((cfg.backup.server_port, "pgBackRest TLS server"));
    }
    for (port, service) in ports {
        let addr = format!("{}:{port}", url_host(&cfg.publish_address));
        if let Err(e) = TcpListener::bind(&addr) {
            bail!("port {port} ({service}) on {} is not available: {e}; stop whatever uses it or change the port in larder.toml; nothing was changed", cfg.publish_address);
        }
    }
    Ok(())
}

fn check_address_is_local(addr: &str) -> anyhow::Result<()> {
    let ip: IpAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not an IP address"))?;
    TcpListener::bind((ip, 0)).map(|_| ()).map_err(|_| {
        anyhow::anyhow!("publish address {addr} does not belong to this host; pass an address of one of its interfaces with -p")
    })
}

/// This node's certificate, key and trust (`larder_agent::identity`), checked before anything
/// is written.
fn node_files(secrets: &Secrets, cfg: &Config) -> anyhow::Result<TlsFiles> {
    let id = larder_agent::identity::node_identity(cfg, secrets, None)?;
    Ok(TlsFiles {
        ca_pem: larder_agent::identity::trust_pem(cfg, secrets)?,
        cert_pem: id.cert_pem,
        key_pem: id.key_pem,
    })
}

fn write_tls(paths: &Paths, tls: &TlsFiles) -> anyhow::Result<()> {
    let dir = paths.tls_dir();
    write_private(&dir.join("node.crt"), tls.cert_pem.as_bytes())?;
    write_private(&dir.join("node.key"), tls.key_pem.as_bytes())?;
    write_private(&dir.join("ca.crt"), tls.ca_pem.as_bytes())?;
    Ok(())
}

/// The cluster's VIP as a member reports it on its health API (`GET /status`).
async fn peer_vip(peer: &str, port: u16) -> anyhow::Result<String> {
    let url = format!("http://{}:{port}/status", url_host(peer));
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("-i/--vip-interface: reading the cluster's VIP from {url}"))?;
    // A joiner is not a member yet: the cluster may not show it its status.
    if resp.status() == reqwest::StatusCode::FORBIDDEN {
        bail!("-i/--vip-interface: {url} refuses this address (leaderl.status_allowed_cidrs); put the cluster's `vip` in this node's larder.toml, or allow this address on the cluster, and retry; nothing was changed");
    }
    let st: larder_agent::control::HaStatus = resp
        .error_for_status()
        .with_context(|| format!("-i/--vip-interface: reading the cluster's VIP from {url}"))?
        .json()
        .await
        .with_context(|| format!("-i/--vip-interface: {url} did not answer a status"))?;
    match st.vip {
        Some(v) => Ok(v.address),
        None => bail!("-i/--vip-interface: the cluster at {peer} has no VIP configured (set `vip` in its larder.toml, or join without -i); nothing was changed"),
    }
}

/// What `join-cluster` writes to larder.toml once the cluster accepted the node.
#[derive(Clone, Copy)]
enum ConfigWrite {
    /// The operator's file stays as it is.
    Keep,
    /// No file existed: the one generated from the flags.
    Generated,
    /// `-i IFACE` changed the VIP settings of the operator's file: only those keys.
    SetVip,
}

fn write_config(paths: &Paths, cfg: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(paths.config_dir())?;
    std::fs::write(paths.config_file(), cfg.to_toml())?;
    Ok(())
}

fn node_tls(paths: &Paths, secrets: &Secrets, cfg: &Config) -> anyhow::Result<TlsFiles> {
    Ok(TlsFiles {
        ca_pem: larder_agent::identity::trust_pem(cfg, secrets)?,
        cert_pem: std::fs::read_to_string(paths.tls_dir().join("node.crt"))?,
        key_pem: std::fs::read_to_string(paths.tls_dir().join("node.key"))?,
    })
}

fn new_secrets() -> anyhow::Result<Secrets> {
    let (ca_cert, ca_key) = pki::generate_ca()?;
    let (auth_username, auth_password) = larder_agent::node::new_search_credentials();
    Ok(Secrets {
        postgresql: PgSecrets {
            db_superuser_password: Secret::new(new_password(40)),
            replication_password: Secret::new(new_password(40)),
            ..PgSecrets::default()
        },
        etcd: EtcdSecrets {
            initial_cluster_token: Secret::new(new_password(32)),
        },
        elasticsearch: SearchSecrets {
            cluster_name: format!("larder-{}", &new_guid()[..8]),
            auth_username,
            auth_password,
            previous_auth_password: Secret::default(),
        },
        larder: LarderSecrets {
            ca_cert_pem: ca_cert,
            ca_key_pem: Secret::new(ca_key),
        },
    })
}

pub async fn create_cluster(paths: &Paths, a: CreateArgs) -> anyhow::Result<()> {
    if a.quorum_loss_recovery {
        return crate::recovery::quorum_loss_recovery(paths, a.yes).await;
    }
    check_privileges(paths)?;
    refuse_if_configured(paths)?;
    let (cfg, generated) = resolve_config(paths, a.publish_address.as_deref(), a.fqdn.as_deref())?;
    check_address_is_local(&cfg.publish_address)?;
    check_ports(&cfg)?;
    // The first node: nobody of this cluster can hold the VIP yet, so anyone answering for it
    // is a conflict.
    larder_agent::vip::check_host(&cfg, true).await?;
    crate::prompt::confirm_on_terminal(
        &format!(
            "create a new Larder cluster with {} ({}) as its first node and leader?",
            cfg.fqdn, cfg.publish_address
        ),
        a.yes,
    )?;

    let mut steps = Steps::new(if a.restore.is_some() { 8 } else { 7 });
    steps.step("writing configuration, secrets and certificates");
    // A secrets file written by `import-chef-backend` is kept: the frontends' passwords stay.
    let imported = paths.secrets_file().exists();
    let secrets = if imported {
        Secrets::load(&paths.secrets_file())?
    } else {
        new_secrets()?
    };
    let tls = node_files(&secrets, &cfg)?;
    if generated {
        write_config(paths, &cfg)?;
    }
    if !imported {
        write_private(&paths.secrets_file(), secrets.to_json().as_bytes())?;
    }
    write_tls(paths, &tls)?;
    let guid = new_guid();
    let state = NodeState {
        guid: guid.clone(),
        etcd_initial_cluster: format!(
            "{}=https://{}:{}",
            cfg.fqdn,
            url_host(&cfg.publish_address),
            cfg.etcd.peer_port
        ),
        etcd_initial_state: "new".into(),
        created_unix: larder_agent::clock::unix_ms() / 1000,
        etcd_seated: false,
        etcd_members: vec![],
        etcd_replacing: None,
    };
    state.save(&paths.node_state_file())?;

    if let Some(plan) = &a.restore {
        steps.step("restoring PostgreSQL from the backup and running its recovery");
        crate::backup::restore_data(paths, plan).await?;
    }

    steps.step("starting the agent");
    crate::agent_process::start_agent(paths)?;
    wait_for(paths, Duration::from_secs(15), "the agent", |_| true).await?;

    steps.step("waiting for etcd");
    let dcs = Dcs::new(
        vec![format!(
            "https://{}:{}",
            url_host(&cfg.publish_address),
            cfg.etcd.client_port
        )],
        node_tls(paths, &secrets, &cfg)?,
        Duration::from_secs(2),
    );
    let deadline = Instant::now() + Duration::from_secs(a.etcd_wait_time);
    loop {
        if dcs.get(keys::CLUSTER).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not become healthy within {}s; see `larder tail etcd`",
                a.etcd_wait_time
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    steps.step("registering this node");
    let record = NodeRecord {
        guid: guid.clone(),
        name: cfg.fqdn.clone(),
        address: cfg.publish_address.clone(),
    };
    let cluster = serde_json::json!({"fingerprint": secrets.fingerprint(), "created_unix": state.created_unix});
    dcs.create(keys::CLUSTER, cluster.to_string().as_bytes(), None)
        .await?;
    dcs.put(&keys::node(&guid), &serde_json::to_vec(&record)?, None)
        .await?;
    dcs.put(&keys::voter(&guid), b"1", None).await?;
    dcs.put(
        keys::PROTOCOL,
        larder_core::version::PROTOCOL.to_string().as_bytes(),
        None,
    )
    .await?;

    steps.step("initialising PostgreSQL and electing the leader");
    wait_for(paths, Duration::from_secs(60), "leadership", |s| {
        s.ha.writable_leader
    })
    .await?;

    steps.step("waiting for the search service");
    if cfg.elasticsearch.enable {
        wait_for(
            paths,
            Duration::from_secs(a.elasticsearch_wait_time),
            "the search service",
            |s| s.ha.search_ok || !s.service_running("elasticsearch"),
        )
        .await
        .ok();
    }
    steps.step("checking the health API");
    let addr = format!("{}:{}", url_host(cfg.http_address()), cfg.leaderl.http_port);
    if !larder_agent::agent::http_get_ok(&addr, "/leader").await {
        bail!("the health API at {addr} does not report this node as leader; see `larder status`");
    }
    steps.finish(&format!(
        "cluster created; {} is the leader. Secrets: {} (copy it to each node that joins)",
        cfg.fqdn,
        paths.secrets_file().display()
    ));
    crate::report::status(paths, None, false, false).await
}

/// `--recovery`: bring back the larder.toml that `cleanse` saved (newest copy).
fn restore_saved_config(paths: &Paths) -> anyhow::Result<()> {
    let dir = paths.root().join("root");
    let mut copies: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("larder-cleanse-"))
                        && p.join("larder.toml").exists()
                })
                .collect()
        })
        .unwrap_or_default();
    copies.sort();
    let Some(newest) = copies.pop() else {
        bail!("--recovery found no saved configuration (no {}/larder-cleanse-*/larder.toml); pass --publish-address and --fqdn instead", dir.display());
    };
    std::fs::create_dir_all(paths.config_dir())?;
    std::fs::copy(newest.join("larder.toml"), paths.config_file())?;
    eprintln!(
        "using the configuration saved by cleanse in {}",
        newest.display()
    );
    Ok(())
}

pub async fn join_cluster(paths: &Paths, a: JoinArgs) -> anyhow::Result<()> {
    check_privileges(paths)?;
    let src = std::path::Path::new(&a.secrets_file_path);
    let secrets = Secrets::load(src)?;
    if !a.recovery {
        refuse_if_configured(paths)?;
    } else if paths.node_state_file().exists() {
        bail!("--recovery re-joins a node that was removed or cleansed, but {} exists: run `larder cleanse` first (it keeps a copy of the configuration)", paths.node_state_file().display());
    }
    if a.recovery && !paths.config_file().exists() {
        restore_saved_config(paths)?;
    }
    let (mut cfg, generated) =
        resolve_config(paths, a.publish_address.as_deref(), a.fqdn.as_deref())?;
    let mut write = if generated {
        ConfigWrite::Generated
    } else {
        ConfigWrite::Keep
    };
    if let Some(iface) = &a.vip_interface {
        if cfg.vip_interface != *iface {
            if cfg.vip.is_empty() {
                cfg.vip = peer_vip(&a.peer, cfg.leaderl.http_port).await?;
            }
            cfg.vip_interface = iface.clone();
            cfg.validate(&paths.config_file().display().to_string())?;
            // Written with the rest of the configuration once the cluster accepted the node;
            // an operator's file keeps its comments, only the two keys change.
            if !generated {
                write = ConfigWrite::SetVip;
            }
        }
    }
    check_address_is_local(&cfg.publish_address)?;
    check_ports(&cfg)?;
    larder_agent::vip::check_host(&cfg, false).await?;

    let mut steps = Steps::new(7);
    steps.step(&format!(
        "verifying the secrets against the cluster at {}",
        a.peer
    ));
    // Authenticate with a certificate issued in memory: nothing is written until the cluster
    // has accepted these secrets.
    // With `ssl.certificate` that is the operator's (checked here): the cluster must already
    // trust `ssl.ca`.
    let tls = node_files(&secrets, &cfg)?;
    let peer_url = format!("https://{}:{}", url_host(&a.peer), cfg.etcd.client_port);
    let dcs = Dcs::new(vec![peer_url.clone()], tls, Duration::from_secs(3));
    let cluster = dcs.get(keys::CLUSTER).await.map_err(|e| anyhow::anyhow!(
        "cannot authenticate to the cluster at {peer_url} with the secrets in {}: {e}. Check the peer address and that the secrets file is the one from that cluster; nothing was changed", a.secrets_file_path))?;
    let Some(cluster) = cluster else {
        bail!(
            "{} is not a Larder cluster member (no cluster record); nothing was changed",
            a.peer
        );
    };
    let fp: serde_json::Value = serde_json::from_slice(&cluster.value)?;
    if fp["fingerprint"].as_str() != Some(secrets.fingerprint().as_str()) {
        bail!("the secrets in {} do not match the cluster at {} (passwords differ); nothing was changed", a.secrets_file_path, a.peer);
    }
    let nodes = dcs.get_prefix(keys::NODES_PREFIX).await?;
    for kv in &nodes {
        let n: NodeRecord = serde_json::from_slice(&kv.value)?;
        if n.address == cfg.publish_address {
            bail!("address {} is already registered to node {} ({}); run `larder remove-node {}` on a cluster member first; nothing was changed", n.address, n.name, n.guid, n.name);
        }
        if n.name == cfg.fqdn {
            bail!("a node named {} is already registered; choose another fqdn or remove it first; nothing was changed", n.name);
        }
    }
    if dcs.get(keys::LEADER).await?.is_none() {
        bail!("the cluster has no leader right now; joins need a leader to copy from. Retry when `larder cluster-status` shows one; nothing was changed");
    }
    crate::prompt::confirm_on_terminal(
        &format!(
            "join {} ({}) to the cluster at {} ({} nodes registered)? Its PostgreSQL will be copied from the leader",
            cfg.fqdn,
            cfg.publish_address,
            a.peer,
            nodes.len()
        ),
        a.yes,
    )?;

    steps.step("taking the cluster's join lock");
    let lock_lease = dcs.lease_grant(30).await?;
    let lock_val = serde_json::json!({"node": cfg.fqdn, "address": cfg.publish_address, "since_unix": larder_agent::clock::unix_ms() / 1000});
    if !dcs
        .create(
            keys::JOIN_LOCK,
            lock_val.to_string().as_bytes(),
            Some(lock_lease),
        )
        .await?
    {
        let holder = dcs
            .get(keys::JOIN_LOCK)
            .await?
            .map(|k| String::from_utf8_lossy(&k.value).to_string())
            .unwrap_or_default();
        let _ = dcs.lease_revoke(lock_lease).await;
        bail!("another node is joining the cluster ({holder}); joins must be sequential — retry when it has finished; nothing was changed");
    }
    let keeper = {
        let dcs = dcs.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = dcs.lease_keep_alive(lock_lease).await;
            }
        })
    };
    let result = join_locked(paths, &a, &cfg, write, &secrets, &dcs, &mut steps).await;
    keeper.abort();
    let _ = dcs.lease_revoke(lock_lease).await;
    result?;
    crate::report::status(paths, None, false, false).await
}

async fn join_locked(
    paths: &Paths,
    a: &JoinArgs,
    cfg: &Config,
    write: ConfigWrite,
    secrets: &Secrets,
    dcs: &Dcs,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    steps.step("adding this node to etcd as a learner");
    let peer = format!(
        "https://{}:{}",
        url_host(&cfg.publish_address),
        cfg.etcd.peer_port
    );
    let id = dcs.member_add_learner_retrying(&peer).await?;
    let members = dcs.members().await?;
    let mut initial: Vec<String> = Vec::new();
    for m in &members {
        let name = if m.id == id {
            cfg.fqdn.clone()
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            initial.push(format!("{name}={u}"));
        }
    }
    let guid = new_guid();
    match write {
        ConfigWrite::Keep => {}
        ConfigWrite::Generated => write_config(paths, cfg)?,
        ConfigWrite::SetVip => {
            let file = paths.config_file();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let kv = [
                ("vip", cfg.vip.as_str()),
                ("vip_interface", cfg.vip_interface.as_str()),
            ];
            std::fs::write(
                &file,
                larder_core::config::set_top_level_strings(&text, &kv),
            )
            .with_context(|| format!("writing {}", file.display()))?;
        }
    }
    write_private(&paths.secrets_file(), secrets.to_json().as_bytes())?;
    write_tls(paths, &node_files(secrets, cfg)?)?;
    let state = NodeState {
        guid: guid.clone(),
        etcd_initial_cluster: initial.join(","),
        etcd_initial_state: "existing".into(),
        created_unix: larder_agent::clock::unix_ms() / 1000,
        etcd_seated: false,
        etcd_members: vec![],
        etcd_replacing: None,
    };
    state.save(&paths.node_state_file())?;
    let record = NodeRecord {
        guid: guid.clone(),
        name: cfg.fqdn.clone(),
        address: cfg.publish_address.clone(),
    };
    dcs.put(&keys::node(&guid), &serde_json::to_vec(&record)?, None)
        .await?;

    steps.step("starting the agent and syncing etcd");
    crate::agent_process::start_agent(paths)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match dcs.member_promote(id).await {
            Ok(()) => break,
            Err(e) => {
                if Instant::now() > deadline {
                    bail!("etcd learner did not catch up within 60s ({e}); see `larder tail etcd`");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    steps.step(&format!(
        "copying PostgreSQL from the leader (via {})",
        a.peer
    ));
    let bar = crate::progress::CopyBar::new();
    wait_for(
        paths,
        Duration::from_secs(3600),
        "PostgreSQL to stream from the leader",
        |s| {
            bar.update_from_status(s);
            s.pg_state() == Some(PgState::Streaming)
        },
    )
    .await?;
    bar.finish();
    steps.step("waiting to become a voting follower");
    wait_for(paths, Duration::from_secs(30), "voter registration", |s| {
        s.voters.contains(&guid)
    })
    .await?;
    steps.finish(&format!("{} joined the cluster as a follower", cfg.fqdn));
    Ok(())
}
