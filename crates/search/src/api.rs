//! The Elasticsearch-compatible HTTP API (the subset Chef Infra Server and ES clients use).
//!
//! Routing decision: writes that reach a follower are refused with an ES-shaped 503
//! (`this node is a follower; send writes to the leader`) rather than forwarded. Chef frontends
//! already send 9200 traffic only to the leader (haproxy's `/leader` check), so a write on a
//! follower means a stale route; forwarding would hide that and add a second hop whose failure
//! modes (leader changing mid-forward) are worse than a clean, retryable 503. Reads are served
//! from the follower's local index. The authoritative check is PostgreSQL itself: a write is
//! refused when the local server rejects it as read-only.

use crate::bulk::{self, BulkItem, Op};
use crate::config::SearchConfig;
use crate::index::{Hit, LocalIndex, SearchErrorOrQuery};
use crate::log::{self, Change};
use crate::pg::{self, Pool};
use crate::query::dsl::{self, SearchRequest, SortSpec};
use crate::query::QueryError;
use crate::tailer::{Role, Shared};
use crate::SearchError;
use axum::body::{Bytes, HttpBody};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The one index Larder serves.
pub const INDEX: &str = "chef";
const REFRESH_DEADLINE: Duration = Duration::from_secs(60);
const MAX_BODY: usize = 100 * 1024 * 1024;

/// Everything a handler needs.
pub struct AppState {
    pub cfg: SearchConfig,
    pub index: Arc<LocalIndex>,
    pub applied: watch::Receiver<i64>,
    pub pool: Pool,
    /// Buffers for `_bulk` bodies.
    pub bodies: crate::buffers::BufferPool,
    pub shared: Arc<Shared>,
    pub wake: Arc<Notify>,
    /// Set once the `chef` index definition is known to exist (saves a round trip per bulk).
    pub index_known: std::sync::atomic::AtomicBool,
    /// Set once `search_generations` is known to exist: every write records its generation
    /// there, and a log made by an older version lacks it until its first upgraded primary.
    pub generations_known: std::sync::atomic::AtomicBool,
    /// Asks the indexer to commit as soon as it can (someone waits for the index).
    pub flush: Arc<std::sync::atomic::AtomicBool>,
    /// Counters for `GET /_larder/stats` (see [`crate::stats`]).
    pub stats: Arc<crate::stats::Stats>,
}

type St = State<Arc<AppState>>;
type Params = Query<HashMap<String, String>>;

/// An ES-shaped error response: `{"error":{"root_cause":[..],"type":..,"reason":..},"status":N}`.
#[derive(Debug)]
pub struct EsError {
    pub status: StatusCode,
    pub kind: String,
    pub reason: String,
    pub index: Option<String>,
}

impl EsError {
    pub fn new(status: StatusCode, kind: &str, reason: impl Into<String>) -> EsError {
        EsError {
            status,
            kind: kind.into(),
            reason: reason.into(),
            index: None,
        }
    }
    fn follower() -> EsError {
        EsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_block_exception",
            "this node is a follower; send writes to the leader",
        )
    }
    fn no_index(name: &str) -> EsError {
        EsError {
            index: Some(name.into()),
            ..EsError::new(
                StatusCode::NOT_FOUND,
                "index_not_found_exception",
                format!("no such index [{name}]"),
            )
        }
    }
    fn bad_query(e: QueryError) -> EsError {
        EsError::new(StatusCode::BAD_REQUEST, "query_shard_exception", e.0)
    }
}

impl IntoResponse for EsError {
    fn into_response(self) -> Response {
        let mut cause = json!({"type": self.kind, "reason": self.reason});
        if let Some(i) = &self.index {
            cause["index"] = json!(i);
            cause["resource.type"] = json!("index_or_alias");
            cause["resource.id"] = json!(i);
        }
        let mut err = cause.clone();
        err["root_cause"] = json!([cause]);
        (
            self.status,
            Json(json!({"error": err, "status": self.status.as_u16()})),
        )
            .into_response()
    }
}

impl From<SearchError> for EsError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Follower => EsError::follower(),
            SearchError::Pg(pe) if pg::is_read_only_error(&pe) => EsError::follower(),
            SearchError::Pg(pe) if pg::is_not_ready_error(&pe) => EsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_shards_exception",
                "the search database is not ready on this node yet (being created or replicated)",
            ),
            SearchError::Pg(pe) if pe.is_closed() || pe.code().is_none() => EsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_shards_exception",
                format!("local PostgreSQL unavailable: {pe}"),
            ),
            other => EsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                other.to_string(),
            ),
        }
    }
}

impl From<SearchErrorOrQuery> for EsError {
    fn from(e: SearchErrorOrQuery) -> Self {
        match e {
            SearchErrorOrQuery::Query(q) => EsError::bad_query(q),
            SearchErrorOrQuery::Search(s) => s.into(),
        }
    }
}

type R = Result<Response, EsError>;

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let accepted = Arc::new(crate::auth::Accepted::new(
        state.cfg.auth.clone(),
        state.cfg.auth_file.clone(),
    ));
    Router::new()
        .route("/", get(root))
        .route("/_bulk", post(bulk_root).put(bulk_root))
        .route("/_refresh", post(refresh).get(refresh))
        .route("/_search", get(search_all).post(search_all))
        .route("/_count", get(count_all).post(count_all))
        .route("/_cluster/health", get(health))
        .route("/_cluster/health/{index}", get(health))
        .route("/_larder/stats", get(larder_stats))
        .route(
            "/{index}",
            get(index_get).put(index_put).delete(index_delete),
        )
        .route("/{index}/_bulk", post(bulk_in).put(bulk_in))
        .route("/{index}/_refresh", post(refresh).get(refresh))
        .route("/{index}/_search", get(search).post(search))
        .route("/{index}/_count", get(count).post(count))
        .route("/{index}/_delete_by_query", post(delete_by_query))
        .route("/{index}/{doc_type}/{id}", any(doc))
        .fallback(fallback)
        // ES's http.max_content_length default; erchef flushes bulks at ~5 MB.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        // Before anything reads a body: an unauthenticated client gets nothing but the 401.
        .layer(axum::middleware::from_fn_with_state(
            accepted,
            crate::auth::require,
        ))
        .layer(axum::middleware::map_response(es_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.stats.clone(),
            crate::stats::measure,
        ))
        .with_state(state)
}

async fn es_headers(mut r: Response) -> Response {
    // elasticsearch-py ≥ 7.14 refuses servers that do not identify as Elasticsearch.
    r.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    r
}

async fn fallback(method: Method, uri: axum::http::Uri) -> EsError {
    EsError::new(
        StatusCode::BAD_REQUEST,
        "illegal_argument_exception",
        format!("no handler found for uri [{uri}] and method [{method}]"),
    )
}

impl AppState {
    fn major(&self) -> u8 {
        self.cfg.es_major
    }
    fn doc_type(&self) -> &'static str {
        if self.major() >= 7 {
            "_doc"
        } else {
            "object"
        }
    }
    fn total(&self, n: usize, as_int: bool) -> Value {
        if self.major() >= 7 && !as_int {
            json!({"value": n, "relation": "eq"})
        } else {
            json!(n)
        }
    }
    fn check_index(&self, name: &str) -> Result<(), EsError> {
        match name {
            INDEX | "_all" | "*" => Ok(()),
            other => Err(EsError::no_index(other)),
        }
    }
    /// Waits until the local index has applied every change committed in the local
    /// PostgreSQL when this is called.
    async fn catch_up(&self) -> Result<(), EsError> {
        let target = {
            let c = self.pool.get().await?;
            log::latest_position(&*c).await?
        };
        self.wait_applied(target).await
    }
    async fn wait_applied(&self, target: i64) -> Result<(), EsError> {
        let mut rx = self.applied.clone();
        if *rx.borrow() >= target {
            return Ok(());
        }
        self.flush.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let res = tokio::time::timeout(REFRESH_DEADLINE, rx.wait_for(|p| *p >= target)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(EsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout_exception",
                format!("index did not reach log position {target} within {REFRESH_DEADLINE:?}"),
            )),
        }
    }
}

fn shards() -> Value {
    json!({"total": 1, "successful": 1, "skipped": 0, "failed": 0})
}

/// The service's counters for the agent's `/metrics` (see [`crate::stats`]).
async fn larder_stats(State(st): St) -> Json<larder_core::search_stats::SearchStats> {
    Json(st.stats.report(
        st.index.num_docs(),
        st.shared.fetched.load(Ordering::Relaxed),
        *st.applied.borrow(),
    ))
}

async fn root(State(st): St) -> Json<Value> {
    let number = match st.major() {
        5 => "5.6.16",
        6 => "6.8.23",
        _ => "7.10.2",
    };
    let lucene = match st.major() {
        5 => "6.6.1",
        6 => "7.7.3",
        _ => "8.7.0",
    };
    Json(json!({
        "name": st.cfg.node_name,
        "cluster_name": st.cfg.cluster_name,
        "cluster_uuid": "larder-search",
        "version": {
            "number": number,
            "build_flavor": "default",
            "build_type": "tar",
            "build_hash": "larder",
            "build_date": "2026-01-01T00:00:00.000Z",
            "build_snapshot": false,
            "lucene_version": lucene,
            "minimum_wire_compatibility_version": "5.6.0",
            "minimum_index_compatibility_version": "5.0.0"
        },
        "tagline": "You Know, for Search"
    }))
}

async fn health(State(st): St) -> Json<Value> {
    let ok = st.shared.pg_ok.load(Ordering::Relaxed)
        && !st.shared.indexer_failed.load(Ordering::Relaxed);
    let lag = st.shared.fetched.load(Ordering::Relaxed) - *st.applied.borrow();
    let status = if !ok {
        "red"
    } else if lag > 0 {
        // Serving, but the index is still catching up with the log.
        "yellow"
    } else {
        "green"
    };
    Json(json!({
        "cluster_name": st.cfg.cluster_name,
        "status": status,
        "timed_out": false,
        "number_of_nodes": 1,
        "number_of_data_nodes": 1,
        "active_primary_shards": 1,
        "active_shards": 1,
        "relocating_shards": 0,
        "initializing_shards": 0,
        "unassigned_shards": 0,
        "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0,
        "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0,
        "active_shards_percent_as_number": 100.0,
        "larder": {
            "role": match st.shared.role() { Role::Leader => "leader", Role::Follower => "follower", Role::Unknown => "unknown" },
            "applied_position": *st.applied.borrow(),
            "log_position_seen": st.shared.fetched.load(Ordering::Relaxed),
        }
    }))
}

async fn index_get(State(st): St, Path(name): Path<String>) -> R {
    st.check_index(&name)?;
    let def = {
        let c = st.pool.get().await?;
        log::index_definition(&c, INDEX).await?
    };
    let def = def.ok_or_else(|| EsError::no_index(&name))?;
    let mappings = def.get("mappings").cloned().unwrap_or(json!({}));
    let mut settings = def.get("settings").cloned().unwrap_or(json!({}));
    if !settings.is_object() {
        settings = json!({});
    }
    Ok(
        Json(json!({INDEX: {"aliases": {}, "mappings": mappings, "settings": settings}}))
            .into_response(),
    )
}

async fn index_put(State(st): St, Path(name): Path<String>, body: Bytes) -> R {
    if name != INDEX {
        return Err(EsError::new(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            format!("Larder serves only the [{INDEX}] index, not [{name}]"),
        ));
    }
    let def: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| EsError::new(StatusCode::BAD_REQUEST, "parse_exception", e.to_string()))?
    };
    let created = {
        let c = st.pool.get().await?;
        log::create_index(&c, INDEX, &def).await?
    };
    if !created {
        return Err(EsError {
            index: Some(name.clone()),
            ..EsError::new(
                StatusCode::BAD_REQUEST,
                "resource_already_exists_exception",
                format!("index [{name}] already exists"),
            )
        });
    }
    Ok(
        Json(json!({"acknowledged": true, "shards_acknowledged": true, "index": INDEX}))
            .into_response(),
    )
}

async fn index_delete(State(st): St, Path(name): Path<String>) -> R {
    st.check_index(&name)?;
    let existed = {
        let c = st.pool.get().await?;
        log::index_definition(&c, INDEX).await?.is_some()
    };
    if !existed {
        return Err(EsError::no_index(&name));
    }
    ensure_generations(&st).await?;
    {
        let mut c = st.pool.get().await?;
        log::delete_all(&mut c).await?;
    }
    st.index_known.store(false, Ordering::Relaxed);
    st.wake.notify_one();
    Ok(Json(json!({"acknowledged": true})).into_response())
}

fn wants_refresh(params: &HashMap<String, String>) -> bool {
    matches!(
        params.get("refresh").map(String::as_str),
        Some("" | "true" | "wait_for")
    )
}

/// Commits changes to the log; the 200 is only produced after PostgreSQL's commit returned.
async fn write_changes(
    st: &AppState,
    changes: &[Change],
    refresh: bool,
) -> Result<Vec<log::Applied>, EsError> {
    write_prepared(st, log::prepare(changes.to_vec()), refresh).await
}

/// [`write_changes`] of a batch already prepared (off the async executor).
async fn write_prepared(
    st: &AppState,
    prepared: log::Prepared,
    refresh: bool,
) -> Result<Vec<log::Applied>, EsError> {
    ensure_generations(st).await?;
    let applied = {
        let mut c = st.pool.get().await?;
        log::write_prepared(&mut c, prepared).await?
    };
    st.wake.notify_one();
    if refresh {
        if let Some(max) = applied.iter().map(|a| a.pos).max() {
            st.wait_applied(max).await?;
        }
    }
    Ok(applied)
}

/// Run before a write: see [`AppState::generations_known`].
async fn ensure_generations(st: &AppState) -> Result<(), EsError> {
    if st.generations_known.load(Ordering::Relaxed) {
        return Ok(());
    }
    let c = st.pool.get().await?;
    if !log::has_generations(&c).await? {
        log::ensure_generations(&c).await?;
    }
    st.generations_known.store(true, Ordering::Relaxed);
    Ok(())
}

async fn ensure_index_exists(st: &AppState) -> Result<(), EsError> {
    // ES creates a missing index on first write; so do we (definition empty).
    if st.index_known.load(Ordering::Relaxed) {
        return Ok(());
    }
    let c = st.pool.get().await?;
    log::create_index(&c, INDEX, &json!({})).await?;
    st.index_known.store(true, Ordering::Relaxed);
    Ok(())
}

async fn bulk_root(State(st): St, params: Params, req: Request) -> R {
    do_bulk(st, None, params.0, req).await
}

async fn bulk_in(State(st): St, Path(index): Path<String>, params: Params, req: Request) -> R {
    do_bulk(st, Some(index), params.0, req).await
}

/// Reads a request body into one of the pooled buffers (see [`crate::buffers`]), refusing
/// bodies over [`MAX_BODY`] as the other routes' body limit does.
async fn read_body(st: &AppState, req: Request) -> Result<Vec<u8>, EsError> {
    let too_large = || {
        EsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_long_exception",
            format!("request body is larger than {MAX_BODY} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if announced > MAX_BODY {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = st.bodies.take(announced);
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| {
            EsError::new(
                StatusCode::BAD_REQUEST,
                "parse_exception",
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn do_bulk(
    st: Arc<AppState>,
    index: Option<String>,
    params: HashMap<String, String>,
    req: Request,
) -> R {
    let started = Instant::now();
    let body = read_body(&st, req).await?;
    // Parsing and compressing a bulk is CPU work (tens of ms for erchef's 5 MB batches, more for
    // big node documents): done on a blocking thread so the async workers keep serving
    // PostgreSQL connections and other requests; its pieces go to the writer as they are ready.
    let (pieces, mut rx) = tokio::sync::mpsc::channel(2);
    let st2 = st.clone();
    let piece_bytes = st.cfg.bulk_piece_bytes;
    let parser = tokio::task::spawn_blocking(move || {
        let r = parse_into_pieces(&body, index.as_deref(), piece_bytes, &pieces);
        st2.bodies.give(body);
        r
    });
    let applied = match rx.recv().await {
        Some(first @ log::Piece::Rows(_)) => {
            ensure_index_exists(&st).await?;
            ensure_generations(&st).await?;
            let mut c = st.pool.get().await?;
            log::write_pieces(&mut c, first, &mut rx).await?
        }
        Some(log::Piece::End) => Some(Vec::new()),
        // The parser stopped early: it reports why below.
        None => None,
    };
    let internal = |e: String| EsError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", e);
    let (items, slot) = parser
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(|e| EsError::new(StatusCode::BAD_REQUEST, "illegal_argument_exception", e))?;
    let applied = applied.ok_or_else(|| internal("bulk parsing ended early".into()))?;
    st.stats
        .bulk_documents
        .fetch_add(applied.len() as u64, Ordering::Relaxed);
    st.wake.notify_one();
    if wants_refresh(&params) {
        if let Some(max) = applied.iter().map(|a| a.pos).max() {
            st.wait_applied(max).await?;
        }
    }
    let mut errors = false;
    let out: Vec<Value> = items
        .iter()
        .zip(slot)
        .map(|(it, s)| item_result(&st, it, s.map(|k| &applied[k]), &mut errors))
        .collect();
    Ok(
        Json(json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": out}))
            .into_response(),
    )
}

/// Parses a `_bulk` body piece by piece (`piece_bytes` of source text each), sending each piece's changes to the
/// writer as soon as it is parsed, then [`log::Piece::End`]. Returns the items (for the
/// response) and, per item, the number of its change (`None`: not written). On a malformed
/// body it returns the first error without sending `End`, so nothing is committed.
fn parse_into_pieces(
    body: &[u8],
    index: Option<&str>,
    piece_bytes: usize,
    pieces: &tokio::sync::mpsc::Sender<log::Piece>,
) -> Result<(Vec<BulkItem>, Vec<Option<usize>>), String> {
    let actions = bulk::parse_actions(body, index);
    if let Some(e) = actions.error {
        // The request fails; a malformed source line before the bad action line comes first.
        for r in bulk::parse_sources(&actions.sources) {
            r?;
        }
        return Err(e);
    }
    let items = actions.items;
    let mut slot = Vec::with_capacity(items.len());
    let mut written = 0;
    for range in bulk::chunk_ranges(&actions.sources, piece_bytes) {
        let sources = bulk::parse_sources(&actions.sources[range.clone()]);
        let mut changes = Vec::with_capacity(range.len());
        for (it, source) in items[range].iter().zip(sources) {
            let source = source?;
            if it.index != INDEX || it.op == Op::Update {
                slot.push(None);
                continue;
            }
            slot.push(Some(written));
            written += 1;
            changes.push(match source {
                Some(s) => Change::Index {
                    id: it.id.clone(),
                    database: s.database,
                    object_type: s.object_type,
                    data_bag: s.data_bag,
                    content_z: s.content_z,
                },
                None => Change::Delete { id: it.id.clone() },
            });
        }
        if !changes.is_empty()
            && pieces
                .blocking_send(log::Piece::Rows(log::prepare(changes)))
                .is_err()
        {
            return Err("the request was abandoned".into());
        }
    }
    // The writer may have gone (failed); its error is what the client gets.
    let _ = pieces.blocking_send(log::Piece::End);
    Ok((items, slot))
}

fn item_result(
    st: &AppState,
    it: &BulkItem,
    applied: Option<&log::Applied>,
    errors: &mut bool,
) -> Value {
    let doc_type = it
        .doc_type
        .clone()
        .unwrap_or_else(|| st.doc_type().to_string());
    let mut r = json!({"_index": it.index, "_type": doc_type, "_id": it.id});
    match applied {
        None => {
            *errors = true;
            let (status, kind, reason) = if it.op == Op::Update {
                (
                    400,
                    "illegal_argument_exception",
                    "Larder does not support bulk update actions".to_string(),
                )
            } else {
                (
                    404,
                    "index_not_found_exception",
                    format!("Larder serves only the [{INDEX}] index"),
                )
            };
            r["status"] = json!(status);
            r["error"] = json!({"type": kind, "reason": reason, "index": it.index});
        }
        Some(a) => {
            let (result, status) = match (it.op, a.existed) {
                (Op::Delete, true) => ("deleted", 200),
                (Op::Delete, false) => ("not_found", 404),
                (_, true) => ("updated", 200),
                (_, false) => ("created", 201),
            };
            r["_version"] = json!(1);
            r["result"] = json!(result);
            r["_shards"] = json!({"total": 1, "successful": 1, "failed": 0});
            r["_seq_no"] = json!(a.pos);
            r["_primary_term"] = json!(1);
            r["status"] = json!(status);
        }
    }
    json!({ it.op.name(): r })
}

fn body_json(body: &Bytes) -> Result<Option<Value>, EsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        EsError::new(
            StatusCode::BAD_REQUEST,
            "parsing_exception",
            format!("request body is not valid JSON: {e}"),
        )
    })
}

fn parse_search(body: &Bytes, params: &HashMap<String, String>) -> Result<SearchRequest, EsError> {
    if params.contains_key("scroll") {
        return Err(EsError::new(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            "scroll is not supported (it is only used by ES 2 mode, which Larder does not offer)",
        ));
    }
    dsl::search_request(body_json(body)?.as_ref(), params).map_err(EsError::bad_query)
}

async fn search_all(st: St, params: Params, body: Bytes) -> R {
    search(st, Path(INDEX.to_string()), params, body).await
}

async fn search(State(st): St, Path(index): Path<String>, Query(params): Params, body: Bytes) -> R {
    let started = Instant::now();
    st.check_index(&index)?;
    let req = parse_search(&body, &params)?;
    let ix = st.index.clone();
    let (q, from, size, sort) = (req.query.clone(), req.from, req.size, req.sort);
    let (total, hits): (usize, Vec<Hit>) =
        tokio::task::spawn_blocking(move || ix.search(&q, from, size, sort))
            .await
            .map_err(|e| {
                EsError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    e.to_string(),
                )
            })??;
    let sorted = matches!(sort, SortSpec::Id { .. });
    let max_score = if sorted {
        Value::Null
    } else {
        hits.iter()
            .filter_map(|h| h.score)
            .reduce(f32::max)
            .map(|s| json!(s))
            .unwrap_or(Value::Null)
    };
    let doc_type = st.doc_type();
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            let mut v = json!({"_index": INDEX, "_type": doc_type, "_id": h.id, "_score": h.score});
            if sorted {
                v["sort"] = json!([h.id]);
            }
            v
        })
        .collect();
    let as_int = params
        .get("rest_total_hits_as_int")
        .is_some_and(|v| v != "false");
    let mut hits_obj = json!({"max_score": max_score, "hits": hits});
    if req.track_total_hits || st.major() < 7 {
        hits_obj["total"] = st.total(total, as_int);
    }
    Ok(Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "timed_out": false,
        "_shards": shards(),
        "hits": hits_obj,
    }))
    .into_response())
}

async fn count_all(st: St, params: Params, body: Bytes) -> R {
    count(st, Path(INDEX.to_string()), params, body).await
}

async fn count(State(st): St, Path(index): Path<String>, Query(params): Params, body: Bytes) -> R {
    st.check_index(&index)?;
    let req = parse_search(&body, &params)?;
    let ix = st.index.clone();
    let n = tokio::task::spawn_blocking(move || ix.count(&req.query))
        .await
        .map_err(|e| {
            EsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                e.to_string(),
            )
        })??;
    Ok(Json(json!({"count": n, "_shards": shards()})).into_response())
}

async fn refresh(State(st): St) -> R {
    st.catch_up().await?;
    Ok(Json(json!({"_shards": {"total": 1, "successful": 1, "failed": 0}})).into_response())
}

async fn delete_by_query(
    State(st): St,
    Path(index): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> R {
    let started = Instant::now();
    st.check_index(&index)?;
    let req = parse_search(&body, &params)?;
    if st.shared.role() == Role::Follower {
        return Err(EsError::follower());
    }
    // Match against an index that holds everything committed so far.
    st.catch_up().await?;
    let ix = st.index.clone();
    let ids = tokio::task::spawn_blocking(move || ix.matching_ids(&req.query))
        .await
        .map_err(|e| {
            EsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                e.to_string(),
            )
        })??;
    let mut deleted = 0u64;
    for chunk in ids.chunks(5000) {
        let changes: Vec<Change> = chunk
            .iter()
            .map(|id| Change::Delete { id: id.clone() })
            .collect();
        let applied = write_changes(&st, &changes, false).await?;
        deleted += applied.iter().filter(|a| a.existed).count() as u64;
    }
    if wants_refresh(&params) {
        st.catch_up().await?;
    }
    Ok(Json(json!({
        "took": started.elapsed().as_millis() as u64,
        "timed_out": false,
        "total": ids.len(),
        "deleted": deleted,
        "batches": ids.len().div_ceil(5000),
        "version_conflicts": 0,
        "noops": 0,
        "retries": {"bulk": 0, "search": 0},
        "throttled_millis": 0,
        "requests_per_second": -1.0,
        "throttled_until_millis": 0,
        "failures": []
    }))
    .into_response())
}

/// `/<index>/<type>/<id>`: GET/HEAD (from PostgreSQL), PUT/POST (index one), DELETE.
async fn doc(
    State(st): St,
    method: Method,
    Path((index, doc_type, id)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> R {
    if doc_type.starts_with('_') && !matches!(doc_type.as_str(), "_doc" | "_create") {
        return Err(EsError::new(
            StatusCode::BAD_REQUEST,
            "illegal_argument_exception",
            format!("no handler found for uri [/{index}/{doc_type}/{id}] and method [{method}]"),
        ));
    }
    let base = json!({"_index": index, "_type": if st.major() >= 7 { "_doc" } else { doc_type.as_str() }, "_id": id});
    match method {
        Method::GET | Method::HEAD => {
            st.check_index(&index)?;
            let row = {
                let c = st.pool.get().await?;
                log::get_doc(&c, &id).await?
            };
            let mut v = base;
            match row {
                None => {
                    v["found"] = json!(false);
                    Ok((StatusCode::NOT_FOUND, Json(v)).into_response())
                }
                Some(r) => {
                    v["_version"] = json!(1);
                    v["_seq_no"] = json!(r.pos);
                    v["_primary_term"] = json!(1);
                    v["found"] = json!(true);
                    let mut src = json!({"content": r.content, "X_CHEF_id_CHEF_X": r.id});
                    if let Some(d) = r.database {
                        src["X_CHEF_database_CHEF_X"] = json!(d);
                    }
                    if let Some(t) = r.object_type {
                        src["X_CHEF_type_CHEF_X"] = json!(t);
                    }
                    if let Some(b) = r.data_bag {
                        src["data_bag"] = json!(b);
                    }
                    v["_source"] = src;
                    Ok(Json(v).into_response())
                }
            }
        }
        Method::PUT | Method::POST | Method::DELETE => {
            if index != INDEX {
                return Err(EsError::no_index(&index));
            }
            let change = if method == Method::DELETE {
                Change::Delete { id: id.clone() }
            } else {
                let src = body_json(&body)?
                    .and_then(|v| v.as_object().map(bulk::source))
                    .ok_or_else(|| {
                        EsError::new(
                            StatusCode::BAD_REQUEST,
                            "parse_exception",
                            "request body is required",
                        )
                    })?;
                ensure_index_exists(&st).await?;
                Change::Index {
                    id: id.clone(),
                    database: src.database,
                    object_type: src.object_type,
                    data_bag: src.data_bag,
                    content_z: src.content_z,
                }
            };
            let is_delete = method == Method::DELETE;
            let a =
                write_changes(&st, std::slice::from_ref(&change), wants_refresh(&params)).await?;
            let existed = a.first().is_some_and(|a| a.existed);
            let (result, status) = match (is_delete, existed) {
                (true, true) => ("deleted", StatusCode::OK),
                (true, false) => ("not_found", StatusCode::NOT_FOUND),
                (false, true) => ("updated", StatusCode::OK),
                (false, false) => ("created", StatusCode::CREATED),
            };
            let mut v = base;
            v["_version"] = json!(1);
            v["result"] = json!(result);
            v["_shards"] = json!({"total": 1, "successful": 1, "failed": 0});
            v["_seq_no"] = json!(a.first().map(|a| a.pos).unwrap_or(0));
            v["_primary_term"] = json!(1);
            let mut resp = (status, Json(v)).into_response();
            resp.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&format!("/{index}/_doc/{id}"))
                    .unwrap_or(HeaderValue::from_static("/")),
            );
            Ok(resp)
        }
        _ => Err(EsError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "illegal_argument_exception",
            format!("method [{method}] not allowed"),
        )),
    }
}
