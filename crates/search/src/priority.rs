//! Scheduling of the index-side threads (indexer, decoder, and tantivy's indexing and merge
//! threads): background work that must neither slow down what clients wait for nor starve.
//!
//! They run at nice [`INDEXER_NICE`] and, on Linux, normally under the `SCHED_IDLE` policy:
//! only on CPU time no normal thread wants. Niceness alone still let them take about a third of
//! a busy 2-core node during a bulk load (a nice-10 thread keeps ~10 % of a contended core and
//! every gap of the request path), ~10 % of durable `_bulk` throughput (docs/benchmarks.md,
//! run 5). But under `SCHED_IDLE` a node whose CPUs stay saturated would never index, so
//! [`supervise`] moves them back to the normal policy (still nice 10) while a reader waits for
//! the index (`_refresh`, `?refresh=`) or once the index has lagged behind the log for
//! [`STARVING_AFTER`], and back to `SCHED_IDLE` when neither holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Niceness of the index-side threads.
pub const INDEXER_NICE: i32 = 10;
/// How long the index may lag behind the log before its threads leave `SCHED_IDLE`.
pub const STARVING_AFTER: Duration = Duration::from_secs(60);
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Puts the calling thread (and the threads it creates later, which inherit both) in the
/// background: niceness [`INDEXER_NICE`] and `SCHED_IDLE`.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        // Niceness is per thread on Linux (PRIO_PROCESS with a thread id).
        unsafe {
            if libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) < INDEXER_NICE {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, INDEXER_NICE);
            }
        }
        if !set_idle(tid, true) {
            tracing::debug!("SCHED_IDLE refused for an index thread; nice {INDEXER_NICE} only");
        }
    }
}

#[cfg(target_os = "linux")]
fn set_idle(tid: libc::pid_t, idle: bool) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Moves every index-side thread of this process (recognised by their niceness, which nothing
/// else here uses) to `SCHED_IDLE` or back to the normal policy. Returns how many moved.
#[cfg(target_os = "linux")]
fn set_index_threads_idle(idle: bool) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut moved = 0;
    for t in tasks.flatten() {
        let Some(tid) = t
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        if nice == INDEXER_NICE && set_idle(tid, idle) {
            moved += 1;
        }
    }
    moved
}

#[cfg(not(target_os = "linux"))]
fn set_index_threads_idle(_idle: bool) -> usize {
    0
}

/// What decides the policy: the reader-waiting flag, and how far the index is behind.
pub struct Signals {
    /// Set while a reader waits for the index (cleared by the indexer's next commit).
    pub flush: Arc<AtomicBool>,
    /// The tailer's state: the highest position it has seen in the log.
    pub shared: Arc<crate::tailer::Shared>,
    /// Position the index has applied and committed.
    pub applied: watch::Receiver<i64>,
}

/// The policy [`supervise`] wants: idle unless a reader waits or the index has been behind
/// since `behind_since` for [`STARVING_AFTER`] or more.
pub fn want_idle(reader_waits: bool, behind_since: Option<Instant>, now: Instant) -> bool {
    !reader_waits && behind_since.is_none_or(|t| now.saturating_duration_since(t) < STARVING_AFTER)
}

/// Runs until `stop`: applies [`want_idle`] to the index-side threads on every change.
pub async fn supervise(s: Signals, stop: CancellationToken) {
    let mut idle = true;
    let mut behind_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let behind = s.shared.fetched.load(Ordering::Relaxed) > *s.applied.borrow();
        behind_since = if behind {
            behind_since.or(Some(now))
        } else {
            None
        };
        let want = want_idle(s.flush.load(Ordering::Relaxed), behind_since, now);
        if want != idle {
            let moved = set_index_threads_idle(want);
            tracing::debug!(
                idle = want,
                threads = moved,
                "index threads' scheduling policy changed"
            );
            idle = want;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_unless_a_reader_waits_or_the_index_starves() {
        let now = Instant::now();
        assert!(want_idle(false, None, now));
        assert!(!want_idle(true, None, now));
        assert!(want_idle(false, Some(now - Duration::from_secs(5)), now));
        assert!(!want_idle(false, Some(now - STARVING_AFTER), now));
        assert!(!want_idle(true, Some(now), now));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn index_threads_move_between_policies() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            lower_thread_priority();
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
            ready_tx.send(tid).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = ready_rx.recv().unwrap();
        let policy = || unsafe { libc::sched_getscheduler(tid) };
        assert_eq!(policy(), libc::SCHED_IDLE);
        assert!(set_index_threads_idle(false) >= 1);
        assert_eq!(policy(), libc::SCHED_OTHER);
        assert_eq!(
            unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) },
            INDEXER_NICE,
            "still in the background by niceness"
        );
        assert!(set_index_threads_idle(true) >= 1);
        assert_eq!(policy(), libc::SCHED_IDLE);
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
