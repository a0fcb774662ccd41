//! `rotate-secrets --search`: a new search password on every node, accepted *beside* the old
//! one until `--finish`, so frontends move over one at a time and none is cut off.
//!
//! The agent the operator asked generates the password and sends it to each node in turn
//! (`node_requests`, through etcd, sealed with a key only holders of the cluster's secrets
//! file can derive: etcd keeps old revisions on disk). Each node writes it into its secrets
//! file (the old one kept as `previous_auth_password`) and into its search service's settings,
//! which the running service re-reads at its next request. The requester checks on that node
//! that the new password is accepted (and the old one still, or no longer after `--finish`)
//! before moving on.

use crate::dcs::{keys, Dcs};
use crate::node::Node;
use larder_core::secrets::{Secret, Secrets};
use ring::aead;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Accept the new password beside the current one.
    Stage,
    /// Drop the replaced password.
    Finish,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: String,
    pub step: Step,
    /// The new search password, [`seal`]ed (stage only).
    #[serde(default)]
    pub sealed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub id: String,
    pub error: Option<String>,
}

crate::node_requests::tagged_by_id!(Request, Answer);

/// The AEAD key of rotation requests: derived from the cluster CA's private key, which every
/// member (and only a holder of the secrets file) has.
fn key(secrets: &Secrets) -> aead::LessSafeKey {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!(
            "larder rotate-secrets v1\n{}",
            secrets.larder.ca_key_pem.expose()
        )
        .as_bytes(),
    );
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, digest.as_ref()).expect("32-byte key");
    aead::LessSafeKey::new(unbound)
}

/// `text` encrypted and authenticated for the cluster's members: base64 of nonce ‖ ciphertext.
pub fn seal(secrets: &Secrets, text: &str) -> anyhow::Result<String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; aead::NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
    let mut data = text.as_bytes().to_vec();
    key(secrets)
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut data,
        )
        .map_err(|_| anyhow::anyhow!("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend(data);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// The text of [`seal`]; an error if it was sealed with other secrets or altered.
pub fn unseal(secrets: &Secrets, sealed: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(sealed)?;
    anyhow::ensure!(raw.len() > aead::NONCE_LEN, "sealed value too short");
    let (nonce, ct) = raw.split_at(aead::NONCE_LEN);
    let mut ct = ct.to_vec();
    let plain = key(secrets)
        .open_in_place(
            aead::Nonce::try_assume_unique_for_key(nonce).expect("nonce length"),
            aead::Aad::empty(),
            &mut ct,
        )
        .map_err(|_| {
            anyhow::anyhow!(
                "the new secret does not open with this node's secrets file: is it the cluster's?"
            )
        })?;
    Ok(String::from_utf8(plain.to_vec())?)
}

/// Apply one step to this node: its secrets file, then its search service's settings.
pub fn apply_local(node: &Node, req: &Request) -> anyhow::Result<()> {
    let path = node.paths.secrets_file();
    let mut secrets = Secrets::load(&path)?;
    let s = &mut secrets.elasticsearch;
    anyhow::ensure!(
        s.has_credentials(),
        "this cluster's secrets file has no search credentials (a cluster created before them): add elasticsearch.auth_username/auth_password first (README, Security)"
    );
    match req.step {
        Step::Stage => {
            anyhow::ensure!(
                s.previous_auth_password.expose().is_empty(),
                "a search password rotation is already under way on this node: finish it with `larder rotate-secrets --search --finish`"
            );
            let new = unseal(&secrets, req.sealed.as_deref().unwrap_or_default())?;
            let s = &mut secrets.elasticsearch;
            s.previous_auth_password = std::mem::replace(&mut s.auth_password, Secret::new(new));
        }
        Step::Finish => {
            anyhow::ensure!(
                !s.previous_auth_password.expose().is_empty(),
                "no search password rotation is under way on this node (nothing to finish)"
            );
            s.previous_auth_password = Secret::default();
        }
    }
    crate::node::write_private(&path, secrets.to_json().as_bytes())?;
    let account = crate::accounts::ensure(crate::accounts::SEARCH_USER)?;
    crate::search_service::write_settings(node, account)?;
    tracing::info!(
        "search password rotation: {} on this node",
        match req.step {
            Step::Stage => "new password accepted beside the old",
            Step::Finish => "old password dropped",
        }
    );
    Ok(())
}

/// Answer the requests addressed to this node, until shutdown.
pub async fn serve(
    node: Node,
    dcs: Dcs,
    requests: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let guid = node.state.guid.clone();
    crate::node_requests::serve(
        dcs,
        requests,
        keys::secret_rotation(&guid),
        keys::secret_rotated(&guid),
        shutdown,
        |req: Request| {
            let node = &node;
            async move {
                let error = apply_local(node, &req).err().map(|e| {
                    tracing::warn!("rotate-secrets: {e:#}");
                    format!("{e:#}")
                });
                Answer { id: req.id, error }
            }
        },
    )
    .await
}

/// Stage a new search password on every node, or finish the rotation; the names of the nodes
/// done, in order. Stops at the first node that fails or whose search service does not
/// answer as expected.
pub async fn rotate_search(node: &Node, dcs: &Dcs, step: Step) -> anyhow::Result<Vec<String>> {
    let secrets = node.secrets_now();
    let s = &secrets.elasticsearch;
    anyhow::ensure!(
        s.has_credentials() && node.security.search_auth,
        "search authentication is off on this cluster: there is no password to rotate"
    );
    let under_way = !s.previous_auth_password.expose().is_empty();
    match step {
        Step::Stage => anyhow::ensure!(
            !under_way,
            "a search password rotation is already under way: move the frontends to the new password, then `larder rotate-secrets --search --finish`; nothing was changed"
        ),
        Step::Finish => anyhow::ensure!(
            under_way,
            "no search password rotation is under way (start one with `larder rotate-secrets --search`); nothing was changed"
        ),
    }
    let kvs = dcs.get_prefix(keys::PREFIX).await?;
    let view = larder_core::decide::DcsView::from_kvs(
        kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        &node.state.guid,
    );
    let silent: Vec<&str> = view
        .nodes
        .iter()
        .filter(|n| !view.members.iter().any(|m| m.guid == n.guid))
        .map(|n| n.name.as_str())
        .collect();
    anyhow::ensure!(
        silent.is_empty(),
        "{} not reporting (agent down?): every node must take the new password; start it first; nothing was changed",
        silent.join(", ")
    );
    let user = s.auth_username.clone();
    let (old, new) = match step {
        Step::Stage => (
            s.auth_password.expose().to_string(),
            crate::node::new_search_credentials().1.expose().to_string(),
        ),
        Step::Finish => (
            s.previous_auth_password.expose().to_string(),
            s.auth_password.expose().to_string(),
        ),
    };
    let sealed = match step {
        Step::Stage => Some(seal(&secrets, &new)?),
        Step::Finish => None,
    };
    let mut nodes = view.nodes.clone();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut done: Vec<String> = Vec::new();
    for t in nodes {
        let req = Request {
            id: crate::node_requests::new_id(),
            step,
            sealed: sealed.clone(),
        };
        let before = |e: String| {
            anyhow::anyhow!(
                "{}: {e}; done before it: {}",
                t.name,
                if done.is_empty() {
                    "none".to_string()
                } else {
                    done.join(", ")
                }
            )
        };
        let a: Answer = crate::node_requests::ask(
            dcs,
            &keys::secret_rotation(&t.guid),
            &keys::secret_rotated(&t.guid),
            &req,
            ANSWER_TIMEOUT,
        )
        .await
        .map_err(|e| before(format!("{e:#}")))?;
        if let Some(e) = a.error {
            return Err(before(e));
        }
        // The node's search service, as a frontend sees it: new accepted; old accepted until
        // the finish.
        let want_old = if step == Step::Stage { 200 } else { 401 };
        let deadline = Instant::now() + CHECK_TIMEOUT;
        loop {
            let n = crate::search_service::get_as(node, &t.address, "/", Some((&user, &new)))
                .await
                .map(|r| r.0);
            let o = crate::search_service::get_as(node, &t.address, "/", Some((&user, &old)))
                .await
                .map(|r| r.0);
            if n == Some(200) && o == Some(want_old) {
                break;
            }
            if Instant::now() > deadline {
                return Err(before(format!(
                    "its search service answers {n:?} to the new password and {o:?} to the old one (want 200 and {want_old})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        done.push(t.name.clone());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(ca_key: &str) -> Secrets {
        let mut s: Secrets = serde_json::from_value(serde_json::json!({
            "postgresql": {"db_superuser_password": "a", "replication_password": "b"},
            "etcd": {"initial_cluster_token": "c"},
            "elasticsearch": {"cluster_name": "x"},
            "larder": {"ca_cert_pem": "-----BEGIN CERTIFICATE-----\nx\n", "ca_key_pem": "k"},
        }))
        .unwrap();
        s.larder.ca_key_pem = Secret::new(ca_key);
        s
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_cluster_secrets() {
        let ours = secrets("-----BEGIN PRIVATE KEY-----\nours\n");
        let theirs = secrets("-----BEGIN PRIVATE KEY-----\ntheirs\n");
        let a = seal(&ours, "n3w-pa55").unwrap();
        let b = seal(&ours, "n3w-pa55").unwrap();
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.contains("n3w-pa55"));
        assert_eq!(unseal(&ours, &a).unwrap(), "n3w-pa55");
        assert!(unseal(&theirs, &a)
            .unwrap_err()
            .to_string()
            .contains("secrets file"));
        // Altered in transit.
        use base64::Engine;
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        *raw.last_mut().unwrap() ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(unseal(&ours, &altered).is_err());
        assert!(unseal(&ours, "AAAA").is_err());
    }
}
