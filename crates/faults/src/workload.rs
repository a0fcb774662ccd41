//! Clients that insert unique ids through haproxy at a fixed pace and record every attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::history::{Op, OpKind, Outcome, Recorder};
use crate::pg::{self, Target};

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Where the clients connect (haproxy on the client host: 127.0.0.1:5432).
    pub target: Target,
    pub clients: u32,
    /// Process number of the first client (frontend k's writers start at
    /// `k * FRONTEND_STRIDE`), so ids and per-frontend gaps never mix.
    pub first_process: u32,
    /// Pause between the starts of two inserts of one client (10 ms in the benchmark).
    pub interval: Duration,
    /// An insert without an answer after this long is recorded `Unknown` and its connection
    /// dropped; connecting is bounded by the same value.
    pub op_timeout: Duration,
    /// Set when `target` is a VIP: (name, ip) of every node, so each connection finds out
    /// which node it reached (`inet_server_addr()` answers the VIP). Empty through haproxy,
    /// whose backend connections already come from the node's own address.
    pub nodes: Vec<(String, String)>,
}

/// The node a connection reached through an address that is not a node's (a VIP): the
/// harness names node data directories after the nodes (`…/n2/…`).
async fn node_behind(cl: &tokio_postgres::Client, nodes: &[(String, String)]) -> Option<String> {
    let row = cl
        .query_one("SELECT current_setting('data_directory')", &[])
        .await
        .ok()?;
    let dir: String = row.get(0);
    nodes
        .iter()
        .find(|(name, _)| dir.contains(&format!("/{name}/")))
        .map(|(_, ip)| ip.clone())
}

/// Base of client ids: client c writes ids (c+1)*ID_STRIDE + n.
pub const ID_STRIDE: i64 = 1_000_000_000;
/// Process numbers per frontend: frontend k (0 = the first client host) runs processes
/// `k * FRONTEND_STRIDE ..`.
pub const FRONTEND_STRIDE: u32 = 100;

/// The frontend (client host, 0-based) whose writer recorded process `p`.
pub fn frontend_of(p: u32) -> u32 {
    p / FRONTEND_STRIDE
}

/// Runs the clients until `stop` is set. Each op goes to the recorder as it completes.
pub async fn run(cfg: WorkloadConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for c in cfg.first_process..cfg.first_process + cfg.clients {
        tasks.push(tokio::spawn(client(
            c,
            cfg.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn client(c: u32, cfg: WorkloadConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut conn: Option<(tokio_postgres::Client, tokio_postgres::Statement)> = None;
    let via_other_address = !cfg.nodes.is_empty();
    let mut reached: Option<String> = None;
    let mut tick = tokio::time::interval(cfg.interval);
    // A blocked insert must not be followed by a burst of catch-up inserts: the pace after
    // an outage stays one per interval, as the benchmark promises.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let id = (c as i64 + 1) * ID_STRIDE + seq;
        let start_us = rec.now_us();
        let mut op = Op {
            kind: OpKind::Write,
            id,
            process: c,
            start_us,
            end_us: start_us,
            outcome: Outcome::Failed,
            node: None,
            timeline: None,
            status: None,
            error: None,
        };
        if conn.as_ref().map(|(cl, _)| cl.is_closed()).unwrap_or(true) {
            conn = None;
            match connect_prepared(&cfg.target, cfg.op_timeout).await {
                Ok(x) => {
                    reached = None;
                    if via_other_address {
                        reached =
                            tokio::time::timeout(cfg.op_timeout, node_behind(&x.0, &cfg.nodes))
                                .await
                                .ok()
                                .flatten();
                    }
                    conn = Some(x)
                }
                Err(e) => {
                    // Nothing was sent: definitely not applied.
                    op.end_us = rec.now_us();
                    op.error = Some(format!("connect: {}", pg::short(&e)));
                    rec.op(op);
                    continue;
                }
            }
        }
        let Some((cl, st)) = conn.as_ref() else {
            continue;
        };
        let res = tokio::time::timeout(cfg.op_timeout, cl.query_one(st, &[&id, &(c as i32)])).await;
        op.end_us = rec.now_us();
        match res {
            Ok(Ok(row)) => {
                op.outcome = Outcome::Ok;
                op.node = reached.clone().or(row.get::<_, Option<String>>(0));
                op.timeline = row
                    .get::<_, Option<String>>(1)
                    .and_then(|s| pg::parse_timeline(&s));
            }
            Ok(Err(e)) => {
                op.outcome = pg::classify(&e);
                op.error = Some(pg::describe(&e));
                if cl.is_closed() || op.outcome == Outcome::Unknown {
                    conn = None;
                }
            }
            Err(_) => {
                op.outcome = Outcome::Unknown;
                op.error = Some(format!("timeout after {:?}", cfg.op_timeout));
                // The statement may still commit; a new connection keeps the next op
                // independent of it.
                conn = None;
            }
        }
        rec.op(op);
    }
}

async fn connect_prepared(
    t: &Target,
    timeout: Duration,
) -> crate::error::Result<(tokio_postgres::Client, tokio_postgres::Statement)> {
    let cl = pg::connect(t, timeout).await?;
    let st = tokio::time::timeout(timeout, cl.prepare(pg::INSERT))
        .await
        .map_err(|_| crate::error::Error::Timeout {
            what: "prepare".into(),
            secs: timeout.as_secs_f64(),
        })?
        .map_err(|source| crate::error::Error::Postgres {
            target: t.describe(),
            source,
        })?;
    Ok((cl, st))
}
