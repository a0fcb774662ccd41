//! Upgrade bookkeeping in etcd: the rolling upgrade's lock and the full-downtime upgrade's
//! down records. What they mean for leadership is decided by the core
//! (`larder_core::decide::upgrade`); this module checks the documented order and writes them.
//!
//! **Rolling** (`upgrade` on one node at a time): [`UpgradeLock`] under
//! [`keys::UPGRADE_LOCK`], created only if absent and bound to a lease the running `upgrade`
//! command keeps alive. It is held by the command, not by the agent, because the agent it
//! restarts may be the previous release, which has never heard of it. If the command dies the
//! lock lapses with its lease; if the node's rejoin fails verification the lock is made
//! permanent ([`LockGuard::keep_after_failure`]) so no other node is taken down while this one
//! is not serving, and only a later `upgrade` of the same node takes it back.
//!
//! **Full downtime** (`down-for-upgrade` leader first, then followers; `upgrade` followers
//! first, the old leader last): one [`DownForUpgrade`] per node, permanent until that node's
//! `upgrade` clears it.

use crate::clock::unix_ms;
use crate::dcs::{keys, Dcs};
use crate::node::Node;
use larder_core::decide::DcsView;
use larder_core::model::{DownForUpgrade, UpgradeLock};
use std::time::Duration;

/// The lock's lease: long enough to ride out a slow etcd, short enough that a dead `upgrade`
/// command does not block the next node for long.
pub const LOCK_TTL_S: i64 = 20;

async fn view(dcs: &Dcs, me: &str) -> anyhow::Result<DcsView> {
    let kvs = dcs.get_prefix(keys::PREFIX).await?;
    Ok(DcsView::from_kvs(
        kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        me,
    ))
}

fn names(down: &[&DownForUpgrade]) -> String {
    down.iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `down-for-upgrade` on this node: check the order (the leader goes first), then record it.
/// Returns whether this node led (the one that is upgraded last).
pub async fn record_down(dcs: &Dcs, node: &Node) -> anyhow::Result<bool> {
    let me = node.state.guid.as_str();
    let v = view(dcs, me).await?;
    if let Some(d) = v.down_for_upgrade.iter().find(|d| d.guid == me) {
        return Ok(d.was_leader);
    }
    if let Some(l) = &v.upgrade_lock {
        anyhow::bail!(
            "a rolling upgrade of {} is in progress; let its `larder upgrade` finish first",
            l.name
        );
    }
    // The node that leads now — or, with no leader at the moment, the one that led last.
    let lead = v.leader.clone().or(v.last_leader.clone());
    let was_leader = lead.as_ref().is_some_and(|l| l.guid == me);
    if let Some(l) = lead.filter(|l| l.guid != me) {
        if !v.down_for_upgrade.iter().any(|d| d.guid == l.guid) {
            anyhow::bail!(
                "{} is the leader and is not down for upgrade yet: run `larder down-for-upgrade` on {} first (the order is the leader, then each follower); nothing was changed",
                l.name,
                l.name
            );
        }
    }
    let rec = DownForUpgrade {
        guid: me.to_string(),
        name: node.cfg.fqdn.clone(),
        was_leader,
        since_unix_ms: unix_ms(),
        returning: false,
    };
    dcs.put(
        &keys::down_for_upgrade(me),
        &serde_json::to_vec(&rec)?,
        None,
    )
    .await?;
    Ok(was_leader)
}

/// What the end of a full-downtime `upgrade` found for this node.
pub enum Return {
    /// It was not down for upgrade.
    NotDown,
    /// A follower: its record is gone; the message says what is left to do.
    Follower(String),
    /// The old leader: its record is marked `returning`; call [`finish_return`] once its
    /// position is posted.
    OldLeader,
}

/// The end of this node's `upgrade` after `down-for-upgrade`: check the order (the old leader
/// last); a follower's record is cleared, the old leader's marked `returning`.
pub async fn begin_return(dcs: &Dcs, node: &Node) -> anyhow::Result<Return> {
    let me = node.state.guid.as_str();
    let v = view(dcs, me).await?;
    let Some(mine) = v.down_for_upgrade.iter().find(|d| d.guid == me) else {
        return Ok(Return::NotDown);
    };
    let others: Vec<&DownForUpgrade> = v.down_for_upgrade.iter().filter(|d| d.guid != me).collect();
    if mine.was_leader {
        if !others.is_empty() {
            anyhow::bail!(
                "upgrade the followers first: {} (run `larder upgrade` on each), then this node, the old leader, last; nothing was changed",
                names(&others)
            );
        }
        let rec = DownForUpgrade {
            returning: true,
            ..mine.clone()
        };
        dcs.put(
            &keys::down_for_upgrade(me),
            &serde_json::to_vec(&rec)?,
            None,
        )
        .await?;
        return Ok(Return::OldLeader);
    }
    dcs.delete(&keys::down_for_upgrade(me)).await?;
    let followers: Vec<&DownForUpgrade> =
        others.iter().copied().filter(|d| !d.was_leader).collect();
    let leader = others.iter().find(|d| d.was_leader);
    Ok(Return::Follower(match (leader, followers.is_empty()) {
        (Some(l), true) => format!("next: `larder upgrade` on {} (the old leader)", l.name),
        (Some(l), false) => format!(
            "next: `larder upgrade` on {}, then on {} (the old leader) last",
            names(&followers),
            l.name
        ),
        (None, _) => "no node is down for upgrade any more".to_string(),
    }))
}

/// The old leader's position is posted: clear its record, which lets the election run.
pub async fn finish_return(dcs: &Dcs, node: &Node) -> anyhow::Result<()> {
    dcs.delete(&keys::down_for_upgrade(&node.state.guid))
        .await?;
    Ok(())
}

/// The rolling upgrade's lock, held while this value lives (a task keeps its lease alive).
pub struct LockGuard {
    dcs: Dcs,
    lease: i64,
    record: UpgradeLock,
    keeper: tokio::task::JoinHandle<()>,
}

/// Take the rolling upgrade's lock for this node, or say who holds it.
pub async fn acquire_lock(dcs: &Dcs, node: &Node) -> anyhow::Result<LockGuard> {
    let me = node.state.guid.clone();
    let record = UpgradeLock {
        guid: me.clone(),
        name: node.cfg.fqdn.clone(),
        started_unix_ms: unix_ms(),
    };
    let value = serde_json::to_vec(&record)?;
    let lease = dcs.lease_grant(LOCK_TTL_S).await?;
    let mut created = dcs.create(keys::UPGRADE_LOCK, &value, Some(lease)).await?;
    if !created {
        let holder: Option<UpgradeLock> = dcs
            .get(keys::UPGRADE_LOCK)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        match holder {
            // This node's own lock, left by an upgrade here that failed verification (or
            // whose command died moments ago): a new upgrade of this node takes it back.
            Some(h) if h.guid == me => {
                dcs.put(keys::UPGRADE_LOCK, &value, Some(lease)).await?;
                created = true;
            }
            Some(h) => {
                let _ = dcs.lease_revoke(lease).await;
                let ago = unix_ms().saturating_sub(h.started_unix_ms) / 1000;
                anyhow::bail!(
                    "{} is being upgraded (started {ago}s ago); upgrade one node at a time — two nodes down at once may lose data. Wait for its `larder upgrade` to finish (it releases the lock), then retry; nothing was changed",
                    h.name
                );
            }
            None => {}
        }
    }
    if !created {
        let _ = dcs.lease_revoke(lease).await;
        anyhow::bail!("could not take the upgrade lock (it changed meanwhile); retry");
    }
    let d = dcs.clone();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(LOCK_TTL_S as u64 / 4)).await;
            if let Err(e) = d.lease_keep_alive(lease).await {
                tracing::warn!("upgrade lock: keep-alive failed: {e}");
            }
        }
    });
    Ok(LockGuard {
        dcs: dcs.clone(),
        lease,
        record,
        keeper,
    })
}

impl LockGuard {
    /// The upgrade is verified: release the lock.
    pub async fn release(self) -> anyhow::Result<()> {
        self.keeper.abort();
        self.dcs
            .delete_if_lease(keys::UPGRADE_LOCK, self.lease)
            .await?;
        let _ = self.dcs.lease_revoke(self.lease).await;
        Ok(())
    }

    /// The rejoin did not verify: keep the lock without a lease, so no other node is taken
    /// down while this one is not serving; a later `upgrade` here takes it back.
    pub async fn keep_after_failure(self) -> anyhow::Result<()> {
        self.keeper.abort();
        self.dcs
            .put(keys::UPGRADE_LOCK, &serde_json::to_vec(&self.record)?, None)
            .await?;
        let _ = self.dcs.lease_revoke(self.lease).await;
        Ok(())
    }
}
