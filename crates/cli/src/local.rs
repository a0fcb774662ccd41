//! Verbs that act on this node only: service control, logs, configuration, cleanse,
//! uninstall, and the search service process.

use crate::agent_client::agent_status;
use crate::agent_process::stop_agent;
use anyhow::{bail, Context};
use larder_agent::control::{self, Request};
use larder_core::config::Config;
use larder_core::paths::Paths;
use std::time::Duration;

pub async fn service_verb(
    paths: &Paths,
    verb: &str,
    service: Option<String>,
) -> anyhow::Result<()> {
    if verb == "start" && service.is_none() && !crate::agent_process::agent_alive(paths) {
        if !paths.node_state_file().exists() {
            bail!("this node is not configured; run create-cluster or join-cluster first");
        }
        crate::agent_process::start_agent(paths)?;
        crate::agent_client::wait_for(paths, Duration::from_secs(15), "the agent", |_| true)
            .await?;
        println!("agent started");
        return Ok(());
    }
    let r = control::call(
        &paths.agent_socket(),
        &Request::Service {
            verb: verb.into(),
            service,
        },
    )
    .await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    Ok(())
}

pub async fn service_list(paths: &Paths, service: Option<&str>) -> anyhow::Result<()> {
    let s = agent_status(paths).await?;
    for svc in &s.services {
        let name = svc.name.as_str();
        if service.is_some_and(|w| w != name) {
            continue;
        }
        println!("{name}{}", if svc.want_up { "" } else { " (disabled)" });
    }
    Ok(())
}

pub fn tail(paths: &Paths, service: Option<&str>) -> anyhow::Result<()> {
    let dirs: Vec<_> = match service {
        Some(s) => vec![paths.service_log_dir(match s {
            "search" => "elasticsearch",
            other => other,
        })],
        None => std::fs::read_dir(paths.log_dir())
            .with_context(|| format!("no logs at {}", paths.log_dir().display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect(),
    };
    let files: Vec<String> = dirs
        .iter()
        .map(|d| d.join("current").display().to_string())
        .collect();
    for f in &files {
        if !std::path::Path::new(f).exists() {
            bail!("no log file {f}; services: etcd, postgresql, elasticsearch, agent");
        }
    }
    let status = std::process::Command::new("tail")
        .arg("-F")
        .arg("-n")
        .arg("50")
        .args(&files)
        .status()?;
    if !status.success() {
        bail!("tail exited with {status}");
    }
    Ok(())
}

pub fn show_config(paths: &Paths) -> anyhow::Result<()> {
    let cfg = Config::load(&paths.config_file())?;
    print!("{}", cfg.render());
    Ok(())
}

pub async fn reconfigure(paths: &Paths) -> anyhow::Result<()> {
    Config::load(&paths.config_file())?;
    let r = control::call(&paths.agent_socket(), &Request::Reconfigure).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    Ok(())
}

pub async fn uninstall(paths: &Paths) -> anyhow::Result<()> {
    stop_agent(paths, true).await?;
    println!(
        "stopped the agent and every service; data and configuration are kept under {}",
        paths.root().display()
    );
    Ok(())
}

pub async fn cleanse(paths: &Paths, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("cleanse removes this node's data and logs; re-run with --yes to confirm");
    }
    stop_agent(paths, true).await?;
    let stamp = larder_agent::clock::unix_ms() / 1000;
    let backup = paths.cleanse_backup_dir(&stamp.to_string());
    if paths.config_dir().exists() {
        copy_dir(&paths.config_dir(), &backup)?;
    }
    for d in [
        paths.data_dir(),
        paths.log_dir(),
        paths.run_dir(),
        paths.config_dir(),
    ] {
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    println!(
        "cleansed: data, logs and configuration removed; a copy of the configuration is in {}",
        backup.display()
    );
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

fn search_config(paths: &Paths) -> anyhow::Result<larder_search::SearchConfig> {
    let node = larder_agent::node::Node::load(paths)?;
    Ok(to_search_config(
        larder_agent::search_service::Settings::of(&node),
        None,
    ))
}

/// `auth_file`: where the running service re-reads its accepted credentials and its
/// PostgreSQL passwords (its settings).
fn to_search_config(
    s: larder_agent::search_service::Settings,
    auth_file: Option<std::path::PathBuf>,
) -> larder_search::SearchConfig {
    larder_search::SearchConfig {
        pg: larder_search::PgTarget {
            host: s.pg_host,
            port: s.pg_port,
            user: s.pg_user,
            password: s.pg_password,
            next_password: s.pg_next_password,
            // The same file: a rotated PostgreSQL password reaches the running service.
            password_file: auth_file.clone(),
            dbname: larder_search::PgTarget::DEFAULT_DBNAME.into(),
        },
        index_dir: s.index_dir,
        es_major: s.es_major,
        cluster_name: s.cluster_name,
        node_name: s.node_name,
        bulk_piece_bytes: larder_search::SearchConfig::DEFAULT_BULK_PIECE_BYTES,
        auth: s.auth,
        auth_file,
    }
}

/// The search service process. It runs as its own unprivileged user and reads only the settings
/// file the agent wrote for it (it cannot read the secrets file).
pub async fn search_service(settings: &std::path::Path) -> anyhow::Result<()> {
    let s = larder_agent::search_service::Settings::load(settings)?;
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind the search API on {addr}"))
    };
    let main = bind(s.listen.clone()).await?;
    let mut listeners = vec![match &s.tls {
        Some(files) => {
            larder_search::Listener::Tls(main, larder_search::tls::server_config(files)?)
        }
        None => larder_search::Listener::Plain(main),
    }];
    if let Some(plain) = &s.plain_listen {
        listeners.push(larder_search::Listener::Plain(bind(plain.clone()).await?));
    }
    let cfg = to_search_config(s, Some(settings.to_path_buf()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s2 = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        term.recv().await;
        s2.cancel();
    });
    larder_search::serve_on(listeners, cfg, shutdown).await?;
    Ok(())
}

pub async fn reindex(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let cfg = search_config(paths)?;
    let mut steps = crate::progress::Steps::new(3);
    steps.step("stopping the search service");
    let r = control::call(
        &paths.agent_socket(),
        &Request::Service {
            verb: "stop".into(),
            service: Some("elasticsearch".into()),
        },
    )
    .await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    steps.step("rebuilding the index from PostgreSQL");
    let res = larder_search::rebuild_index(&cfg).await;
    steps.step("starting the search service");
    // Rebuilt by root: give it back to the service's user before the service starts again.
    let owned = larder_agent::search_service::own_index(&larder_agent::node::Node::load(paths)?);
    let _ = control::call(
        &paths.agent_socket(),
        &Request::Service {
            verb: "start".into(),
            service: Some("elasticsearch".into()),
        },
    )
    .await;
    let stats = res?;
    owned?;
    steps.finish("index rebuilt");
    if json {
        println!(
            "{}",
            serde_json::json!({"documents": stats.documents, "size_bytes": stats.size_bytes})
        );
        return Ok(());
    }
    println!(
        "index rebuilt: {} documents, {} bytes",
        stats.documents, stats.size_bytes
    );
    Ok(())
}
