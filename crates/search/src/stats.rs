//! The service's own counters, reported on `GET /_larder/stats` for the agent's `/metrics`
//! (the agent fetches them with its health probe, so a Prometheus scrape never reaches this
//! process).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use larder_core::histogram::{Histogram, LATENCY_BOUNDS};
use larder_core::search_stats::SearchStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Operations errors are counted by (the `op` label of `larder_search_errors_total`).
const OPS: [&str; 3] = ["bulk", "query", "other"];

#[derive(Debug)]
pub struct Stats {
    pub bulk_documents: AtomicU64,
    query_latency: Histogram,
    errors: [AtomicU64; OPS.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            bulk_documents: AtomicU64::new(0),
            query_latency: Histogram::new(LATENCY_BOUNDS),
            errors: Default::default(),
        }
    }
}

fn op_of(path: &str) -> usize {
    if path.ends_with("/_bulk") {
        0
    } else if path.ends_with("/_search") || path.ends_with("/_count") {
        1
    } else {
        2
    }
}

impl Stats {
    pub fn report(&self, documents: u64, log_position: i64, indexed_position: i64) -> SearchStats {
        SearchStats {
            documents,
            log_position,
            indexed_position,
            bulk_documents: self.bulk_documents.load(Ordering::Relaxed),
            query_latency: self.query_latency.snapshot(),
            errors: OPS
                .iter()
                .zip(&self.errors)
                .map(|(op, n)| (op.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// Times queries and counts server errors (5xx: the service failed; a 4xx is the client's
/// mistake, such as a malformed query, and is not counted).
pub async fn measure(State(stats): State<Arc<Stats>>, req: Request, next: Next) -> Response {
    let op = op_of(req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    if op == 1 {
        stats.query_latency.observe(started.elapsed());
    }
    if resp.status().is_server_error() {
        stats.errors[op].fetch_add(1, Ordering::Relaxed);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_told_apart_by_path() {
        assert_eq!(op_of("/_bulk"), 0);
        assert_eq!(op_of("/chef/_bulk"), 0);
        assert_eq!(op_of("/chef/_search"), 1);
        assert_eq!(op_of("/_count"), 1);
        assert_eq!(op_of("/chef/node/x"), 2);
        let s = Stats::default();
        s.errors[1].fetch_add(2, Ordering::Relaxed);
        let r = s.report(5, 10, 7);
        assert_eq!(r.indexing_lag(), 3);
        assert_eq!(r.errors[1], ("query".to_string(), 2));
    }
}
