//! Request-body buffers kept for reuse.
//!
//! A `_bulk` body is megabytes (erchef flushes at ~5 MB; the benchmark sends 24 MB). Collected
//! into a fresh allocation each time, the kernel had to map and zero its pages on every request
//! and the buffer was regrown and copied while the body arrived: together about a seventh of the
//! service's CPU on the bulk benchmark. A few buffers are kept and refilled instead; what stays
//! allocated is bounded by `keep` times the largest body accepted.

use std::sync::Mutex;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool holding at most `keep` idle buffers.
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(v) if v.capacity() >= capacity => v,
            // Growing a reused buffer would copy its old allocation: start afresh.
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Returns a buffer for reuse (dropped when enough are idle).
    pub fn give(&self, mut v: Vec<u8>) {
        v.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_up_to_keep() {
        let pool = BufferPool::new(1);
        let mut a = pool.take(10);
        a.extend_from_slice(b"abc");
        let at = a.as_ptr();
        pool.give(a);
        pool.give(Vec::with_capacity(5));
        let b = pool.take(8);
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), at, "the idle buffer is handed out again");
        assert!(pool.take(1).capacity() >= 1);
        let c = pool.take(1 << 20);
        assert!(c.capacity() >= 1 << 20);
    }
}
