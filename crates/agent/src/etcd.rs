//! The supervised etcd 3.4 member: TLS with client-certificate auth on both client and peer
//! ports, v2 API enabled (Chef frontends read `/v2/members`). It runs as its own unprivileged
//! user ([`accounts::ETCD_USER`]) with a private copy of the node's certificate and key.

use crate::accounts::{self, Account};
use crate::node::Node;
use crate::supervisor::ServiceSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub const SERVICE: &str = "etcd";

/// etcd's copy of the node certificate, key and CA, owned by its user (it cannot read
/// `/etc/larder`, which holds the secrets).
fn tls_dir(node: &Node) -> PathBuf {
    node.paths.data_dir().join("etcd-tls")
}

/// Create etcd's account, data directory and TLS copies, all owned by it. Runs before every
/// agent start, so a node created before etcd ran unprivileged is migrated in place.
pub fn prepare(node: &Node) -> anyhow::Result<Option<Account>> {
    let account = accounts::ensure(accounts::ETCD_USER)?;
    let data = node.paths.etcd_data();
    std::fs::create_dir_all(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    accounts::chown_tree(&data, account, accounts::ETCD_USER)?;
    install_certs(node, account)?;
    Ok(account)
}

/// etcd's copies of the node certificate, key and CA. etcd reads its certificate files at
/// every TLS handshake, so replacing them (`rotate-certs`) needs no restart.
pub fn install_certs(node: &Node, account: Option<Account>) -> anyhow::Result<()> {
    let dir = tls_dir(node);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let src = node.paths.tls_dir();
    // Key first: a handshake between the two renames fails to pair them and is retried by
    // the client; certificate first would be the same.
    for f in ["node.key", "node.crt"] {
        let data = std::fs::read(src.join(f))
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", src.join(f).display()))?;
        accounts::write_owned(&dir.join(f), &data, account, accounts::ETCD_USER)?;
    }
    accounts::write_owned(
        &dir.join("ca.crt"),
        node.trust_pem().as_bytes(),
        account,
        accounts::ETCD_USER,
    )?;
    accounts::chown_tree(&dir, account, accounts::ETCD_USER)?;
    Ok(())
}

pub fn service_spec(node: &Node, account: Option<Account>) -> ServiceSpec {
    let tls = tls_dir(node);
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
        args,
        // Passed in the environment, not argv, so `ps` never shows it.
        env: vec![(
            "ETCD_INITIAL_CLUSTER_TOKEN".into(),
            node.secrets.etcd.initial_cluster_token.expose().to_string(),
        )],
        user: account.map(|a| (a.uid, a.gid)),
        cwd: Some(node.paths.etcd_data()),
        pre_start: Some({
            let (state, data) = (node.paths.node_state_file(), node.paths.etcd_data());
            std::sync::Arc::new(
                move || match crate::etcd_seat::start_refusal(&state, &data) {
                    Some(why) => Err(why),
                    None => Ok(()),
                },
            )
        }),
        ..node.service_base(SERVICE, e.binary.clone().into())
    }
}
