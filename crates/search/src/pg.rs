//! Connections to the node-local PostgreSQL: connect, create the search database on the leader
//! (or wait for it to be replicated on a follower), detect the node's role, and a tiny pool.

use crate::config::PgTarget;
use crate::SearchError;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Opens one connection to `dbname` on the local server; the connection task runs on tokio.
/// A refused password is retried with the next one (see [`PgTarget::next_password`]).
pub async fn connect(target: &PgTarget, dbname: &str) -> Result<Client, SearchError> {
    let mut passwords = target.passwords().into_iter().peekable();
    while let Some(password) = passwords.next() {
        match target.config(dbname, &password).connect(NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "postgresql connection closed");
                    }
                });
                return Ok(client);
            }
            Err(e)
                if e.code() == Some(&SqlState::INVALID_PASSWORD) && passwords.peek().is_some() => {}
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("PgTarget::passwords lists one password at least")
}

/// True when the local server is a writable primary (`pg_is_in_recovery()` is false).
pub async fn is_primary(client: &Client) -> Result<bool, SearchError> {
    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
    Ok(!row.get::<_, bool>(0))
}

/// On a primary: creates the search database when missing. On a standby it cannot, and only
/// reports whether the replicated database exists yet. Returns true when the database exists.
pub async fn ensure_database(target: &PgTarget) -> Result<bool, SearchError> {
    let admin = connect(target, "postgres").await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&target.dbname],
        )
        .await?
        .is_some();
    if exists {
        return Ok(true);
    }
    if !is_primary(&admin).await? {
        return Ok(false);
    }
    let ident = target.dbname.replace('"', "\"\"");
    match admin
        .batch_execute(&format!("CREATE DATABASE \"{ident}\""))
        .await
    {
        Ok(()) => Ok(true),
        // Another node's service (or a concurrent start) won the race: fine.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// True when the error says "this server is read-only" (a hot standby).
pub fn is_read_only_error(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
        || e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
}

/// True when the database or its schema does not exist (yet): creation or replication pending.
pub fn is_not_ready_error(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
        || e.code() == Some(&SqlState::INVALID_CATALOG_NAME)
        || e.code() == Some(&SqlState::UNDEFINED_OBJECT)
}

/// A handful of reusable connections to the search database. Each slot reconnects lazily
/// after its connection broke (PostgreSQL restart, failover of the local server's role).
pub struct Pool {
    target: PgTarget,
    slots: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

/// A checked-out connection; returned to its slot on drop.
pub type PooledClient<'a> = tokio::sync::MappedMutexGuard<'a, Client>;

impl Pool {
    pub fn new(target: PgTarget, size: usize) -> Pool {
        Pool {
            target,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub async fn get(&self) -> Result<PooledClient<'_>, SearchError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Prefer an idle slot; otherwise queue on the round-robin one.
        let mut guard = None;
        for k in 0..self.slots.len() {
            if let Ok(g) = self.slots[(start + k) % self.slots.len()].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % self.slots.len()].lock().await,
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.target, &self.target.dbname).await?);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }
}
