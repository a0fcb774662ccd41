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
use crate::tls::TlsListener;
use crate::SearchError;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

const POOL_SIZE: usize = 4;
/// Idle `_bulk` body buffers kept: one per connection of the pool covers concurrent bulks.
const BODY_BUFFERS: usize = POOL_SIZE;

/// One listener of the service: plain HTTP, or HTTPS with a rustls configuration
/// (`tls::server_config`).
pub enum Listener {
    Plain(tokio::net::TcpListener),
    Tls(tokio::net::TcpListener, Arc<rustls::ServerConfig>),
}

/// The client's address, for handlers and logs, whatever the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*s.remote_addr())
    }
}

/// Serves the ES API on an already-bound plain-HTTP listener until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SearchConfig,
    shutdown: CancellationToken,
) -> Result<(), SearchError> {
    serve_on(vec![Listener::Plain(listener)], cfg, shutdown).await
}

/// Serves the ES API on every listener (the same index and state behind each) until
/// `shutdown` is cancelled.
pub async fn serve_on(
    listeners: Vec<Listener>,
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
    let indexer_gone = CancellationToken::new();
    let Indexer { tx, thread } = Indexer::spawn(
        ix.clone(),
        meta.clone(),
        applied_tx,
        flush.clone(),
        indexer_gone.clone(),
    )?;
    let wake = Arc::new(Notify::new());
    let shared = Arc::new(Shared::default());
    let gone_watch = tokio::spawn(stop_when_indexer_gone(
        indexer_gone,
        shared.clone(),
        shutdown.clone(),
    ));
    let tail_stop = CancellationToken::new();
    let tail = tokio::spawn(tailer::run(
        cfg.pg.clone(),
        tx,
        tailer::Position {
            fetched: meta.applied_position,
            epoch: meta.log_epoch.clone(),
            generation: meta.log_generation,
        },
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
        generations_known: Default::default(),
        flush,
        stats: Default::default(),
    });
    let app = api::router(state);
    let mut servers = tokio::task::JoinSet::new();
    for l in listeners {
        let app = app.clone();
        let stop = shutdown.clone().cancelled_owned();
        match l {
            Listener::Plain(tcp) => servers.spawn(async move {
                axum::serve(tcp, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(stop)
                    .await
            }),
            Listener::Tls(tcp, tls) => {
                let tls = TlsListener::new(tcp, tls).map_err(SearchError::Serve)?;
                servers.spawn(async move {
                    axum::serve(tls, app.into_make_service_with_connect_info::<Peer>())
                        .with_graceful_shutdown(stop)
                        .await
                })
            }
        };
    }
    let mut served = Ok(());
    while let Some(r) = servers.join_next().await {
        let r = r
            .map_err(|e| SearchError::Other(format!("listener task failed: {e}")))
            .and_then(|r| r.map_err(SearchError::Serve));
        if r.is_err() {
            // One listener failing stops the service; the supervisor restarts it whole.
            shutdown.cancel();
            if served.is_ok() {
                served = r;
            }
        }
    }
    // HTTP first, then the tailer; dropping its sender lets the indexer commit and exit.
    tail_stop.cancel();
    let _ = tail.await;
    let _ = prio.await;
    gone_watch.abort();
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SearchError::Other(format!("indexer join failed: {e}")))?;
    served?;
    match joined {
        Ok(r) => r,
        Err(_) => Err(SearchError::Other("indexer thread panicked".into())),
    }
}

/// The indexer thread ends early only on an error it cannot get past in place (a commit that
/// hit ENOSPC leaves the writer unusable). Serving on would answer searches from an index that
/// no longer follows the log, for good: stop instead, so that the supervisor restarts the
/// service, which reopens the last commit and catches up from its log position.
async fn stop_when_indexer_gone(
    gone: CancellationToken,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    gone.cancelled().await;
    shared
        .indexer_failed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::error!("search indexer gone: stopping the service so that it restarts");
    shutdown.cancel();
    // Graceful shutdown waits for kept-alive client connections to close; the index's last
    // commit is durable, so nothing is lost by not waiting long.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    tracing::error!("search service still draining connections: exiting now");
    std::process::exit(1);
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
        log_generation: 0,
    };
    let generations = log::has_generations(&client).await?;
    loop {
        let log::Fetched { rows, generation } =
            log::fetch_after(&client, meta.applied_position, 1000, generations).await?;
        meta.log_generation = generation;
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
