//! `rotate-certs`: every node re-issues its certificates from the cluster CA, one node at a
//! time, while every service keeps running (no restart, no failover).
//!
//! The agent the operator asked ([`rotate_cluster`]) writes a request under
//! `keys::cert_rotation(guid)` for one node; that node's agent ([`serve`]) issues a new
//! certificate, installs every service's copy (etcd and the search service re-read theirs at
//! each handshake, PostgreSQL on a reload, pgBackRest's TLS server on a restart) and answers
//! under `keys::cert_rotated(guid)`. The requester then checks what that node's etcd,
//! PostgreSQL and search ports actually present before it moves on: a node that says it
//! rotated but still serves the old certificate stops the rotation.

use crate::dcs::{keys, Dcs};
use crate::node::Node;
use crate::pki::{self, CertInfo};
use crate::supervisor::Supervisor;
use larder_core::decide::DcsView;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a node may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long its ports may take to present the new certificate (PostgreSQL's reload).
const PRESENT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: String,
    /// Validity of the new certificate in days; `None` = the node's `ssl.duration_days`.
    #[serde(default)]
    pub days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub id: String,
    pub cert: Option<CertInfo>,
    pub error: Option<String>,
}

/// One node's result, as `rotate-certs` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rotated {
    pub name: String,
    pub address: String,
    pub was_leader: bool,
    pub old: Option<CertInfo>,
    pub new: CertInfo,
    /// The ports seen presenting the new certificate.
    pub checked: Vec<String>,
}

/// Re-issue this node's certificate (or take the operator's, `ssl.certificate`) and install
/// it, with the trust of the current `ssl.ca`, for every service. larder.toml is read again,
/// so this is also how a new `ssl.*` setting takes effect.
pub async fn rotate_local(
    node: &Node,
    sup: &Supervisor,
    dcs: &Dcs,
    days: Option<u32>,
) -> anyhow::Result<CertInfo> {
    let cfg = larder_core::config::Config::load(&node.paths.config_file())
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    anyhow::ensure!(
        cfg.fqdn == node.cfg.fqdn && cfg.publish_address == node.cfg.publish_address,
        "fqdn and publish_address in larder.toml differ from the running node's; nothing was changed"
    );
    let mut n = node.clone();
    n.cfg = cfg;
    let trust = crate::identity::trust_pem(&n.cfg, &n.secrets)?;
    let id = crate::identity::node_identity(&n.cfg, &n.secrets, days)?;
    if id.operator {
        // Every other member must accept it before this node presents it anywhere.
        let view = read_view(&n, dcs).await?;
        for peer in view.nodes.iter().filter(|p| p.guid != n.state.guid) {
            trusted_by(&n, &peer.address, &trust, &id.cert_pem, &id.key_pem)
                .await
                .map_err(|e| anyhow::anyhow!(
                    "{} does not accept this node's ssl.certificate ({e:#}): set ssl.ca on every node and run `larder rotate-certs` before switching any node to ssl.certificate; nothing was changed",
                    peer.name
                ))?;
        }
    }
    let dir = n.paths.tls_dir();
    let trust_changed = n.trust_pem() != trust;
    crate::node::write_private(&dir.join("ca.crt"), trust.as_bytes())?;
    crate::node::write_private(&dir.join("node.key"), id.key_pem.as_bytes())?;
    crate::node::write_private(&dir.join("node.crt"), id.cert_pem.as_bytes())?;
    let etcd_account = crate::accounts::ensure(crate::accounts::ETCD_USER)?;
    crate::etcd::install_certs(&n, etcd_account)?;
    if trust_changed {
        // etcd reads its trusted CAs only when it starts; one member restarting keeps quorum.
        sup.restart(crate::etcd::SERVICE, Duration::from_secs(30))
            .await?;
    }
    let search_account = crate::accounts::ensure(crate::accounts::SEARCH_USER)?;
    crate::search_service::write_tls(&n, search_account)?;
    crate::postgres::install_certs(&n)?;
    if sup
        .state(crate::postgres::SERVICE)
        .is_some_and(|s| s.running)
    {
        // A reload, as `reconfigure` sends it: PostgreSQL re-reads its TLS files on SIGHUP.
        sup.signal(crate::postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
    }
    if n.cfg.backup.enabled() {
        crate::pgbackrest::write_certs(&n, true)?;
        if sup
            .state(crate::pgbackrest::SERVICE)
            .is_some_and(|s| s.want_up)
        {
            // Only the backup channel between nodes pauses; PostgreSQL is untouched.
            sup.restart(crate::pgbackrest::SERVICE, Duration::from_secs(10))
                .await?;
        }
    }
    // This agent's own etcd connections: the next call reconnects with the new pair.
    dcs.set_tls(n.tls()?).await;
    tracing::info!(
        "certificates {} (serial {}, valid until {}){}",
        if id.operator {
            "installed from ssl.certificate"
        } else {
            "re-issued"
        },
        id.info.serial,
        id.info.not_after_unix,
        if trust_changed {
            "; trust changed, etcd restarted"
        } else {
            ""
        }
    );
    Ok(id.info)
}

/// Answer the rotation requests addressed to this node, until shutdown.
pub async fn serve(
    node: Node,
    dcs: Dcs,
    sup: Supervisor,
    requests: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let guid = node.state.guid.clone();
    let handler_dcs = dcs.clone();
    crate::node_requests::serve(
        dcs,
        requests,
        keys::cert_rotation(&guid),
        keys::cert_rotated(&guid),
        shutdown,
        |req: Request| {
            let (node, sup, dcs) = (&node, &sup, &handler_dcs);
            async move {
                match rotate_local(node, sup, dcs, req.days).await {
                    Ok(cert) => Answer {
                        id: req.id,
                        cert: Some(cert),
                        error: None,
                    },
                    Err(e) => {
                        tracing::warn!("rotate-certs: {e:#}");
                        Answer {
                            id: req.id,
                            cert: None,
                            error: Some(format!("{e:#}")),
                        }
                    }
                }
            }
        },
    )
    .await
}

crate::node_requests::tagged_by_id!(Request, Answer);

/// Rotate every node (or only `only`): followers first, the leader last, stopping at the first
/// node that fails, does not answer or does not present its new certificate, and if the
/// leadership term changes meanwhile.
pub async fn rotate_cluster(
    node: &Node,
    dcs: &Dcs,
    only: Option<&str>,
    days: Option<u32>,
) -> anyhow::Result<Vec<Rotated>> {
    if let Some(d) = days {
        anyhow::ensure!(
            (2..=36_500).contains(&d),
            "--days {d} is out of range: give a validity between 2 and 36500 days; nothing was changed"
        );
    }
    let view = read_view(node, dcs).await?;
    let leader = view.leader.as_ref().map(|l| l.guid.clone());
    let mut targets: Vec<_> = match only {
        Some(name) => vec![view.find_node(name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "no node named {name:?} in this cluster (see `larder cluster-status`); nothing was changed"
            )
        })?],
        None => view.nodes.clone(),
    };
    // The leader last: a problem with the procedure shows on a follower first.
    targets.sort_by_key(|n| (leader.as_deref() == Some(n.guid.as_str()), n.name.clone()));
    let silent: Vec<&str> = targets
        .iter()
        .filter(|n| !view.members.iter().any(|m| m.guid == n.guid))
        .map(|n| n.name.as_str())
        .collect();
    if !silent.is_empty() {
        anyhow::bail!(
            "{} not reporting (agent down or unreachable), so its certificate cannot be rotated now; start it, or rotate the others one by one with --node; nothing was changed",
            silent.join(", ") + if silent.len() == 1 { " is" } else { " are" }
        );
    }
    let term = view.term;
    let mut done = Vec::new();
    for t in targets {
        let old = presented(node, &t.address, node.cfg.etcd.client_port, false)
            .await
            .ok();
        let answer: anyhow::Result<Answer> = crate::node_requests::ask(
            dcs,
            &keys::cert_rotation(&t.guid),
            &keys::cert_rotated(&t.guid),
            &Request {
                id: crate::node_requests::new_id(),
                days,
            },
            ANSWER_TIMEOUT,
        )
        .await;
        let new = match answer.map_err(|e| anyhow::anyhow!("{}: {e:#}", t.name))? {
            Answer {
                cert: Some(c),
                error: None,
                ..
            } => c,
            Answer { error, .. } => anyhow::bail!(
                "{} could not rotate its certificate: {}; {} rotated before it",
                t.name,
                error.unwrap_or_default(),
                names(&done)
            ),
        };
        let checked = wait_presented(node, &t.address, &new)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}; {} rotated before it", t.name, names(&done)))?;
        done.push(Rotated {
            name: t.name.clone(),
            address: t.address.clone(),
            was_leader: leader.as_deref() == Some(t.guid.as_str()),
            old,
            new,
            checked,
        });
        let now = read_view(node, dcs).await?;
        if now.term != term {
            anyhow::bail!(
                "the leadership term changed during the rotation ({term} → {}): stopped after {}; check `larder history` and run rotate-certs again for the rest",
                now.term,
                names(&done)
            );
        }
    }
    Ok(done)
}

fn names(done: &[Rotated]) -> String {
    if done.is_empty() {
        "no node was".into()
    } else {
        done.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn read_view(node: &Node, dcs: &Dcs) -> anyhow::Result<DcsView> {
    let kvs = dcs.get_prefix(keys::PREFIX).await?;
    Ok(DcsView::from_kvs(
        kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        &node.state.guid,
    ))
}

/// Until every TLS port of the node at `address` presents `want`: the ports checked.
async fn wait_presented(
    node: &Node,
    address: &str,
    want: &CertInfo,
) -> anyhow::Result<Vec<String>> {
    let mut ports = vec![
        ("etcd", node.cfg.etcd.client_port, false),
        ("postgresql", node.cfg.postgresql.port, true),
    ];
    if node.security.search_tls {
        ports.push(("search", node.cfg.elasticsearch.port, false));
    }
    let deadline = Instant::now() + PRESENT_TIMEOUT;
    let mut checked = Vec::new();
    for (what, port, pg) in ports {
        loop {
            let seen = presented(node, address, port, pg).await;
            match seen {
                Ok(c) if c.serial == want.serial => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(c) => anyhow::bail!(
                    "its {what} port {port} still presents certificate {} instead of the new {}",
                    c.serial,
                    want.serial
                ),
                Err(e) => {
                    anyhow::bail!("cannot read the certificate of its {what} port {port}: {e:#}")
                }
            }
        }
        checked.push(format!("{what}:{port}"));
    }
    Ok(checked)
}

/// A TLS connection to `address:port` trusting `trust_pem`, authenticating with
/// `cert_pem`/`key_pem` (etcd requires a client certificate). `pg`: PostgreSQL's in-protocol
/// TLS request first.
async fn tls_connect(
    address: &str,
    port: u16,
    pg: bool,
    trust_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trust_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| anyhow::anyhow!("{address:?} is not an IP address"))?;
    let mut tcp = tokio::net::TcpStream::connect((ip, port)).await?;
    if pg {
        // SSLRequest: length 8, code 80877103; the server answers 'S' and then speaks TLS.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await?;
        anyhow::ensure!(b[0] == b'S', "PostgreSQL refused TLS");
    }
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
        .await?)
}

/// The certificate the TLS server at `address:port` presents, seen with this node's own
/// certificate and trust.
pub async fn presented(
    node: &Node,
    address: &str,
    port: u16,
    pg: bool,
) -> anyhow::Result<CertInfo> {
    let tls = node.tls()?;
    let exchange = async {
        let s = tls_connect(address, port, pg, &tls.ca_pem, &tls.cert_pem, &tls.key_pem).await?;
        let der = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?
            .to_vec();
        Ok::<_, anyhow::Error>(pki::cert_info_der(&der)?)
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no TLS answer within 3 s"))?
}

/// Whether the etcd of the member at `address` accepts `cert_pem` as a client certificate:
/// an HTTP request over the connection must be answered (with TLS 1.3 a server refuses a
/// client certificate only after the handshake has completed on the client's side).
async fn trusted_by(
    node: &Node,
    address: &str,
    trust_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = node.cfg.etcd.client_port;
    let exchange = async {
        let mut s = tls_connect(address, port, false, trust_pem, cert_pem, key_pem).await?;
        s.write_all(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        anyhow::ensure!(
            text.starts_with("HTTP/1.1 200"),
            "its etcd ({address}:{port}) refused the certificate"
        );
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {address}:{port} within 5 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_keep_their_shape() {
        // Agents of one cluster exchange these through etcd: the field names are the protocol.
        let a = Answer {
            id: "1-2".into(),
            cert: Some(CertInfo {
                serial: "0a".into(),
                not_after_unix: 5,
            }),
            error: None,
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "1-2", "cert": {"serial": "0a", "not_after_unix": 5}, "error": null})
        );
        assert_eq!(serde_json::from_value::<Answer>(v).unwrap(), a);
        assert_eq!(
            serde_json::to_value(Request {
                id: "x".into(),
                days: Some(3)
            })
            .unwrap(),
            serde_json::json!({"id": "x", "days": 3})
        );
        // A requester that sends no validity gets the node's configured one.
        assert_eq!(
            serde_json::from_value::<Request>(serde_json::json!({"id": "x"}))
                .unwrap()
                .days,
            None
        );
    }
}
