//! Execute: carry out the core's actions (PostgreSQL, etcd, the supervisor).

use super::*;

impl HaLoop {
    pub(super) async fn execute(
        &mut self,
        action: Action,
        view: Option<&DcsView>,
        nodes: &[NodeRecord],
    ) -> anyhow::Result<()> {
        let node = self.node.clone();
        match action {
            Action::Fence { reason } => {
                tracing::warn!("fencing: {reason}");
                self.state
                    .send_modify(|s| s.role = Some(NodeRole::DeposedLeader));
                // SIGQUIT = immediate shutdown: no new commit can be acknowledged after this.
                self.sup
                    .stop_with(
                        postgres::SERVICE,
                        Some(nix::sys::signal::Signal::SIGQUIT),
                        Duration::from_millis(500),
                    )
                    .await?;
                mark_diverged(&node, true);
                self.intent.following = None;
            }
            Action::ReleaseLeadership => {
                let mut lease = None;
                self.state.send_modify(|s| lease = s.lease.take());
                if let Some(l) = lease {
                    let _ = self.dcs.delete_if_lease(keys::LEADER, l.id).await;
                    let _ = self.dcs.lease_revoke(l.id).await;
                }
            }
            Action::AcquireLeadership { term } => {
                let ttl = node.cfg.leaderl.leader_ttl_seconds as i64;
                let id = self.dcs.lease_grant(ttl).await?;
                let sent = Instant::now();
                let record = LeaderRecord {
                    guid: node.state.guid.clone(),
                    name: node.cfg.fqdn.clone(),
                    address: node.cfg.publish_address.clone(),
                    term,
                };
                let won = self
                    .dcs
                    .acquire_leader(term - 1, &serde_json::to_vec(&record)?, id)
                    .await?;
                if won {
                    let margin = Duration::from_millis(node.cfg.leaderl.fence_margin_ms);
                    tracing::info!(term, "acquired leadership");
                    self.draft_history(term, view);
                    let held = LeaseInfo {
                        id,
                        term,
                        fence_deadline: lease::fence_deadline(
                            sent,
                            Duration::from_secs(ttl as u64),
                            margin,
                        ),
                    };
                    self.state.send_modify(|s| s.lease = Some(held));
                    self.intent.roles_ready = false;
                    self.intent.superuser_hash = None;
                    // Next step (promote) right away, not one loop interval later.
                    self.wake.notify_one();
                } else {
                    let _ = self.dcs.lease_revoke(id).await;
                }
            }
            Action::Promote => {
                postgres::write_follow_conf(&node, None)?;
                let client = self
                    .pg
                    .as_ref()
                    .map(|o| &o.client)
                    .ok_or_else(|| anyhow::anyhow!("no PostgreSQL connection to promote"))?;
                postgres::promote(client).await?;
                mark_diverged(&node, false);
                self.intent.following = None;
                tracing::info!("promoted PostgreSQL to primary");
                if node.cfg.backup.enabled() {
                    // In the background: archiving never holds up a promotion.
                    tokio::spawn(crate::pgbackrest::catch_up_after_promotion(node.clone()));
                }
                // Observe the primary now, so /leader answers 200 without waiting a loop.
                self.wake.notify_one();
            }
            Action::StartPrimary => {
                postgres::write_follow_conf(&node, None)?;
                self.sup.start(postgres::SERVICE)?;
                self.wake.notify_one();
            }
            Action::Detach => {
                postgres::write_follow_conf(&node, None)?;
                // primary_conninfo is reloadable: the WAL receiver stops, the standby stays up.
                self.sup
                    .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
                self.intent.following = None;
                self.intent.not_streaming_since = None;
                // Post the final position as soon as the receiver is gone.
                self.wake.notify_one();
            }
            Action::StartStandby => {
                postgres::write_follow_conf(&node, None)?;
                postgres::set_standby(&node, true)?;
                self.sup.start(postgres::SERVICE)?;
            }
            Action::Follow { leader } => {
                let changed = postgres::write_follow_conf(&node, Some(&leader))?;
                postgres::set_standby(&node, true)?;
                let running = self
                    .sup
                    .state(postgres::SERVICE)
                    .map(|s| s.running)
                    .unwrap_or(false);
                if running && changed {
                    // primary_conninfo is reloadable since PostgreSQL 13.
                    self.sup
                        .signal(postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
                } else if !running {
                    self.sup.start(postgres::SERVICE)?;
                }
                if self.intent.following.as_deref() != Some(leader.guid.as_str()) {
                    self.intent.following = Some(leader.guid.clone());
                    self.intent.not_streaming_since = Some(Instant::now());
                }
            }
            // The core only asks for a copy from a promoted leader, outside the failure backoff.
            Action::Rewind { leader } => self.spawn_copy(leader, false),
            Action::Basebackup { leader } => self.spawn_copy(leader, true),
            Action::SetSyncStandbys { k, names } => {
                let Some(client) = self.pg.as_ref().map(|o| &o.client) else {
                    return Ok(());
                };
                let ssn = larder_core::pgconf::synchronous_standby_names(k, &names);
                let slots: Vec<String> = nodes
                    .iter()
                    .filter(|n| n.guid != node.state.guid)
                    .map(|n| larder_core::model::standby_name(&n.guid))
                    .collect();
                // What this iteration observed (the snapshot holds it by now).
                let observed = self.state.borrow().pg.clone();
                let Some(observed) = observed else {
                    return Ok(());
                };
                postgres::apply_replication(client, &observed, &ssn, &slots).await?;
                if !self.intent.roles_ready {
                    postgres::create_roles(&node, client).await?;
                    self.intent.roles_ready = true;
                }
                // Once per leadership, and again when a member's client method changes.
                if let Some(view) = view {
                    let wanted = larder_core::pgconf::wanted_superuser_hash(
                        &node.pg_auth(),
                        view.members
                            .iter()
                            .filter(|m| m.guid != node.state.guid)
                            .map(|m| m.pg_auth.as_str()),
                    );
                    if self.intent.superuser_hash != Some(wanted) {
                        postgres::ensure_superuser_hash(&node, client, wanted).await?;
                        self.intent.superuser_hash = Some(wanted);
                    }
                }
            }
            Action::ClearSwitchover => {
                self.dcs.delete(keys::SWITCHOVER).await?;
            }
            Action::RegisterVoter => {
                self.dcs
                    .put(&keys::voter(&node.state.guid), b"1", None)
                    .await?;
                self.intent.voter = true;
            }
            Action::RefuseSwitchover { reason } => {
                self.dcs.delete(keys::SWITCHOVER_REQUEST).await?;
                self.state
                    .send_modify(|s| s.last_error = Some(reason.clone()));
                self.dcs
                    .put(keys::SWITCHOVER_REFUSED, reason.as_bytes(), None)
                    .await?;
            }
            Action::ScheduleSwitchover {
                start_in_ms,
                ready_unix_ms,
            } => self.schedule_switchover(view, start_in_ms, ready_unix_ms),
            Action::StepDown { target } => self.step_down(target).await?,
            // Answered to the operator by the loop (see `answer_request`).
            Action::RefuseRequest { .. } => {}
            Action::RecordProtocol { from, version } => {
                let v = version.to_string();
                // Compare-and-swap either way: what another node recorded meanwhile wins.
                match from {
                    None => self.dcs.create(keys::PROTOCOL, v.as_bytes(), None).await?,
                    Some(old) => {
                        let raised = self
                            .dcs
                            .replace_if(keys::PROTOCOL, old.to_string().as_bytes(), v.as_bytes())
                            .await?;
                        if raised {
                            tracing::info!(from = old, to = version, "raised the cluster protocol");
                        }
                        raised
                    }
                };
            }
            Action::StopPostgres => {
                self.sup
                    .stop(postgres::SERVICE, Duration::from_secs(30))
                    .await?;
                self.intent.following = None;
            }
            Action::StopForShutdown => {
                self.sup
                    .stop(postgres::SERVICE, Duration::from_secs(10))
                    .await?;
                mark_diverged(&node, true);
            }
            Action::AddVip { lifetime_s } => self.roles.add_vip(lifetime_s).await?,
            Action::RenewVip { lifetime_s } => self.roles.renew_vip(lifetime_s).await?,
            Action::RemoveVip { reason } => self.roles.remove_vip(&reason).await?,
            Action::MarkResync { full } => {
                if full {
                    let leader = view.and_then(|v| v.leader.as_ref());
                    if let Some(l) = leader {
                        std::fs::write(rewind_failed_marker(&node), &l.guid)?;
                    }
                } else {
                    mark_diverged(&node, true);
                }
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Rewind (or re-clone) in the background; the loop keeps publishing `syncing` meanwhile.
    pub(super) fn spawn_copy(&mut self, leader: LeaderRecord, full: bool) {
        if self.syncing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let node = self.node.clone();
        let sup = self.sup.clone();
        let sensors = self.sensors.clone();
        let syncing = self.syncing.clone();
        self.intent.following = Some(leader.guid.clone());
        self.intent.not_streaming_since = None;
        // Rewinding a former primary may find nothing to do; rewinding a follower that could not
        // stream and finding nothing to do means a rewind cannot fix it: clone next time.
        let was_diverged = diverged_marker(&node).exists();
        tokio::spawn(async move {
            let _ = sup.stop(postgres::SERVICE, Duration::from_secs(30)).await;
            let result = if full {
                let sn = sensors.clone();
                postgres::basebackup(&node, &leader, move |p| {
                    sn.copy.lock().unwrap().progress = Some(p)
                })
                .await
                .map(|_| "base backup complete".to_string())
            } else {
                postgres::rewind(&node, &leader).await
            };
            match result {
                Ok(msg) => {
                    tracing::info!(
                        "rejoined {}: {}",
                        leader.name,
                        msg.lines().last().unwrap_or("")
                    );
                    mark_diverged(&node, false);
                    sensors.copy.lock().unwrap().error = None;
                    if full {
                        let _ = std::fs::remove_file(rewind_failed_marker(&node));
                    } else if !was_diverged && msg.contains("no rewind required") {
                        tracing::warn!(
                            "{} could not be followed and pg_rewind found nothing to rewind: re-cloning",
                            leader.name
                        );
                        let _ = std::fs::write(rewind_failed_marker(&node), &leader.guid);
                    }
                }
                Err(e) => {
                    tracing::warn!("copy from {} failed: {e}", leader.name);
                    {
                        let mut c = sensors.copy.lock().unwrap();
                        c.error = Some(format!("copy from {}: {e}", leader.name));
                        c.failed_at = Some(Instant::now());
                    }
                    if !full {
                        // Next iteration falls back to a base backup.
                        let _ = std::fs::write(rewind_failed_marker(&node), &leader.guid);
                    }
                }
            }
            sensors.copy.lock().unwrap().progress = None;
            syncing.store(false, std::sync::atomic::Ordering::SeqCst);
            if postgres::has_data(&node) {
                let _ = sup.start(postgres::SERVICE);
            }
        });
    }

    /// Carry out the core's timing of an accepted switchover: remember when it starts (the
    /// core steps down once that time has come), publish the plan the target holds its checks
    /// by, and wake the loop at the start.
    pub(super) fn schedule_switchover(
        &mut self,
        view: Option<&DcsView>,
        start_in_ms: u64,
        ready_unix_ms: u64,
    ) {
        let Some(req) = view.and_then(|v| v.switchover_request.clone()) else {
            return;
        };
        let at = Instant::now() + Duration::from_millis(start_in_ms);
        self.state.send_modify(|s| s.switchover_starts = Some(at));
        self.publish_switchover_plan(&req, ready_unix_ms);
        tracing::info!(
            delay_ms = start_in_ms,
            "switchover timed to the frontends' health checks"
        );
        if start_in_ms == 0 {
            return;
        }
        self.intent.switchover_due = Some((req, at));
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            wake.notify_one();
        });
    }

    /// Publishes when the switchover starts, bound to the leader lease (it vanishes with the
    /// hand-over or the leader). In the background: the plan only tunes health-check timing,
    /// and a failed write just loses that.
    pub(super) fn publish_switchover_plan(&self, req: &SwitchoverRequest, ready_unix_ms: u64) {
        let lease = self.state.borrow().lease;
        let Some(lease) = lease else {
            return;
        };
        let plan = SwitchoverPlan {
            target: req.target.clone(),
            ready_unix_ms,
        };
        let dcs = self.dcs.clone();
        tokio::spawn(async move {
            if let Ok(v) = serde_json::to_vec(&plan) {
                if let Err(e) = dcs.put(keys::SWITCHOVER_PLAN, &v, Some(lease.id)).await {
                    tracing::debug!("publishing the switchover plan: {e}");
                }
            }
        });
    }

    /// The leader's planned hand-over (decided by the core, `Action::StepDown`): stop
    /// PostgreSQL cleanly (its walsenders ship the shutdown checkpoint to the standbys), record
    /// the checkpoint position the target must hold, release the key. Nothing acknowledged is
    /// lost and nobody waits for a TTL.
    pub(super) async fn step_down(&mut self, target: Option<String>) -> anyhow::Result<()> {
        let node = self.node.clone();
        let lease = self.state.borrow().lease;
        let Some(lease) = lease else {
            anyhow::bail!("step down: this node does not hold the lease");
        };
        self.intent.switchover_due = None;
        self.dcs.delete(keys::SWITCHOVER_REQUEST).await?;
        tracing::info!(target = ?target, "planned switchover");
        self.state.send_modify(|s| {
            s.role = Some(NodeRole::DeposedLeader);
            s.switchover_starts = None;
        });
        // Let held health checks see the 503 before PostgreSQL stops: a frontend that still
        // routes here once connections are refused stalls a whole haproxy retry (1 s).
        tokio::time::sleep(crate::leader_check::POLL * 3).await;
        self.sup
            .stop(postgres::SERVICE, Duration::from_secs(30))
            .await?;
        let pos = postgres::checkpoint_position(&node).await?;
        let min = WalPosition {
            timeline: pos.timeline,
            lsn: larder_core::model::Lsn(pos.lsn.0 + 1),
        };
        let sw = Switchover {
            target,
            term: lease.term,
            min_position: min,
            from: node.state.guid.clone(),
            deadline_unix_ms: unix_ms() + 15_000,
        };
        self.dcs
            .put(keys::SWITCHOVER, &serde_json::to_vec(&sw)?, None)
            .await?;
        mark_diverged(&node, true);
        self.state.send_modify(|s| s.lease = None);
        self.intent.following = None;
        self.dcs.delete_if_lease(keys::LEADER, lease.id).await?;
        let _ = self.dcs.lease_revoke(lease.id).await;
        self.wake.notify_one();
        Ok(())
    }
}
