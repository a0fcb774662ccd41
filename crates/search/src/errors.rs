//! The crate's error type. HTTP handlers turn these into ES-shaped bodies (see `api::EsError`).

/// Errors of the search tier.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("postgresql: {}", pg_message(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("index directory {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("http listener: {0}")]
    Serve(std::io::Error),
    #[error("this node is a follower; writes go to the leader")]
    Follower,
    #[error("{0}")]
    Other(String),
}

/// tokio-postgres prints only "db error"; the server's message is in the source.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
