//! Streamed writes of the change log (`log::write_pieces`) against a real PostgreSQL: pieces
//! committed only with `End`, and two streamed writes that wait for each other's rows both
//! still commit, once each, in position order, without waiting for the deadlock detector.

mod common;

use common::pg::PgServer;
use larder_search::log::{self, Change, Piece};
use larder_search::pg;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::Client;

fn index(id: &str, text: &str) -> Change {
    Change::Index {
        id: id.into(),
        database: Some("chef_o".into()),
        object_type: Some("node".into()),
        data_bag: None,
        content_z: larder_search::codec::encode_content(text),
    }
}

fn piece(changes: Vec<Change>) -> Piece {
    Piece::Rows(log::prepare(changes))
}

async fn setup() -> (PgServer, larder_search::PgTarget) {
    let server = PgServer::start();
    let target = server.target();
    pg::ensure_database(&target).await.unwrap();
    let c = pg::connect(&target, &target.dbname).await.unwrap();
    log::ensure_schema(&c).await.unwrap();
    (server, target)
}

/// Waits until another transaction holds the row lock of `id` (what a streamed write's upsert
/// leaves until it commits): a `FOR UPDATE NOWAIT` from here then fails.
async fn wait_row_locked(c: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .query(
                "SELECT 1 FROM search_log WHERE id = $1 FOR UPDATE NOWAIT",
                &[&id],
            )
            .await;
        match r {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                return
            }
            // Not written yet (no row), or written and not locked: look again.
            _ => {
                assert!(Instant::now() < deadline, "row {id} never got locked");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn live_row(c: &Client, id: &str) -> Option<(i64, String)> {
    let row = c
        .query_opt(
            "SELECT pos, content_z FROM search_log WHERE id = $1 AND NOT deleted",
            &[&id],
        )
        .await
        .unwrap()?;
    let z: Vec<u8> = row.get(1);
    Some((row.get(0), larder_search::codec::decode(&z).unwrap()))
}

#[tokio::test]
async fn pieces_without_end_leave_nothing() {
    let (_server, target) = setup().await;
    let mut c = pg::connect(&target, &target.dbname).await.unwrap();
    let (tx, mut rx) = mpsc::channel(4);
    tx.send(piece(vec![index("b", "k__=__2")])).await.unwrap();
    drop(tx); // the parser gave up (malformed body): no End
    let first = piece(vec![index("a", "k__=__1")]);
    let r = log::write_pieces(&mut c, first, &mut rx).await.unwrap();
    assert!(r.is_none(), "an unfinished batch must not be committed");
    let check = pg::connect(&target, &target.dbname).await.unwrap();
    assert_eq!(live_row(&check, "a").await, None);
    assert_eq!(live_row(&check, "b").await, None);
    // The connection is usable again (its transaction was rolled back) and a finished batch
    // commits every piece; an id written in two pieces keeps the later version.
    let (tx, mut rx) = mpsc::channel(4);
    tx.send(piece(vec![index("b", "k__=__2"), index("a", "k__=__3")]))
        .await
        .unwrap();
    tx.send(Piece::End).await.unwrap();
    let applied = log::write_pieces(&mut c, piece(vec![index("a", "k__=__1")]), &mut rx)
        .await
        .unwrap()
        .unwrap();
    let created: Vec<bool> = applied.iter().map(|a| a.existed).collect();
    assert_eq!(
        created,
        vec![false, false, true],
        "a created, b created, a updated"
    );
    assert_eq!(live_row(&check, "a").await.unwrap().1, "k__=__3");
    assert_eq!(live_row(&check, "b").await.unwrap().1, "k__=__2");
}

#[tokio::test]
async fn crossed_streamed_writes_both_commit_without_a_deadlock() {
    let (_server, target) = setup().await;
    let check = pg::connect(&target, &target.dbname).await.unwrap();
    let deadlocks = || async {
        check
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = deadlocks().await;
    // Both rows exist already: a row inserted by an uncommitted transaction is invisible to
    // `wait_row_locked`, an updated one is locked.
    {
        let mut c = pg::connect(&target, &target.dbname).await.unwrap();
        log::write(&mut c, &[index("x", "v__=__0"), index("y", "v__=__0")])
            .await
            .unwrap();
    }
    let (tx_a, mut rx_a) = mpsc::channel(4);
    let (tx_b, mut rx_b) = mpsc::channel(4);
    let mut ca = pg::connect(&target, &target.dbname).await.unwrap();
    let mut cb = pg::connect(&target, &target.dbname).await.unwrap();
    // A writes x then y, B writes y then x: each first piece is upserted (rows locked) before
    // the second pieces are sent, so the two transactions wait for each other.
    let a = tokio::spawn(async move {
        let r = log::write_pieces(&mut ca, piece(vec![index("x", "v__=__a")]), &mut rx_a).await;
        r.unwrap().unwrap()
    });
    wait_row_locked(&check, "x").await;
    let b = tokio::spawn(async move {
        let r = log::write_pieces(&mut cb, piece(vec![index("y", "v__=__b")]), &mut rx_b).await;
        r.unwrap().unwrap()
    });
    wait_row_locked(&check, "y").await;
    tx_a.send(piece(vec![index("y", "v__=__a")])).await.unwrap();
    tx_b.send(piece(vec![index("x", "v__=__b")])).await.unwrap();
    tx_a.send(Piece::End).await.unwrap();
    tx_b.send(Piece::End).await.unwrap();
    let (ra, rb) = (a.await.unwrap(), b.await.unwrap());
    // The lock timeout of streamed writes (50 ms) broke the cycle long before PostgreSQL's
    // deadlock detector (1 s) would have.
    assert_eq!(
        deadlocks().await,
        before,
        "no deadlock reached the detector"
    );
    // Both committed. Positions: all of A's above all of B's or the reverse (each write
    // commits its rows at once, in commit order).
    let (max_a, min_a) = (
        ra.iter().map(|x| x.pos).max(),
        ra.iter().map(|x| x.pos).min(),
    );
    let (max_b, min_b) = (
        rb.iter().map(|x| x.pos).max(),
        rb.iter().map(|x| x.pos).min(),
    );
    let a_last = min_a > max_b;
    assert!(a_last || min_b > max_a, "{ra:?} {rb:?}");
    // The later write's versions are the live ones, at its positions.
    let (x, y) = (
        live_row(&check, "x").await.unwrap(),
        live_row(&check, "y").await.unwrap(),
    );
    let last = if a_last { "a" } else { "b" };
    assert_eq!(x.1, format!("v__=__{last}"));
    assert_eq!(y.1, format!("v__=__{last}"));
    let last_r = if a_last { &ra } else { &rb };
    assert!(last_r.iter().any(|p| p.pos == x.0) && last_r.iter().any(|p| p.pos == y.0));
    // Every change updated a live row ("updated", not "created").
    assert!(ra.iter().chain(&rb).all(|p| p.existed), "{ra:?} {rb:?}");
    assert_eq!((ra.len(), rb.len()), (2, 2));
}
