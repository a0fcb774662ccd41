//! Follows the change log in the node-local PostgreSQL and feeds the indexer thread.
//!
//! The same loop runs on leader and followers: on the leader it also creates the database and
//! schema; on a follower it waits (retrying, never crashing) until replication brings them.
//! It tracks the node's role (`pg_is_in_recovery()`) for `/_cluster/health` and logs.

use crate::config::PgTarget;
use crate::generation;
use crate::indexer::IndexerMsg;
use crate::log;
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

/// Where the index stands in the log: what the tailer has handed the indexer so far.
#[derive(Debug, Clone)]
pub struct Position {
    /// Highest log position handed over.
    pub fetched: i64,
    /// Identity of the log the positions belong to.
    pub epoch: String,
    /// Newest log generation seen (see [`crate::generation`]).
    pub generation: i32,
}

/// Runs until `shutdown` is cancelled or the indexer is gone.
pub async fn run(
    target: PgTarget,
    tx: SyncSender<IndexerMsg>,
    mut at: Position,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    while !shutdown.is_cancelled() {
        match follow(&target, &tx, &mut at, &wake, &shared, &shutdown).await {
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
    at: &mut Position,
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
    if log_epoch != at.epoch {
        reset(tx, at, log_epoch, 0).await?;
    }
    let mut generations = log::has_generations(&client).await?;
    shared.pg_ok.store(true, Ordering::Relaxed);
    tracing::info!(
        position = at.fetched,
        generation = at.generation,
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
            if !generations {
                generations = log::has_generations(&client).await?;
            }
            role_checked = Instant::now();
        }
        let log::Fetched {
            rows,
            generation: newest,
        } = log::fetch_after(&client, at.fetched, BATCH, generations).await?;
        if newest > at.generation {
            // Another primary has written since the index last looked: is what the index
            // applied still this log's history?
            let known = log::generations(&client).await?;
            if generation::must_rebuild(at.fetched, at.generation, &known) {
                tracing::warn!(
                    applied = at.fetched,
                    generation = at.generation,
                    newest,
                    "the search index applied changes the log's history does not have (a \
                     rewound or replaced node); rebuilding it from the log"
                );
                reset(tx, at, at.epoch.clone(), newest).await?;
                continue;
            }
            at.generation = newest;
        }
        let Some(last) = rows.last().map(|r| r.pos) else {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        };
        at.fetched = last;
        shared.fetched.store(last, Ordering::Relaxed);
        let behind = rows.len() as i64 == BATCH;
        send(
            tx,
            IndexerMsg::Batch {
                rows,
                last_pos: last,
                behind,
                generation: at.generation,
            },
        )
        .await?;
    }
}

/// Empties the index; the tailer starts over from the log's first position.
async fn reset(
    tx: &SyncSender<IndexerMsg>,
    at: &mut Position,
    epoch: String,
    generation: i32,
) -> Result<(), TailError> {
    send(
        tx,
        IndexerMsg::Reset {
            epoch: epoch.clone(),
            generation,
        },
    )
    .await?;
    *at = Position {
        fetched: 0,
        epoch,
        generation,
    };
    Ok(())
}
