//! Follows the change log in the node-local PostgreSQL and feeds the indexer thread.
//!
//! The same loop runs on leader and followers: on the leader it also creates the database and
//! schema; on a follower it waits (retrying, never crashing) until replication brings them.
//! It tracks the node's role (`pg_is_in_recovery()`) for `/_cluster/health` and logs.

use crate::config::PgTarget;
use crate::indexer::IndexerMsg;
use crate::log::{self, StoredRow};
use crate::pg;
use crate::SearchError;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 500;
const IDLE_POLL: Duration = Duration::from_millis(50);
const RETRY: Duration = Duration::from_secs(1);

/// Node role as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Unknown = 0,
    Leader = 1,
    Follower = 2,
}

/// State shared between the tailer and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Shared {
    role: AtomicU8,
    /// The tailer currently has a working connection.
    pub pg_ok: AtomicBool,
    /// Highest log position seen in PostgreSQL by the tailer.
    pub fetched: AtomicI64,
    /// The indexer thread died: the node cannot serve fresh results.
    pub indexer_failed: AtomicBool,
}

impl Shared {
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Leader,
            2 => Role::Follower,
            _ => Role::Unknown,
        }
    }
    fn set_role(&self, r: Role) {
        self.role.store(r as u8, Ordering::Relaxed);
    }
}

/// Runs until `shutdown` is cancelled or the indexer is gone.
pub async fn run(
    target: PgTarget,
    tx: SyncSender<IndexerMsg>,
    mut fetched: i64,
    mut epoch: String,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    while !shutdown.is_cancelled() {
        match follow(
            &target,
            &tx,
            &mut fetched,
            &mut epoch,
            &wake,
            &shared,
            &shutdown,
        )
        .await
        {
            Ok(()) => return,
            Err(TailError::IndexerGone) => {
                shared.indexer_failed.store(true, Ordering::Relaxed);
                return;
            }
            Err(TailError::Waiting(why)) => {
                if !warned {
                    tracing::info!(%why, "search tailer waiting");
                    warned = true;
                }
            }
            Err(TailError::Pg(e)) => {
                shared.pg_ok.store(false, Ordering::Relaxed);
                if !warned {
                    tracing::warn!(error = %e, "search tailer lost PostgreSQL; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

enum TailError {
    Pg(SearchError),
    Waiting(&'static str),
    IndexerGone,
}

impl From<SearchError> for TailError {
    fn from(e: SearchError) -> Self {
        TailError::Pg(e)
    }
}

async fn send(tx: &SyncSender<IndexerMsg>, msg: IndexerMsg) -> Result<(), TailError> {
    let tx = tx.clone();
    // The channel is bounded: blocking here is the back-pressure from a busy indexer.
    tokio::task::spawn_blocking(move || tx.send(msg))
        .await
        .map_err(|_| TailError::IndexerGone)?
        .map_err(|_| TailError::IndexerGone)
}

async fn follow(
    target: &PgTarget,
    tx: &SyncSender<IndexerMsg>,
    fetched: &mut i64,
    epoch: &mut String,
    wake: &Notify,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(), TailError> {
    if !pg::ensure_database(target).await? {
        shared.set_role(Role::Follower);
        return Err(TailError::Waiting("search database not replicated yet"));
    }
    let client = pg::connect(target, &target.dbname).await?;
    let mut primary = pg::is_primary(&client).await?;
    shared.set_role(if primary {
        Role::Leader
    } else {
        Role::Follower
    });
    if primary {
        log::ensure_schema(&client).await?;
    } else if !log::schema_ready(&client).await? {
        return Err(TailError::Waiting("search schema not replicated yet"));
    }
    let log_epoch = log::epoch(&client).await?;
    if log_epoch != *epoch {
        send(
            tx,
            IndexerMsg::Reset {
                epoch: log_epoch.clone(),
            },
        )
        .await?;
        *epoch = log_epoch;
        *fetched = 0;
    }
    shared.pg_ok.store(true, Ordering::Relaxed);
    tracing::info!(
        position = *fetched,
        leader = primary,
        "search tailer following the change log"
    );
    let mut role_checked = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if role_checked.elapsed() >= RETRY {
            let now_primary = pg::is_primary(&client).await?;
            if now_primary != primary {
                tracing::info!(leader = now_primary, "local PostgreSQL changed role");
                primary = now_primary;
                shared.set_role(if primary {
                    Role::Leader
                } else {
                    Role::Follower
                });
            }
            role_checked = Instant::now();
        }
        let rows: Vec<StoredRow> = log::fetch_after(&client, *fetched, BATCH).await?;
        let Some(last) = rows.last().map(|r| r.pos) else {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        };
        *fetched = last;
        shared.fetched.store(last, Ordering::Relaxed);
        let behind = rows.len() as i64 == BATCH;
        send(
            tx,
            IndexerMsg::Batch {
                rows,
                last_pos: last,
                behind,
            },
        )
        .await?;
    }
}
