//! Keeps etcd's raft leader off the node that holds Larder's leadership.
//!
//! When the node that dies hosts both leaders, the cluster pays twice: etcd first elects a new
//! raft leader (one election timeout or more), and a new raft leader extends every lease by
//! another election timeout before it expires any — only then does the leader key lapse. With
//! the raft leader elsewhere, losing the Larder leader's node costs only the rest of its lease.
//! The price is that the Larder leader's lease renewals now cross the network and pause while
//! etcd elects a new raft leader after losing a *follower* node; the fencing margin check
//! (`leader_ttl_seconds` − `fence_margin_ms` well above an etcd election) covers that pause.

use crate::dcs::{Dcs, DcsError};

/// If the member at `local_url` is the raft leader, hand raft leadership to another voting
/// member that answers. Returns the name of the new raft leader when a transfer happened.
pub async fn move_raft_leader_away(dcs: &Dcs, local_url: &str) -> Result<Option<String>, DcsError> {
    let (me, leader) = dcs.member_raft_status(local_url).await?;
    if me == 0 || me != leader {
        return Ok(None);
    }
    let members = dcs.members().await?;
    for m in members.iter().filter(|m| m.id != me && !m.learner) {
        let Some(url) = m.client_urls.first() else {
            continue;
        };
        // Only a member that answers right now; a transfer to a dead one would just time out.
        if !matches!(dcs.member_raft_status(url).await, Ok((id, l)) if id == m.id && l == me) {
            continue;
        }
        dcs.move_leader(local_url, m.id).await?;
        return Ok(Some(m.name.clone()));
    }
    Ok(None)
}
