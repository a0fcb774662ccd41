//! Wiring: open (or rebuild) the index, start the indexer thread and the log tailer, serve
//! HTTP until shutdown; and the operator's offline rebuild.

use crate::api::{self, AppState};
use crate::buffers::BufferPool;
use crate::config::SearchConfig;
use crate::index::{self, IndexStats, LocalIndex};
use crate::indexer::{self, Indexer};
use crate::log;
use crate::pg::{self, Pool};
use crate::tailer::{self, Shared};
use crate::SearchError;
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

const POOL_SIZE: usize = 4;
/// Idle `_bulk` body buffers kept: one per connection of the pool covers concurrent bulks.
const BODY_BUFFERS: usize = POOL_SIZE;

/// Serves the ES API on an already-bound listener until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SearchConfig,
    shutdown: CancellationToken,
) -> Result<(), SearchError> {
    cfg.validate()?;
    let dir = cfg.index_dir.clone();
    let (ix, meta, rebuilt) = tokio::task::spawn_blocking(move || LocalIndex::open_or_create(&dir))
        .await
        .map_err(|e| SearchError::Other(format!("index open task failed: {e}")))??;
    if rebuilt {
        tracing::info!(dir = %cfg.index_dir.display(), "search index (re)created; it will be filled from PostgreSQL");
    }
    let ix = Arc::new(ix);
    let (applied_tx, applied_rx) = watch::channel(meta.applied_position);
    let flush = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Indexer { tx, thread } =
        Indexer::spawn(ix.clone(), meta.clone(), applied_tx, flush.clone())?;
    let wake = Arc::new(Notify::new());
    let shared = Arc::new(Shared::default());
    let tail_stop = CancellationToken::new();
    let tail = tokio::spawn(tailer::run(
        cfg.pg.clone(),
        tx,
        meta.applied_position,
        meta.log_epoch.clone(),
        wake.clone(),
        shared.clone(),
        tail_stop.clone(),
    ));
    // The index threads' scheduling policy follows readers waiting and the index's lag.
    let prio = tokio::spawn(crate::priority::supervise(
        crate::priority::Signals {
            flush: flush.clone(),
            shared: shared.clone(),
            applied: applied_rx.clone(),
        },
        tail_stop.clone(),
    ));
    let state = Arc::new(AppState {
        pool: Pool::new(cfg.pg.clone(), POOL_SIZE),
        bodies: BufferPool::new(BODY_BUFFERS),
        cfg,
        index: ix,
        applied: applied_rx,
        shared,
        wake,
        index_known: Default::default(),
        flush,
        stats: Default::default(),
    });
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(SearchError::Serve);
    // HTTP first, then the tailer; dropping its sender lets the indexer commit and exit.
    tail_stop.cancel();
    let _ = tail.await;
    let _ = prio.await;
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SearchError::Other(format!("indexer join failed: {e}")))?;
    served?;
    match joined {
        Ok(r) => r,
        Err(_) => Err(SearchError::Other("indexer thread panicked".into())),
    }
}

/// Drops and rebuilds the local index from PostgreSQL. The search service must be stopped
/// (it holds the index writer); otherwise this fails without touching the index.
pub async fn rebuild_index(cfg: &SearchConfig) -> Result<IndexStats, SearchError> {
    cfg.validate()?;
    if !pg::ensure_database(&cfg.pg).await? {
        return Err(SearchError::Other(format!(
            "database {} does not exist on the local PostgreSQL yet",
            cfg.pg.dbname
        )));
    }
    let client = pg::connect(&cfg.pg, &cfg.pg.dbname).await?;
    if pg::is_primary(&client).await? {
        log::ensure_schema(&client).await?;
    }
    let epoch = log::epoch(&client).await?;
    let dir = cfg.index_dir.clone();
    // Refuse while a running service holds the writer lock.
    if let Ok(existing) = tantivy::Index::open_in_dir(&dir) {
        let w: Result<tantivy::IndexWriter, _> = existing.writer_with_num_threads(1, 15_000_000);
        if let Err(tantivy::TantivyError::LockFailure(..)) = w {
            return Err(SearchError::Other(format!(
                "index {} is in use by a running search service; stop it first",
                dir.display()
            )));
        }
    }
    let d = dir.clone();
    let ix = Arc::new(
        tokio::task::spawn_blocking(move || LocalIndex::create_fresh(&d))
            .await
            .map_err(|e| SearchError::Other(e.to_string()))??,
    );
    let mut writer: tantivy::IndexWriter = ix.index.writer_with_num_threads(1, 200_000_000)?;
    let mut meta = index::CommitMeta {
        applied_position: 0,
        log_epoch: epoch,
        schema_version: index::SCHEMA_VERSION,
    };
    loop {
        let rows = log::fetch_after(&client, meta.applied_position, 1000).await?;
        let Some(last) = rows.last().map(|r| r.pos) else {
            break;
        };
        let ix2 = ix.clone();
        writer = tokio::task::spawn_blocking(move || {
            indexer::apply_stored(&ix2, &writer, rows).map(|_| writer)
        })
        .await
        .map_err(|e| SearchError::Other(e.to_string()))??;
        meta.applied_position = last;
    }
    let (applied_tx, _rx) = watch::channel(0);
    let ix2 = ix.clone();
    tokio::task::spawn_blocking(move || {
        indexer::commit(&ix2, &mut writer, &meta, &applied_tx)?;
        writer.wait_merging_threads()?;
        Ok::<_, SearchError>(())
    })
    .await
    .map_err(|e| SearchError::Other(e.to_string()))??;
    index::index_stats(&dir)
}
