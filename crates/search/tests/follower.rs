//! Leader/follower behaviour on a real streaming-replication pair (pg_basebackup -R standby,
//! synchronous replication): the follower waits for the replicated database, answers reads
//! from its own index, refuses writes with an ES-shaped 503; after the primary crashes and the
//! standby is promoted, the new leader's index holds every document `_bulk` acknowledged, and
//! it accepts writes.

mod common;

use common::pg::PgServer;
use common::{bulk_body, call, chef_search, config, eventually, ids, node_docs as docs, Service};

async fn count(url: &str) -> u64 {
    let (_, v) = call("GET", &format!("{url}/chef/_count"), None).await;
    v["count"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_refuses_writes_and_takes_over_after_failover() {
    let mut primary = PgServer::start();
    let standby = PgServer::standby_of(&primary);
    {
        let c = larder_search::pg::connect(&primary.target(), "postgres")
            .await
            .unwrap();
        c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await
            .unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        eventually(30, "synchronous standby", || {
            let c = &c;
            async move {
                let rows = c
                    .query("SELECT sync_state FROM pg_stat_replication", &[])
                    .await
                    .ok()?;
                rows.iter()
                    .any(|r| r.get::<_, &str>(0) == "sync")
                    .then_some(())
            }
        })
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    // The follower starts first: its database does not exist yet; it must wait, not crash.
    let follower = Service::start_unready(config(standby.target(), &dir.path().join("f"), 7)).await;
    let (st, v) = call("GET", &format!("{}/_cluster/health", follower.url), None).await;
    assert_eq!(st, 200, "{v}");
    let leader = Service::start(config(primary.target(), &dir.path().join("l"), 7)).await;

    // Acknowledged writes on the leader.
    for batch in 0..4 {
        let (st, v) = call(
            "POST",
            &format!("{}/_bulk", leader.url),
            Some(&bulk_body(7, &docs(&format!("b{batch}-"), 50))),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }

    // The follower's own index catches up from the replicated log.
    eventually(60, "follower index holding 200 docs", || async {
        (count(&follower.url).await == 200).then_some(())
    })
    .await;
    let (st, v) = call(
        "GET",
        &format!("{}/chef/_search", follower.url),
        Some(&chef_search(7, "content:name__=__b1-000*", None, 0, 100)),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(ids(&v).len(), 10);
    let (st, _) = call("GET", &format!("{}/chef", follower.url), None).await;
    assert_eq!(st, 200);
    let (_, h) = call("GET", &format!("{}/_cluster/health", follower.url), None).await;
    assert_eq!(h["larder"]["role"], "follower", "{h}");

    // Writes to the follower: ES-shaped 503.
    let (st, v) = call(
        "POST",
        &format!("{}/_bulk", follower.url),
        Some(&bulk_body(7, &docs("nope", 1))),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["status"], 503);
    assert_eq!(
        v["error"]["reason"],
        "this node is a follower; send writes to the leader"
    );
    assert!(v["error"]["type"].is_string());
    let (st, _) = call(
        "DELETE",
        &format!("{}/chef/_doc/b0-0001", follower.url),
        None,
    )
    .await;
    assert_eq!(st, 503);
    let (st, _) = call(
        "POST",
        &format!("{}/chef/_delete_by_query", follower.url),
        Some(r#"{"query":{"match_all":{}}}"#),
    )
    .await;
    assert_eq!(st, 503);

    // More acknowledged writes, then the primary crashes right after them.
    let (st, v) = call(
        "POST",
        &format!("{}/_bulk", leader.url),
        Some(&bulk_body(7, &docs("last-", 25))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    leader.stop().await;
    primary.crash();
    standby.promote();

    // The promoted node's service notices its role and holds every acknowledged document.
    eventually(
        60,
        "new leader index holding all 225 acknowledged docs",
        || async { (count(&follower.url).await == 225).then_some(()) },
    )
    .await;
    let v = eventually(30, "new leader accepting writes", || async {
        let (st, v) = call(
            "POST",
            &format!("{}/_bulk?refresh=wait_for", follower.url),
            Some(&bulk_body(7, &docs("after-", 5))),
        )
        .await;
        (st == 200).then_some(v)
    })
    .await;
    assert_eq!(v["errors"], false);
    assert_eq!(count(&follower.url).await, 230);
    follower.stop().await;
}
