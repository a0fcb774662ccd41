//! Running async Rust code inside a test host's network namespace.
//!
//! The network namespace is per OS thread, so a dedicated thread enters the namespace and
//! runs its own single-threaded tokio runtime. Sockets it opens stay in that namespace.

use std::future::Future;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::netns;

/// Spawns a thread in namespace `ns` that runs `make()`'s future to completion.
pub fn spawn<F, Fut, T>(ns: &str, name: &str, make: F) -> Result<JoinHandle<Result<T>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            netns::enter_thread(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("tokio runtime", e))?;
            rt.block_on(make())
        })
        .map_err(|e| Error::io("thread spawn", e))
}

/// Runs a future in namespace `ns` and waits for it (setup and final reads).
pub fn block_on<F, Fut, T>(ns: &str, make: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    spawn(ns, "in-netns", make)?
        .join()
        .map_err(|_| Error::Invalid("thread in namespace panicked".into()))?
}
