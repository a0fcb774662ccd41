//! PostgreSQL access for the workload, the sampler and the checker: connecting with
//! deadlines, the one table the suite writes, and how an error maps to an outcome.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::history::Outcome;

/// The table every write and probe inserts into. Ids of clients and probes are disjoint.
pub const TABLE: &str = "larder_faults_history";

/// The insert: returns the address of the server that committed it and the timeline it was
/// on (first 8 hex digits of the current WAL file name), which is the writer's "term".
pub const INSERT: &str = "INSERT INTO larder_faults_history (id, process) VALUES ($1, $2) \
     RETURNING host(inet_server_addr()), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";

#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl Target {
    /// The `postgres` database on port 5432 of a node's loopback (each node has its own
    /// network namespace).
    pub fn loopback(user: &str, password: &str) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 5432,
            user: user.into(),
            password: password.into(),
            dbname: "postgres".into(),
        }
    }

    /// One row of `sql`, a database error named with this target.
    pub async fn query_one(&self, c: &Client, sql: &str) -> Result<tokio_postgres::Row> {
        c.query_one(sql, &[])
            .await
            .map_err(|source| Error::Postgres {
                target: self.describe(),
                source,
            })
    }

    pub fn with_host(&self, host: &str) -> Target {
        Target {
            host: host.to_string(),
            ..self.clone()
        }
    }

    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// Connects within `timeout`; the connection task is spawned on the current runtime and
/// ends by itself when the client is dropped.
pub async fn connect(t: &Target, timeout: Duration) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .password(&t.password)
        .dbname(&t.dbname)
        .connect_timeout(timeout)
        .application_name("larder-faults");
    let fut = cfg.connect(NoTls);
    let (client, conn) = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(x)) => x,
        Ok(Err(source)) => {
            return Err(Error::Postgres {
                target: t.describe(),
                source,
            })
        }
        Err(_) => {
            return Err(Error::Timeout {
                what: format!("connection to {}", t.describe()),
                secs: timeout.as_secs_f64(),
            })
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Outcome of a statement that returned an error *after it was sent*.
///
/// Only errors that PostgreSQL raises before a transaction can commit are `Failed`:
/// read-only transaction (a replica), integrity and syntax errors, rollbacks, insufficient
/// resources (`53100 could not extend file` on a full disk: an ERROR aborts the transaction,
/// and a failure once its commit record is written is a PANIC, not an ERROR). Anything
/// else — connection closed, admin shutdown, a crash while waiting for the synchronous
/// standby — may hit after the commit record is already written, so it is `Unknown`.
pub fn classify(e: &tokio_postgres::Error) -> Outcome {
    match e.code() {
        Some(code) => {
            let c = code.code();
            let definite = c.starts_with("25")
                || c.starts_with("23")
                || c.starts_with("42")
                || c.starts_with("40")
                || c.starts_with("22")
                || c.starts_with("53")
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
            if definite {
                Outcome::Failed
            } else {
                Outcome::Unknown
            }
        }
        None => Outcome::Unknown,
    }
}

/// Short error text for the history (first line, no secrets: the password never appears in
/// tokio-postgres error messages).
pub fn short(e: &dyn std::fmt::Display) -> String {
    shorten(e.to_string())
}

/// The server's SQLSTATE and message when there is one (tokio-postgres' Display says only
/// "db error"), otherwise the client-side error.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => shorten(format!("{} {}", db.code().code(), db.message())),
        None => short(e),
    }
}

fn shorten(s: String) -> String {
    let s = s.lines().next().unwrap_or("").to_string();
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

/// Creates the history table (idempotent).
pub async fn create_schema(client: &Client) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS larder_faults_history (\
               id bigint PRIMARY KEY, process int NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .await
}

/// Every id present on one node (read directly, bypassing haproxy).
pub async fn read_ids(t: &Target, timeout: Duration) -> Result<Vec<i64>> {
    let c = connect(t, timeout).await?;
    let rows = tokio::time::timeout(
        timeout * 4,
        c.query("SELECT id FROM larder_faults_history", &[]),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: format!("reading ids on {}", t.describe()),
        secs: (timeout * 4).as_secs_f64(),
    })?
    .map_err(|source| Error::Postgres {
        target: t.describe(),
        source,
    })?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// Parses a timeline from the WAL file name prefix (8 hex digits).
pub fn parse_timeline(hex: &str) -> Option<u32> {
    u32::from_str_radix(hex, 16).ok()
}
