//! Lease renewals: a task of their own sends keep-alives; the loop applies their answers.

use super::*;

/// What the renewer saw: a keep-alive of lease `id` sent at `sent`, which etcd answered with
/// `ttl_s` seconds (`0`: the lease is gone, whatever our clock says).
#[derive(Debug, Clone, Copy)]
pub(super) struct Renewal {
    pub(super) id: i64,
    pub(super) sent: Instant,
    pub(super) ttl_s: i64,
}

/// Renew the leader lease (if held) every `interval`, in its own task: a renewal must never
/// wait behind the HA loop's other etcd calls, which on a slow network can together take
/// longer than the fencing deadline leaves (`/leader` would flap to 503 in between). The
/// renewer only reads which lease is held; it reports each answer to the loop, which alone
/// changes leadership state (`apply_renewal`, run concurrently with the loop's work).
pub(super) async fn renew_lease_forever(
    dcs: Dcs,
    state: tokio::sync::watch::Receiver<Snapshot>,
    interval: Duration,
    renewals: tokio::sync::mpsc::Sender<Renewal>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let lease = state.borrow().lease;
        if let Some(l) = lease {
            let sent = Instant::now();
            match dcs.lease_keep_alive(l.id).await {
                Ok(ttl_s) => {
                    let r = Renewal {
                        id: l.id,
                        sent,
                        ttl_s,
                    };
                    if renewals.send(r).await.is_err() {
                        return; // the loop is gone
                    }
                }
                Err(e) => tracing::warn!("lease renewal failed: {e}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval.saturating_sub(started.elapsed())) => {}
        }
    }
}

/// The loop's side of a renewal: move the fencing deadline of the lease still held (never
/// backwards), or end it at once when etcd says the lease is gone.
pub(super) fn apply_renewal(
    state: &tokio::sync::watch::Sender<Snapshot>,
    r: Renewal,
    margin: Duration,
) {
    state.send_if_modified(|s| {
        let Some(cur) = s.lease.as_mut() else {
            return false;
        };
        if cur.id != r.id {
            return false; // an answer about a lease given up meanwhile
        }
        let deadline = if r.ttl_s > 0 {
            lease::fence_deadline(r.sent, Duration::from_secs(r.ttl_s as u64), margin)
                .max(cur.fence_deadline)
        } else {
            r.sent
        };
        let moved = deadline != cur.fence_deadline;
        cur.fence_deadline = deadline;
        moved
    });
}
