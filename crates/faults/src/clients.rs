//! The client host of a run: haproxy as a Chef frontend, the paced writers behind it and the
//! sampler watching every node directly — all recording into one history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::haproxy::{self, Haproxy};
use crate::history::{Entry, OpKind, Outcome, Recorder};
use crate::pg;
use crate::sampler::{self, SamplerConfig};
use crate::workload::{self, WorkloadConfig};

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub writers: u32,
    pub interval: Duration,
    pub op_timeout: Duration,
    pub sample_period: Duration,
    /// Whether to proxy 9200 too (Larder's search); Patroni has no search service.
    pub proxy_search: bool,
    /// Whether the search workload writes and searches through the proxied 9200 (the fault
    /// suite; the benchmarks measure PostgreSQL writes only).
    pub search_workload: bool,
    /// Writers connect to this address (a VIP) instead of the client's haproxy; haproxy still
    /// runs for the probes' sake but carries no client write.
    pub direct_host: Option<String>,
    /// Chef frontends: each one its own client host with its own haproxy and `writers`
    /// writers. Frontend k's haproxy starts `k × FRONTEND_PHASE` after the first, so their
    /// health checks reach the nodes at different phases, as on a site with several.
    pub frontends: u32,
}

/// How far apart the frontends' haproxy instances start: half of the 2 s check interval,
/// the phase difference that no single timing of a hand-over can suit both frontends with.
pub const FRONTEND_PHASE: Duration = Duration::from_millis(1_000);

/// A frontend beyond the first: its host, haproxy (its log beside its config) and writers.
struct Frontend {
    _host: crate::netns::Netns,
    haproxy: Haproxy,
}

pub struct Clients {
    pub rec: Recorder,
    pub haproxy: Haproxy,
    /// Frontends 1.. (frontend 0 is `haproxy` on the run's client host).
    more: Vec<Frontend>,
    /// haproxy's 9200 as the search workload reaches it, when it runs (`proxy_search` and a
    /// cluster with a search API); the final reads go to each node's 9200 the same way.
    pub search: Option<crate::https::HttpsTarget>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    client_ns: String,
}

impl Clients {
    /// Starts haproxy, creates the history table through it, then the writers and sampler.
    pub fn start(
        cluster: &dyn Cluster,
        opts: &ClientOptions,
        history: &std::path::Path,
    ) -> Result<Self> {
        let net = cluster.net();
        let nodes: Vec<(String, String)> = net
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("n{}", i + 1), n.ip.clone()))
            .collect();
        let mut services = haproxy::chef_services();
        if !opts.proxy_search {
            services.truncate(1);
        }
        let cfg = haproxy::render_config(&nodes, &cluster.check(), &services);
        let first_started = Instant::now();
        let hap = Haproxy::start(&net.client, &net.dir, &cfg, 5432)?;
        let mut more = Vec::new();
        for k in 1..opts.frontends.max(1) {
            let host = net.add_client_host(k as u8 + 1)?;
            let dir = net.dir.join(format!("frontend{}", k + 1));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            // The phase offset itself is the point: haproxy starts checking when it starts.
            let at = first_started + FRONTEND_PHASE * k;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let haproxy = Haproxy::start(&host, &dir, &cfg, 5432)?;
            more.push(Frontend {
                _host: host,
                haproxy,
            });
        }
        let target = match &opts.direct_host {
            Some(h) => cluster.pg_target().with_host(h),
            None => cluster.pg_target(),
        };
        let t2 = target.clone();
        // Through haproxy (or the VIP), retried until the deadline: haproxy needs one check interval
        // before it routes to the leader.
        crate::inns::block_on(&net.client.name, move || async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = async {
                    let c = pg::connect(&t2, Duration::from_secs(2)).await?;
                    pg::create_schema(&c)
                        .await
                        .map_err(|source| Error::Postgres {
                            target: t2.describe(),
                            source,
                        })
                }
                .await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })?;
        let servers: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
        let backend = services[0].backend.clone();
        let settled =
            crate::routing::wait_settled(&hap.log, &backend, &servers, Duration::from_secs(30))?;
        let rec = Recorder::create(history)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![crate::routing::watch(
            hap.log.clone(),
            rec.clone(),
            backend,
            settled,
            stop.clone(),
        )];
        let hosts = std::iter::once(net.client.name.clone())
            .chain(more.iter().map(|f| f._host.name.clone()));
        for (k, ns) in hosts.enumerate() {
            let wcfg = WorkloadConfig {
                nodes: match opts.direct_host {
                    Some(_) => nodes.clone(),
                    None => Vec::new(),
                },
                target: target.clone(),
                clients: opts.writers,
                first_process: k as u32 * workload::FRONTEND_STRIDE,
                interval: opts.interval,
                op_timeout: opts.op_timeout,
            };
            let (rec, stop) = (rec.clone(), stop.clone());
            threads.push(crate::inns::spawn(&ns, "writers", move || async move {
                workload::run(wcfg, rec, stop).await;
                Ok(())
            })?);
        }
        let mut search = None;
        if let (true, Some(access)) = (
            opts.proxy_search && opts.search_workload,
            cluster.search_access(),
        ) {
            let target = crate::https::HttpsTarget {
                addr: "127.0.0.1:9200".into(),
                server_name: "127.0.0.1".into(),
                tls: crate::https::client_config(&access.ca_pem)?,
                auth: Some((access.username, access.password)),
            };
            let scfg = crate::search::SearchConfig {
                target: target.clone(),
                bulk_interval: Duration::from_millis(200),
                query_interval: Duration::from_millis(500),
                timeout: Duration::from_secs(5),
                seed: 1,
            };
            let (rec, stop) = (rec.clone(), stop.clone());
            threads.push(crate::inns::spawn(
                &net.client.name,
                "search",
                move || async move {
                    crate::search::run(scfg, rec, stop).await;
                    Ok(())
                },
            )?);
            search = Some(target);
        }
        if !opts.sample_period.is_zero() {
            let scfg = SamplerConfig {
                nodes: nodes.clone(),
                check: cluster.check(),
                target: target.clone(),
                period: opts.sample_period,
                timeout: Duration::from_secs(1),
            };
            let (rec, stop) = (rec.clone(), stop.clone());
            threads.push(crate::inns::spawn(
                &net.client.name,
                "sampler",
                move || async move {
                    sampler::run(scfg, rec, stop).await;
                    Ok(())
                },
            )?);
        }
        Ok(Clients {
            rec,
            haproxy: hap,
            more,
            search,
            stop,
            threads,
            client_ns: net.client.name.clone(),
        })
    }

    /// Stops writers and sampler and waits for their last ops to be recorded.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// How many frontends write (client hosts, each with its own haproxy).
    pub fn frontends(&self) -> u32 {
        1 + self.more.len() as u32
    }

    /// The haproxy logs of frontends 1.. (frontend 0's is `haproxy.log`).
    pub fn more_haproxy_logs(&self) -> Vec<std::path::PathBuf> {
        self.more.iter().map(|f| f.haproxy.log.clone()).collect()
    }

    /// Waits until every frontend has an acknowledged write that *started* after `after_us`;
    /// returns the latest of their ends (the first such write of the frontend that came back
    /// last).
    pub fn wait_write_after(&self, after_us: u64, deadline: Duration) -> Result<u64> {
        let start = Instant::now();
        let n = self.frontends();
        loop {
            let mut first: Vec<Option<u64>> = vec![None; n as usize];
            for e in self.rec.entries().iter() {
                if let Entry::Op(o) = e {
                    if o.kind == OpKind::Write && o.outcome == Outcome::Ok && o.start_us > after_us
                    {
                        let k = workload::frontend_of(o.process) as usize;
                        if let Some(slot) = first.get_mut(k) {
                            if slot.is_none_or(|t| o.end_us < t) {
                                *slot = Some(o.end_us);
                            }
                        }
                    }
                }
            }
            if first.iter().all(Option::is_some) {
                return Ok(first.into_iter().flatten().max().unwrap_or(after_us));
            }
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: "an acknowledged write through haproxy".into(),
                    secs: deadline.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads every node's ids for the checker, polling until each node has every acknowledged
/// id or `deadline` passes (followers may still be replaying the last WAL).
pub fn final_state(
    cluster: &dyn Cluster,
    rec: &Recorder,
    deadline: Duration,
) -> crate::checker::FinalState {
    let acked: std::collections::HashSet<i64> = crate::checker::ops(&rec.entries())
        .filter(|o| o.kind != OpKind::Health && o.outcome == Outcome::Ok)
        .map(|o| o.id)
        .collect();
    let target = cluster.pg_target();
    let nodes: Vec<(String, String)> = cluster
        .net()
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("n{}", i + 1), n.ip.clone()))
        .collect();
    let ns = cluster.net().client.name.clone();
    crate::inns::block_on(&ns, move || async move {
        let start = Instant::now();
        let mut out = Vec::new();
        for (name, ip) in nodes {
            let t = target.with_host(&ip);
            let mut last = None;
            loop {
                if let Ok(ids) = pg::read_ids(&t, Duration::from_secs(3)).await {
                    let set: std::collections::HashSet<i64> = ids.into_iter().collect();
                    let complete = acked.is_subset(&set);
                    last = Some(set);
                    if complete {
                        break;
                    }
                }
                if start.elapsed() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            out.push((name, last));
        }
        Ok(out)
    })
    .unwrap_or_default()
}
