//! The durable change log in PostgreSQL (database `larder_search`).
//!
//! `search_log` holds one row per document id: its latest state (live or a tombstone) and the
//! log position `pos` of its latest change. A follower's tailer reads rows with
//! `pos > applied` in `pos` order. Keeping only the latest state per id bounds the table to the
//! number of ids ever written, yet loses nothing the tailer needs: a superseded change is
//! replaced by one with a higher position that the tailer will still read.
//!
//! Ordering: positions come from a sequence, which is assigned before commit, so two concurrent
//! writers could commit out of position order and a tailer could skip the earlier-numbered,
//! later-committed row. Every writer therefore takes one transaction-scoped advisory lock before
//! it draws the final positions of its rows, and keeps it until commit: commit order equals
//! position order, on the primary and, since standbys replay commits in WAL order, on every
//! standby. The rows themselves are written before, outside the lock, with provisional
//! (negative) positions that only their own transaction can see (see `upsert_and_commit`).

use crate::generation::{self, Generation};
use crate::SearchError;
use std::collections::{HashMap, HashSet};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

/// Advisory lock key serializing log writers ("lard" in ASCII).
const WRITER_LOCK: i64 = 0x6c61_7264;

/// One change as the tailer reads it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub pos: i64,
    pub id: String,
    pub deleted: bool,
    pub database: Option<String>,
    pub object_type: Option<String>,
    pub data_bag: Option<String>,
    pub content: String,
}

/// A document write requested by `_bulk` (or the single-document endpoints). The content is
/// already in its stored form ([`crate::codec::encode_content`]; `None` when empty): it is
/// encoded as the request is parsed, so the text is never copied.
#[derive(Debug, Clone)]
pub enum Change {
    Index {
        id: String,
        database: Option<String>,
        object_type: Option<String>,
        data_bag: Option<String>,
        content_z: Option<Vec<u8>>,
    },
    Delete {
        id: String,
    },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::Index { id, .. } | Change::Delete { id } => id,
        }
    }
}

/// Per-change outcome (ES `result`): whether the id held a live document before.
#[derive(Debug, Clone)]
pub struct Applied {
    pub existed: bool,
    pub pos: i64,
}

/// Creates the log schema if missing. Run on the primary only.
pub async fn ensure_schema(client: &Client) -> Result<(), SearchError> {
    // Serialize concurrent creators (two services starting at once) on the same lock.
    client
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock({WRITER_LOCK});
             CREATE TABLE IF NOT EXISTS search_meta (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO search_meta VALUES ('log_epoch', md5(random()::text || clock_timestamp()::text))
                 ON CONFLICT (key) DO NOTHING;
             CREATE SEQUENCE IF NOT EXISTS search_pos;
             CREATE TABLE IF NOT EXISTS search_index_def (name text PRIMARY KEY, definition jsonb NOT NULL);
             {generations};
             COMMIT;",
            generations = generation::CREATE_TABLE
        ))
        .await?;
    let table = |compression: &str| {
        format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock({WRITER_LOCK});
             CREATE TABLE IF NOT EXISTS search_log (
                id text PRIMARY KEY,
                pos bigint NOT NULL,
                deleted boolean NOT NULL DEFAULT false,
                db text, type text, data_bag text,
                content text {compression} NOT NULL DEFAULT '');
             CREATE UNIQUE INDEX IF NOT EXISTS search_log_pos ON search_log (pos);
             ALTER TABLE search_log ADD COLUMN IF NOT EXISTS content_z bytea;
             ALTER TABLE search_log ALTER COLUMN content_z SET STORAGE EXTERNAL;
             COMMIT;"
        )
    };
    // lz4 TOAST compression is several times cheaper on CPU than the default pglz; fall back
    // when the server was built without it.
    if client
        .batch_execute(&table("COMPRESSION lz4"))
        .await
        .is_err()
    {
        client.batch_execute("ROLLBACK").await?;
        client.batch_execute(&table("")).await?;
    }
    Ok(())
}

/// True once the schema exists (on a standby: once it has been replicated), including the
/// `content_z` column a log created by an older version gets from the leader's service.
pub async fn schema_ready(client: &Client) -> Result<bool, SearchError> {
    let row = client
        .query_one(
            "SELECT to_regclass('search_meta') IS NOT NULL AND EXISTS (
                 SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('search_log')
                 AND attname = 'content_z' AND NOT attisdropped)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Creates `search_generations` in a log made by a version without it. Writes record their
/// generation there, so a primary runs this before its first write (see
/// [`crate::generation`]); a follower's tailer reads without it until it is replicated.
pub async fn ensure_generations(client: &Client) -> Result<(), SearchError> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK}); {}; COMMIT;",
            generation::CREATE_TABLE
        ))
        .await?;
    Ok(())
}

/// True once `search_generations` exists (on a standby: once it is replicated).
pub async fn has_generations(client: &Client) -> Result<bool, SearchError> {
    let row = client
        .query_one("SELECT to_regclass('search_generations') IS NOT NULL", &[])
        .await?;
    Ok(row.get(0))
}

/// Every recorded generation, oldest first.
pub async fn generations(client: &Client) -> Result<Vec<Generation>, SearchError> {
    let rows = client
        .query(
            "SELECT timeline, fork_pos FROM search_generations ORDER BY timeline",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Generation {
            timeline: r.get(0),
            fork_pos: r.get(1),
        })
        .collect())
}

/// Identity of this log; the index records it so a log recreated from scratch forces a rebuild.
pub async fn epoch(client: &Client) -> Result<String, SearchError> {
    let row = client
        .query_one("SELECT value FROM search_meta WHERE key = 'log_epoch'", &[])
        .await?;
    Ok(row.get(0))
}

/// Highest committed position (0 for an empty log).
pub async fn latest_position(client: &impl GenericClient) -> Result<i64, SearchError> {
    let row = client
        .query_one("SELECT coalesce(max(pos), 0) FROM search_log", &[])
        .await?;
    Ok(row.get(0))
}

/// A change as stored: its content still in the stored form. Decoding 47 KB node documents is
/// CPU work, left to whoever needs the text: the indexer thread, at background priority.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub pos: i64,
    pub id: String,
    pub deleted: bool,
    pub database: Option<String>,
    pub object_type: Option<String>,
    pub data_bag: Option<String>,
    /// The text of rows written before `content_z` existed (and of rows with no content).
    content: String,
    content_z: Option<Vec<u8>>,
}

impl StoredRow {
    /// The change with its content text; `Err` when the stored content is damaged.
    pub fn decode(self) -> Result<LogRow, SearchError> {
        let content = match &self.content_z {
            Some(z) => crate::codec::decode(z).map_err(|e| {
                SearchError::Other(format!("search_log content of {}: {e}", self.id))
            })?,
            None => self.content,
        };
        Ok(LogRow {
            pos: self.pos,
            id: self.id,
            deleted: self.deleted,
            database: self.database,
            object_type: self.object_type,
            data_bag: self.data_bag,
            content,
        })
    }
}

/// What one read of the log returns.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Changes in position order.
    pub rows: Vec<StoredRow>,
    /// The newest generation in the same snapshot (0 without `search_generations`).
    pub generation: i32,
}

/// Reads up to `limit` changes after `after`, in position order, with the newest generation
/// read in the same statement, so that a generation is never older than the changes it comes
/// with. `generations` says whether `search_generations` exists (it does not in a log made
/// by an older version, until its primary is upgraded).
pub async fn fetch_after(
    client: &Client,
    after: i64,
    limit: i64,
    generations: bool,
) -> Result<Fetched, SearchError> {
    const COLUMNS: &str =
        "l.pos, l.id, l.deleted, l.db, l.type, l.data_bag, l.content, l.content_z";
    let newest = if generations { generation::NEWEST } else { "0" };
    // The lateral join keeps one row (with null columns) when there is no change to read, so
    // the generation arrives either way.
    let rows = client
        .query(
            &format!(
                "SELECT {newest}, {COLUMNS} FROM (SELECT 1) one LEFT JOIN LATERAL (
                     SELECT * FROM search_log WHERE pos > $1 ORDER BY pos LIMIT $2) l ON true"
            ),
            &[&after, &limit],
        )
        .await?;
    let generation = rows.first().map_or(0, |r| r.get(0));
    let rows = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_some())
        .map(|r| stored_row_at(r, 1))
        .collect();
    Ok(Fetched { rows, generation })
}

fn stored_row(r: &tokio_postgres::Row) -> StoredRow {
    stored_row_at(r, 0)
}

/// The row's columns from `at` on, in the order of [`fetch_after`]'s.
fn stored_row_at(r: &tokio_postgres::Row, at: usize) -> StoredRow {
    StoredRow {
        pos: r.get(at),
        id: r.get(at + 1),
        deleted: r.get(at + 2),
        database: r.get(at + 3),
        object_type: r.get(at + 4),
        data_bag: r.get(at + 5),
        content: r.get(at + 6),
        content_z: r.get(at + 7),
    }
}

/// One write, ready for PostgreSQL: one row per distinct id (the last change of each id wins),
/// plus what the per-change outcomes need. Built by [`prepare`].
pub struct Prepared {
    /// Per input change, in order: its id and whether it indexes (false: deletes).
    order: Vec<(String, bool)>,
    ids: Vec<String>,
    deleted: Vec<bool>,
    dbs: Vec<Option<String>>,
    types: Vec<Option<String>>,
    bags: Vec<Option<String>>,
    zs: Vec<Option<Vec<u8>>>,
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn with_capacity(changes: usize, rows: usize) -> Prepared {
        Prepared {
            order: Vec::with_capacity(changes),
            ids: Vec::with_capacity(rows),
            deleted: Vec::with_capacity(rows),
            dbs: Vec::with_capacity(rows),
            types: Vec::with_capacity(rows),
            bags: Vec::with_capacity(rows),
            zs: Vec::with_capacity(rows),
        }
    }

    /// Appends a statement row.
    fn push_row(&mut self, id: String, row: Row) {
        let (del, db, typ, bag, z) = row;
        self.ids.push(id);
        self.deleted.push(del);
        self.dbs.push(db);
        self.types.push(typ);
        self.bags.push(bag);
        self.zs.push(z);
    }

    /// The pieces of one batch as one: their changes in order, one row per id (the last wins).
    pub fn merge(parts: Vec<Prepared>) -> Prepared {
        let mut out = Prepared::with_capacity(0, 0);
        let mut row_of: HashMap<String, usize> = HashMap::new();
        for p in parts {
            out.order.extend(p.order);
            let rows = p
                .deleted
                .into_iter()
                .zip(p.dbs)
                .zip(p.types)
                .zip(p.bags)
                .zip(p.zs);
            for (id, ((((del, db), typ), bag), z)) in p.ids.into_iter().zip(rows) {
                match row_of.get(&id) {
                    Some(&r) => {
                        (out.deleted[r], out.dbs[r], out.types[r]) = (del, db, typ);
                        (out.bags[r], out.zs[r]) = (bag, z);
                    }
                    None => {
                        row_of.insert(id.clone(), out.ids.len());
                        out.push_row(id, (del, db, typ, bag, z));
                    }
                }
            }
        }
        out
    }
}

/// A statement row without its id: deleted, db, type, data_bag, content_z.
type Row = (
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
);

/// Builds the statement columns of `changes`.
pub fn prepare(changes: Vec<Change>) -> Prepared {
    // One row per id in the statement (ON CONFLICT cannot touch a row twice): keep the last.
    let mut last: HashMap<String, usize> = HashMap::with_capacity(changes.len());
    for (i, c) in changes.iter().enumerate() {
        last.insert(c.id().to_string(), i);
    }
    let mut p = Prepared::with_capacity(changes.len(), last.len());
    for (i, c) in changes.into_iter().enumerate() {
        let kept = last[c.id()] == i;
        match c {
            Change::Index {
                id,
                database,
                object_type,
                data_bag,
                content_z,
            } => {
                p.order.push((id.clone(), true));
                if kept {
                    p.push_row(id, (false, database, object_type, data_bag, content_z));
                }
            }
            Change::Delete { id } => {
                p.order.push((id.clone(), false));
                if kept {
                    p.push_row(id, (true, None, None, None, None));
                }
            }
        }
    }
    p
}

/// Commits a batch of changes in one transaction; when it returns Ok the changes are durable
/// (and, with synchronous replication, on the standby quorum). Later changes to the same id win.
/// Returns one outcome per input change.
pub async fn write(client: &mut Client, changes: &[Change]) -> Result<Vec<Applied>, SearchError> {
    write_prepared(client, prepare(changes.to_vec())).await
}

/// How often a write deadlocked with another is retried (nothing of it was committed). Bulks
/// lock their rows in id order and cannot deadlock with each other; a concurrent delete of
/// the whole index can.
const DEADLOCK_RETRIES: usize = 3;

/// [`write`] of a batch already [`prepare`]d.
pub async fn write_prepared(client: &mut Client, p: Prepared) -> Result<Vec<Applied>, SearchError> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut attempt = 0;
    let (existed, pos) = loop {
        match upsert_and_commit(client, &p).await {
            Err(SearchError::Pg(e))
                if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    && attempt < DEADLOCK_RETRIES =>
            {
                attempt += 1;
                tracing::debug!(attempt, "search log write deadlocked; retrying");
            }
            r => break r?,
        }
    };
    Ok(outcomes(&p.order, &existed, &pos))
}

/// One outcome per input change. Within a batch, an id's later changes see the state its
/// earlier changes left; its first one sees the state before the batch (`existed`).
fn outcomes(
    order: &[(String, bool)],
    existed: &HashSet<String>,
    pos: &HashMap<String, i64>,
) -> Vec<Applied> {
    let mut state: HashMap<&str, bool> = HashMap::new();
    order
        .iter()
        .map(|(id, is_index)| {
            let before = *state
                .get(id.as_str())
                .unwrap_or(&existed.contains(id.as_str()));
            state.insert(id, *is_index);
            Applied {
                existed: before,
                pos: pos.get(id).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// How long a streamed write's upsert may wait for another transaction's row lock before the
/// write is redone in id order (see [`write_pieces`]).
pub const STREAM_LOCK_TIMEOUT: &str = "50ms";

/// What a streamed write ([`write_pieces`]) receives: the rows of the next piece of the batch,
/// or the end of the batch.
pub enum Piece {
    Rows(Prepared),
    End,
}

/// Writes a batch that arrives in pieces (a big `_bulk` still being parsed) in one transaction:
/// each piece is upserted as it arrives, outside the writer lock with provisional positions, so
/// PostgreSQL stores the first part of the body while the rest is parsed; after [`Piece::End`]
/// the rows are renumbered and committed as in [`write_prepared`]. Nothing is committed unless
/// `End` arrives: when the pieces stop without it (the body turned out malformed, the request
/// went away) the transaction is rolled back and `Ok(None)` returned.
///
/// Pieces come in body order, not id order, so two streamed writes of overlapping ids could
/// deadlock on row locks, which PostgreSQL detects only after `deadlock_timeout` (1 s), and
/// then again with the redo. So a streamed write never waits long for a row lock: its upserts
/// run under [`STREAM_LOCK_TIMEOUT`]; when that expires (or a deadlock is reported anyway) it
/// rolls back, collects its remaining pieces and is redone as one id-ordered statement
/// ([`write_prepared`]). Id-ordered writes cannot form a cycle among themselves, and a
/// streamed one in a cycle gives up within the timeout, so crossed bulks cost tens of
/// milliseconds, not seconds.
pub async fn write_pieces(
    client: &mut Client,
    first: Piece,
    rest: &mut tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Option<Vec<Applied>>, SearchError> {
    match stream_pieces(client, first, rest).await? {
        Streamed::Committed(applied) => Ok(Some(applied)),
        Streamed::Abandoned => Ok(None),
        Streamed::Deadlocked(pieces) => write_prepared(client, Prepared::merge(pieces))
            .await
            .map(Some),
    }
}

/// How [`stream_pieces`] ended.
enum Streamed {
    Committed(Vec<Applied>),
    /// The pieces stopped without `End`; rolled back.
    Abandoned,
    /// Rolled back after a deadlock: all the pieces, to be redone in id order.
    Deadlocked(Vec<Prepared>),
}

async fn stream_pieces(
    client: &mut Client,
    first: Piece,
    rest: &mut tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Streamed, SearchError> {
    let mut next = Some(first);
    let mut pieces: Vec<Prepared> = Vec::new();
    // Ids written so far in this transaction, and those among them whose row was live before.
    let mut seen: HashSet<String> = HashSet::new();
    let mut existed: HashSet<String> = HashSet::new();
    let t = client.transaction().await?;
    t.batch_execute(&format!("SET LOCAL lock_timeout = '{STREAM_LOCK_TIMEOUT}'"))
        .await?;
    let mut tx = Some(t);
    loop {
        let piece = match next.take() {
            Some(p) => p,
            None => match rest.recv().await {
                Some(p) => p,
                None => return Ok(Streamed::Abandoned),
            },
        };
        let p = match piece {
            Piece::End => break,
            Piece::Rows(p) => p,
        };
        if let (Some(t), false) = (&tx, p.is_empty()) {
            match upsert(t, &p).await {
                Ok(rows) => {
                    for (id, live) in rows {
                        // Only an id's first write in the transaction saw the state before it.
                        if !seen.contains(&id) {
                            if live {
                                existed.insert(id.clone());
                            }
                            seen.insert(id);
                        }
                    }
                }
                Err(SearchError::Pg(e))
                    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    tracing::debug!(
                        "streamed search log write met a locked row; redoing it in id order"
                    );
                    tx = None;
                }
                Err(e) => return Err(e),
            }
        }
        pieces.push(p);
    }
    let Some(t) = tx else {
        return Ok(Streamed::Deadlocked(pieces));
    };
    if seen.is_empty() {
        // Nothing to write (no piece had rows): no need for the writer lock.
        t.rollback().await?;
        return Ok(Streamed::Committed(Vec::new()));
    }
    // The writer lock is waited for as long as it takes (commits are short and never wait for
    // anything while holding it).
    t.batch_execute("SET LOCAL lock_timeout = 0").await?;
    let ids: Vec<String> = seen.into_iter().collect();
    let pos = renumber_and_commit(t, &ids).await?;
    let order: Vec<(String, bool)> = pieces.into_iter().flat_map(|p| p.order).collect();
    Ok(Streamed::Committed(outcomes(&order, &existed, &pos)))
}

/// One attempt of a write: the ids whose row was live before it, and the final position of
/// each id.
///
/// The upsert, which is most of the work (hundreds of rows of several KB), runs *outside* the
/// writer lock with provisional positions: negative, so that they are below every committed
/// position, and nobody can see them before commit anyway. Then, under the lock, the batch's
/// rows get their final positions (a small update: the content stays in TOAST) and the
/// transaction commits, so position order still equals commit order (see the module comment)
/// while the upserts of concurrent bulks proceed in parallel on their own backends.
///
/// Two writers of the same id: the second one's upsert waits for the first one's row lock,
/// i.e. for its commit, and then updates the committed row; so it also commits, and draws its
/// final position, after the first. A writer never waits for a row lock while it holds the
/// writer lock (it renumbers only rows it has already locked), so the lock cannot be part of a
/// deadlock between bulks, and rows are upserted in id order so that bulks do not deadlock on
/// rows either.
///
/// The previous state of each row (live or not, for `created` / `updated`) must be the one
/// the upsert actually replaced, which a separate SELECT outside the lock could miss (two
/// first writes of one id). The upsert reports it in the parity of the provisional position:
/// `-2·n` for a row that was missing or a tombstone, `-2·n - 1` for a live one (n from the
/// sequence, so all provisional positions are distinct).
async fn upsert_and_commit(
    client: &mut Client,
    p: &Prepared,
) -> Result<(HashSet<String>, HashMap<String, i64>), SearchError> {
    let tx = client.transaction().await?;
    let existed: HashSet<String> = upsert(&tx, p)
        .await?
        .into_iter()
        .filter(|(_, live)| *live)
        .map(|(id, _)| id)
        .collect();
    let pos = renumber_and_commit(tx, &p.ids).await?;
    Ok((existed, pos))
}

/// Upserts the rows of `p` with provisional positions (see [`upsert_and_commit`]); returns each
/// id with whether its row was live before.
async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    p: &Prepared,
) -> Result<Vec<(String, bool)>, SearchError> {
    let rows = tx
        .query(
            "INSERT INTO search_log (id, pos, deleted, db, type, data_bag, content, content_z)
             SELECT u.id, -2 * nextval('search_pos'), u.del, u.db, u.typ, u.bag, '', u.z
             FROM unnest($1::text[], $2::bool[], $3::text[], $4::text[], $5::text[], $6::bytea[])
                  AS u(id, del, db, typ, bag, z)
             ORDER BY u.id
             ON CONFLICT (id) DO UPDATE SET
                 pos = EXCLUDED.pos - (NOT search_log.deleted)::int, deleted = EXCLUDED.deleted,
                 db = EXCLUDED.db, type = EXCLUDED.type, data_bag = EXCLUDED.data_bag,
                 content = '', content_z = EXCLUDED.content_z
             RETURNING id, pos",
            &[&p.ids, &p.deleted, &p.dbs, &p.types, &p.bags, &p.zs],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let live = r.get::<_, i64>(1) % 2 != 0;
            (r.get(0), live)
        })
        .collect())
}

/// Takes the writer lock, gives the rows `ids` this transaction wrote with provisional
/// positions their final ones, and commits. (By id, through the primary key: the plan stays an
/// index lookup of the batch whatever the table's statistics say.)
async fn renumber_and_commit(
    tx: tokio_postgres::Transaction<'_>,
    ids: &[String],
) -> Result<HashMap<String, i64>, SearchError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITER_LOCK])
        .await?;
    // A new primary's first write also records its generation (see `crate::generation`).
    let rows = tx
        .query(
            &format!(
                "WITH {} UPDATE search_log SET pos = nextval('search_pos') WHERE id = ANY($1)
                 RETURNING id, pos",
                generation::RECORD_CTE
            ),
            &[&ids],
        )
        .await?;
    tx.commit().await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Tombstones every live document (DELETE of the whole index).
pub async fn delete_all(client: &mut Client) -> Result<u64, SearchError> {
    let mut attempt = 0;
    loop {
        match delete_all_once(client).await {
            Err(SearchError::Pg(e))
                if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                    && attempt < DEADLOCK_RETRIES =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn delete_all_once(client: &mut Client) -> Result<u64, SearchError> {
    let tx = client.transaction().await?;
    // Provisional positions and renumbering under the lock, as for bulks (see
    // `upsert_and_commit`), so that the lock is never held while waiting for row locks.
    let ids: Vec<String> = tx
        .query(
            "UPDATE search_log SET deleted = true, content = '', content_z = NULL, db = NULL, type = NULL,
                 data_bag = NULL, pos = -2 * nextval('search_pos')
             WHERE NOT deleted
             RETURNING id",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute("DELETE FROM search_index_def", &[]).await?;
    renumber_and_commit(tx, &ids).await?;
    Ok(ids.len() as u64)
}

/// A stored document (for `GET /chef/_doc/<id>`), read from PostgreSQL, the source of truth.
pub async fn get_doc(client: &Client, id: &str) -> Result<Option<LogRow>, SearchError> {
    let row = client
        .query_opt(
            "SELECT pos, id, deleted, db, type, data_bag, content, content_z FROM search_log
             WHERE id = $1 AND NOT deleted",
            &[&id],
        )
        .await?;
    row.as_ref().map(|r| stored_row(r).decode()).transpose()
}

/// The definition sent with `PUT /<index>`, when the index exists.
pub async fn index_definition(
    client: &Client,
    name: &str,
) -> Result<Option<serde_json::Value>, SearchError> {
    let row = client
        .query_opt(
            "SELECT definition::text FROM search_index_def WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap_or(serde_json::Value::Null)))
}

/// Records an index definition; false when the index already existed.
pub async fn create_index(
    client: &Client,
    name: &str,
    definition: &serde_json::Value,
) -> Result<bool, SearchError> {
    let n = client
        .execute(
            "INSERT INTO search_index_def VALUES ($1, $2::text::jsonb) ON CONFLICT (name) DO NOTHING",
            &[&name, &definition.to_string()],
        )
        .await?;
    Ok(n == 1)
}
