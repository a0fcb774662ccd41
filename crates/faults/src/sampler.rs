//! Watches every node directly, bypassing haproxy: the health endpoint haproxy trusts, and a
//! real insert on each node's PostgreSQL. Two nodes that both accept writes in overlapping
//! terms is split brain, whatever the health endpoints claim.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::haproxy::HealthCheck;
use crate::history::{Op, OpKind, Outcome, Recorder};
use crate::pg::{self, Target};

/// Probe ids start here, far above any client id.
pub const PROBE_BASE: i64 = 9_000_000_000_000_000;

#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// (name, ip) of every node.
    pub nodes: Vec<(String, String)>,
    pub check: HealthCheck,
    /// Template for direct connections (host replaced per node).
    pub target: Target,
    pub period: Duration,
    pub timeout: Duration,
}

pub async fn run(cfg: SamplerConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for (i, (_, ip)) in cfg.nodes.iter().enumerate() {
        tasks.push(tokio::spawn(node_loop(
            i as u32,
            ip.clone(),
            cfg.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn node_loop(idx: u32, ip: String, cfg: SamplerConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let target = cfg.target.with_host(&ip);
    let health_addr = format!("{ip}:{}", cfg.check.port);
    let mut conn: Option<tokio_postgres::Client> = None;
    let mut seq: i64 = 0;
    let mut tick = tokio::time::interval(cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Health sample.
        let start_us = rec.now_us();
        let status =
            crate::http::get_status(&health_addr, &cfg.check.sample_path, cfg.timeout).await;
        rec.op(Op {
            kind: OpKind::Health,
            id: 0,
            process: idx,
            start_us,
            end_us: rec.now_us(),
            outcome: if status.is_some() {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            node: Some(ip.clone()),
            timeline: None,
            status,
            error: None,
        });
        // Direct write probe.
        seq += 1;
        let id = PROBE_BASE + (idx as i64) * 1_000_000_000_000 + seq;
        let start_us = rec.now_us();
        let mut op = Op {
            kind: OpKind::Probe,
            id,
            process: idx,
            start_us,
            end_us: start_us,
            outcome: Outcome::Failed,
            node: Some(ip.clone()),
            timeline: None,
            status: None,
            error: None,
        };
        if conn.as_ref().map(|c| c.is_closed()).unwrap_or(true) {
            match pg::connect(&target, cfg.timeout).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    op.end_us = rec.now_us();
                    op.error = Some(format!("connect: {}", pg::short(&e)));
                    rec.op(op);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        let res =
            tokio::time::timeout(cfg.timeout, c.query_one(pg::INSERT, &[&id, &(idx as i32)])).await;
        op.end_us = rec.now_us();
        match res {
            Ok(Ok(row)) => {
                op.outcome = Outcome::Ok;
                op.node = row.get::<_, Option<String>>(0).or(op.node);
                op.timeline = row
                    .get::<_, Option<String>>(1)
                    .and_then(|s| pg::parse_timeline(&s));
            }
            Ok(Err(e)) => {
                op.outcome = pg::classify(&e);
                op.error = Some(pg::describe(&e));
                if op.outcome == Outcome::Unknown {
                    conn = None;
                }
            }
            Err(_) => {
                op.outcome = Outcome::Unknown;
                op.error = Some("timeout".into());
                conn = None;
            }
        }
        rec.op(op);
    }
}
