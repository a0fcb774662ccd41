//! Shared test harness: a real PostgreSQL plus the search service on a port-0 listener.
#![allow(dead_code)]

pub mod pg;

use larder_search::{PgTarget, SearchConfig};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct Service {
    pub url: String,
    pub cfg: SearchConfig,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), larder_search::SearchError>>>,
}

pub fn config(target: PgTarget, index_dir: &Path, es_major: u8) -> SearchConfig {
    SearchConfig {
        pg: target,
        index_dir: index_dir.to_path_buf(),
        es_major,
        cluster_name: "larder-test".into(),
        node_name: "node-a".into(),
        bulk_piece_bytes: SearchConfig::DEFAULT_BULK_PIECE_BYTES,
        auth: Vec::new(),
        auth_file: None,
    }
}

impl Service {
    /// Starts the service and waits until it has PostgreSQL and its schema (health not red).
    pub async fn start(cfg: SearchConfig) -> Service {
        let s = Service::start_unready(cfg).await;
        let url = s.url.clone();
        eventually(30, "search service health not red", || {
            let url = url.clone();
            async move {
                let (_, v) = call("GET", &format!("{url}/_cluster/health"), None).await;
                (v["status"] != "red").then_some(())
            }
        })
        .await;
        s
    }

    /// Starts the service without waiting for its database (e.g. a follower whose database is
    /// not replicated yet).
    pub async fn start_unready(cfg: SearchConfig) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(larder_search::serve(listener, cfg.clone(), stop.clone()));
        let s = Service {
            url,
            cfg,
            stop,
            task: Some(task),
        };
        // Ready when the index endpoint answers (any ES-shaped status).
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.get(format!("{}/", s.url)).send().await.is_err() {
            assert!(Instant::now() < deadline, "search service did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// The service's own end (it stops by itself only on a fatal error), if it comes within
    /// `secs`.
    pub async fn ended_within(
        &mut self,
        secs: u64,
    ) -> Option<Result<(), larder_search::SearchError>> {
        let task = self.task.as_mut()?;
        let r = tokio::time::timeout(Duration::from_secs(secs), task)
            .await
            .ok()?;
        self.task = None;
        Some(r.unwrap())
    }

    pub fn index_dir(&self) -> PathBuf {
        self.cfg.index_dir.clone()
    }
}

/// Sends a request with an optional JSON (or raw) body; returns status and parsed body.
pub async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = c.request(m, url).header("content-type", "application/json");
    if let Some(b) = body {
        rb = rb.body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(json!({"raw": text}))
    };
    (st, v)
}

/// `n` Chef node documents of org `chef_o1` with ids `<prefix>0000`…, as (id, database, type,
/// content).
pub fn node_docs(prefix: &str, n: usize) -> Vec<(String, String, String, String)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i:04}");
            let obj = json!({"name": id, "roles": ["base"]});
            let content = larder_search::flatten_chef(&id, "chef_o1", "node", &obj);
            (id, "chef_o1".into(), "node".into(), content)
        })
        .collect()
}

/// A bulk body of Chef index actions in the given ES major's shape.
pub fn bulk_body(major: u8, docs: &[(String, String, String, String)]) -> String {
    // (id, database, type, content)
    let mut s = String::new();
    for (id, db, ty, content) in docs {
        if major >= 7 {
            s.push_str(&json!({"index": {"_index": "chef", "_id": id}}).to_string());
        } else {
            s.push_str(
                &json!({"index": {"_type": "object", "_index": "chef", "_id": id}}).to_string(),
            );
        }
        s.push('\n');
        s.push_str(&json!({"content": content, "X_CHEF_id_CHEF_X": id, "X_CHEF_database_CHEF_X": db, "X_CHEF_type_CHEF_X": ty}).to_string());
        s.push('\n');
    }
    s
}

/// The ids of a search response, in order.
pub fn ids(v: &Value) -> Vec<String> {
    v["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {v}"))
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `f` until it returns Some, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chef's search request body.
pub fn chef_search(major: u8, q: &str, fq: Option<&str>, from: usize, size: usize) -> String {
    let qs = |s: &str| {
        if major >= 7 {
            json!({"query": s})
        } else {
            json!({"lowercase_expanded_terms": false, "query": s})
        }
    };
    let f = if major >= 5 {
        "stored_fields"
    } else {
        "fields"
    };
    let mut body = json!({f: "_id", "from": from, "size": size, "sort": [{"X_CHEF_id_CHEF_X": {"order": "asc"}}]});
    body["query"] = match fq {
        Some(fq) => {
            json!({"bool": {"must": {"query_string": qs(q)}, "filter": {"query_string": qs(fq)}}})
        }
        None => json!({"query_string": qs(q)}),
    };
    body.to_string()
}
