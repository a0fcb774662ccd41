//! A fixed-bucket latency histogram that many tasks can record into without a lock, and its
//! plain-data [`Snapshot`] (what the search service hands the agent as JSON, and what the
//! agent's `/metrics` encoder writes).
//!
//! Buckets are cumulative on output, as Prometheus wants them; internally each bucket counts
//! only its own range so a record is one atomic add.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// At most this many finite bucket bounds.
pub const MAX_BUCKETS: usize = 16;

/// Bounds (seconds) for things that normally take milliseconds: an HA loop iteration, an etcd
/// round trip, a search query.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]` counts observations in `(bounds[i-1], bounds[i]]`; the one after the last
    /// bound counts the rest (`+Inf`).
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// `bounds` must be increasing and at most [`MAX_BUCKETS`] long (checked at compile time
    /// for the statics that use this).
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        let mut acc = 0;
        for i in 0..self.bounds.len() {
            acc += self.counts[i].load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        let count = acc + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        Snapshot {
            bounds: self.bounds.to_vec(),
            cumulative,
            count,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram's state at one moment, cumulative per bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    pub bounds: Vec<f64>,
    /// Observations `≤ bounds[i]`.
    pub cumulative: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        static H: Histogram = Histogram::new(&[0.01, 0.1, 1.0]);
        H.observe(Duration::from_millis(10)); // on the bound: counts in le=0.01
        H.observe(Duration::from_millis(50));
        H.observe(Duration::from_millis(50));
        H.observe(Duration::from_secs(3));
        let s = H.snapshot();
        assert_eq!(s.cumulative, vec![1, 3, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 3.11).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
