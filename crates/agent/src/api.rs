//! The unauthenticated health API on port 7331. It never changes state and answers from the
//! loop's cached state (never waiting on etcd or PostgreSQL), because haproxy checks it every
//! two seconds and one failed check flips a backend. The only wait is deliberate and bounded:
//! `/leader` is held while its answer is about to change (`leader_check`). Status codes:
//!
//! | path | 200 when | otherwise |
//! |---|---|---|
//! | `GET /leader[?wait=0]` | writable leader, lease valid, `required_active_followers` streaming (held up to 1.5 s while about to change, see `leader_check`) | 503 |
//! | `GET /replica[?lag=N]` | streaming follower (lag ≤ N bytes) | 503 |
//! | `GET /health` | PostgreSQL is running (any role) | 503 |
//! | `GET /status`, `/cluster` | always (JSON), to allowed clients | 403 to others |
//! | `GET /v2/members` | always: etcd v2 member list for Chef frontends | — |
//! | `GET /metrics` | always: Prometheus text, OpenMetrics when asked (see `metrics`) | — |
//! | `GET /ui`, `/ui/data` | always: the read-only status page and its JSON (see `ui`) | — |
//! | anything else | never | 503 |
//!
//! `/status`, `/cluster`, `/metrics` and `/ui` show the topology and state: they answer only
//! clients from `leaderl.status_allowed_cidrs` (default loopback) and the cluster's members,
//! 403 to anyone else. The health answers haproxy needs stay open to all.

use crate::control::{HaStatus, PgStatus};
use crate::leader_check;
use crate::state::{Sensors, Snapshot, Views};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use larder_core::model::PgState;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct ApiState {
    pub views: Views,
    pub required_followers: u32,
    pub name: String,
    pub guid: String,
    pub metrics: crate::metrics::MetricsConfig,
    /// `leaderl.status_allowed_cidrs`.
    pub status_allowed_cidrs: Vec<String>,
}

/// Paths (and everything under them) only allowed clients may read.
const RESTRICTED: &[&str] = &["/status", "/cluster", "/metrics", "/ui"];

fn restricted(path: &str) -> bool {
    RESTRICTED.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// 403 for a restricted path unless the client is on an allowed network or a member.
async fn read_acl(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if restricted(req.uri().path()) {
        let members: Vec<std::net::IpAddr> = st
            .views
            .ha
            .borrow()
            .nodes
            .iter()
            .filter_map(|n| n.address.parse().ok())
            .collect();
        if !larder_core::security::status_allowed(peer.ip(), &st.status_allowed_cidrs, &members) {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": format!("{} is readable only from leaderl.status_allowed_cidrs and the cluster's members; {} is neither", req.uri().path(), peer.ip())
                })),
            )
                .into_response();
        }
    }
    next.run(req).await
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/leader", get(leader))
        .route("/replica", get(replica))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/cluster", get(cluster))
        .route("/v2/members", get(v2_members))
        .route("/metrics", get(metrics))
        .route("/ui", get(|| asset(crate::ui::INDEX_HTML)))
        .route("/ui/", get(|| asset(crate::ui::INDEX_HTML)))
        .route("/ui/style.css", get(|| asset(crate::ui::STYLE_CSS)))
        .route("/ui/app.js", get(|| asset(crate::ui::APP_JS)))
        .route("/ui/data", get(ui_data))
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "unknown endpoint\n") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_acl,
        ))
        .with_state(state)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn leader(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let arrived = crate::clock::unix_ms();
    let may_hold = q.get("wait").map(|w| w != "0").unwrap_or(true);
    let ok =
        leader_check::answer_logged(&st.views.ha, &st.guid, st.required_followers, may_hold).await;
    // Remember who checks us, when, and when we answered: a planned switchover to this node is
    // timed by the frontends' check rhythm (larder_core::check_phase), and haproxy schedules
    // its next check from the answer. One client = address + user agent.
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    st.views.sensors.checks.lock().unwrap().record_answered(
        &format!("{} {agent}", peer.ip()),
        arrived,
        crate::clock::unix_ms(),
    );
    let term = st.views.ha.borrow().term;
    (
        code(ok),
        Json(json!({"leader": ok, "node": st.name, "term": term})),
    )
        .into_response()
}

async fn replica(State(st): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = st.views.ha.borrow();
    let streaming =
        s.pg.as_ref()
            .map(|p| p.state == PgState::Streaming)
            .unwrap_or(false);
    let lag = s
        .members
        .iter()
        .find(|m| m.guid == st.guid)
        .and_then(|m| m.lag_bytes);
    let lag_ok = match q.get("lag").and_then(|v| v.parse::<u64>().ok()) {
        Some(max) => lag.map(|l| l <= max).unwrap_or(false),
        None => true,
    };
    (
        code(streaming && lag_ok),
        Json(json!({"replica": streaming, "lag_bytes": lag})),
    )
        .into_response()
}

async fn health(State(st): State<ApiState>) -> Response {
    let ok = st.views.ha.borrow().pg.is_some();
    (code(ok), Json(json!({"postgresql_running": ok}))).into_response()
}

pub fn ha_status(
    s: &Snapshot,
    sensors: &Sensors,
    name: &str,
    guid: &str,
    required: u32,
) -> HaStatus {
    let copy = sensors.copy.lock().unwrap().clone();
    HaStatus {
        name: name.into(),
        version: crate::build::version().into(),
        guid: guid.into(),
        role: s.role.map(|r| r.as_str().to_string()),
        reason: s.reason.clone(),
        writable_leader: s.is_writable_leader(required),
        term: s.term,
        leader: s.leader.clone(),
        postgresql: s.pg.as_ref().map(|p| PgStatus {
            state: p.state,
            timeline: p.position.timeline,
            lsn: p.position.lsn.to_string(),
            streaming_followers: p.streaming_followers.clone(),
            synchronous_standby_names: p.sync_standby_names.clone(),
        }),
        etcd_ok: s.etcd_ok,
        search_ok: sensors.search_ok(),
        cluster_failover: s.cluster_failover,
        node_failover: s.node_failover,
        copy_progress: copy.progress,
        // A failed copy is reported until the next one succeeds.
        last_error: copy.error.or_else(|| s.last_error.clone()),
        loop_age_ms: s.last_loop.map(|t| t.elapsed().as_millis() as u64),
        frontend_checks: sensors
            .checks
            .lock()
            .unwrap()
            .phases(crate::clock::unix_ms()),
        vip: s.vip.clone(),
        last_hook: s.last_hook.clone(),
    }
}

async fn status(State(st): State<ApiState>) -> Response {
    let s = st.views.snapshot();
    Json(ha_status(
        &s,
        &st.views.sensors,
        &st.name,
        &st.guid,
        st.required_followers,
    ))
    .into_response()
}

async fn cluster(State(st): State<ApiState>) -> Response {
    let s = st.views.snapshot();
    Json(json!({"leader": s.leader, "term": s.term, "members": s.members, "nodes": s.nodes}))
        .into_response()
}

/// etcd's v2 `/v2/members` shape, served here in plain HTTP because etcd itself only accepts
/// TLS clients with a cluster certificate.
async fn v2_members(State(st): State<ApiState>) -> Response {
    let members: Vec<_> = st
        .views
        .sensors
        .etcd_members
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            json!({"id": format!("{:x}", m.id), "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls})
        })
        .collect();
    Json(json!({ "members": members })).into_response()
}

/// Prometheus / OpenMetrics exposition from cached state (no etcd or PostgreSQL round trip).
async fn metrics(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let format = crate::metrics::Format::from_accept(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let s = st.views.snapshot();
    let body = crate::metrics::render(
        &s,
        &st.views.sensors,
        (&st.name, &st.guid),
        &st.metrics,
        format,
    );
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

async fn asset((content_type, body): (&'static str, &'static str)) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui_data(State(st): State<ApiState>) -> Response {
    let s = st.views.snapshot();
    Json(crate::ui::data(&s, &st.views.sensors, &st.name)).into_response()
}

#[cfg(test)]
mod tests {
    use super::restricted;

    #[test]
    fn restricted_paths() {
        for p in ["/status", "/cluster", "/metrics", "/ui", "/ui/app.js"] {
            assert!(restricted(p), "{p}");
        }
        for p in [
            "/leader",
            "/replica",
            "/health",
            "/v2/members",
            "/statusx",
            "/",
        ] {
            assert!(!restricted(p), "{p}");
        }
    }
}
