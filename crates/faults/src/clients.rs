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
    /// Writers connect to this address (a VIP) instead of the client's haproxy; haproxy still
    /// runs for the probes' sake but carries no client write.
    pub direct_host: Option<String>,
}

pub struct Clients {
    pub rec: Recorder,
    pub haproxy: Haproxy,
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
        let hap = Haproxy::start(&net.client, &net.dir, &cfg, 5432)?;
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
        let wcfg = WorkloadConfig {
            nodes: match opts.direct_host {
                Some(_) => nodes.clone(),
                None => Vec::new(),
            },
            target: target.clone(),
            clients: opts.writers,
            interval: opts.interval,
            op_timeout: opts.op_timeout,
        };
        {
            let (rec, stop) = (rec.clone(), stop.clone());
            threads.push(crate::inns::spawn(
                &net.client.name,
                "writers",
                move || async move {
                    workload::run(wcfg, rec, stop).await;
                    Ok(())
                },
            )?);
        }
        let mut search = None;
        if let (true, Some(access)) = (opts.proxy_search, cluster.search_access()) {
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

    /// Waits until an acknowledged client write *started* after `after_us`; returns its end.
    pub fn wait_write_after(&self, after_us: u64, deadline: Duration) -> Result<u64> {
        let start = Instant::now();
        loop {
            let found = self.rec.entries().iter().rev().find_map(|e| match e {
                Entry::Op(o)
                    if o.kind == OpKind::Write
                        && o.outcome == Outcome::Ok
                        && o.start_us > after_us =>
                {
                    Some(o.end_us)
                }
                _ => None,
            });
            if let Some(end) = found {
                return Ok(end);
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
