//! The timeline a standby reports with its position, which elections compare first: after a
//! restart it must be the timeline of the WAL it holds, not the one of its last restartpoint.
//! Real PostgreSQL 15 servers (the search tests' harness), no agent and no etcd.

#[path = "../../search/tests/common/pg.rs"]
mod pg;

use larder_agent::postgres::{observe, Observer};
use larder_core::model::PgState;
use pg::PgServer;
use std::time::{Duration, Instant};

async fn client(s: &PgServer) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            s.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    c
}

async fn one(s: &PgServer, sql: &str) -> String {
    let c = client(s).await;
    let row = c.query_one(sql, &[]).await.expect(sql);
    row.get::<_, Option<String>>(0).unwrap_or_default()
}

async fn exec(s: &PgServer, sql: &str) {
    client(s).await.batch_execute(sql).await.expect(sql);
}

/// Waits until `standby` has replayed `lsn` on timeline `tli` (as its WAL receiver says).
async fn wait_replayed(standby: &PgServer, lsn: &str, tli: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = one(
            standby,
            &format!(
                "SELECT (pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn
                         AND coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0) = {tli})::text"
            ),
        )
        .await;
        if done == "true" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "standby did not replay {lsn} on timeline {tli}: {}",
            standby.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_restarted_standby_reports_the_timeline_of_the_wal_it_holds() {
    let mut old = PgServer::start();
    let new = PgServer::standby_of(&old);
    let mut follower = PgServer::standby_of(&old);
    exec(
        &old,
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000)",
    )
    .await;
    let end = one(&old, "SELECT pg_current_wal_lsn()::text").await;
    wait_replayed(&new, &end, 1).await;
    wait_replayed(&follower, &end, 1).await;

    // A switchover: the old primary stops, `new` is promoted (timeline 2) and `follower`
    // follows it, as a Larder follower does, without a restartpoint of its own in between.
    old.stop();
    new.promote();
    exec(
        &follower,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres'",
            new.port
        ),
    )
    .await;
    exec(&follower, "SELECT pg_reload_conf()").await;
    exec(&new, "INSERT INTO t SELECT generate_series(1, 20000)").await;
    let end = one(&new, "SELECT pg_current_wal_lsn()::text").await;
    wait_replayed(&follower, &end, 2).await;
    let before = one(
        &follower,
        "SELECT (SELECT timeline_id FROM pg_control_checkpoint())::text",
    )
    .await;

    // The whole node restarts (power loss) and comes back as a standby without upstream, as
    // the agent starts it before an election.
    exec(&follower, "ALTER SYSTEM SET primary_conninfo = ''").await;
    follower.crash();
    follower.restart();
    let o = Observer::prepare(client(&follower).await)
        .await
        .expect("prepare");
    let seen = observe(&o).await.expect("observe");
    assert_eq!(seen.state, PgState::Standby);
    let end_lsn = larder_core::model::Lsn::parse(&end).expect("lsn");
    assert!(seen.position.lsn >= end_lsn, "{seen:?} before {end}");
    assert_eq!(
        seen.position.timeline, 2,
        "the follower holds timeline 2's WAL up to {} (its last restartpoint says timeline {before}); observed {:?}",
        end, seen.position
    );
}
