//! Real client libraries from PyPI (`elasticsearch7`, `opensearch-py`) doing bulk, search,
//! count, get and delete (single and by query) against the search service on real PostgreSQL.
//!
//! The interpreter comes from `LARDER_TEST_PYTHON` (scripts/test.sh makes a venv with
//! crates/search/tests/requirements.txt and sets it). Unset means this test fails: it never
//! passes without having run the clients.

mod common;

use common::pg::PgServer;
use common::{config, Service};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_libraries() {
    let python = std::env::var("LARDER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LARDER_TEST_PYTHON is not set: run scripts/test.sh, which creates a venv with \
             crates/search/tests/requirements.txt and points LARDER_TEST_PYTHON at its python"
        )
    });
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(config(pg.target(), &dir.path().join("index"), 7)).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/chef_client_check.py"
    );
    for flavor in ["elasticsearch7", "opensearch"] {
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&python)
                .arg(script)
                .arg(flavor)
                .arg(&svc.url)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{flavor} client check timed out"))
        .expect("run python");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{flavor} client check failed:\n{text}"
        );
        assert!(text.contains(&format!("{flavor}: ok")), "{text}");
    }
    svc.stop().await;
}
