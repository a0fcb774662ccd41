//! The supervised etcd 3.4 member: TLS with client-certificate auth on both client and peer
//! ports, v2 API enabled (Chef frontends read `/v2/members`).

use crate::node::Node;
use crate::supervisor::ServiceSpec;

pub const SERVICE: &str = "etcd";

pub fn service_spec(node: &Node) -> ServiceSpec {
    let tls = node.paths.tls_dir();
    let f = |n: &str| tls.join(n).display().to_string();
    let e = &node.cfg.etcd;
    let args = vec![
        format!("--name={}", node.cfg.fqdn),
        format!("--data-dir={}", node.paths.etcd_data().display()),
        format!("--listen-client-urls={}", node.etcd_client_url()),
        format!("--advertise-client-urls={}", node.etcd_client_url()),
        format!("--listen-peer-urls={}", node.etcd_peer_url()),
        format!("--initial-advertise-peer-urls={}", node.etcd_peer_url()),
        format!("--initial-cluster={}", node.state.etcd_initial_cluster),
        format!("--initial-cluster-state={}", node.state.etcd_initial_state),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", f("ca.crt")),
        format!("--cert-file={}", f("node.crt")),
        format!("--key-file={}", f("node.key")),
        "--peer-client-cert-auth".into(),
        format!("--peer-trusted-ca-file={}", f("ca.crt")),
        format!("--peer-cert-file={}", f("node.crt")),
        format!("--peer-key-file={}", f("node.key")),
        format!("--heartbeat-interval={}", e.heartbeat_interval),
        format!("--election-timeout={}", e.election_timeout),
        format!("--snapshot-count={}", e.snapshot_count),
        // A member that only missed heartbeats (a slow link) must not depose a healthy leader.
        "--pre-vote=true".into(),
        "--enable-v2=true".into(),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ];
    ServiceSpec {
        name: SERVICE.into(),
        program: e.binary.clone().into(),
        args,
        // Passed in the environment, not argv, so `ps` never shows it.
        env: vec![(
            "ETCD_INITIAL_CLUSTER_TOKEN".into(),
            node.secrets.etcd.initial_cluster_token.expose().to_string(),
        )],
        user: None,
        cwd: Some(node.paths.data_dir()),
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        pre_start: None,
        // Nothing of this node may outlive its agent: a restarted agent must find the
        // ports free and start from a known state.
        die_with_agent: true,
        log_dir: node.paths.service_log_dir(SERVICE),
        log_max_bytes: node.cfg.log_rotation.file_maxbytes,
        log_keep: node.cfg.log_rotation.num_to_keep,
    }
}
