//! Request/response shapes of search-api.md for ES majors 5, 6 and 7, against the real service
//! on a real PostgreSQL; index rebuild after deleting or corrupting it; concurrent writers.

mod common;

use common::pg::PgServer;
use common::{bulk_body, call, chef_search, config, eventually, ids, Service};
use larder_search::SearchConfig;
use serde_json::{json, Value};

fn docs(org: &str, ids: &[&str]) -> Vec<(String, String, String, String)> {
    ids.iter()
        .map(|id| {
            let obj = json!({"name": id, "roles": ["base"], "chef_environment": "prod"});
            (
                id.to_string(),
                format!("chef_{org}"),
                "node".to_string(),
                larder_search::flatten_chef(id, &format!("chef_{org}"), "node", &obj),
            )
        })
        .collect()
}

fn assert_es_error(v: &Value, status: u16, kind: &str) {
    assert_eq!(v["status"], json!(status), "{v}");
    assert_eq!(v["error"]["type"], json!(kind), "{v}");
    assert!(v["error"]["reason"].is_string(), "{v}");
    assert!(v["error"]["root_cause"].is_array(), "{v}");
}

async fn shapes_for(pg: &PgServer, major: u8) {
    let dir = tempfile::tempdir().unwrap();
    let mut target = pg.target();
    target.dbname = format!("larder_search_es{major}");
    let svc = Service::start(config(target, &dir.path().join("index"), major)).await;
    let u = &svc.url;

    let (st, v) = call("GET", &format!("{u}/"), None).await;
    assert_eq!(st, 200);
    assert!(
        v["version"]["number"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{major}.")),
        "{v}"
    );
    assert_eq!(v["tagline"], "You Know, for Search");

    // Missing index: 404 ES-shaped (erchef then PUTs it).
    let (st, v) = eventually(30, "PostgreSQL schema", || async {
        let r = call("GET", &format!("{u}/chef"), None).await;
        (r.0 != 503).then_some(r)
    })
    .await;
    assert_eq!(st, 404, "{v}");
    assert_es_error(&v, 404, "index_not_found_exception");

    let props = json!({"properties": {
        "X_CHEF_database_CHEF_X": {"type": "keyword", "index": true, "norms": false},
        "X_CHEF_type_CHEF_X": {"type": "keyword", "norms": false},
        "X_CHEF_id_CHEF_X": {"type": "keyword", "norms": false},
        "data_bag": {"type": "keyword", "norms": false},
        "content": {"type": "text", "index": true}}});
    let mappings = if major >= 7 {
        props.clone()
    } else {
        json!({"object": {"_source": {"enabled": false}, "properties": props["properties"]}})
    };
    let def = json!({"settings": {"analysis": {"analyzer": {"default": {"type": "whitespace"}}}, "number_of_shards": 5, "number_of_replicas": 1}, "mappings": mappings});
    let (st, v) = call("PUT", &format!("{u}/chef"), Some(&def.to_string())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["acknowledged"], true);
    let (st, v) = call("PUT", &format!("{u}/chef"), Some(&def.to_string())).await;
    assert_eq!(st, 400);
    assert_es_error(&v, 400, "resource_already_exists_exception");
    let (st, v) = call("GET", &format!("{u}/chef"), None).await;
    assert_eq!(st, 200);
    assert!(v["chef"]["mappings"].is_object());

    // Bulk in the major's shape, including the delete action with its odd spacing.
    let mut body = bulk_body(major, &docs("o1", &["n3", "n1", "n2", "gone"]));
    body.push_str(&bulk_body(major, &docs("o2", &["m1"])));
    body.push_str(&format!(
        "{}\n",
        if major >= 7 {
            r#"{"delete":{"_index":"chef","_id":"gone" }}"#
        } else {
            r#"{"delete":{"_index":"chef","_type":"object","_id":"gone" }}"#
        }
    ));
    // data bag item: data_bag first in the source line
    body.push_str(&format!("{}\n{}\n", json!({"index": {"_index": "chef", "_id": "bag1"}}), json!({"data_bag": "users", "content": "id__=__alice ", "X_CHEF_id_CHEF_X": "bag1", "X_CHEF_database_CHEF_X": "chef_o1", "X_CHEF_type_CHEF_X": "data_bag_item"})));
    let (st, v) = call("POST", &format!("{u}/_bulk"), Some(&body)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["errors"], false, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0]["index"]["status"], 201);
    assert_eq!(items[5]["delete"]["result"], "deleted");

    let (st, _) = call("POST", &format!("{u}/_refresh"), Some("")).await;
    assert_eq!(st, 200);

    // Chef's search: bool must/filter, sorted by id, ids only; hits.total per major.
    let fq = "+X_CHEF_database_CHEF_X:chef_o1 +X_CHEF_type_CHEF_X:node";
    let (st, v) = call(
        "GET",
        &format!("{u}/chef/_search"),
        Some(&chef_search(
            major,
            "content:name__=__n*",
            Some(fq),
            0,
            1000,
        )),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), ["n1", "n2", "n3"]);
    if major >= 7 {
        assert_eq!(v["hits"]["total"], json!({"value": 3, "relation": "eq"}));
    } else {
        assert_eq!(v["hits"]["total"], json!(3));
    }
    let hit = &v["hits"]["hits"][0];
    assert_eq!(hit["_index"], "chef");
    assert_eq!(hit["_type"], if major >= 7 { "_doc" } else { "object" });
    assert!(hit.get("_source").is_none());
    // paging
    let (_, v) = call(
        "GET",
        &format!("{u}/chef/_search"),
        Some(&chef_search(major, "*:*", Some(fq), 1, 1)),
    )
    .await;
    assert_eq!(ids(&v), ["n2"]);
    // variant without filter, and OpenSearch's track_total_hits
    let mut b: Value = serde_json::from_str(&chef_search(
        major,
        "X_CHEF_database_CHEF_X:chef_o2",
        None,
        0,
        10,
    ))
    .unwrap();
    b["track_total_hits"] = json!(true);
    let (st, v) = call("POST", &format!("{u}/chef/_search"), Some(&b.to_string())).await;
    assert_eq!(st, 200);
    assert_eq!(ids(&v), ["m1"]);
    // data bag filter
    let (_, v) = call(
        "GET",
        &format!("{u}/chef/_search"),
        Some(&chef_search(
            major,
            "content:id__=__alice",
            Some(
                "+X_CHEF_database_CHEF_X:chef_o1 +X_CHEF_type_CHEF_X:data_bag_item +data_bag:users",
            ),
            0,
            10,
        )),
    )
    .await;
    assert_eq!(ids(&v), ["bag1"]);
    // bad query: ES-shaped 400
    let (st, v) = call(
        "GET",
        &format!("{u}/chef/_search"),
        Some(&chef_search(major, "content:(unclosed", Some(fq), 0, 10)),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["status"], 400);
    assert!(v["error"]["type"].is_string());
    // invalid JSON body: 400 too
    let (st, _) = call("GET", &format!("{u}/chef/_search"), Some("{not json")).await;
    assert_eq!(st, 400);

    // _count
    let (st, v) = call(
        "GET",
        &format!("{u}/chef/_count"),
        Some(&json!({"query": {"query_string": {"query": fq}}}).to_string()),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["count"], 3);

    // _doc get (from PostgreSQL)
    let (st, v) = call("GET", &format!("{u}/chef/_doc/n1"), None).await;
    assert_eq!(st, 200);
    assert_eq!(v["found"], true);
    assert_eq!(v["_source"]["X_CHEF_type_CHEF_X"], "node");
    let (st, v) = call("GET", &format!("{u}/chef/_doc/nope"), None).await;
    assert_eq!(st, 404);
    assert_eq!(v["found"], false);

    // delete by query (org deletion), then refresh: the org is empty, the other one intact.
    let dbq = if major >= 7 {
        json!({"query": {"query_string": {"query": "X_CHEF_database_CHEF_X:chef_o1"}}})
    } else {
        json!({"query": {"query_string": {"lowercase_expanded_terms": false, "query": "X_CHEF_database_CHEF_X:chef_o1"}}})
    };
    let (st, v) = call(
        "POST",
        &format!("{u}/chef/_delete_by_query"),
        Some(&dbq.to_string()),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted"], 4);
    call("POST", &format!("{u}/_refresh"), Some("")).await;
    let (_, v) = call("GET", &format!("{u}/chef/_count"), Some(&dbq.to_string())).await;
    assert_eq!(v["count"], 0);
    let (_, v) = call("GET", &format!("{u}/chef/_count"), None).await;
    assert_eq!(v["count"], 1);

    // health, other ES-shaped errors
    let (st, v) = call("GET", &format!("{u}/_cluster/health"), None).await;
    assert_eq!(st, 200);
    assert!(
        ["green", "yellow"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    let (st, v) = call("GET", &format!("{u}/other/_search"), Some("{}")).await;
    assert_eq!(st, 404);
    assert_es_error(&v, 404, "index_not_found_exception");
    let (st, v) = call(
        "POST",
        &format!("{u}/_bulk"),
        Some("{\"index\":{\"_index\":\"chef\",\"_id\":\"x\"}}\n"),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(v["status"], 400);

    // stats while running
    let stats = larder_search::index_stats(&svc.index_dir()).unwrap();
    assert_eq!(stats.documents, 1);
    assert!(stats.applied_position > 0 && stats.size_bytes > 0);

    // DELETE the index
    let (st, _) = call("DELETE", &format!("{u}/chef"), None).await;
    assert_eq!(st, 200);
    let (st, _) = call("GET", &format!("{u}/chef"), None).await;
    assert_eq!(st, 404);
    call("POST", &format!("{u}/_refresh"), None).await;
    let (_, v) = call("GET", &format!("{u}/chef/_count"), None).await;
    assert_eq!(v["count"], 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_for_each_major() {
    let pg = PgServer::start();
    for major in [5, 6, 7] {
        shapes_for(&pg, major).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_rebuilt_after_deleting_or_corrupting_it() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ixdir = dir.path().join("index");
    let cfg = config(pg.socket_target(), &ixdir, 7);
    let names: Vec<String> = (0..50).map(|i| format!("node{i:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();

    let svc = Service::start(cfg.clone()).await;
    let (st, v) = call(
        "POST",
        &format!("{}/_bulk", svc.url),
        Some(&bulk_body(7, &docs("o1", &name_refs))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    svc.stop().await;

    let count_is = |url: String, n: u64| async move {
        let (_, v) = call(
            "GET",
            &format!("{url}/chef/_search"),
            Some(&chef_search(7, "content:name__=__node*", None, 0, 1000)),
        )
        .await;
        (v["hits"]["total"]["value"] == json!(n)).then_some(v)
    };

    // 1. index directory deleted while stopped → rebuilt from PostgreSQL on start.
    std::fs::remove_dir_all(&ixdir).unwrap();
    let svc = Service::start(cfg.clone()).await;
    let v = eventually(30, "rebuilt index holding all 50 docs", || {
        count_is(svc.url.clone(), 50)
    })
    .await;
    assert_eq!(ids(&v), names);
    svc.stop().await;

    // 2. corrupt index (garbage meta.json) → rebuilt on start.
    std::fs::write(ixdir.join("meta.json"), b"{garbage").unwrap();
    let svc = Service::start(cfg.clone()).await;
    eventually(30, "index rebuilt after corruption", || {
        count_is(svc.url.clone(), 50)
    })
    .await;
    svc.stop().await;

    // 3. operator rebuild (offline).
    let stats = larder_search::rebuild_index(&cfg).await.unwrap();
    assert_eq!(stats.documents, 50);
    assert!(stats.applied_position >= 50);
    // ... refused while the service holds the index
    let svc = Service::start(cfg.clone()).await;
    assert!(larder_search::rebuild_index(&cfg).await.is_err());
    eventually(30, "index intact", || count_is(svc.url.clone(), 50)).await;
    svc.stop().await;
}

/// Many concurrent `_bulk` writers: a second service tailing the same log (as a follower's
/// does) must end up with every acknowledged document: positions never skip a late commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_nothing_skipped() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = Service::start(config(pg.target(), &dir.path().join("a"), 7)).await;
    let b = Service::start(config(pg.target(), &dir.path().join("b"), 7)).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let url = a.url.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..15 {
                let names: Vec<String> = (0..10).map(|i| format!("w{w}r{round:02}i{i}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let (st, v) = call(
                    "POST",
                    &format!("{url}/_bulk"),
                    Some(&bulk_body(7, &docs("o1", &refs))),
                )
                .await;
                assert_eq!(st, 200, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for svc in [&a, &b] {
        let (st, _) = call("POST", &format!("{}/_refresh", svc.url), None).await;
        assert_eq!(st, 200);
        let (_, v) = call("GET", &format!("{}/chef/_count", svc.url), None).await;
        assert_eq!(v["count"], 8 * 15 * 10, "{}", svc.url);
    }
    a.stop().await;
    b.stop().await;
}

/// Concurrent bulks over the same ids, through both services' connection pools (8 PostgreSQL
/// backends), in different orders, with deletes. Replaying every acknowledged item in `_seq_no`
/// (log position) order must reproduce each item's `result` (so positions follow commit order
/// and `created`/`updated`/`deleted`/`not_found` reflect what the write replaced), and both
/// indexes must end with exactly one document per live id, in its latest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_concurrent_bulks_commit_in_position_order() {
    overlapping_concurrent_bulks(SearchConfig::DEFAULT_BULK_PIECE_BYTES, 10).await;
}

/// The same with every document of a bulk in its own piece (`bulk_piece_bytes` = 1): the rows
/// of a bulk are then upserted in body order, one statement per document, so crossed bulks
/// deadlock and are redone in id order (`log::write_pieces`); the guarantees stay the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_concurrent_streamed_bulks_commit_in_position_order() {
    overlapping_concurrent_bulks(1, 4).await;
}

async fn overlapping_concurrent_bulks(piece_bytes: usize, rounds: usize) {
    const IDS: usize = 12;
    const WRITERS: usize = 6;
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = |name: &str| SearchConfig {
        bulk_piece_bytes: piece_bytes,
        ..config(pg.target(), &dir.path().join(name), 7)
    };
    let a = Service::start(cfg("a")).await;
    let b = Service::start(cfg("b")).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let url = if w % 2 == 0 { &a.url } else { &b.url }.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..rounds {
                // Each writer walks the ids in its own rotation and direction, so concurrent
                // bulks meet the same rows in different orders; some actions are deletes.
                let mut order: Vec<usize> = (0..IDS).map(|k| (k + w * 5 + round) % IDS).collect();
                if w % 3 == 1 {
                    order.reverse();
                }
                let mut body = String::new();
                for (j, k) in order.into_iter().enumerate() {
                    let id = format!("n{k:02}");
                    if (j + w + round) % 4 == 0 {
                        body.push_str(
                            &json!({"delete": {"_index": "chef", "_id": id}}).to_string(),
                        );
                        body.push('\n');
                    } else {
                        let content = format!("X_CHEF_id_CHEF_X__=__{id} ver__=__{id}w{w}r{round}");
                        body.push_str(&bulk_body(
                            7,
                            &[(id, "chef_o1".into(), "node".into(), content)],
                        ));
                    }
                }
                let (st, v) = call("POST", &format!("{url}/_bulk"), Some(&body)).await;
                assert_eq!(st, 200, "{v}");
                for item in v["items"].as_array().unwrap() {
                    let (op, r) = item.as_object().unwrap().iter().next().unwrap();
                    acked.push((
                        r["_seq_no"].as_i64().unwrap(),
                        r["_id"].as_str().unwrap().to_string(),
                        op == "index",
                        r["result"].as_str().unwrap().to_string(),
                        format!("ver__=__{}w{w}r{round}", r["_id"].as_str().unwrap()),
                    ));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_by_key(|x| x.0);
    let positions: std::collections::HashSet<i64> = acked.iter().map(|x| x.0).collect();
    assert_eq!(
        positions.len(),
        acked.len(),
        "every write has its own position"
    );
    let mut live: std::collections::HashMap<String, Option<String>> = Default::default();
    for (pos, id, is_index, result, version) in &acked {
        let was_live = live.get(id).is_some_and(Option::is_some);
        let expected = match (is_index, was_live) {
            (true, false) => "created",
            (true, true) => "updated",
            (false, true) => "deleted",
            (false, false) => "not_found",
        };
        assert_eq!(result, expected, "{id} at position {pos}");
        live.insert(id.clone(), is_index.then(|| version.clone()));
    }
    let latest: Vec<&String> = live.values().flatten().collect();
    assert!(
        !latest.is_empty() && latest.len() < IDS,
        "the test needs both live and deleted ids at the end: {latest:?}"
    );
    for svc in [&a, &b] {
        let (st, _) = call("POST", &format!("{}/_refresh", svc.url), None).await;
        assert_eq!(st, 200);
        let (_, v) = call("GET", &format!("{}/chef/_count", svc.url), None).await;
        assert_eq!(v["count"], latest.len(), "{}", svc.url);
        for version in &latest {
            let q = chef_search(7, &format!("content:{version}"), None, 0, 10);
            let (_, v) = call("POST", &format!("{}/chef/_search", svc.url), Some(&q)).await;
            assert_eq!(ids(&v).len(), 1, "{version} on {}: {v}", svc.url);
        }
    }
    a.stop().await;
    b.stop().await;
}

/// A log written by a version that stored `content` as plain text (no `content_z` column):
/// the service adds the column, indexes and serves the old rows from `content`, and stores new
/// writes compressed, returning them unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_of_the_plain_text_version_is_read_and_upgraded() {
    let pg = PgServer::start();
    let target = pg.target();
    let admin = larder_search::pg::connect(&target, "postgres")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {}", target.dbname))
        .await
        .unwrap();
    let c = larder_search::pg::connect(&target, &target.dbname)
        .await
        .unwrap();
    let old_content = larder_search::flatten_chef(
        "old1",
        "chef_o1",
        "node",
        &json!({"name": "old1", "roles": ["base"]}),
    );
    // The schema as the previous version created it.
    c.batch_execute(
        "CREATE TABLE search_meta (key text PRIMARY KEY, value text NOT NULL);
         INSERT INTO search_meta VALUES ('log_epoch', 'e-old');
         CREATE SEQUENCE search_pos;
         CREATE TABLE search_index_def (name text PRIMARY KEY, definition jsonb NOT NULL);
         INSERT INTO search_index_def VALUES ('chef', '{}');
         CREATE TABLE search_log (id text PRIMARY KEY, pos bigint NOT NULL,
             deleted boolean NOT NULL DEFAULT false, db text, type text, data_bag text,
             content text NOT NULL DEFAULT '');
         CREATE UNIQUE INDEX search_log_pos ON search_log (pos);",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO search_log (id, pos, db, type, content)
         VALUES ('old1', nextval('search_pos'), 'chef_o1', 'node', $1)",
        &[&old_content],
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(config(target, &dir.path().join("index"), 7)).await;
    let u = svc.url.clone();
    let new_content = "name__=__new1 odd  spacing__=__kept \u{e9}t\u{e9} ".to_string();
    let (st, v) = call(
        "POST",
        &format!("{u}/_bulk?refresh=true"),
        Some(&bulk_body(
            7,
            &[(
                "new1".to_string(),
                "chef_o1".to_string(),
                "node".to_string(),
                new_content.clone(),
            )],
        )),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = call(
        "GET",
        &format!("{u}/chef/_search"),
        Some(&chef_search(7, "content:name__=__*", None, 0, 10)),
    )
    .await;
    assert_eq!(ids(&v), vec!["new1".to_string(), "old1".to_string()]);
    for (id, content) in [("old1", &old_content), ("new1", &new_content)] {
        let (st, v) = call("GET", &format!("{u}/chef/_doc/{id}"), None).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["_source"]["content"], json!(content), "{id}");
    }
    let row = c
        .query_one(
            "SELECT content, content_z IS NOT NULL FROM search_log WHERE id = 'new1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "");
    assert!(row.get::<_, bool>(1), "new writes are stored compressed");
    svc.stop().await;
}
