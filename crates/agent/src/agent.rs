//! `larder agent`: wires the supervisor, the HA loop, the health API and the control socket,
//! and shuts them down in the right order (health API first, so haproxy stops routing here
//! before PostgreSQL goes away).

use crate::control::{self, Request, Response};
use crate::dcs::Dcs;
use crate::ha::{self, HaLoop};
use crate::node::Node;
use crate::state::{Sensors, Snapshot, Views};
use crate::supervisor::{ServiceSpec, Supervisor};
use crate::{api, etcd, pgbackrest, postgres, search_service};
use larder_core::paths::Paths;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const SEARCH_SERVICE: &str = search_service::SERVICE;

/// The search service's spec, after preparing its account, directories and settings.
fn search_spec(node: &Node) -> anyhow::Result<ServiceSpec> {
    let account = search_service::prepare(node)?;
    let program = search_service::program(node, account)?;
    Ok(search_service::service_spec(node, account, program))
}

/// etcd's spec, after preparing its account, data directory and TLS copies.
fn etcd_spec(node: &Node) -> anyhow::Result<ServiceSpec> {
    let account = etcd::prepare(node)?;
    Ok(etcd::service_spec(node, account))
}

pub async fn run(paths: Paths) -> anyhow::Result<()> {
    let node = Node::load(&paths)?;
    std::fs::create_dir_all(paths.run_dir())?;
    std::fs::write(paths.agent_pid(), std::process::id().to_string())?;
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    // The HA loop gets the sender (it alone writes leadership state); everyone else reads.
    let (ha_state, ha_view) = tokio::sync::watch::channel(Snapshot::default());
    let sensors = Arc::new(Sensors::default());
    let views = Views {
        ha: ha_view,
        sensors: sensors.clone(),
    };
    let syncing = Arc::new(AtomicBool::new(false));
    let sup = Supervisor::new();

    if postgres::has_data(&node) {
        postgres::prepare_dirs(&node)?;
        postgres::write_config(&node)?;
        // A data directory that last ran as a primary may hold WAL the current leader lacks.
        let state = postgres::control_state(&node).await.unwrap_or_default();
        if larder_core::health::diverged_at_start(&state) {
            crate::markers::mark_diverged(&node, true);
        }
    }
    sup.add(etcd_spec(&node)?, true);
    {
        // Decides primary vs standby on *every* start, including crash restarts: only a node
        // holding a live lease may start writable.
        let ha = views.ha.clone();
        let n = node.clone();
        let sy = syncing.clone();
        let pre: crate::supervisor::PreStart = Arc::new(move || {
            use larder_core::health::{pg_start, PgStart};
            let copy = sy.load(std::sync::atomic::Ordering::SeqCst);
            let standby = match pg_start(copy, ha.borrow().lease_live(Instant::now())) {
                PgStart::Refused(why) => return Err(why.into()),
                PgStart::Primary => false,
                PgStart::Standby => true,
            };
            postgres::set_standby(&n, standby).map_err(|e| e.to_string())
        });
        sup.add(postgres::service_spec(&node, pre), false);
    }
    // Only with backups configured (`reconfigure` adds it when they are turned on).
    if node.cfg.backup.enabled() {
        sup.add(pgbackrest::service_spec(&node), true);
    }
    if node.cfg.elasticsearch.enable {
        sup.add(search_spec(&node)?, true);
    }

    let dcs = node.dcs()?;

    // Health API first: frontends must see 503 (not a refused port) as soon as we exist.
    let http_addr = format!(
        "{}:{}",
        crate::node::url_host(node.cfg.http_address()),
        node.cfg.leaderl.http_port
    );
    let listener = tokio::net::TcpListener::bind(&http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the health API on {http_addr}: {e}"))?;
    let api_state = api::ApiState {
        views: views.clone(),
        required_followers: node.cfg.leaderl.required_active_followers,
        name: node.cfg.fqdn.clone(),
        guid: node.state.guid.clone(),
        metrics: crate::metrics::MetricsConfig {
            fence_margin: Duration::from_millis(node.cfg.leaderl.fence_margin_ms),
            disk_paths: vec![
                ("data".into(), paths.data_dir()),
                ("logs".into(), paths.log_dir()),
            ],
        },
        status_allowed_cidrs: node.cfg.leaderl.status_allowed_cidrs.clone(),
    };
    let api_shutdown = CancellationToken::new();
    let api_task = tokio::spawn(api::serve(listener, api_state, api_shutdown.clone()));

    tokio::spawn(member_refresh(
        dcs.clone(),
        sensors.clone(),
        paths.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::etcd_seat::run(
        node.clone(),
        dcs.clone(),
        sup.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(search_health(
        node.clone(),
        sensors.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::history::run(
        dcs.clone(),
        views.ha.clone(),
        sensors.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::cert_rotation::serve(
        node.clone(),
        dcs.clone(),
        sup.clone(),
        sensors.requests.subscribe(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::secret_rotation::serve(
        node.clone(),
        dcs.clone(),
        sup.clone(),
        views.ha.clone(),
        sensors.requests.subscribe(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::ui::sample_lag(
        views.ha.clone(),
        sensors.clone(),
        shutdown.clone(),
    ));

    let ha_loop = HaLoop::new(
        node.clone(),
        dcs.clone(),
        sup.clone(),
        ha_state,
        sensors.clone(),
        syncing.clone(),
    );
    let commands = ha_loop.command_sender();
    let ha_shutdown = CancellationToken::new();
    let ha_task = tokio::spawn(ha_loop.run(ha_shutdown.clone()));

    let ctl = control::bind(&paths.agent_socket())?;
    let ctx = Ctx {
        node: node.clone(),
        sup: sup.clone(),
        views: views.clone(),
        dcs: dcs.clone(),
        commands,
        shutdown: shutdown.clone(),
        started,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
            conn = ctl.accept() => {
                if let Ok((stream, _)) = conn {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        control::serve_one(stream, |req| async move { ctx.handle(req).await }).await;
                    });
                }
            }
        }
    }
    tracing::info!("agent shutting down");
    api_shutdown.cancel();
    let _ = api_task.await;
    ha_shutdown.cancel();
    let _ = ha_task.await;
    shutdown.cancel();
    sup.stop_all(Duration::from_secs(30)).await;
    let _ = std::fs::remove_file(paths.agent_socket());
    let _ = std::fs::remove_file(paths.agent_pid());
    Ok(())
}

/// Keeps the etcd endpoint list (and `/v2/members`) in step with membership changes.
async fn member_refresh(
    dcs: Dcs,
    sensors: Arc<Sensors>,
    paths: Paths,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(members) = dcs.members().await {
            let mut urls: Vec<String> = Vec::new();
            let own = dcs.urls().first().cloned();
            if let Some(o) = own {
                urls.push(o);
            }
            for m in &members {
                for u in &m.client_urls {
                    if !urls.contains(u) {
                        urls.push(u.clone());
                    }
                }
            }
            dcs.set_urls(&urls);
            let _ = std::fs::write(paths.run_dir().join("etcd-endpoints"), urls.join("\n"));
            *sensors.etcd_members.lock().unwrap() = members;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}

/// The search service's own health and figures: `GET /_larder/stats` answering is its health
/// (for status), its body the search metrics (cached here, so a scrape never reaches the
/// service). Never fails over PostgreSQL.
async fn search_health(node: Node, sensors: Arc<Sensors>, shutdown: CancellationToken) {
    let budget = node
        .cfg
        .leaderl
        .health_check
        .max_elasticsearch_failures
        .max(1);
    let mut failures = budget; // unknown until the first successful check
    loop {
        // Search health is reported, never a reason to fail PostgreSQL over (Chef Backend
        // issue #1739): a failed check only counts against its own budget.
        let stats = crate::search_service::get(&node, "/_larder/stats")
            .await
            .filter(|(code, _)| (200..300).contains(code))
            .map(|(_, body)| {
                serde_json::from_str::<larder_core::search_stats::SearchStats>(&body).ok()
            });
        match stats {
            Some(parsed) => {
                failures = 0;
                let mut probe = sensors.search.lock().unwrap();
                let now = Instant::now();
                if let (Some(new), Some(old), Some(at)) = (&parsed, &probe.stats, probe.at) {
                    let dt = now.duration_since(at).as_secs_f64();
                    let docs = new.bulk_documents.saturating_sub(old.bulk_documents);
                    probe.bulk_rate = if dt > 0.0 { docs as f64 / dt } else { 0.0 };
                }
                probe.stats = parsed;
                probe.at = Some(now);
            }
            None => failures = failures.saturating_add(1),
        }
        sensors.set_search_ok(failures < budget);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(node.cfg.leaderl.health_check.interval_seconds)) => {}
        }
    }
}

/// Minimal HTTP/1.0 GET that reports whether the answer was 2xx.
pub async fn http_get_ok(addr: &str, path: &str) -> bool {
    http_get(addr, path)
        .await
        .is_some_and(|(code, _)| (200..300).contains(&code))
}

/// Minimal HTTP/1.0 GET (1 s limit, 1 MiB body at most): status code and body.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

#[derive(Clone)]
struct Ctx {
    node: Node,
    sup: Supervisor,
    views: Views,
    dcs: Dcs,
    /// Operator requests for the HA loop (which alone changes leadership).
    commands: tokio::sync::mpsc::Sender<ha::Command>,
    shutdown: CancellationToken,
    started: Instant,
}

fn reply(r: anyhow::Result<String>) -> Response {
    match r {
        Ok(m) => Response::ok(m, serde_json::Value::Null),
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn service_name(s: &str) -> &str {
    match s {
        "search" | "elasticsearch" => SEARCH_SERVICE,
        "postgres" | "pgsql" => postgres::SERVICE,
        other => other,
    }
}

impl Ctx {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => self.status(),
            Request::Service { verb, service } => self.service(&verb, service.as_deref()).await,
            Request::Reconfigure => self.reconfigure().await,
            Request::Shutdown => {
                self.shutdown.cancel();
                Response::ok("agent shutting down", serde_json::Value::Null)
            }
            Request::ForceLeader => match self
                .ask_loop(larder_core::decide::OperatorRequest::ForceLeader)
                .await
            {
                Ok(m) => Response::ok(m, serde_json::Value::Null),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Resync { force_basebackup } => {
                let r = larder_core::decide::OperatorRequest::Resync {
                    full: force_basebackup,
                };
                match self.ask_loop(r).await {
                    Ok(m) => Response::ok(m, serde_json::Value::Null),
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::SetFailover { cluster, on } => {
                let r = crate::operator::set_failover(&self.dcs, &self.node, cluster, on).await;
                if r.is_ok() {
                    self.await_failover_applied(cluster, on).await;
                }
                reply(r)
            }
            Request::Switchover { target } => {
                reply(crate::operator::switchover(&self.dcs, target.as_deref()).await)
            }
            Request::DownForUpgrade => reply(self.down_for_upgrade().await),
            Request::UpgradeDone => reply(self.upgrade_done().await),
            Request::History => match crate::history::read(&self.dcs).await {
                Ok(h) => Response::ok(
                    format!("{} entries", h.entries.len()),
                    serde_json::to_value(&h).unwrap_or_default(),
                ),
                Err(e) => Response::err(format!("cannot read the leadership history: {e:#}")),
            },
            Request::RotateCerts { node, days } => {
                match crate::cert_rotation::rotate_cluster(
                    &self.node,
                    &self.dcs,
                    node.as_deref(),
                    days,
                )
                .await
                {
                    Ok(done) => Response::ok(
                        format!("{} node(s) rotated", done.len()),
                        serde_json::to_value(done).unwrap_or_default(),
                    ),
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::RotateSearchPassword { finish } => {
                use crate::secret_rotation::{rotate_search, Step};
                let step = if finish { Step::Finish } else { Step::Stage };
                match rotate_search(&self.node, &self.dcs, step).await {
                    Ok(done) => Response::ok(
                        done.join(", "),
                        serde_json::to_value(&done).unwrap_or_default(),
                    ),
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::RotatePostgresqlPasswords => {
                match crate::secret_rotation::rotate_postgresql(&self.node, &self.dcs).await {
                    Ok(r) => Response::ok(
                        format!(
                            "{}{}",
                            r.nodes.join(", "),
                            r.carried_on_from
                                .map(|n| format!("; carried on the rotation started on {n}"))
                                .unwrap_or_default()
                        ),
                        serde_json::to_value(&r.nodes).unwrap_or_default(),
                    ),
                    Err(e) => Response::err(format!("{e:#}")),
                }
            }
            Request::RemoveNode { node, apply } => {
                reply(crate::operator::remove_node(&self.dcs, &self.node, &node, apply).await)
            }
        }
    }

    fn status(&self) -> Response {
        let s = self.views.snapshot();
        let etcd_members = self.views.sensors.etcd_members.lock().unwrap().clone();
        let leaderl = crate::supervisor::ServiceState {
            name: "leaderl".into(),
            want_up: true,
            running: true,
            pid: Some(std::process::id()),
            since_unix: crate::clock::unix_ms() / 1000 - self.started.elapsed().as_secs(),
            restarts: 0,
            last_exit: None,
        };
        let mut services = vec![leaderl];
        services.extend(self.sup.list());
        let status = control::AgentStatus {
            services,
            ha: api::ha_status(
                &s,
                &self.views.sensors,
                &self.node.cfg.fqdn,
                &self.node.state.guid,
                self.node.cfg.leaderl.required_active_followers,
            ),
            members: s.members.clone(),
            nodes: s.nodes.clone(),
            voters: s.voters.clone(),
            upgrade: s.upgrade.clone(),
            etcd_members: etcd_members
                .iter()
                .map(|m| control::EtcdMemberRow {
                    name: m.name.clone(),
                    id: format!("{:x}", m.id),
                    learner: m.learner,
                    client_urls: m.client_urls.clone(),
                })
                .collect(),
        };
        match serde_json::to_value(&status) {
            Ok(v) => Response::ok("ok", v),
            Err(e) => Response::err(format!("cannot encode the status: {e}")),
        }
    }

    async fn service(&self, verb: &str, service: Option<&str>) -> Response {
        let names: Vec<String> = match service {
            Some(s) => vec![service_name(s).to_string()],
            None => self.sup.names(),
        };
        use nix::sys::signal::Signal;
        for n in &names {
            if n == "leaderl" {
                return Response::err("leaderl is the agent itself: restart it with `systemctl restart larder` (or stop it with `larder uninstall`)");
            }
            let grace = Duration::from_secs(30);
            let r = match verb {
                "start" | "once" => self.sup.start(n),
                "stop" => self.sup.stop(n, grace).await,
                "restart" => self.sup.restart(n, grace).await,
                "kill" => self.sup.signal(n, Signal::SIGKILL),
                "term" => self.sup.signal(n, Signal::SIGTERM),
                "hup" => self.sup.signal(n, Signal::SIGHUP),
                "int" => self.sup.signal(n, Signal::SIGINT),
                other => return Response::err(format!("unknown service verb {other:?}")),
            };
            if let Err(e) = r {
                return Response::err(e.to_string());
            }
        }
        Response::ok(
            format!("{verb}: {}", names.join(", ")),
            serde_json::Value::Null,
        )
    }

    async fn reconfigure(&self) -> Response {
        let new = match larder_core::config::Config::load(&self.node.paths.config_file()) {
            Ok(c) => c,
            Err(e) => return Response::err(format!("{e}; nothing was changed")),
        };
        let old = &self.node.cfg;
        if new.fqdn != old.fqdn || new.publish_address != old.publish_address {
            return Response::err("fqdn and publish_address cannot change on a configured node; remove the node and join it again; nothing was changed");
        }
        let mut done = Vec::new();
        let mut n = self.node.clone();
        n.cfg = new.clone();
        // The client method changes in the order that never puts an hba line in front of a
        // stored password it refuses (an md5 line accepts both, a scram-sha-256 line no
        // md5-stored password; the superuser's password replicates from the leader, which
        // stores it as `pgconf::wanted_superuser_hash` of what the members post).
        use larder_core::pgconf::PasswordHash;
        let method_now = self.node.pg_auth();
        let method_new = new.postgresql.client_auth_method.clone();
        let method_changed = method_new != method_now;
        let to_scram =
            method_changed && PasswordHash::of_method(&method_new) == PasswordHash::Scram;
        if to_scram {
            // Post the new method first (the leader then stores the password as SCRAM), and
            // change the lines only once that hash has reached this node.
            self.node.set_pg_auth(&method_new);
            if let Err(e) = self.await_superuser_hash(PasswordHash::Scram).await {
                self.node.set_pg_auth(&method_now);
                return Response::err(format!("{e:#}; nothing was changed"));
            }
        }
        if new.postgresql != old.postgresql || new.backup != old.backup || method_changed {
            if let Err(e) = postgres::write_config_as(&n, &method_new) {
                if to_scram {
                    self.node.set_pg_auth(&method_now);
                }
                return Response::err(format!("cannot write PostgreSQL config: {e}"));
            }
            if method_changed {
                // pg_hba.conf and password_encryption are read at a reload, whatever else
                // waits for a restart.
                let _ = self
                    .sup
                    .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP);
                if !to_scram {
                    // md5 lines are loaded: only now may the leader store the password md5.
                    self.node.set_pg_auth(&method_new);
                }
                done.push(match PasswordHash::of_method(&method_new) {
                    PasswordHash::Md5 => "postgresql: client authentication md5; the leader stores the superuser's password md5 once every member has switched (run `larder reconfigure` on each)".to_string(),
                    PasswordHash::Scram => "postgresql: client authentication scram-sha-256 (the superuser's password is stored SCRAM)".to_string(),
                });
            }
            let restart_needed = new.postgresql.port != old.postgresql.port
                || new.postgresql.max_connections != old.postgresql.max_connections
                || new.postgresql.shared_buffers != old.postgresql.shared_buffers
                || new.postgresql.max_wal_senders != old.postgresql.max_wal_senders
                || new.postgresql.max_replication_slots != old.postgresql.max_replication_slots
                // archive_mode changes only at a restart.
                || new.backup.enabled() != old.backup.enabled();
            if restart_needed {
                done.push("postgresql: settings written; they need a restart: run `larder restart postgresql` (on the leader, `larder demote` first)".to_string());
            } else {
                let _ = self
                    .sup
                    .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP);
                done.push("postgresql: reloaded".into());
            }
        }
        let grace = Duration::from_secs(30);
        if new.backup != old.backup || new.log_rotation != old.log_rotation {
            let known = self.sup.replace_spec(pgbackrest::service_spec(&n)).is_ok();
            if new.backup.enabled() && !known {
                self.sup.add(pgbackrest::service_spec(&n), true);
                done.push("pgbackrest TLS server: started".into());
            } else if new.backup.enabled() {
                let _ = self.sup.restart(pgbackrest::SERVICE, grace).await;
                done.push("pgbackrest TLS server: restarted".into());
            } else if known {
                let _ = self.sup.stop(pgbackrest::SERVICE, grace).await;
                done.push("pgbackrest TLS server: stopped (no backup.repo_path)".into());
            }
            if new.backup.server_port != old.backup.server_port {
                done.push("backup.server_port: the other nodes learn the new port when this agent restarts (`systemctl restart larder`)".into());
            }
        }
        if new.etcd != old.etcd || new.log_rotation != old.log_rotation {
            match etcd_spec(&n) {
                Ok(spec) => {
                    let _ = self.sup.replace_spec(spec);
                }
                Err(e) => return Response::err(format!("cannot prepare etcd: {e:#}")),
            }
            if let Err(e) = self.sup.restart(etcd::SERVICE, grace).await {
                return Response::err(format!("cannot restart etcd: {e}"));
            }
            done.push("etcd: restarted".into());
        }
        if new.elasticsearch != old.elasticsearch || new.log_rotation != old.log_rotation {
            match search_spec(&n) {
                Ok(spec) => {
                    let _ = self.sup.replace_spec(spec);
                }
                Err(e) => {
                    return Response::err(format!("cannot prepare the search service: {e:#}"))
                }
            }
            if new.elasticsearch.enable {
                let _ = self.sup.restart(SEARCH_SERVICE, grace).await;
                done.push("search: restarted".into());
            } else {
                let _ = self.sup.stop(SEARCH_SERVICE, grace).await;
                done.push("search: stopped (elasticsearch.enable = false)".into());
            }
        }
        if new.leaderl != old.leaderl {
            done.push("leaderl settings (lease, loop, health checks, ports) take effect when the agent restarts: `systemctl restart larder` (on the leader, `larder demote` first)".into());
        }
        if done.is_empty() {
            done.push("no changes".into());
        }
        Response::ok(done.join("\n"), serde_json::Value::Null)
    }

    /// Wait (30 s at most) until this node's catalog stores the superuser's password as
    /// `want`; at once when PostgreSQL is not running here (it reads its lines at start).
    async fn await_superuser_hash(
        &self,
        want: larder_core::pgconf::PasswordHash,
    ) -> anyhow::Result<()> {
        let running = self.sup.state(postgres::SERVICE).is_some_and(|s| s.running);
        if !running {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if postgres::superuser_hash(&self.node).await == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the superuser's password has not reached this node stored as {want} within 30 s (the leader stores it so once a member posts that method): is the leader running this release (`larder cluster-status`) and this node streaming?"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Requests that change leadership (`force-leader`, `pgsql-follow`) are decided by the
    /// core in the HA loop, like every other leadership change; this only hands the request
    /// over and waits for its answer.
    /// `down-for-upgrade`: record it (order checked), wait for the HA loop to stop PostgreSQL
    /// (a leader hands leadership back first), then stop search. etcd keeps running: the
    /// cluster's coordination (and the other nodes' records) live in it.
    async fn down_for_upgrade(&self) -> anyhow::Result<String> {
        let was_leader = crate::upgrade::record_down(&self.dcs, &self.node).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (down, pg) = {
                let s = self.views.ha.borrow();
                (
                    s.role == Some(larder_core::model::NodeRole::Down),
                    s.pg.is_some(),
                )
            };
            let running = self.sup.state(postgres::SERVICE).is_some_and(|s| s.running);
            if down && !pg && !running {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("recorded as down for upgrade, but PostgreSQL did not stop within 60 s; see `larder tail postgresql`");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.sup.names().iter().any(|n| n == SEARCH_SERVICE) {
            self.sup
                .stop(SEARCH_SERVICE, Duration::from_secs(30))
                .await?;
        }
        Ok(format!(
            "{} is down for upgrade{}: PostgreSQL and search stopped, etcd keeps running",
            self.node.cfg.fqdn,
            if was_leader {
                " (it was the leader: no other node takes over until it is upgraded, last)"
            } else {
                ""
            }
        ))
    }

    /// The end of `upgrade` on a node that was down for upgrade. The old leader comes back
    /// in two steps (see `larder_core::decide::upgrade`): marked returning, it starts as a
    /// standby and posts its position; only then is its record cleared and the election free
    /// to run, so that election counts it.
    async fn upgrade_done(&self) -> anyhow::Result<String> {
        use crate::upgrade::Return;
        let me = self.node.state.guid.clone();
        match crate::upgrade::begin_return(&self.dcs, &self.node).await? {
            Return::NotDown => Ok(format!("{} is not down for upgrade", self.node.cfg.fqdn)),
            Return::Follower(next) => Ok(next),
            Return::OldLeader => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                loop {
                    let posted = {
                        let s = self.views.ha.borrow();
                        s.members
                            .iter()
                            .any(|m| m.guid == me && m.pg == larder_core::model::PgState::Standby)
                    };
                    if posted {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        anyhow::bail!("PostgreSQL did not come up as a standby within 120 s, so the cluster is still held for this node; see `larder tail postgresql`, then run `larder upgrade` again");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                crate::upgrade::finish_return(&self.dcs, &self.node).await?;
                Ok("the old leader is back: the cluster elects its leader".into())
            }
        }
    }

    /// Return from `set-cluster-failover` once this node's HA loop has read the new value
    /// (the key wakes it at once), so a `status` run right after shows what was just set.
    async fn await_failover_applied(&self, cluster: bool, on: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let now = {
                let s = self.views.ha.borrow();
                if cluster {
                    s.cluster_failover
                } else {
                    s.node_failover
                }
            };
            if now == on {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("set-cluster-failover: the HA loop had not applied the change after 5 s");
    }

    async fn ask_loop(
        &self,
        request: larder_core::decide::OperatorRequest,
    ) -> anyhow::Result<String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(ha::Command { request, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the HA loop is not running"))?;
        match tokio::time::timeout(Duration::from_secs(15), answer).await {
            Ok(Ok(Ok(msg))) => Ok(msg),
            Ok(Ok(Err(why))) => anyhow::bail!("{why}"),
            Ok(Err(_)) => anyhow::bail!("the HA loop stopped before answering"),
            Err(_) => anyhow::bail!("the HA loop did not answer within 15 s (is etcd reachable?)"),
        }
    }
}
