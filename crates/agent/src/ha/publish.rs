//! Publish: this node's status in etcd, bound to a status lease.

use super::*;

impl HaLoop {
    pub(super) async fn publish(
        &mut self,
        role: NodeRole,
        pg: &Option<PgObservation>,
        view: Option<&DcsView>,
        // The data disk's free space as this iteration observed it.
        disk_free_mb: Option<u64>,
    ) {
        let node = &self.node;
        let ttl = Duration::from_secs(node.cfg.leaderl.leader_ttl_seconds);
        // The status lease has the leadership TTL; a renewal every third of it is plenty (one
        // failed renewal still leaves two thirds). Renewing on every loop iteration cost more
        // than anything else an idle follower does.
        let renewed_lately = self
            .intent
            .status_renewed
            .is_some_and(|t| t.elapsed() < ttl / 3);
        let lease = match self.intent.status_lease {
            Some(id) if renewed_lately => Some(id),
            Some(id) => match self.dcs.lease_keep_alive(id).await {
                Ok(ttl) if ttl > 0 => {
                    self.intent.status_renewed = Some(Instant::now());
                    Some(id)
                }
                _ => None,
            },
            None => None,
        };
        let lease = match lease {
            Some(id) => id,
            None => {
                // Same TTL as leadership, so a dead node shows as offline as soon as its leadership
                // could have lapsed.
                match self.dcs.lease_grant(ttl.as_secs() as i64).await {
                    Ok(id) => {
                        self.intent.status_renewed = Some(Instant::now());
                        self.intent.published = None;
                        id
                    }
                    Err(_) => return,
                }
            }
        };
        self.intent.status_lease = Some(lease);
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
            eligible: larder_core::health::eligible(failover, pg_state, disk_free_mb),
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
            seq: 0, // numbered when written, below
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
            pg_auth: node.pg_auth(),
        };
        // A follower whose status says nothing new (only its clocks moved) writes it once per
        // HEARTBEAT instead of every iteration: every write reaches every member's watch.
        // The leader writes every iteration: followers read its lease expiry (`leader_check`)
        // and the history its last writable moment from it.
        let facts = status_facts(&status);
        let unchanged = self.intent.published.as_ref().is_some_and(|(at, f)| {
            *f == facts && at.elapsed() < HEARTBEAT && role != NodeRole::Leader
        });
        if unchanged {
            return;
        }
        self.intent.seq += 1;
        let status = MemberStatus {
            seq: self.intent.seq,
            ..status
        };
        if let Ok(b) = serde_json::to_vec(&status) {
            // The write reads `/larder/` back in the same round trip: the next iteration's view
            // unless something changes meanwhile (`read_dcs`).
            let sent = Instant::now();
            match self
                .dcs
                .put_and_get_prefix(
                    &keys::status(&node.state.guid),
                    &b,
                    Some(lease),
                    keys::PREFIX,
                )
                .await
            {
                Ok((revision, kvs)) => {
                    self.intent.published = Some((Instant::now(), facts));
                    self.intent.read_back = Some(ReadBack {
                        sent,
                        revision,
                        kvs,
                    });
                }
                // The lease may be gone (an etcd outage longer than its TTL): renew (or
                // replace) it before the next write.
                Err(_) => {
                    self.intent.status_renewed = None;
                    self.intent.published = None;
                }
            }
        }
    }
}

/// Most time a follower's posted status may age while nothing in it changes.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a status says apart from the clocks that move on every write: its sequence number,
/// its write time and the frontends' check times (their periods are kept; the times are a
/// schedule readers project forward, so a second-old copy is as good as a new one).
pub(crate) fn status_facts(s: &MemberStatus) -> Vec<u8> {
    let mut s = s.clone();
    s.seq = 0;
    s.updated_unix_ms = 0;
    for p in &mut s.check_phases {
        p.last_unix_ms = 0;
    }
    serde_json::to_vec(&s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_core::check_phase::CheckPhase;

    fn status() -> MemberStatus {
        serde_json::from_value(serde_json::json!({
            "guid": "g", "name": "n", "address": "10.0.0.1",
            "role": "follower", "pg": "streaming", "position": {"timeline": 1, "lsn": 100},
            "eligible": true, "failover_enabled": true, "term": 3, "leader_seen": "l",
            "voter": true, "lag_bytes": 0, "search_ok": true, "etcd_ok": true, "seq": 1,
            "updated_unix_ms": 1_000,
            "check_phases": [{"client": "fe1", "last_unix_ms": 900, "period_ms": 2_000}],
        }))
        .unwrap()
    }

    #[test]
    fn a_status_whose_clocks_alone_moved_says_nothing_new() {
        let a = status();
        let mut b = a.clone();
        b.seq = 2;
        b.updated_unix_ms = 1_300;
        b.check_phases[0].last_unix_ms = 2_900;
        assert_eq!(status_facts(&a), status_facts(&b));
    }

    type Change = Box<dyn Fn(&mut MemberStatus)>;

    #[test]
    fn every_fact_an_election_or_an_operator_reads_counts_as_news() {
        let a = status();
        let changes: Vec<Change> = vec![
            Box::new(|s| s.position.lsn.0 += 1),
            Box::new(|s| s.pg = PgState::Standby),
            Box::new(|s| s.term += 1),
            Box::new(|s| s.leader_seen = None),
            Box::new(|s| s.eligible = false),
            Box::new(|s| s.lag_bytes = Some(10)),
            Box::new(|s| s.search_ok = false),
            Box::new(|s| s.check_phases[0].period_ms = 1_000),
            Box::new(|s| {
                s.check_phases.push(CheckPhase {
                    client: "fe2".into(),
                    last_unix_ms: 1,
                    period_ms: 2_000,
                })
            }),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut b = a.clone();
            change(&mut b);
            assert_ne!(status_facts(&a), status_facts(&b), "change {i}");
        }
    }
}
