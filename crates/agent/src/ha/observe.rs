//! Observe: local PostgreSQL, etcd, and the facts the loop keeps between iterations.

use super::*;

/// Oldest a read-back view may be and still be reused: the watch reports every change, but a
/// fresh read now and then bounds what a silent watch (its member partitioned away) could hide.
const READ_BACK_MAX_AGE: Duration = Duration::from_secs(1);

impl HaLoop {
    pub(super) async fn observe_pg(&mut self) -> Option<PgObservation> {
        let running = self
            .sup
            .state(postgres::SERVICE)
            .map(|s| s.running)
            .unwrap_or(false);
        if !running {
            self.pg = None;
            self.intent.received_tli = None;
            return None;
        }
        if self
            .pg
            .as_ref()
            .map(|o| o.client.is_closed())
            .unwrap_or(true)
        {
            self.pg = match postgres::connect(&self.node, self.timeout()).await {
                Ok(c) => tokio::time::timeout(self.timeout(), postgres::Observer::prepare(c))
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
        }
        let observer = self.pg.as_ref()?;
        match tokio::time::timeout(self.timeout(), postgres::observe(observer)).await {
            Ok(Ok(mut o)) => {
                match o.state {
                    PgState::Streaming => self.intent.received_tli = Some(o.position.timeline),
                    PgState::Standby => {
                        if let Some(t) = self.intent.received_tli {
                            o.position.timeline = o.position.timeline.max(t);
                        }
                    }
                    PgState::Primary | PgState::Stopped | PgState::Empty => {
                        self.intent.received_tli = None
                    }
                }
                Some(o)
            }
            _ => {
                self.pg = None;
                None
            }
        }
    }

    /// The view of `/larder/` this iteration decides on: what the last status write read back
    /// (one round trip fewer per iteration) if the etcd watch, live since before that read, has
    /// seen nothing change since and it is under `READ_BACK_MAX_AGE` old; else a fresh read.
    /// Both are linearizable reads; a reused one is at most one iteration older, and any change
    /// a decision reads makes the next iteration read afresh (and the watch wakes it).
    pub(super) async fn read_dcs(&mut self) -> Result<DcsView, dcs::DcsError> {
        let reusable = self.intent.read_back.take().filter(|r| {
            r.sent.elapsed() < READ_BACK_MAX_AGE
                && self
                    .sensors
                    .watch
                    .lock()
                    .unwrap()
                    .unchanged_since(r.sent, r.revision)
        });
        let kvs = match reusable {
            Some(r) => r.kvs,
            None => self.dcs.get_prefix(keys::PREFIX).await?,
        };
        let view = DcsView::from_kvs(
            kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
            &self.node.state.guid,
        );
        let plan = view.switchover_plan.clone();
        self.state.send_modify(|s| s.switchover_plan = plan);
        Ok(view)
    }

    /// Keep the timestamps the core counts from (PostgreSQL down since, not streaming since).
    pub(super) fn track_pg(
        &mut self,
        pg: &Option<PgObservation>,
        view: Option<&DcsView>,
        now: Instant,
    ) {
        let want_up = self
            .sup
            .state(postgres::SERVICE)
            .map(|s| s.want_up)
            .unwrap_or(false);
        if pg.is_none() && want_up {
            self.intent.pg_down_since.get_or_insert(now);
        } else if pg.is_some() {
            self.intent.pg_down_since = None;
        }
        self.intent.pg_failures = larder_core::health::pg_failures(
            self.intent.pg_down_since.map(|t| self.ms(t)),
            self.ms(now),
            self.node.cfg.leaderl.health_check.interval_seconds,
        );
        if view.is_none() {
            self.intent.etcd_failures += 1;
        } else {
            self.intent.etcd_failures = 0;
        }
        let leader = view.and_then(|v| v.leader.as_ref()).map(|l| l.guid.clone());
        // A standby that keeps reconnecting on an older timeline than the leader's (its WAL
        // went past the fork point) reports "streaming" for a moment each time; it is not
        // following, and the rejoin timer must keep running.
        let leader_tli = view
            .and_then(|v| {
                let l = v.leader.as_ref()?;
                v.members.iter().find(|m| m.guid == l.guid)
            })
            .map(|m| m.position.timeline);
        let behind =
            matches!((pg.as_ref(), leader_tli), (Some(p), Some(t)) if p.position.timeline < t);
        match pg.as_ref().map(|p| p.state) {
            Some(PgState::Streaming) if !behind => self.intent.not_streaming_since = None,
            _ => {
                if self.intent.following.is_some() && self.intent.not_streaming_since.is_none() {
                    self.intent.not_streaming_since = Some(now);
                }
            }
        }
        if leader != self.intent.following && self.intent.following.is_some() && leader.is_some() {
            // Leader changed: a fresh follow starts; the old failure timer is meaningless.
            self.intent.not_streaming_since = None;
        }
    }

    /// Raw local facts for the core (which derives health, eligibility and backoffs from them).
    pub(super) fn local_state(
        &self,
        pg: &Option<PgObservation>,
        view: Option<&DcsView>,
    ) -> LocalState {
        let node = &self.node;
        let pg_state = match pg {
            Some(p) => p.state,
            None if !postgres::has_data(node) => PgState::Empty,
            None => PgState::Stopped,
        };
        let leader = view.and_then(|v| v.leader.as_ref());
        let copy_failed_at = self.sensors.copy.lock().unwrap().failed_at;
        LocalState {
            pg: pg_state,
            position: pg.as_ref().map(|p| p.position).unwrap_or_default(),
            pg_failures: self.intent.pg_failures,
            following: self.intent.following.clone(),
            not_streaming_since_ms: self.intent.not_streaming_since.map(|t| self.ms(t)),
            diverged: diverged_marker(node).exists(),
            // Written by a failed rewind (or `pgsql-follow --force-basebackup`), removed by
            // a successful base backup; names the leader it applies to.
            rewind_failed: leader.is_some_and(|l| {
                std::fs::read_to_string(rewind_failed_marker(node))
                    .ok()
                    .as_deref()
                    == Some(l.guid.as_str())
            }),
            disk_free_mb: crate::disk::free_mb(&node.paths.data_dir()),
            syncing: self.syncing_now(),
            copy_failed_ms: copy_failed_at.map(|t| self.ms(t)),
            switchover_scheduled: self
                .intent
                .switchover_due
                .as_ref()
                .map(|(r, at)| (r.clone(), self.ms(*at))),
        }
    }
}
