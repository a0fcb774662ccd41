//! Larder's search tier: the Elasticsearch API subset Chef Infra Server uses, durable in
//! PostgreSQL, served from a local tantivy index on every node.
//!
//! Data flow: `_bulk` → [`log`] (one multi-row upsert in PostgreSQL, acknowledged after commit)
//! → streaming replication → [`tailer`] on each node (reads the change log in position order)
//! → [`indexer`] thread (tantivy, grouped commits) → searches via [`api`].
//!
//! Modules:
//! - [`config`]: `SearchConfig`, `PgTarget`.
//! - [`api`]: HTTP routes and ES-shaped responses for majors 5, 6, 7; routing decision for writes.
//! - [`bulk`]: NDJSON `_bulk` parsing.
//! - [`buffers`]: request-body buffers kept for reuse.
//! - [`codec`]: compact encoding of `content` in the change log.
//! - [`query`]: Lucene query-string parser ([`query::parser`]), ES JSON DSL ([`query::dsl`]),
//!   compilation to tantivy ([`query::build`]).
//! - [`id_order`]: the id-sorted paging collector Chef's searches use.
//! - [`index`]: schema, open/rebuild of the local index, search, stats.
//! - [`indexer`]: the writer thread.
//! - [`log`]: the change log schema and statements in PostgreSQL.
//! - [`generation`]: which applied changes survive a change of primary (rebuild decision).
//! - [`tailer`]: follows the local log, tracks the node's role.
//! - [`pg`]: connections, database creation, role detection, pool.
//! - [`flatten`]: Chef's object → `content` flattening (tests, benchmark, [`chef_docs`]).
//! - [`chef_docs`]: search documents from Chef Server's `opscode_chef` database (restore from a
//!   Chef Backend dump).
//! - [`service`]: `serve` and `rebuild_index`.
//! - [`errors`]: the `SearchError` type.
//! - [`auth`]: HTTP Basic authentication with ES-shaped 401s.
//! - [`tls`]: the HTTPS listener (handshakes off the accept path, certificate reload, plain
//!   HTTP on the TLS port answered with an ES-shaped 400).

pub mod api;
pub mod auth;
pub mod buffers;
pub mod bulk;
pub mod chef_docs;
pub mod codec;
pub mod config;
pub mod errors;
pub mod flatten;
pub mod generation;
pub mod id_order;
pub mod index;
pub mod indexer;
pub mod log;
pub mod pg;
pub mod priority;
pub mod query;
pub mod service;
pub mod stats;
pub mod tailer;
pub mod tls;

pub use config::{PgTarget, SearchConfig};
pub use errors::SearchError;
pub use flatten::{flatten, flatten_chef};
pub use index::IndexStats;
pub use service::{rebuild_index, serve, serve_on, Listener};

/// Cheap stats for `larder status` (document count, index size bytes, last applied position).
pub fn index_stats(index_dir: &std::path::Path) -> Result<IndexStats, SearchError> {
    index::index_stats(index_dir)
}
