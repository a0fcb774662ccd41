//! The search workload: Chef-shaped documents written through haproxy's 9200 with `_bulk`
//! (index actions with new ids, plus deletes of ids acknowledged earlier) and searched, while
//! the faults run; and the reads of every node's search index and of the leader's change log
//! in PostgreSQL that `search_check` judges after the heal.
//!
//! Requests go as a Chef frontend sends them (reference/search-api.md): ES 7 action lines
//! `{"index":{"_index":"chef","_id":…}}` followed by a source with `content` (the flattened
//! object) and the `X_CHEF_*` keywords; searches are `GET /chef/_search` with a JSON body.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use crate::history::{Outcome, Recorder, SearchKind, SearchOp};
use crate::https::{self, Failure, HttpsTarget};

/// The Chef organization database every document of the workload belongs to.
pub const DATABASE: &str = "chef_larderfaults";
/// Every document id of the workload starts with this (no Chef id does: they are GUIDs).
pub const ID_PREFIX: &str = "lf-";
/// PostgreSQL database and table of the search service's change log (`larder_search::log`).
pub const LOG_DATABASE: &str = "larder_search";

/// Object types the workload writes, as Chef names them.
const TYPES: [&str; 4] = ["node", "role", "environment", "client"];

#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// haproxy's 9200 on the client host.
    pub target: HttpsTarget,
    /// Pause between the starts of two `_bulk` requests.
    pub bulk_interval: Duration,
    /// Pause between the starts of two searches.
    pub query_interval: Duration,
    /// A request without a complete answer after this long is `Unknown`.
    pub timeout: Duration,
    pub seed: u64,
}

pub fn doc_id(seq: u64) -> String {
    format!("{ID_PREFIX}{seq:09}")
}

/// Chef's flattening of an object into `content` tokens (`key__=__value`, nested paths joined
/// with `_`, every leaf also under its own key, object keys as values of their parent),
/// sorted, de-duplicated, with a trailing space.
pub fn flatten_content(obj: &Value) -> String {
    fn walk(path: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if !path.is_empty() {
                        out.push(format!("{path}__=__{k}"));
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}_{k}")
                    };
                    walk(&p, child, out);
                    if !path.is_empty() {
                        // The leaf key alone too (`c__=__v` for a→b→c).
                        let mut leaf = Vec::new();
                        walk(k, child, &mut leaf);
                        out.extend(leaf);
                    }
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(path, x, out);
                }
            }
            Value::String(s) => out.push(format!("{path}__=__{s}")),
            Value::Null => out.push(format!("{path}__=__")),
            other => out.push(format!("{path}__=__{other}")),
        }
    }
    let mut tokens = Vec::new();
    walk("", obj, &mut tokens);
    tokens.sort();
    tokens.dedup();
    let mut s = tokens.join(" ");
    s.push(' ');
    s
}

/// The `_bulk` source line of document `seq`: a node, role, environment or client with a few
/// attributes, as the frontend sends it.
pub fn chef_doc(seq: u64, rng: &mut Xoshiro256PlusPlus) -> (String, Value) {
    let id = doc_id(seq);
    let ty = TYPES[rng.random_range(0..TYPES.len())];
    let env = ["_default", "production", "staging"][rng.random_range(0..3)];
    let object = match ty {
        "node" => json!({
            "name": format!("web{seq}.example.com"),
            "chef_environment": env,
            "run_list": ["recipe[base]", format!("role[web{}]", seq % 7)],
            "automatic": {"platform": "ubuntu", "ipaddress": format!("10.{}.{}.{}", seq % 250, (seq / 250) % 250, rng.random_range(1..250))},
        }),
        "role" => json!({
            "name": format!("web{seq}"),
            "description": "serves the web tier",
            "run_list": ["recipe[nginx]"],
            "default_attributes": {"nginx": {"workers": rng.random_range(1..64)}},
        }),
        "environment" => json!({
            "name": format!("env{seq}"),
            "cookbook_versions": {"nginx": "= 1.2.3"},
        }),
        _ => json!({"name": format!("client{seq}"), "validator": false}),
    };
    let mut meta = object.clone();
    if let Value::Object(m) = &mut meta {
        m.insert("X_CHEF_id_CHEF_X".into(), json!(id));
        m.insert("X_CHEF_database_CHEF_X".into(), json!(DATABASE));
        m.insert("X_CHEF_type_CHEF_X".into(), json!(ty));
    }
    let source = json!({
        "content": flatten_content(&meta),
        "X_CHEF_id_CHEF_X": id,
        "X_CHEF_database_CHEF_X": DATABASE,
        "X_CHEF_type_CHEF_X": ty,
    });
    (id, source)
}

/// NDJSON body: an index action and source per document, then the deletes (ES 7 shapes, the
/// delete with erchef's space before the closing braces).
pub fn bulk_body(docs: &[(String, Value)], deletes: &[String]) -> String {
    let mut s = String::new();
    for (id, source) in docs {
        s.push_str(&format!(
            "{{\"index\":{{\"_index\":\"chef\",\"_id\":{}}}}}\n",
            json!(id)
        ));
        s.push_str(&source.to_string());
        s.push('\n');
    }
    for id in deletes {
        s.push_str(&format!(
            "{{\"delete\":{{\"_index\":\"chef\",\"_id\":{} }}}}\n",
            json!(id)
        ));
    }
    s
}

/// The items of a `_bulk` answer that did not succeed: (id, status). `Err` when the answer is
/// not a bulk answer, or does not hold one item per action sent.
pub fn bulk_item_errors(body: &str, actions: usize) -> Result<Vec<(String, u16)>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("bulk answer: {e}"))?;
    let items = v["items"]
        .as_array()
        .ok_or_else(|| "bulk answer without items".to_string())?;
    if items.len() != actions {
        return Err(format!(
            "bulk answer holds {} items for {actions} actions",
            items.len()
        ));
    }
    let mut errors = Vec::new();
    for it in items {
        let Some((_, inner)) = it.as_object().and_then(|m| m.iter().next()) else {
            return Err(format!("bulk item {it}"));
        };
        let status = inner["status"].as_u64().unwrap_or(0) as u16;
        if !(200..300).contains(&status) {
            errors.push((inner["_id"].as_str().unwrap_or("?").to_string(), status));
        }
    }
    Ok(errors)
}

/// What a non-200 answer means for a write: refused before anything could commit (`Failed`:
/// a follower's `cluster_block_exception` comes from PostgreSQL's read-only error; 401 is
/// refused before the body is read), or not known.
pub fn classify_refusal(status: u16, body: &str) -> Outcome {
    let ty = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["type"].as_str().map(str::to_string));
    match (status, ty.as_deref()) {
        (401, _) => Outcome::Failed,
        (503, Some("cluster_block_exception")) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

fn short(s: &str) -> String {
    let s = s.lines().next().unwrap_or("");
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Runs the bulk writer and the searcher until `stop` is set; every request goes to `rec`.
pub async fn run(cfg: SearchConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    tokio::join!(
        bulks(cfg.clone(), rec.clone(), stop.clone()),
        queries(cfg, rec, stop)
    );
}

async fn bulks(cfg: SearchConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut tick = tokio::time::interval(cfg.bulk_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // Acknowledged ids not yet picked for deletion.
    let mut live: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let n = rng.random_range(5..=20);
        let docs: Vec<(String, Value)> = (0..n)
            .map(|_| {
                seq += 1;
                chef_doc(seq, &mut rng)
            })
            .collect();
        let mut deletes = Vec::new();
        if live.len() > 40 {
            for _ in 0..rng.random_range(0..=3) {
                let i = rng.random_range(0..live.len());
                // Picked once: whatever the answer, an id is never deleted twice.
                deletes.push(live.swap_remove(i));
            }
        }
        let body = bulk_body(&docs, &deletes);
        let start_us = rec.now_us();
        let res = https::request(&cfg.target, "POST", "/_bulk", &body, cfg.timeout).await;
        let mut op = SearchOp {
            kind: SearchKind::Bulk,
            start_us,
            end_us: rec.now_us(),
            outcome: Outcome::Unknown,
            status: None,
            written: docs.iter().map(|d| d.0.clone()).collect(),
            deleted: deletes,
            item_errors: Vec::new(),
            hits: None,
            error: None,
        };
        match res {
            Ok(r) if r.status == 200 => {
                op.status = Some(200);
                op.outcome = Outcome::Ok;
                match bulk_item_errors(&r.body, op.written.len() + op.deleted.len()) {
                    Ok(e) => op.item_errors = e,
                    Err(e) => op.error = Some(short(&e)),
                }
                live.extend(op.written.iter().cloned());
            }
            Ok(r) => {
                op.status = Some(r.status);
                op.outcome = classify_refusal(r.status, &r.body);
                op.error = Some(short(&r.body));
            }
            Err(Failure::NotSent(e)) => {
                op.outcome = Outcome::Failed;
                op.error = Some(short(&e));
            }
            Err(Failure::AfterSend(e)) => op.error = Some(short(&e)),
            Err(Failure::Timeout) => op.error = Some(format!("timeout after {:?}", cfg.timeout)),
        }
        rec.search(op);
    }
}

/// A Chef search body (ES 7 shape): a wildcard on `content` within the organization and type.
fn chef_query(ty: &str) -> String {
    json!({
        "stored_fields": "_id",
        "from": 0,
        "size": 100,
        "sort": [{"X_CHEF_id_CHEF_X": {"order": "asc"}}],
        "query": {"bool": {
            "must": {"query_string": {"query": "content:name__=__*"}},
            "filter": {"query_string": {"query": format!("+X_CHEF_database_CHEF_X:{DATABASE} +X_CHEF_type_CHEF_X:{ty}")}},
        }},
    })
    .to_string()
}

fn total_hits(v: &Value) -> Option<u64> {
    let t = &v["hits"]["total"];
    t.as_u64().or_else(|| t["value"].as_u64())
}

async fn queries(cfg: SearchConfig, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(cfg.query_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        k += 1;
        let body = chef_query(TYPES[k % TYPES.len()]);
        let start_us = rec.now_us();
        let res = https::request(&cfg.target, "GET", "/chef/_search", &body, cfg.timeout).await;
        let mut op = SearchOp {
            kind: SearchKind::Query,
            start_us,
            end_us: rec.now_us(),
            outcome: Outcome::Failed,
            status: None,
            written: Vec::new(),
            deleted: Vec::new(),
            item_errors: Vec::new(),
            hits: None,
            error: None,
        };
        match res {
            Ok(r) => {
                op.status = Some(r.status);
                if r.status == 200 {
                    op.outcome = Outcome::Ok;
                    op.hits = serde_json::from_str::<Value>(&r.body)
                        .ok()
                        .as_ref()
                        .and_then(total_hits);
                } else {
                    op.error = Some(short(&r.body));
                }
            }
            Err(Failure::Timeout) => {
                op.outcome = Outcome::Unknown;
                op.error = Some(format!("timeout after {:?}", cfg.timeout));
            }
            Err(Failure::NotSent(e) | Failure::AfterSend(e)) => op.error = Some(short(&e)),
        }
        rec.search(op);
    }
}

/// Page size of the final reads.
const PAGE: usize = 10_000;

/// Every workload document id one node's search finds (its own index, not through haproxy).
/// A missing index (no bulk ever reached it) is an empty set.
pub async fn node_ids(t: &HttpsTarget, timeout: Duration) -> Result<HashSet<String>, String> {
    let mut out = HashSet::new();
    let mut from = 0usize;
    loop {
        let body = json!({
            "stored_fields": "_id",
            "from": from,
            "size": PAGE,
            "sort": [{"X_CHEF_id_CHEF_X": {"order": "asc"}}],
            "query": {"query_string": {"query": format!("X_CHEF_database_CHEF_X:{DATABASE}")}},
        })
        .to_string();
        let r = https::request(t, "GET", "/chef/_search", &body, timeout)
            .await
            .map_err(|e| format!("{}: {e:?}", t.addr))?;
        if r.status == 404 && r.body.contains("index_not_found_exception") {
            return Ok(out);
        }
        if r.status != 200 {
            return Err(format!("{}: HTTP {} {}", t.addr, r.status, short(&r.body)));
        }
        let v: Value =
            serde_json::from_str(&r.body).map_err(|e| format!("{}: search answer: {e}", t.addr))?;
        let hits = v["hits"]["hits"]
            .as_array()
            .ok_or_else(|| format!("{}: search answer without hits", t.addr))?;
        for h in hits {
            if let Some(id) = h["_id"].as_str() {
                out.insert(id.to_string());
            }
        }
        if hits.len() < PAGE {
            return Ok(out);
        }
        from += PAGE;
    }
}

/// The workload's rows of the change log on one PostgreSQL: id → deleted (tombstone).
pub async fn log_rows(
    t: &crate::pg::Target,
    timeout: Duration,
) -> Result<HashMap<String, bool>, String> {
    let t = crate::pg::Target {
        dbname: LOG_DATABASE.into(),
        ..t.clone()
    };
    let c = crate::pg::connect(&t, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let rows = tokio::time::timeout(
        timeout * 4,
        c.query(
            "SELECT id, deleted FROM search_log WHERE id LIKE $1",
            &[&format!("{ID_PREFIX}%")],
        ),
    )
    .await
    .map_err(|_| format!("reading search_log on {}: timeout", t.describe()))?
    .map_err(|e| {
        format!(
            "reading search_log on {}: {}",
            t.describe(),
            crate::pg::describe(&e)
        )
    })?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)))
        .collect())
}

/// What the final reads saw.
#[derive(Debug, Clone, Default)]
pub struct FinalSearch {
    /// Per node (name): the ids its search found, or why it could not be read.
    pub nodes: Vec<(String, Result<HashSet<String>, String>)>,
    /// The leader's change log rows, or why it could not be read.
    pub log: Option<Result<HashMap<String, bool>, String>>,
    /// Recorder time at which every node first answered what the acknowledged history
    /// requires (`None`: not within the deadline).
    pub converged_at_us: Option<u64>,
    /// Polling rounds until then (or until the deadline).
    pub rounds: u32,
}

/// After the heal, with the workload stopped: polls every node's search (bounded by
/// `deadline`) until each finds every acknowledged live document and none acknowledged
/// deleted, then reads every node *again* and the leader's change log, so what is judged is
/// state read after convergence. `nodes` are (name, ip); `leader_pg` the leader's PostgreSQL.
pub fn final_state(
    client_ns: &str,
    target: &HttpsTarget,
    nodes: Vec<(String, String)>,
    leader_pg: Option<crate::pg::Target>,
    rec: &Recorder,
    deadline: Duration,
) -> FinalSearch {
    let expect = crate::search_check::Expect::from_entries(&rec.entries());
    let target = target.clone();
    let rec = rec.clone();
    let read = |target: HttpsTarget, nodes: Vec<(String, String)>| async move {
        let mut out = Vec::new();
        for (name, ip) in nodes {
            let t = target.with_addr(&format!("{ip}:9200"));
            out.push((name, node_ids(&t, Duration::from_secs(20)).await));
        }
        out
    };
    crate::inns::block_on(client_ns, move || async move {
        let start = Instant::now();
        let mut rounds = 0;
        let mut converged_at_us = None;
        loop {
            rounds += 1;
            let seen = read(target.clone(), nodes.clone()).await;
            if expect.converged(&seen) {
                converged_at_us = Some(rec.now_us());
                break;
            }
            // Which node trails, per round: the history shows how convergence went.
            rec.event(
                "check",
                format!(
                    "search round {rounds}: {}",
                    expect.lagging(&seen).join("; ")
                ),
            );
            if start.elapsed() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let seen = read(target.clone(), nodes.clone()).await;
        let log = match leader_pg {
            Some(t) => Some(log_rows(&t, Duration::from_secs(5)).await),
            None => None,
        };
        Ok(FinalSearch {
            nodes: seen,
            log,
            converged_at_us,
            rounds,
        })
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_flattened_as_chef_does() {
        // The reference's example: role a1 in db1.
        let o = json!({"X_CHEF_database_CHEF_X": "chef_db1", "X_CHEF_id_CHEF_X": "a1",
                       "X_CHEF_type_CHEF_X": "role", "key1": "value1", "key2": "value-2"});
        assert_eq!(
            flatten_content(&o),
            "X_CHEF_database_CHEF_X__=__chef_db1 X_CHEF_id_CHEF_X__=__a1 X_CHEF_type_CHEF_X__=__role key1__=__value1 key2__=__value-2 "
        );
        let n = json!({"a": {"b": "v"}, "l": [1, true, null]});
        assert_eq!(
            flatten_content(&n),
            "a__=__b a_b__=__v b__=__v l__=__ l__=__1 l__=__true "
        );
    }

    #[test]
    fn bulk_body_is_chef_shaped_and_ids_unique() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let docs: Vec<_> = (1..=3).map(|s| chef_doc(s, &mut rng)).collect();
        let body = bulk_body(&docs, &["lf-000000001".to_string()]);
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[0],
            "{\"index\":{\"_index\":\"chef\",\"_id\":\"lf-000000001\"}}"
        );
        let src: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(src["X_CHEF_id_CHEF_X"], "lf-000000001");
        assert_eq!(src["X_CHEF_database_CHEF_X"], DATABASE);
        let content = src["content"].as_str().unwrap();
        assert!(
            content.contains("X_CHEF_id_CHEF_X__=__lf-000000001 "),
            "{content}"
        );
        assert!(content.ends_with(' '));
        assert_eq!(
            lines[6],
            "{\"delete\":{\"_index\":\"chef\",\"_id\":\"lf-000000001\" }}"
        );
        let ids: HashSet<&String> = docs.iter().map(|d| &d.0).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn bulk_answers_are_read_item_by_item() {
        let ok = r#"{"took":3,"errors":false,"items":[{"index":{"_id":"a","status":201}},{"delete":{"_id":"b","status":200}}]}"#;
        assert_eq!(bulk_item_errors(ok, 2), Ok(vec![]));
        let bad = r#"{"errors":true,"items":[{"index":{"_id":"a","status":201}},{"delete":{"_id":"b","status":404}}]}"#;
        assert_eq!(bulk_item_errors(bad, 2), Ok(vec![("b".to_string(), 404)]));
        assert!(bulk_item_errors(ok, 3).is_err());
        assert!(bulk_item_errors("<html>", 1).is_err());
    }

    #[test]
    fn only_certain_refusals_are_failed() {
        let follower = r#"{"error":{"type":"cluster_block_exception","reason":"this node is a follower"},"status":503}"#;
        assert_eq!(classify_refusal(503, follower), Outcome::Failed);
        assert_eq!(classify_refusal(401, "{}"), Outcome::Failed);
        // PostgreSQL gone mid-commit: may have committed.
        let gone = r#"{"error":{"type":"exception","reason":"connection closed"},"status":503}"#;
        assert_eq!(classify_refusal(503, gone), Outcome::Unknown);
        assert_eq!(classify_refusal(500, ""), Outcome::Unknown);
    }
}
