//! Publish: this node's status in etcd, bound to a status lease.

use super::*;

impl HaLoop {
    pub(super) async fn publish(
        &mut self,
        role: NodeRole,
        pg: &Option<PgObservation>,
        view: Option<&DcsView>,
    ) {
        let node = &self.node;
        let lease = match self.intent.status_lease {
            Some(id) => match self.dcs.lease_keep_alive(id).await {
                Ok(ttl) if ttl > 0 => Some(id),
                _ => None,
            },
            None => None,
        };
        let lease = match lease {
            Some(id) => id,
            None => {
                // Same TTL as leadership, so a dead node shows as offline as soon as its leadership
                // could have lapsed.
                let ttl = node.cfg.leaderl.leader_ttl_seconds as i64;
                match self.dcs.lease_grant(ttl).await {
                    Ok(id) => id,
                    Err(_) => return,
                }
            }
        };
        self.intent.status_lease = Some(lease);
        self.intent.seq += 1;
        let leader_seen = view.and_then(|v| v.leader.as_ref()).map(|l| l.guid.clone());
        let position = pg.as_ref().map(|p| p.position).unwrap_or_default();
        let lag = match (view.and_then(|v| v.leader.as_ref()), view) {
            (Some(l), Some(v)) if l.guid != node.state.guid => v
                .members
                .iter()
                .find(|m| m.guid == l.guid)
                .map(|lm| lm.position.lsn.0.saturating_sub(position.lsn.0)),
            _ => None,
        };
        let pg_state = match pg {
            Some(p) => p.state,
            None if postgres::has_data(node) => PgState::Stopped,
            None => PgState::Empty,
        };
        let failover = view.map(|v| v.node_failover).unwrap_or(true);
        let search_ok = self.sensors.search_ok();
        let check_phases = self.sensors.checks.lock().unwrap().phases(unix_ms());
        let lease_expires_unix_ms = {
            let lease = self.state.borrow().lease;
            lease.map(|l| {
                lease::expires_unix_ms(
                    l.fence_deadline.saturating_duration_since(Instant::now()),
                    Duration::from_millis(node.cfg.leaderl.fence_margin_ms),
                    unix_ms(),
                )
            })
        };
        let status = MemberStatus {
            guid: node.state.guid.clone(),
            name: node.cfg.fqdn.clone(),
            address: node.cfg.publish_address.clone(),
            role,
            pg: pg_state,
            position,
            eligible: larder_core::health::eligible(failover, pg_state),
            failover_enabled: failover,
            term: view.map(|v| v.term).unwrap_or(0),
            leader_seen,
            // Voting membership is persistent (etcd), not forgotten across agent restarts.
            voter: larder_core::health::voter(
                self.intent.voter,
                view.is_some_and(|v| v.voters.contains(&node.state.guid)),
            ),
            lag_bytes: lag,
            search_ok,
            etcd_ok: self.intent.etcd_failures < node.cfg.leaderl.health_check.max_etcd_failures,
            seq: self.intent.seq,
            updated_unix_ms: unix_ms(),
            check_phases,
            lease_expires_unix_ms,
            version: crate::build::version().into(),
            protocol: larder_core::version::PROTOCOL,
            vip_held: self.state.borrow().vip.as_ref().is_some_and(|v| v.present),
            // Only while the TLS server runs (`reconfigure` may have started or stopped it
            // after this loop read its configuration).
            backup_host: self
                .sup
                .state(crate::pgbackrest::SERVICE)
                .filter(|s| s.want_up)
                .map(|_| crate::pgbackrest::backup_host(node)),
        };
        if let Ok(b) = serde_json::to_vec(&status) {
            let _ = self
                .dcs
                .put(&keys::status(&node.state.guid), &b, Some(lease))
                .await;
        }
    }
}
