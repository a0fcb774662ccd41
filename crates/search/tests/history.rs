//! An index that applied changes the log's history lost is rebuilt (see `generation.rs`).
//!
//! Real divergence on a real pair: an asynchronous standby is promoted while the old primary
//! goes on accepting a bulk that only it has (as a fenced leader's in-flight bulk survives in
//! its own crash recovery). The old primary's index is then pointed at the new primary's log,
//! as after pg_rewind or a fresh base backup of that node. The new primary's writes reuse
//! positions of the lost bulk; without the generation check the index skipped them and kept
//! the lost documents.

mod common;

use common::pg::PgServer;
use common::{bulk_body, call, chef_search, config, eventually, ids, node_docs as docs, Service};

async fn bulk(url: &str, prefix: &str, n: usize) {
    let (st, v) = call(
        "POST",
        &format!("{url}/_bulk?refresh=wait_for"),
        Some(&bulk_body(7, &docs(prefix, n))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["errors"], false, "{v}");
}

async fn found(url: &str, prefix: &str) -> usize {
    let (st, v) = call(
        "GET",
        &format!("{url}/chef/_search"),
        Some(&chef_search(
            7,
            &format!("content:name__=__{prefix}*"),
            None,
            0,
            1000,
        )),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    ids(&v).len()
}

async fn count(url: &str) -> u64 {
    let (_, v) = call("GET", &format!("{url}/chef/_count"), None).await;
    v["count"].as_u64().unwrap_or(u64::MAX)
}

async fn max_pos(pg: &PgServer) -> i64 {
    let c = larder_search::pg::connect(&pg.target(), "larder_search")
        .await
        .unwrap();
    c.query_one("SELECT coalesce(max(pos), 0) FROM search_log", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_holding_changes_of_a_lost_history_is_rebuilt_from_the_new_one() {
    let primary = PgServer::start();
    let standby = PgServer::standby_of(&primary);
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("old-primary");
    let old = Service::start(config(primary.target(), &index_dir, 7)).await;

    bulk(&old.url, "common-", 30).await;
    let common_top = max_pos(&primary).await;
    eventually(60, "standby replaying the common history", || async {
        let c = larder_search::pg::connect(&standby.target(), "larder_search")
            .await
            .ok()?;
        let row = c
            .query_one("SELECT coalesce(max(pos), 0) FROM search_log", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == common_top).then_some(())
    })
    .await;

    // The standby becomes the new primary; the old one, not yet fenced, acknowledges a bulk
    // that only it will ever have.
    standby.promote();
    bulk(&old.url, "lost-", 40).await;
    assert_eq!(count(&old.url).await, 70);
    let lost_top = max_pos(&primary).await;
    old.stop().await;

    // The old primary's node now holds the new primary's history (rewound or rebuilt): its
    // index, with the lost bulk applied, follows that log.
    let moved = Service::start(config(standby.target(), &index_dir, 7)).await;
    bulk(&moved.url, "new-", 40).await;
    let new_top = max_pos(&standby).await;
    let reused = {
        let c = larder_search::pg::connect(&standby.target(), "larder_search")
            .await
            .unwrap();
        let row = c
            .query_one(
                "SELECT count(*) FROM search_log WHERE id LIKE 'new-%' AND pos <= $1",
                &[&lost_top],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    // The scenario this test is about: the new history reuses the lost bulk's positions.
    assert!(
        reused > 0,
        "no reused positions (common {common_top}, lost up to {lost_top}, new up to {new_top})"
    );
    eventually(60, "the index rebuilt on the new history", || async {
        (count(&moved.url).await == 70).then_some(())
    })
    .await;
    assert_eq!(found(&moved.url, "lost-").await, 0);
    assert_eq!(found(&moved.url, "new-").await, 40);
    assert_eq!(found(&moved.url, "common-").await, 30);

    // The generation is recorded: a restart does not rebuild again, and later writes arrive.
    moved.stop().await;
    let again = Service::start(config(standby.target(), &index_dir, 7)).await;
    bulk(&again.url, "later-", 5).await;
    assert_eq!(count(&again.url).await, 75);
    let meta = larder_search::index::commit_meta(&tantivy::Index::open_in_dir(&index_dir).unwrap())
        .unwrap();
    assert_eq!(meta.log_generation, 2, "{meta:?}");
    again.stop().await;
}
