//! A full disk under the search index: the indexer's commit fails with ENOSPC, which leaves
//! tantivy's writer unusable. The service must stop (so that the agent's supervisor restarts
//! it) instead of serving on from an index that no longer follows the change log; started again
//! once there is space, it finds every document `_bulk` acknowledged meanwhile.
//! Needs root: the index lives on a small tmpfs the test mounts.

mod common;

use common::pg::PgServer;
use common::{bulk_body, call, config, eventually, node_docs as docs, Service};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `mb` MiB at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mb: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            // The last partial chunk may have fitted: take the remaining bytes too.
            let _ = f.write_all(&[0u8; 4096]);
            return;
        }
    }
}

async fn count(url: &str) -> Option<u64> {
    let (_, v) = call("GET", &format!("{url}/chef/_count"), None).await;
    v["count"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_out_of_space_stops_the_service_and_a_restart_catches_up() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("disk");
    let _fs = Tmpfs::mount(&mnt, 32);
    let cfg = config(pg.target(), &mnt.join("index"), 7);

    let mut svc = Service::start(cfg.clone()).await;
    let (st, v) = call(
        "POST",
        &format!("{}/_bulk?refresh=wait_for", svc.url),
        Some(&bulk_body(7, &docs("before-", 50))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(count(&svc.url).await, Some(50));

    fill(&mnt.join("filler"));
    // Writes go on (PostgreSQL has space); the index cannot commit them.
    let mut acked = 50u64;
    let mut batch = 0;
    let ended = loop {
        if let Some(r) = svc.ended_within(1).await {
            break r;
        }
        assert!(
            batch < 60,
            "the service kept running with an index that cannot commit"
        );
        let (st, v) = call(
            "POST",
            &format!("{}/_bulk", svc.url),
            Some(&bulk_body(7, &docs(&format!("full{batch:02}-"), 20))),
        )
        .await;
        if st == 200 && v["errors"] == false {
            acked += 20;
        }
        batch += 1;
    };
    let err = ended.expect_err("the service must stop with the indexer's error");
    assert!(
        err.to_string().contains("No space left on device"),
        "the error names the cause: {err}"
    );
    assert!(
        acked > 50,
        "no write was acknowledged while the disk was full"
    );

    std::fs::remove_file(mnt.join("filler")).unwrap();
    let svc = Service::start(cfg).await;
    let url = svc.url.clone();
    eventually(
        60,
        "every acknowledged document searchable after the restart",
        || {
            let url = url.clone();
            async move { (count(&url).await == Some(acked)).then_some(()) }
        },
    )
    .await;
    svc.stop().await;
}
