//! The node-local tantivy index: schema, opening (with rebuild of a missing or corrupt index),
//! searching and stats. It is a cache of the PostgreSQL change log; the log position it has
//! applied is stored atomically with each tantivy commit, in the commit payload.

use crate::id_order::{IdPage, IdRanks};
use crate::query::build::build;
use crate::query::dsl::SortSpec;
use crate::query::{Ast, QueryError};
use crate::SearchError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tantivy::collector::{Count, TopDocs};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::{DocAddress, Index, IndexReader, ReloadPolicy, TantivyDocument};

/// Bump when the schema changes: an index of another version is rebuilt on start.
pub const SCHEMA_VERSION: u32 = 1;
const WS: &str = "larder_ws";

/// Fields of the index. `_id` is the ES document id (sortable fast field); the four keyword
/// fields and `content` are the ones Chef writes.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub id: Field,
    pub content: Field,
    pub chef_id: Field,
    pub chef_db: Field,
    pub chef_type: Field,
    pub data_bag: Field,
}

impl Fields {
    pub fn keyword(&self, name: &str) -> Option<Field> {
        match name {
            "_id" => Some(self.id),
            "X_CHEF_id_CHEF_X" => Some(self.chef_id),
            "X_CHEF_database_CHEF_X" => Some(self.chef_db),
            "X_CHEF_type_CHEF_X" => Some(self.chef_type),
            "data_bag" => Some(self.data_bag),
            _ => None,
        }
    }

    /// Keyword fields searched by a query that names no field.
    pub fn keywords(&self) -> [Field; 4] {
        [self.chef_id, self.chef_db, self.chef_type, self.data_bag]
    }
}

pub fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let id = b.add_text_field("_id", STRING | STORED | FAST);
    let content_opts = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(WS)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let content = b.add_text_field("content", content_opts);
    let chef_id = b.add_text_field("X_CHEF_id_CHEF_X", STRING);
    let chef_db = b.add_text_field("X_CHEF_database_CHEF_X", STRING);
    let chef_type = b.add_text_field("X_CHEF_type_CHEF_X", STRING);
    let data_bag = b.add_text_field("data_bag", STRING);
    (
        b.build(),
        Fields {
            id,
            content,
            chef_id,
            chef_db,
            chef_type,
            data_bag,
        },
    )
}

/// What a commit records about the log (the tantivy commit payload).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitMeta {
    /// Highest change-log position whose effect is in this commit.
    pub applied_position: i64,
    /// Identity of the PostgreSQL log the positions belong to (a fresh log restarts at 1).
    pub log_epoch: String,
    pub schema_version: u32,
    /// Newest log generation seen when the applied changes were read (see
    /// [`crate::generation`]); 0 in indexes made before generations existed.
    #[serde(default)]
    pub log_generation: i32,
}

/// Cheap index figures for `larder status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IndexStats {
    pub documents: u64,
    pub size_bytes: u64,
    pub applied_position: i64,
}

/// One search hit: the id, and the score when results are ranked by relevance.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: Option<f32>,
}

/// An open index with its reader.
pub struct LocalIndex {
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
    /// Merged id order of the current searcher generation (see `id_order`).
    id_ranks: std::sync::Mutex<Option<Arc<IdRanks>>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SearchError + '_ {
    move |source| SearchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn register(index: &Index) {
    index
        .tokenizers()
        .register(WS, TextAnalyzer::from(WhitespaceTokenizer::default()));
}

/// Reads the commit payload of an open index.
pub fn commit_meta(index: &Index) -> Result<CommitMeta, SearchError> {
    let metas = index.load_metas()?;
    match metas.payload {
        None => Ok(CommitMeta {
            schema_version: SCHEMA_VERSION,
            ..Default::default()
        }),
        Some(p) => serde_json::from_str(&p)
            .map_err(|e| SearchError::Other(format!("unreadable index commit payload: {e}"))),
    }
}

impl LocalIndex {
    /// Opens the index in `dir`; a missing, unreadable, damaged or outdated index is wiped and
    /// recreated empty (the tailer then refills it from PostgreSQL). Returns whether it was
    /// recreated.
    pub fn open_or_create(dir: &Path) -> Result<(LocalIndex, CommitMeta, bool), SearchError> {
        match Self::open_checked(dir) {
            Ok((ix, meta)) => Ok((ix, meta, false)),
            Err(why) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), %why, "search index unusable; rebuilding it from PostgreSQL");
                }
                let ix = Self::create_fresh(dir)?;
                let meta = commit_meta(&ix.index)?;
                Ok((ix, meta, true))
            }
        }
    }

    fn open_checked(dir: &Path) -> Result<(LocalIndex, CommitMeta), SearchError> {
        let index = Index::open_in_dir(dir)?;
        let (schema, fields) = schema();
        if index.schema() != schema {
            return Err(SearchError::Other("index schema differs".into()));
        }
        let meta = commit_meta(&index)?;
        if meta.schema_version != SCHEMA_VERSION {
            return Err(SearchError::Other("index schema version differs".into()));
        }
        // Checksums of every segment file: a torn or bit-rotted file means rebuild, not wrong hits.
        let damaged = index.validate_checksum()?;
        if !damaged.is_empty() {
            return Err(SearchError::Other(format!(
                "damaged index files: {damaged:?}"
            )));
        }
        register(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok((
            LocalIndex {
                index,
                reader,
                fields,
                id_ranks: Default::default(),
            },
            meta,
        ))
    }

    /// Wipes `dir` and creates an empty index there.
    pub fn create_fresh(dir: &Path) -> Result<LocalIndex, SearchError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (schema, fields) = schema();
        let index = Index::create_in_dir(dir, schema)?;
        register(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(LocalIndex {
            index,
            reader,
            fields,
            id_ranks: Default::default(),
        })
    }

    /// Number of live documents visible to searches.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query; returns the total hit count and the requested page of ids.
    pub fn search(
        &self,
        ast: &Ast,
        from: usize,
        size: usize,
        sort: SortSpec,
    ) -> Result<(usize, Vec<Hit>), SearchErrorOrQuery> {
        let q = build(ast, &self.fields)?;
        let searcher = self.reader.searcher();
        // Never size collectors beyond what can match.
        let size = size.min(searcher.num_docs() as usize);
        if size == 0 {
            return Ok((searcher.search(&q, &Count)?, Vec::new()));
        }
        match sort {
            SortSpec::Id { descending } => {
                let ranks = self.id_ranks(&searcher)?;
                let (total, ids) = searcher.search(
                    &q,
                    &IdPage {
                        from,
                        size,
                        descending,
                        ranks,
                    },
                )?;
                let hits = ids.into_iter().map(|id| Hit { id, score: None }).collect();
                Ok((total, hits))
            }
            SortSpec::Score => {
                let top = TopDocs::with_limit(size).and_offset(from).order_by_score();
                let (total, docs) = searcher.search(&q, &(Count, top))?;
                let hits = docs
                    .into_iter()
                    .map(|(score, addr)| {
                        self.stored_id(&searcher, addr).map(|id| Hit {
                            id,
                            score: Some(score),
                        })
                    })
                    .collect::<Result<_, SearchError>>()?;
                Ok((total, hits))
            }
        }
    }

    /// The merged id order of `searcher`'s generation, built on first use and cached.
    pub fn id_ranks(&self, searcher: &tantivy::Searcher) -> Result<Arc<IdRanks>, SearchError> {
        let mut cached = self.id_ranks.lock().unwrap_or_else(|e| e.into_inner());
        let generation = searcher.generation().generation_id();
        if let Some(r) = cached.as_ref().filter(|r| r.generation == generation) {
            return Ok(r.clone());
        }
        let r = Arc::new(IdRanks::build(searcher)?);
        *cached = Some(r.clone());
        Ok(r)
    }

    /// Reloads the reader and prepares the id order of the new generation, so that the first
    /// search after a commit does not pay for it.
    pub fn reload(&self) -> Result<(), SearchError> {
        self.reader.reload()?;
        self.id_ranks(&self.reader.searcher())?;
        Ok(())
    }

    /// Counts matches.
    pub fn count(&self, ast: &Ast) -> Result<usize, SearchErrorOrQuery> {
        let q = build(ast, &self.fields)?;
        Ok(self.reader.searcher().search(&q, &Count)?)
    }

    /// Every matching id (for `_delete_by_query`).
    pub fn matching_ids(&self, ast: &Ast) -> Result<Vec<String>, SearchErrorOrQuery> {
        let q = build(ast, &self.fields)?;
        let searcher = self.reader.searcher();
        let docs = searcher.search(&q, &tantivy::collector::DocSetCollector)?;
        let mut ids = Vec::with_capacity(docs.len());
        for addr in docs {
            ids.push(self.stored_id(&searcher, addr)?);
        }
        Ok(ids)
    }

    fn stored_id(
        &self,
        searcher: &tantivy::Searcher,
        addr: DocAddress,
    ) -> Result<String, SearchError> {
        let doc: TantivyDocument = searcher.doc(addr)?;
        Ok(doc
            .get_first(self.fields.id)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string())
    }
}

/// Either a client mistake (400) or a server failure (500).
#[derive(Debug, thiserror::Error)]
pub enum SearchErrorOrQuery {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Search(#[from] SearchError),
}

impl From<tantivy::TantivyError> for SearchErrorOrQuery {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchErrorOrQuery::Search(e.into())
    }
}

/// Size on disk of everything under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Stats without taking the writer lock (safe while the service runs).
pub fn index_stats(dir: &Path) -> Result<IndexStats, SearchError> {
    let index = Index::open_in_dir(dir)?;
    let meta = commit_meta(&index)?;
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    Ok(IndexStats {
        documents: reader.searcher().num_docs(),
        size_bytes: dir_size(dir),
        applied_position: meta.applied_position,
    })
}
