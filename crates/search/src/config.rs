//! Connection and service settings handed in by the agent (or a test).

use std::path::PathBuf;

/// Where the node-local PostgreSQL listens. The search service only ever talks to the PostgreSQL
/// of its own node: on the leader that is the writable primary, on a follower the hot standby
/// whose replicated change log the index follows.
#[derive(Clone)]
pub struct PgTarget {
    /// An IP address, or a unix-socket directory when it starts with '/'.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Tried when `password` is refused: the new password while the agent rotates the
    /// PostgreSQL passwords (`larder rotate-secrets --postgresql`), which the server may
    /// already hold. Empty = none.
    pub next_password: String,
    /// Where both passwords are re-read before each new connection (JSON with `pg_password`
    /// and `pg_next_password`, the service's settings file), so a rotated password reaches a
    /// running service; `None` = the two fields above.
    pub password_file: Option<PathBuf>,
    /// Database holding the search change log; `larder_search` by default.
    pub dbname: String,
}

impl Default for PgTarget {
    fn default() -> Self {
        PgTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: String::new(),
            next_password: String::new(),
            password_file: None,
            dbname: Self::DEFAULT_DBNAME.into(),
        }
    }
}

// By hand, so a logged config never shows the password.
impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"********")
            .field("password_file", &self.password_file)
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl PgTarget {
    /// Default database name of the search tier.
    pub const DEFAULT_DBNAME: &'static str = "larder_search";

    /// The passwords to try, in order: from [`PgTarget::password_file`] when it reads, else
    /// the fields (an unreadable file keeps the service on what it started with).
    pub(crate) fn passwords(&self) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Passwords {
            #[serde(default)]
            pg_password: String,
            #[serde(default)]
            pg_next_password: String,
        }
        let (current, next) = match self
            .password_file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Passwords>(&b).ok())
        {
            Some(p) => (p.pg_password, p.pg_next_password),
            None => (self.password.clone(), self.next_password.clone()),
        };
        let mut out = vec![current];
        if !next.is_empty() && next != out[0] {
            out.push(next);
        }
        out
    }

    pub(crate) fn config(&self, dbname: &str, password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        c.port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name("larder-search")
            .connect_timeout(std::time::Duration::from_secs(5));
        if !password.is_empty() {
            c.password(password);
        }
        c
    }
}

/// Everything `serve` and `rebuild_index` need.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    pub pg: PgTarget,
    /// Directory of the local tantivy index (a rebuildable cache of the PostgreSQL log).
    pub index_dir: PathBuf,
    /// Elasticsearch major version to impersonate: 5, 6 or 7 (7 is what current Chef Infra
    /// Server, which ships OpenSearch 1.x reporting 7.10.2, handles best).
    pub es_major: u8,
    pub cluster_name: String,
    pub node_name: String,
    /// Source text per piece of a `_bulk` body: a body is parsed and written to PostgreSQL
    /// piece by piece, so one piece is stored while the next is parsed (see `log::write_pieces`).
    pub bulk_piece_bytes: usize,
    /// Accepted HTTP Basic credentials; empty = no authentication (see `auth`).
    pub auth: Vec<crate::auth::Credential>,
    /// Re-read the accepted credentials from this file when it changes (`auth::Accepted`).
    pub auth_file: Option<PathBuf>,
}

impl SearchConfig {
    /// Default ES major impersonated.
    pub const DEFAULT_ES_MAJOR: u8 = 7;
    /// Default [`SearchConfig::bulk_piece_bytes`]: 4 MiB, about 80 Chef node documents. Measured
    /// on 24 MB bodies of 500 nodes (docs/benchmarks.md, run 5): 1 MiB pieces were slower than
    /// not streaming at all (per-statement and per-thread costs), 4 and 8 MiB alike and best.
    pub const DEFAULT_BULK_PIECE_BYTES: usize = 4 << 20;

    /// A config with the defaults (ES 7, cluster/node names "larder").
    pub fn new(pg: PgTarget, index_dir: PathBuf) -> SearchConfig {
        SearchConfig {
            pg,
            index_dir,
            es_major: Self::DEFAULT_ES_MAJOR,
            cluster_name: "larder".into(),
            node_name: "larder".into(),
            bulk_piece_bytes: Self::DEFAULT_BULK_PIECE_BYTES,
            auth: Vec::new(),
            auth_file: None,
        }
    }

    /// Checks the settings that would otherwise fail late (at the first request).
    pub fn validate(&self) -> Result<(), crate::SearchError> {
        if !matches!(self.es_major, 5..=7) {
            return Err(crate::SearchError::Config(format!(
                "search.es_major = {}: only 5, 6 and 7 are supported",
                self.es_major
            )));
        }
        if self.bulk_piece_bytes == 0 {
            return Err(crate::SearchError::Config(
                "bulk_piece_bytes must be at least 1".into(),
            ));
        }
        if self
            .auth
            .iter()
            .any(|c| c.username.is_empty() || c.username.contains(':') || c.password.is_empty())
        {
            return Err(crate::SearchError::Config(
                "search credentials need a user name without ':' and a non-empty password".into(),
            ));
        }
        if self.pg.dbname.is_empty() {
            return Err(crate::SearchError::Config(
                "search.pg.dbname must not be empty".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_re_read_from_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("service.json");
        let t = PgTarget {
            password: "start".into(),
            password_file: Some(file.clone()),
            ..PgTarget::default()
        };
        // No file (yet): what the service started with.
        assert_eq!(t.passwords(), ["start"]);
        std::fs::write(
            &file,
            r#"{"pg_password": "old", "pg_next_password": "new"}"#,
        )
        .unwrap();
        assert_eq!(t.passwords(), ["old", "new"]);
        std::fs::write(&file, r#"{"pg_password": "new", "listen": "x"}"#).unwrap();
        assert_eq!(t.passwords(), ["new"]);
        let fixed = PgTarget {
            password: "a".into(),
            next_password: "b".into(),
            ..PgTarget::default()
        };
        assert_eq!(fixed.passwords(), ["a", "b"]);
    }
}
