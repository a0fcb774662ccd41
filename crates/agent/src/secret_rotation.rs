//! `rotate-secrets`: new passwords on every node, sent by the agent the operator asked to
//! each node in turn (`node_requests`, through etcd, sealed with a key only holders of the
//! cluster's secrets file can derive: etcd keeps old revisions on disk).
//!
//! `--search`: a new search password accepted *beside* the old one until `--finish`, so
//! frontends move over one at a time and none is cut off. Each node writes it into its secrets
//! file (the old one kept as `previous_auth_password`) and into its search service's settings,
//! which the running service re-reads at its next request. The requester checks on that node
//! that the new password is accepted (and the old one still, or no longer after `--finish`)
//! before moving on.
//!
//! `--postgresql`: PostgreSQL holds one password per role, so the superuser's and the
//! replication role's change in one run, in three steps, none of which locks a node out:
//! 1. stage: every node keeps the new passwords as `next_*` in its secrets file (and its search
//!    service's settings); from then on everything that logs in tries the current password
//!    and, refused, the staged one;
//! 2. the leader sets both roles' new passwords (one transaction); the catalog reaches the
//!    followers by WAL, and sessions already open (frontends', replication) stay;
//! 3. every node, followers first, once its own catalog holds the new passwords, makes them
//!    current (the old ones dropped) and hands them to every copy: the WAL receiver's password
//!    file (and the receiver reconnects with it, checked), the search service's settings, the
//!    pgBackRest TLS server (restarted).
//!
//! The new passwords are kept sealed in etcd ([`keys::PG_PASSWORD_ROTATION`]) until every
//! node swapped, so a run that stopped part-way (a node failed, the leader changed) is carried
//! on by running the command again, on any member: each step is idempotent.

use crate::dcs::{keys, Dcs};
use crate::node::Node;
use crate::state::Snapshot;
use crate::supervisor::Supervisor;
use larder_core::decide::DcsView;
use larder_core::model::{NodeRecord, NodeRole, PgState};
use larder_core::secrets::{Secret, Secrets};
use ring::aead;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// A PostgreSQL step may wait for replay (the catalog) and for the WAL receiver to reconnect.
const PG_ANSWER_TIMEOUT: Duration = Duration::from_secs(90);
const PG_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Search: accept the new password beside the current one.
    Stage,
    /// Search: drop the replaced password.
    Finish,
    /// PostgreSQL: keep the new passwords as `next_*` (tried after the current ones).
    #[serde(rename = "postgresql-stage")]
    PgStage,
    /// PostgreSQL, the leader: set both roles' new passwords.
    #[serde(rename = "postgresql-alter")]
    PgAlter,
    /// PostgreSQL: once this node's catalog holds them, make the new passwords current.
    #[serde(rename = "postgresql-swap")]
    PgSwap,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: String,
    pub step: Step,
    /// The new search password (search stage), or the new `PgPasswords` as JSON (every
    /// PostgreSQL step), [`seal`]ed.
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

/// What a node's handler of these requests works with.
struct Local {
    node: Node,
    sup: Supervisor,
    ha: tokio::sync::watch::Receiver<Snapshot>,
}

/// Apply one step to this node.
async fn apply(local: &Local, req: &Request) -> anyhow::Result<()> {
    match req.step {
        Step::Stage | Step::Finish => apply_local(&local.node, req),
        Step::PgStage | Step::PgAlter | Step::PgSwap => apply_postgresql(local, req).await,
    }
}

/// Apply one search step to this node: its secrets file, then its search service's settings.
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
        Step::PgStage | Step::PgAlter | Step::PgSwap => {
            anyhow::bail!("not a search password step")
        }
    }
    crate::node::write_private(&path, secrets.to_json().as_bytes())?;
    let account = crate::accounts::ensure(crate::accounts::SEARCH_USER)?;
    crate::search_service::write_settings(node, account)?;
    tracing::info!(
        "search password rotation: {} on this node",
        if req.step == Step::Stage {
            "new password accepted beside the old"
        } else {
            "old password dropped"
        }
    );
    Ok(())
}

/// Answer the requests addressed to this node, until shutdown.
pub async fn serve(
    node: Node,
    dcs: Dcs,
    sup: Supervisor,
    ha: tokio::sync::watch::Receiver<Snapshot>,
    requests: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let guid = node.state.guid.clone();
    let local = Local { node, sup, ha };
    crate::node_requests::serve(
        dcs,
        requests,
        keys::secret_rotation(&guid),
        keys::secret_rotated(&guid),
        shutdown,
        |req: Request| {
            let local = &local;
            async move {
                let error = apply(local, &req).await.err().map(|e| {
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
        Step::PgStage | Step::PgAlter | Step::PgSwap => {
            anyhow::bail!("{step:?} is not a search password step")
        }
    }
    let view = read_view(node, dcs).await?;
    every_node_reporting(&view)?;
    let user = s.auth_username.clone();
    let (old, new) = match step {
        Step::Stage => (
            s.auth_password.expose().to_string(),
            crate::node::new_search_credentials().1.expose().to_string(),
        ),
        _ => (
            s.previous_auth_password.expose().to_string(),
            s.auth_password.expose().to_string(),
        ),
    };
    let sealed = match step {
        Step::Stage => Some(seal(&secrets, &new)?),
        _ => None,
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

async fn read_view(node: &Node, dcs: &Dcs) -> anyhow::Result<DcsView> {
    let kvs = dcs.get_prefix(keys::PREFIX).await?;
    Ok(DcsView::from_kvs(
        kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        &node.state.guid,
    ))
}

/// Every registered node must take the new secret: refuse up front, before anything changes,
/// when one is not reporting.
fn every_node_reporting(view: &DcsView) -> anyhow::Result<()> {
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
    Ok(())
}

/// The new PostgreSQL passwords, as sealed in the requests and the rotation record.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
struct PgPasswords {
    db_superuser_password: Secret,
    replication_password: Secret,
}

/// [`keys::PG_PASSWORD_ROTATION`]: the rotation under way, so a later run carries it on.
#[derive(Serialize, Deserialize)]
struct PgRotation {
    /// [`PgPasswords`] as JSON, [`seal`]ed.
    sealed: String,
    started_by: String,
    started_unix_ms: u64,
}

/// Where a node stands in the rotation to `new`, from its secrets file.
#[derive(Debug, PartialEq)]
enum PgStanding {
    /// Neither staged nor current.
    Before,
    Staged,
    Swapped,
}

fn pg_standing(pg: &larder_core::secrets::PgSecrets, new: &PgPasswords) -> PgStanding {
    if pg.next_db_superuser_password == new.db_superuser_password
        && pg.next_replication_password == new.replication_password
    {
        PgStanding::Staged
    } else if pg.db_superuser_password == new.db_superuser_password
        && pg.replication_password == new.replication_password
        && !pg.next_staged()
    {
        PgStanding::Swapped
    } else {
        PgStanding::Before
    }
}

/// One PostgreSQL step on this node (each can be repeated: a rotation run again after it
/// stopped part-way repeats the steps a node already took).
async fn apply_postgresql(local: &Local, req: &Request) -> anyhow::Result<()> {
    let node = &local.node;
    let path = node.paths.secrets_file();
    let mut secrets = Secrets::load(&path)?;
    let new: PgPasswords = serde_json::from_str(&unseal(
        &secrets,
        req.sealed.as_deref().unwrap_or_default(),
    )?)?;
    let standing = pg_standing(&secrets.postgresql, &new);
    let (su, repl) = (
        new.db_superuser_password.expose(),
        new.replication_password.expose(),
    );
    match req.step {
        Step::PgStage => {
            if standing != PgStanding::Before {
                return Ok(());
            }
            anyhow::ensure!(
                !secrets.postgresql.next_staged(),
                "this node's secrets file holds other staged PostgreSQL passwords (`next_*`) than this rotation's; nothing was changed on it"
            );
            let pg = &mut secrets.postgresql;
            pg.next_db_superuser_password = new.db_superuser_password.clone();
            pg.next_replication_password = new.replication_password.clone();
            crate::node::write_private(&path, secrets.to_json().as_bytes())?;
            // The search service tries the staged password too from its next connection.
            write_search_settings(node)?;
            tracing::info!("PostgreSQL password rotation: new passwords staged on this node");
        }
        Step::PgAlter => {
            anyhow::ensure!(
                standing != PgStanding::Before,
                "the new passwords are not staged on this node: it would lock itself out"
            );
            let leads = {
                let s = local.ha.borrow();
                s.role == Some(NodeRole::Leader)
                    && s.pg.as_ref().is_some_and(|p| p.state == PgState::Primary)
            };
            anyhow::ensure!(leads, "this node is not the writable leader (any more)");
            let client = crate::postgres::connect(node, Duration::from_secs(5)).await?;
            crate::postgres::set_passwords(node, &client, su, repl).await?;
            tracing::info!("PostgreSQL password rotation: both roles' passwords changed");
        }
        Step::PgSwap => {
            anyhow::ensure!(
                standing != PgStanding::Before,
                "the new passwords are not staged on this node"
            );
            // Only once this node's catalog holds them may they become its only ones.
            let deadline = Instant::now() + PG_WAIT;
            let client = loop {
                let client = crate::postgres::connect(node, Duration::from_secs(5)).await?;
                if crate::postgres::catalog_holds(node, &client, su, repl).await? {
                    break client;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "its PostgreSQL has not replayed the new passwords within {} s; nothing was changed on it",
                    PG_WAIT.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let receiver = crate::postgres::wal_receiver(&client).await?.map(|r| r.0);
            if standing == PgStanding::Staged {
                let pg = &mut secrets.postgresql;
                pg.db_superuser_password = std::mem::take(&mut pg.next_db_superuser_password);
                pg.replication_password = std::mem::take(&mut pg.next_replication_password);
                crate::node::write_private(&path, secrets.to_json().as_bytes())?;
            }
            hand_over(local, receiver).await?;
            tracing::info!("PostgreSQL password rotation: the new passwords are this node's");
        }
        Step::Stage | Step::Finish => anyhow::bail!("not a PostgreSQL password step"),
    }
    Ok(())
}

fn write_search_settings(node: &Node) -> anyhow::Result<()> {
    if node.cfg.elasticsearch.enable {
        let account = crate::accounts::ensure(crate::accounts::SEARCH_USER)?;
        crate::search_service::write_settings(node, account)?;
    }
    Ok(())
}

/// Give the (now current) passwords of the secrets file to every copy of them on this node.
/// `receiver`: the WAL receiver's pid before, on a standby.
async fn hand_over(local: &Local, receiver: Option<i32>) -> anyhow::Result<()> {
    let (node, sup) = (&local.node, &local.sup);
    write_search_settings(node)?;
    if sup
        .state(crate::pgbackrest::SERVICE)
        .is_some_and(|s| s.want_up)
    {
        // It has the password in its environment: a new spec, a restart (only the backup
        // channel between nodes pauses).
        sup.replace_spec(crate::pgbackrest::service_spec(node))?;
        sup.restart(crate::pgbackrest::SERVICE, Duration::from_secs(10))
            .await?;
    }
    let following = {
        let s = local.ha.borrow();
        match (&s.role, &s.leader) {
            (Some(NodeRole::Follower), Some(l)) if l.guid != node.state.guid => Some(l.clone()),
            _ => None,
        }
    };
    let Some(leader) = following else {
        return Ok(());
    };
    if crate::postgres::write_follow_conf(node, Some(&leader))? {
        sup.signal(crate::postgres::SERVICE, nix::sys::signal::Signal::SIGHUP)?;
    }
    // The WAL receiver reads its password file only when it connects: have it reconnect now
    // (SIGTERM ends just the receiver; PostgreSQL starts a new one at once), while this
    // command can still tell if the new password is refused.
    let still_receiver = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("walreceiver"))
    };
    if let Some(pid) = receiver.filter(|p| still_receiver(*p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    // Streaming again through a new WAL receiver is the proof the new password works.
    let deadline = Instant::now() + PG_WAIT;
    loop {
        let now = match crate::postgres::connect(node, Duration::from_secs(5)).await {
            Ok(c) => crate::postgres::wal_receiver(&c).await.ok().flatten(),
            Err(_) => None,
        };
        if let Some((pid, status)) = &now {
            if status == "streaming" && receiver != Some(*pid) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "its WAL receiver did not reconnect to {} with the new replication password within {} s (now: {now:?}); see `larder tail postgresql`",
            leader.name,
            PG_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a finished `--postgresql` run did.
pub struct PgRotated {
    /// The nodes, in the order they swapped.
    pub nodes: Vec<String>,
    /// It carried on a rotation an earlier run (by this member) had started.
    pub carried_on_from: Option<String>,
}

/// New passwords for the superuser (`postgresql.db_superuser`) and the replication role on
/// every node (see the module comment), or the rotation an earlier run left part-way.
pub async fn rotate_postgresql(node: &Node, dcs: &Dcs) -> anyhow::Result<PgRotated> {
    let secrets = node.secrets_now();
    let view = read_view(node, dcs).await?;
    every_node_reporting(&view)?;
    let Some(leader) = view.leader.clone() else {
        anyhow::bail!("the cluster has no leader right now; retry when `larder cluster-status` shows one; nothing was changed");
    };
    let lagging: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.guid != leader.guid && m.pg != PgState::Streaming)
        .map(|m| m.name.as_str())
        .collect();
    anyhow::ensure!(
        lagging.is_empty(),
        "{} not streaming from the leader, and every node must replay the new passwords: wait until `larder cluster-status` shows it streaming; nothing was changed",
        lagging.join(", ")
    );
    let (sealed, carried_on_from) = match dcs.get(keys::PG_PASSWORD_ROTATION).await? {
        Some(kv) => {
            let r: PgRotation = serde_json::from_slice(&kv.value)?;
            (r.sealed, Some(r.started_by))
        }
        None => {
            let new = PgPasswords {
                db_superuser_password: Secret::new(crate::node::new_password(40)),
                replication_password: Secret::new(crate::node::new_password(40)),
            };
            let sealed = seal(&secrets, &serde_json::to_string(&new)?)?;
            let record = PgRotation {
                sealed: sealed.clone(),
                started_by: node.cfg.fqdn.clone(),
                started_unix_ms: crate::clock::unix_ms(),
            };
            anyhow::ensure!(
                dcs.create(
                    keys::PG_PASSWORD_ROTATION,
                    &serde_json::to_vec(&record)?,
                    None
                )
                .await?,
                "another PostgreSQL password rotation started meanwhile; nothing was changed"
            );
            (sealed, None)
        }
    };
    let new: PgPasswords = serde_json::from_str(&unseal(&secrets, &sealed)?)?;
    let mut nodes = view.nodes.clone();
    // The leader swaps last: a problem shows on a follower first.
    nodes.sort_by_key(|n| (n.guid == leader.guid, n.name.clone()));
    let stopped = |t: &NodeRecord, phase: &str, e: String| {
        anyhow::anyhow!(
            "{}: {e} ({phase}); the rotation stopped there, no node is locked out (a node not yet switched tries the new passwords after its own): run `larder rotate-secrets --postgresql` again to carry it on",
            t.name
        )
    };
    let ask = |t: NodeRecord, step: Step, phase: &'static str| {
        let sealed = sealed.clone();
        async move {
            let req = Request {
                id: crate::node_requests::new_id(),
                step,
                sealed: Some(sealed),
            };
            let a: Answer = crate::node_requests::ask(
                dcs,
                &keys::secret_rotation(&t.guid),
                &keys::secret_rotated(&t.guid),
                &req,
                PG_ANSWER_TIMEOUT,
            )
            .await
            .map_err(|e| stopped(&t, phase, format!("{e:#}")))?;
            match a.error {
                Some(e) => Err(stopped(&t, phase, e)),
                None => Ok(()),
            }
        }
    };
    let same_leader = || async {
        let now = read_view(node, dcs).await?;
        anyhow::ensure!(
            now.term == view.term,
            "the leadership changed during the rotation (term {} → {}); no node is locked out: run `larder rotate-secrets --postgresql` again to carry it on",
            view.term,
            now.term
        );
        Ok(())
    };
    for t in &nodes {
        ask(t.clone(), Step::PgStage, "staging the new passwords").await?;
    }
    same_leader().await?;
    let leader_node = nodes
        .iter()
        .find(|n| n.guid == leader.guid)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the leader {} is not a registered node", leader.name))?;
    ask(leader_node, Step::PgAlter, "changing the roles' passwords").await?;
    let mut done = Vec::new();
    for t in &nodes {
        same_leader().await?;
        ask(t.clone(), Step::PgSwap, "switching to the new passwords").await?;
        done.push(t.name.clone());
    }
    // A node joining later proves it holds the cluster's secrets by their fingerprint, which
    // covers these passwords.
    if let Some(kv) = dcs.get(keys::CLUSTER).await? {
        let mut record: serde_json::Value = serde_json::from_slice(&kv.value)?;
        let mut now = secrets.clone();
        now.postgresql.db_superuser_password = new.db_superuser_password.clone();
        now.postgresql.replication_password = new.replication_password.clone();
        record["fingerprint"] = now.fingerprint().into();
        dcs.put(keys::CLUSTER, record.to_string().as_bytes(), None)
            .await?;
    }
    dcs.delete(keys::PG_PASSWORD_ROTATION).await?;
    Ok(PgRotated {
        nodes: done,
        carried_on_from,
    })
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
    fn where_a_node_stands_in_a_postgresql_rotation() {
        let s = secrets("-----BEGIN PRIVATE KEY-----\nours\n");
        let new = PgPasswords {
            db_superuser_password: Secret::new("su2"),
            replication_password: Secret::new("repl2"),
        };
        let mut pg = s.postgresql.clone();
        assert_eq!(pg_standing(&pg, &new), PgStanding::Before);
        pg.next_db_superuser_password = Secret::new("su2");
        pg.next_replication_password = Secret::new("repl2");
        assert_eq!(pg_standing(&pg, &new), PgStanding::Staged);
        pg.db_superuser_password = std::mem::take(&mut pg.next_db_superuser_password);
        pg.replication_password = std::mem::take(&mut pg.next_replication_password);
        assert_eq!(pg_standing(&pg, &new), PgStanding::Swapped);
        // Other staged passwords: neither.
        pg.next_db_superuser_password = Secret::new("su3");
        assert_eq!(pg_standing(&pg, &new), PgStanding::Before);
        // The request carries them sealed, never in clear.
        let sealed = seal(&s, &serde_json::to_string(&new).unwrap()).unwrap();
        assert!(!sealed.contains("su2"));
        let back: PgPasswords = serde_json::from_str(&unseal(&s, &sealed).unwrap()).unwrap();
        assert!(back == new);
        // Steps an agent of an older release does not know: it cannot parse the request, so
        // it never mistakes one for a search step (the requester times out naming it).
        assert_eq!(
            serde_json::to_string(&Step::PgSwap).unwrap(),
            "\"postgresql-swap\""
        );
        assert_eq!(serde_json::to_string(&Step::Stage).unwrap(), "\"stage\"");
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
