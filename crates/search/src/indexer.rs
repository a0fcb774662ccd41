//! The index writer thread: applies change-log batches to tantivy and commits them in groups.
//!
//! Committing per batch would make a segment per `_bulk` and spend the box's two cores merging.
//! Instead: an isolated write is committed as soon as the queue runs dry (≥ 100 ms after the
//! previous commit); while writes stream in, at most about one commit per second; while the
//! tailer is behind the log (catch-up after a restart, rebuild), one every 10 s. After each
//! commit the reader is reloaded and the applied position published: `_refresh` and
//! `?refresh=` wait on that.

use crate::index::{CommitMeta, LocalIndex, SCHEMA_VERSION};
use crate::log::{LogRow, StoredRow};
use crate::priority::lower_thread_priority;
use crate::SearchError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::watch;

const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Writes arriving within this time of the previous commit form a stream.
const STREAM_GAP: Duration = Duration::from_secs(1);
/// Commit spacing while writes stream in (ES refreshes every second too).
const STREAM_COMMIT_DELAY: Duration = Duration::from_secs(1);
/// Commit spacing while the tailer is behind the log (catch-up, rebuild): every commit makes
/// segments that must be merged later, and Chef node documents flatten to tens of KB each.
const MAX_COMMIT_DELAY: Duration = Duration::from_secs(10);
const WRITER_THREADS: usize = 2;
/// How often an idle indexer looks for merges to make visible.
const MERGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const WRITER_MEMORY: usize = 600_000_000;

/// Work for the writer thread.
pub enum IndexerMsg {
    /// Changes in log order, still in their stored form; `last_pos` is the position of the last
    /// one; `behind` says the tailer knows more changes are waiting in the log.
    Batch {
        rows: Vec<StoredRow>,
        last_pos: i64,
        behind: bool,
        /// The newest log generation the tailer had seen when it read them.
        generation: i32,
    },
    /// The index may hold changes the log does not (another log, or another history of it):
    /// empty the index and start over.
    Reset { epoch: String, generation: i32 },
}

/// What the decoder thread hands the writer thread: batches with their content text.
enum Decoded {
    Batch {
        rows: Result<Vec<LogRow>, SearchError>,
        last_pos: i64,
        behind: bool,
        generation: i32,
    },
    Reset {
        epoch: String,
        generation: i32,
    },
}

/// Handle to the writer thread.
pub struct Indexer {
    pub tx: SyncSender<IndexerMsg>,
    pub thread: std::thread::JoinHandle<Result<(), SearchError>>,
}

impl Indexer {
    /// Takes the index writer (fails if another process holds it) and starts the thread, fed
    /// by a decoder thread: decoding the stored content (~30 µs per 47 KB node document) is
    /// index-side work, so it runs at the indexer's background priority, and in its own thread
    /// so that it overlaps with the writer's. `flush` is set by a reader waiting for the index (`_refresh`, `?refresh=`): the next
    /// commit then happens as soon as the queue runs dry, whatever the spacing policy says.
    /// `gone` is cancelled when the thread stops on an error.
    pub fn spawn(
        ix: Arc<LocalIndex>,
        meta: CommitMeta,
        applied: watch::Sender<i64>,
        flush: Arc<AtomicBool>,
        gone: tokio_util::sync::CancellationToken,
    ) -> Result<Indexer, SearchError> {
        let (tx, stored_rx) = std::sync::mpsc::sync_channel(2);
        let (decoded_tx, rx) = std::sync::mpsc::sync_channel(2);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("larder-indexer".into())
            .spawn(move || {
                // Background priority, set before the writer exists so that tantivy's indexing
                // and merge threads (created with it) inherit it.
                lower_thread_priority();
                let writer: IndexWriter = match ix
                    .index
                    .writer_with_num_threads(WRITER_THREADS, WRITER_MEMORY)
                {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = ready_tx.send(Err(e));
                        return Err(SearchError::Other(msg));
                    }
                };
                let r = run(ix, writer, meta, applied, rx, flush);
                if r.is_err() {
                    gone.cancel();
                }
                r
            })
            .map_err(|e| SearchError::Other(format!("cannot start indexer thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                // It ends when the tailer drops its sender (the writer then sees its own
                // channel close) or when the writer is gone.
                std::thread::Builder::new()
                    .name("larder-decoder".into())
                    .spawn(move || decode_batches(stored_rx, decoded_tx))
                    .map_err(|e| SearchError::Other(format!("cannot start decoder thread: {e}")))?;
                Ok(Indexer { tx, thread })
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e.into())
            }
            Err(_) => Err(SearchError::Other("indexer thread died at start".into())),
        }
    }
}

fn decode_batches(rx: Receiver<IndexerMsg>, tx: SyncSender<Decoded>) {
    lower_thread_priority();
    for msg in rx {
        let decoded = match msg {
            IndexerMsg::Batch {
                rows,
                last_pos,
                behind,
                generation,
            } => Decoded::Batch {
                rows: rows.into_iter().map(StoredRow::decode).collect(),
                last_pos,
                behind,
                generation,
            },
            IndexerMsg::Reset { epoch, generation } => Decoded::Reset { epoch, generation },
        };
        if tx.send(decoded).is_err() {
            return;
        }
    }
}

/// Adds a batch of changes to the writer (delete-then-add makes a re-index replace the old doc).
pub fn apply(ix: &LocalIndex, writer: &IndexWriter, rows: &[LogRow]) -> Result<(), SearchError> {
    rows.iter().try_for_each(|r| apply_one(ix, writer, r))
}

/// [`apply`] of stored changes, each decoded just before it is added (offline rebuild).
pub fn apply_stored(
    ix: &LocalIndex,
    writer: &IndexWriter,
    rows: Vec<StoredRow>,
) -> Result<(), SearchError> {
    rows.into_iter()
        .try_for_each(|r| apply_one(ix, writer, &r.decode()?))
}

fn apply_one(ix: &LocalIndex, writer: &IndexWriter, r: &LogRow) -> Result<(), SearchError> {
    let f = &ix.fields;
    writer.delete_term(Term::from_field_text(f.id, &r.id));
    if !r.deleted {
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &r.id);
        doc.add_text(f.content, &r.content);
        // Chef's id keyword equals the ES id; generic documents get it too so sorting agrees.
        doc.add_text(f.chef_id, &r.id);
        if let Some(v) = &r.database {
            doc.add_text(f.chef_db, v);
        }
        if let Some(v) = &r.object_type {
            doc.add_text(f.chef_type, v);
        }
        if let Some(v) = &r.data_bag {
            doc.add_text(f.data_bag, v);
        }
        writer.add_document(doc)?;
    }
    Ok(())
}

/// Commits with the log position in the payload, reloads the reader, publishes the position.
pub fn commit(
    ix: &LocalIndex,
    writer: &mut IndexWriter,
    meta: &CommitMeta,
    applied: &watch::Sender<i64>,
) -> Result<(), SearchError> {
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&serde_json::to_string(meta).expect("meta serializes"));
    prepared.commit()?;
    ix.reload()?;
    applied.send_replace(meta.applied_position);
    Ok(())
}

/// Background merges publish new segments without a commit of ours; with a manually reloaded
/// reader, searches would keep using the many small pre-merge segments. Reload when the
/// searchable segments differ from the reader's.
fn reload_if_merged(ix: &LocalIndex) -> Result<(), SearchError> {
    let published = ix.index.searchable_segment_ids()?;
    let searcher = ix.reader.searcher();
    let current: std::collections::HashSet<_> = searcher
        .segment_readers()
        .iter()
        .map(|s| s.segment_id())
        .collect();
    if published.len() != current.len() || published.iter().any(|id| !current.contains(id)) {
        ix.reload()?;
    }
    Ok(())
}

fn run(
    ix: Arc<LocalIndex>,
    mut writer: IndexWriter,
    mut meta: CommitMeta,
    applied: watch::Sender<i64>,
    rx: Receiver<Decoded>,
    flush: Arc<AtomicBool>,
) -> Result<(), SearchError> {
    meta.schema_version = SCHEMA_VERSION;
    let mut dirty_since: Option<Instant> = None;
    let mut behind = false;
    let mut last_commit = Instant::now() - MIN_COMMIT_INTERVAL;
    let mut peeked: Option<Decoded> = None;
    let mut last_merge_check = Instant::now();
    let result = loop {
        let msg = match peeked.take() {
            Some(m) => Ok(m),
            None => match dirty_since {
                None => rx.recv_timeout(MERGE_CHECK_INTERVAL),
                Some(_) => rx.recv_timeout(Duration::from_millis(50)),
            },
        };
        match msg {
            Ok(Decoded::Batch {
                rows,
                last_pos,
                behind: more,
                generation,
            }) => {
                if let Err(e) = rows.and_then(|rows| apply(&ix, &writer, &rows)) {
                    break Err(e);
                }
                meta.applied_position = last_pos;
                meta.log_generation = generation;
                behind = more;
                dirty_since.get_or_insert_with(Instant::now);
            }
            Ok(Decoded::Reset { epoch, generation }) => {
                tracing::info!(%epoch, generation, "emptying the search index to rebuild it from the log");
                if let Err(e) = writer.delete_all_documents() {
                    break Err(e.into());
                }
                meta.applied_position = 0;
                meta.log_epoch = epoch;
                meta.log_generation = generation;
                dirty_since.get_or_insert_with(Instant::now);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if dirty_since.is_some() {
                    if let Err(e) = commit(&ix, &mut writer, &meta, &applied) {
                        break Err(e);
                    }
                }
                break Ok(());
            }
        }
        let Some(since) = dirty_since else {
            if last_merge_check.elapsed() >= MERGE_CHECK_INTERVAL {
                last_merge_check = Instant::now();
                if let Err(e) = reload_if_merged(&ix) {
                    tracing::warn!(error = %e, "search index reload after merges failed");
                }
            }
            continue;
        };
        // Keep absorbing queued batches unless a commit is overdue.
        let idle = match rx.try_recv() {
            Ok(m) => {
                peeked = Some(m);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => true,
        };
        let now = Instant::now();
        let forced = flush.load(Ordering::Relaxed);
        let wait = if forced {
            Duration::ZERO
        } else if behind {
            MAX_COMMIT_DELAY
        } else if since.saturating_duration_since(last_commit) < STREAM_GAP {
            STREAM_COMMIT_DELAY
        } else {
            Duration::ZERO
        };
        let due = now >= since + wait && now >= last_commit + MIN_COMMIT_INTERVAL;
        if (idle && due) || now >= since + MAX_COMMIT_DELAY {
            if forced {
                // Cleared before committing: a request arriving meanwhile keeps its flag.
                flush.store(false, Ordering::Relaxed);
            }
            if let Err(e) = commit(&ix, &mut writer, &meta, &applied) {
                break Err(e);
            }
            dirty_since = None;
            last_commit = Instant::now();
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "search indexer stopped");
    }
    let _ = writer.wait_merging_threads();
    result
}
