//! The leader lease's clock arithmetic, written once. The agent's renewer, its acquire and
//! force-leader paths, `/leader`, the PostgreSQL pre-start hook and the status it posts all use
//! these, so the fencing argument (docs/architecture.md, "Fencing") has exactly one formula.

use std::ops::{Add, Sub};
use std::time::Duration;

/// The instant after which the holder must no longer accept writes: the moment the renewal
/// (or grant) that etcd confirmed was *sent*, plus the TTL etcd confirmed, minus the margin.
/// etcd counts the TTL from when it received the request, so its lease cannot expire earlier.
pub fn fence_deadline<T: Add<Duration, Output = T> + Sub<Duration, Output = T>>(
    sent: T,
    ttl: Duration,
    margin: Duration,
) -> T {
    sent + ttl - margin
}

/// Whether a lease with this fencing deadline still allows writes at `now`.
pub fn is_live<T: PartialOrd>(fence_deadline: T, now: T) -> bool {
    now < fence_deadline
}

/// Earliest wall-clock time (unix ms) at which etcd may expire the lease, as posted for other
/// nodes: the fencing deadline plus the margin, translated from the monotonic clock.
pub fn expires_unix_ms(remaining_to_deadline: Duration, margin: Duration, now_unix_ms: u64) -> u64 {
    now_unix_ms + (remaining_to_deadline + margin).as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn deadline_is_sent_plus_ttl_minus_margin() {
        let t = Instant::now();
        let d = fence_deadline(t, Duration::from_secs(3), Duration::from_millis(1000));
        assert_eq!(d - t, Duration::from_millis(2000));
        assert!(is_live(d, t));
        assert!(!is_live(d, d), "at the deadline writes stop");
    }

    #[test]
    fn posted_expiry_adds_the_margin_back() {
        assert_eq!(
            expires_unix_ms(
                Duration::from_millis(500),
                Duration::from_millis(1000),
                10_000
            ),
            11_500
        );
    }
}
