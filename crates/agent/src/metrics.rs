//! `GET /metrics` on the health API: the node's state in Prometheus' text format (0.0.4), or
//! OpenMetrics 1.0 when the scraper asks for it (`Accept: application/openmetrics-text`).
//!
//! A scrape reads only cached state — the HA loop's snapshot, the sensors, the counters and
//! histograms below — so it costs no etcd or PostgreSQL round trip (the one system call is a
//! `statvfs` per checked path). The process-wide instruments are updated where the events
//! happen: [`HA_LOOP`] by the loop, [`ETCD_RTT`] and [`ETCD_ERRORS`] by every etcd call
//! (`dcs.rs`). The leader-change counter comes from the history task (`history.rs`), search
//! figures from the search probe (`agent.rs`). The list of metrics is in docs/architecture.md,
//! "Observability".

use crate::state::{Sensors, Snapshot};
use larder_core::histogram::{self, Histogram, LATENCY_BOUNDS};
use larder_core::model::{NodeRole, PgState};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Duration of one HA loop iteration (observe, decide, act, publish).
pub static HA_LOOP: Histogram = Histogram::new(LATENCY_BOUNDS);
/// Duration of each etcd request attempt (one member, one round trip).
pub static ETCD_RTT: Histogram = Histogram::new(LATENCY_BOUNDS);
/// etcd request attempts that failed or timed out.
pub static ETCD_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Record one etcd request attempt.
pub fn record_etcd(took: Duration, ok: bool) {
    ETCD_RTT.observe(took);
    if !ok {
        ETCD_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

pub const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics only when the scraper lists it in `Accept` (Prometheus does by default).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TYPE,
            Format::OpenMetrics => OPENMETRICS_TYPE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Gauge,
    Counter,
    Histogram,
}

/// A hand-written encoder for the two text formats (they differ in counter family names,
/// the `# EOF` terminator and the content type).
pub struct Encoder {
    out: String,
    format: Format,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Encoder {
    pub fn new(format: Format) -> Encoder {
        Encoder {
            out: String::with_capacity(8192),
            format,
        }
    }

    /// `name` is the family name; counters get `_total` on their samples.
    fn family(&mut self, name: &str, ty: Type, help: &str) {
        let (family, ty) = match (ty, self.format) {
            (Type::Counter, Format::Prometheus) => (format!("{name}_total"), "counter"),
            (Type::Counter, Format::OpenMetrics) => (name.to_string(), "counter"),
            (Type::Gauge, _) => (name.to_string(), "gauge"),
            (Type::Histogram, _) => (name.to_string(), "histogram"),
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {ty}");
    }

    fn sample(&mut self, name: &str, l: &[(&str, &str)], v: f64) {
        let _ = writeln!(self.out, "{name}{} {}", labels(l), number(v));
    }

    /// A gauge family with one sample per `(labels, value)`.
    pub fn gauges(&mut self, name: &str, help: &str, samples: &[(Vec<(&str, &str)>, f64)]) {
        self.family(name, Type::Gauge, help);
        for (l, v) in samples {
            self.sample(name, l, *v);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.gauges(name, help, &[(vec![], v)]);
    }

    /// A counter family (`name` without `_total`).
    pub fn counters(&mut self, name: &str, help: &str, samples: &[(Vec<(&str, &str)>, f64)]) {
        self.family(name, Type::Counter, help);
        let total = format!("{name}_total");
        for (l, v) in samples {
            self.sample(&total, l, *v);
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &histogram::Snapshot) {
        self.family(name, Type::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (b, c) in h.bounds.iter().zip(&h.cumulative) {
            let le = number(*b);
            // OpenMetrics wants `le` as a float ("1.0"); Prometheus takes either.
            let le = if self.format == Format::OpenMetrics && !le.contains('.') {
                format!("{le}.0")
            } else {
                le
            };
            self.sample(&bucket, &[("le", &le)], *c as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }

    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// What the encoder needs besides the state and the node's name.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub fence_margin: Duration,
    /// Filesystems whose free space is reported, by what they hold.
    pub disk_paths: Vec<(String, PathBuf)>,
}

const ROLES: [NodeRole; 7] = [
    NodeRole::Leader,
    NodeRole::Follower,
    NodeRole::WaitingForLeader,
    NodeRole::DeposedLeader,
    NodeRole::Ineligible,
    NodeRole::Syncing,
    NodeRole::Down,
];

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The whole exposition for one scrape.
pub fn render(
    s: &Snapshot,
    sensors: &Sensors,
    (name, guid): (&str, &str),
    node: &MetricsConfig,
    format: Format,
) -> String {
    let mut e = Encoder::new(format);
    let now = Instant::now();
    let now_unix = crate::clock::unix_ms();
    let version = crate::build::version();
    e.gauges(
        "larder_node_info",
        "This node: name, GUID and Larder release (always 1).",
        &[(
            vec![("node", name), ("guid", guid), ("version", version)],
            1.0,
        )],
    );
    let role_samples: Vec<_> = ROLES
        .iter()
        .map(|r| (vec![("role", r.as_str())], flag(s.role == Some(*r))))
        .collect();
    e.gauges(
        "larder_role",
        "The HA role this node's loop decided last (1 for the current role).",
        &role_samples,
    );
    e.gauge(
        "larder_writable_leader",
        "1 when this node answers GET /leader with 200 right now.",
        flag(s.is_writable_leader(0)),
    );
    e.gauge(
        "larder_term",
        "Leadership term this node last read from etcd.",
        s.term as f64,
    );
    if let Some(pg) = &s.pg {
        e.gauge(
            "larder_timeline",
            "PostgreSQL timeline of this node's WAL.",
            pg.position.timeline as f64,
        );
    }
    if let Some(l) = s.lease {
        let to_fence = l.fence_deadline.saturating_duration_since(now);
        e.gauge(
            "larder_lease_remaining_seconds",
            "Leader only: time until the leader lease can first expire in etcd if no renewal succeeds.",
            secs(to_fence + node.fence_margin),
        );
        e.gauge(
            "larder_fence_deadline_margin_seconds",
            "Leader only: time left before this leader fences itself if no renewal succeeds.",
            secs(to_fence),
        );
    }
    e.gauge(
        "larder_leaderless_seconds",
        "How long this node has seen no leader key (0 while there is one): a stuck failover.",
        s.leaderless_since
            .map(|t| secs(now.saturating_duration_since(t)))
            .unwrap_or(0.0),
    );
    leadership_history(&mut e, sensors);
    e.histogram(
        "larder_ha_loop_duration_seconds",
        "Duration of one HA loop iteration (observe, decide, act, publish).",
        &HA_LOOP.snapshot(),
    );
    e.gauge(
        "larder_ha_loop_age_seconds",
        "Time since the HA loop last finished an iteration (grows while it is stuck).",
        s.last_loop
            .map(|t| secs(now.saturating_duration_since(t)))
            .unwrap_or(-1.0),
    );
    e.histogram(
        "larder_etcd_request_duration_seconds",
        "Round-trip time of each etcd request attempt.",
        &ETCD_RTT.snapshot(),
    );
    e.counters(
        "larder_etcd_request_errors",
        "etcd request attempts that failed or timed out.",
        &[(vec![], ETCD_ERRORS.load(Ordering::Relaxed) as f64)],
    );
    e.gauge(
        "larder_etcd_up",
        "1 when the HA loop's last read of etcd succeeded.",
        flag(s.etcd_ok),
    );
    postgresql(&mut e, s, guid);
    e.gauge(
        "larder_cluster_failover_enabled",
        "1 when automatic failover is on for the cluster (set-cluster-failover).",
        flag(s.cluster_failover),
    );
    e.gauge(
        "larder_node_failover_enabled",
        "1 when this node may take over (set-node-failover).",
        flag(s.node_failover),
    );
    maintenance(&mut e, s, sensors, now_unix);
    let disks: Vec<_> = node
        .disk_paths
        .iter()
        .filter_map(|(what, p)| {
            crate::disk::free_bytes(p).map(|b| {
                (
                    vec![
                        ("path", p.to_str().unwrap_or("?")),
                        ("holds", what.as_str()),
                    ],
                    b as f64,
                )
            })
        })
        .collect();
    e.gauges(
        "larder_disk_free_bytes",
        "Free space (for unprivileged users) on each checked filesystem.",
        &disks,
    );
    search(&mut e, sensors);
    e.finish()
}

fn leadership_history(e: &mut Encoder, sensors: &Sensors) {
    let cache = sensors.history.lock().unwrap();
    let changes: Vec<_> = cache
        .changes
        .iter()
        .map(|((kind, from, to), n)| {
            (
                vec![
                    ("kind", kind.as_str()),
                    ("from", from.as_str()),
                    ("to", to.as_str()),
                ],
                *n as f64,
            )
        })
        .collect();
    e.counters(
        "larder_leader_changes",
        "Leadership hand-overs recorded in the history since this agent started, by kind and from/to node.",
        &changes,
    );
    if let Some(last) = cache.history.last() {
        let from = last.from.clone().unwrap_or_default();
        let l = vec![
            ("kind", last.kind.as_str()),
            ("from", from.as_str()),
            ("to", last.to.as_str()),
        ];
        if let Some(gap) = last.gap_ms() {
            e.gauges(
                "larder_last_handover_gap_seconds",
                "Write gap of the last hand-over: previous leader last seen writable to the new one writable.",
                &[(l.clone(), gap as f64 / 1000.0)],
            );
        }
        e.gauges(
            "larder_last_handover_timestamp_seconds",
            "When the last hand-over's new leader became writable (Unix time).",
            &[(l, last.gap_end_unix_ms as f64 / 1000.0)],
        );
    }
}

fn postgresql(e: &mut Encoder, s: &Snapshot, guid: &str) {
    let pg = s.pg.as_ref();
    e.gauge(
        "larder_postgresql_up",
        "1 when the local PostgreSQL answered the HA loop's last query.",
        flag(pg.is_some()),
    );
    let Some(pg) = pg else {
        return;
    };
    e.gauge(
        "larder_postgresql_in_recovery",
        "1 when the local PostgreSQL is a standby.",
        flag(pg.state != PgState::Primary),
    );
    e.gauge(
        "larder_postgresql_streaming",
        "1 when the local standby's WAL receiver is streaming from the leader.",
        flag(pg.state == PgState::Streaming),
    );
    let d = &pg.detail;
    let wal: Vec<_> = [
        ("written", d.written),
        ("flushed", d.flushed),
        ("received", d.received),
        ("replayed", d.replayed),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|l| (vec![("position", k)], l.0 as f64)))
    .collect();
    e.gauges(
        "larder_postgresql_wal_position_bytes",
        "WAL positions as byte offsets (primary: written, flushed; standby: received, replayed).",
        &wal,
    );
    e.gauge(
        "larder_postgresql_pending_restart",
        "Settings changed that take effect only after a PostgreSQL restart.",
        d.pending_restart as f64,
    );
    if pg.state != PgState::Primary {
        // A standby's own view: the leader's posted position minus its own (as it posts it).
        let own = s
            .members
            .iter()
            .find(|m| m.guid == guid)
            .and_then(|m| m.lag_bytes);
        if let Some(lag) = own {
            e.gauge(
                "larder_standby_lag_bytes",
                "Standby only: WAL bytes behind the position the leader last posted.",
                lag as f64,
            );
        }
        return;
    }
    let name_of = |app: &str| {
        s.nodes
            .iter()
            .find(|n| larder_core::model::standby_name(&n.guid) == app)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| app.to_string())
    };
    let names: Vec<String> = d
        .replication
        .iter()
        .map(|r| name_of(&r.application_name))
        .collect();
    let per = |f: &dyn Fn(&crate::postgres::Replication) -> f64| -> Vec<(Vec<(&str, &str)>, f64)> {
        d.replication
            .iter()
            .zip(&names)
            .map(|(r, n)| (vec![("follower", n.as_str())], f(r)))
            .collect()
    };
    e.gauges(
        "larder_replication_lag_bytes",
        "Leader only: WAL bytes each connected standby has not replayed yet.",
        &per(&|r| r.lag_bytes as f64),
    );
    e.gauges(
        "larder_replication_lag_seconds",
        "Leader only: PostgreSQL's replay_lag of each connected standby (0 while idle).",
        &per(&|r| r.lag_seconds),
    );
    e.gauges(
        "larder_replication_synchronous",
        "Leader only: 1 when the standby counts for synchronous commit (sync or quorum).",
        &per(&|r| flag(r.sync_state == "sync" || r.sync_state == "quorum")),
    );
    e.gauge(
        "larder_postgresql_sync_standbys",
        "Leader only: streaming standbys that count for synchronous commit.",
        d.replication
            .iter()
            .filter(|r| {
                r.state == "streaming" && (r.sync_state == "sync" || r.sync_state == "quorum")
            })
            .count() as f64,
    );
}

fn maintenance(e: &mut Encoder, s: &Snapshot, sensors: &Sensors, now_unix: u64) {
    let lock: Vec<_> = s
        .upgrade
        .lock
        .iter()
        .map(|l| {
            (
                vec![("node", l.name.as_str())],
                now_unix.saturating_sub(l.started_unix_ms) as f64 / 1000.0,
            )
        })
        .collect();
    e.gauges(
        "larder_upgrade_lock_age_seconds",
        "How long the node named holds the rolling-upgrade lock (absent when no upgrade runs): a stuck upgrade.",
        &lock,
    );
    e.gauge(
        "larder_upgrade_in_progress",
        "1 while a rolling upgrade holds the upgrade lock.",
        flag(s.upgrade.lock.is_some()),
    );
    e.gauge(
        "larder_nodes_down_for_upgrade",
        "Nodes recorded as down for a full-downtime upgrade.",
        s.upgrade.down.len() as f64,
    );
    let copy = sensors.copy.lock().unwrap().clone();
    e.gauge(
        "larder_copy_in_progress",
        "1 while this node re-copies its data from the leader (pg_rewind or pg_basebackup).",
        flag(copy.progress.is_some() || s.role == Some(NodeRole::Syncing)),
    );
    e.gauge(
        "larder_copy_failed",
        "1 when this node's last copy from the leader failed (until one succeeds).",
        flag(copy.error.is_some()),
    );
    if let Some(v) = &s.vip {
        e.gauge(
            "larder_vip_held",
            "1 when the configured VIP is on this node's interface.",
            flag(v.present),
        );
    }
}

fn search(e: &mut Encoder, sensors: &Sensors) {
    e.gauge(
        "larder_search_up",
        "1 when the local search service answers its health probe.",
        flag(sensors.search_ok()),
    );
    let probe = sensors.search.lock().unwrap().clone();
    let Some(st) = probe.stats else {
        return;
    };
    e.gauge(
        "larder_search_documents",
        "Live documents in the local search index.",
        st.documents as f64,
    );
    e.gauges(
        "larder_search_log_position",
        "Search change-log positions: fetched from PostgreSQL (log) and applied to the local index (indexed).",
        &[
            (vec![("position", "log")], st.log_position as f64),
            (vec![("position", "indexed")], st.indexed_position as f64),
        ],
    );
    e.gauge(
        "larder_search_indexing_lag_changes",
        "Change-log entries fetched but not yet applied to the local index.",
        st.indexing_lag() as f64,
    );
    e.counters(
        "larder_search_bulk_documents",
        "Documents accepted by _bulk on this node since its search service started.",
        &[(vec![], st.bulk_documents as f64)],
    );
    e.gauge(
        "larder_search_bulk_documents_per_second",
        "Documents per second accepted by _bulk between the agent's last two probes.",
        probe.bulk_rate,
    );
    e.histogram(
        "larder_search_query_duration_seconds",
        "Latency of _search and _count requests on this node.",
        &st.query_latency,
    );
    let errors: Vec<_> = st
        .errors
        .iter()
        .map(|(op, n)| (vec![("op", op.as_str())], *n as f64))
        .collect();
    e.counters(
        "larder_search_errors",
        "Search requests answered with a server error (5xx), by operation.",
        &errors,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_name_counters_and_end_as_specified() {
        let h = Histogram::new(&[0.5, 1.0]);
        h.observe(Duration::from_millis(700));
        for (format, total_family, eof) in [
            (Format::Prometheus, "# TYPE x_total counter", false),
            (Format::OpenMetrics, "# TYPE x counter", true),
        ] {
            let mut e = Encoder::new(format);
            e.counters("x", "a \"b\"\nc", &[(vec![("l", "q\"\\\n")], 3.0)]);
            e.histogram("y_seconds", "h", &h.snapshot());
            let out = e.finish();
            assert!(out.contains(total_family), "{out}");
            assert!(out.contains("x_total{l=\"q\\\"\\\\\\n\"} 3\n"), "{out}");
            assert!(out.contains("# HELP x"), "{out}");
            assert!(
                out.contains("a \"b\"\\nc"),
                "help escapes newlines only: {out}"
            );
            assert_eq!(out.ends_with("# EOF\n"), eof, "{out}");
            assert!(out.contains("y_seconds_bucket{le=\"0.5\"} 0"), "{out}");
            let one = if eof { "1.0" } else { "1" };
            assert!(
                out.contains(&format!("y_seconds_bucket{{le=\"{one}\"}} 1")),
                "{out}"
            );
            assert!(out.contains("y_seconds_bucket{le=\"+Inf\"} 1"), "{out}");
            assert!(out.contains("y_seconds_count 1"), "{out}");
        }
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
