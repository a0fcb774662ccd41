//! What the search service reports about itself on `GET /_larder/stats` (the agent fetches it
//! with its health probe and re-exports it on `/metrics`; see docs/architecture.md,
//! "Observability").

use crate::histogram;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchStats {
    /// Live documents in the local index (as of its last commit).
    pub documents: u64,
    /// Highest change-log position the tailer has fetched from PostgreSQL.
    pub log_position: i64,
    /// Highest change-log position the local index has applied.
    pub indexed_position: i64,
    /// Documents accepted by `_bulk` on this node since the service started.
    pub bulk_documents: u64,
    /// Queries (`_search`, `_count`) answered, with their latency.
    pub query_latency: histogram::Snapshot,
    /// Requests answered with an error status, by operation (`bulk`, `query`, `other`).
    pub errors: Vec<(String, u64)>,
}

impl SearchStats {
    /// Log entries not yet applied to the local index.
    pub fn indexing_lag(&self) -> i64 {
        (self.log_position - self.indexed_position).max(0)
    }
}
