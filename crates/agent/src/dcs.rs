//! The etcd client Larder uses (the "distributed configuration store"), with the key layout
//! and the retry rule: every call gets a deadline, and a failed call moves on to the next
//! member, so one dead member never fails a share of requests.

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, MemberAddOptions, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::Mutex;
use tonic::Code as tonic_code;

/// The key layout lives in the pure core, shared with the CLI.
pub use larder_core::keys;
use larder_core::keys::{LAST_LEADER, LEADER, TERM};

#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    #[error("etcd call timed out after {0:?} on every member")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("no etcd member reachable ({0})")]
    Unreachable(String),
}

#[derive(Clone)]
pub struct TlsFiles {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

struct Endpoint {
    url: String,
    client: Mutex<Option<Client>>,
    /// Until when to skip this member after a failure (unless every member is failing).
    down_until: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Clone)]
pub struct Dcs {
    endpoints: Arc<std::sync::RwLock<Vec<Arc<Endpoint>>>>,
    /// URL of the member that answered last; calls start there.
    current: Arc<std::sync::Mutex<String>>,
    timeout: Duration,
    /// Shared by every clone: `set_tls` (after `rotate-certs`) reaches them all.
    tls: Arc<std::sync::RwLock<TlsFiles>>,
    /// Open keep-alive streams, one slot per lease. Opening a gRPC stream per renewal cost
    /// more than the renewal itself (the leader renews several times a second); each slot has
    /// its own lock so the leader lease's renewer never waits behind the status lease's.
    keepers: Arc<std::sync::Mutex<HashMap<i64, KeeperSlot>>>,
}

type KeeperSlot = Arc<Mutex<Option<Keeper>>>;

/// A keep-alive stream of one lease, open on the member at `url`.
struct Keeper {
    url: String,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    used: Instant,
}

/// A slot unused this long belongs to a lease nobody renews any more (leadership lost, say):
/// its stream is closed when the next slot is made.
const KEEPER_IDLE: Duration = Duration::from_secs(60);

/// A key's value with its etcd metadata.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
    pub mod_revision: i64,
}

impl Dcs {
    /// Connections are made lazily, per member, on first use.
    pub fn new(urls: Vec<String>, tls: TlsFiles, timeout: Duration) -> Dcs {
        Dcs {
            endpoints: Arc::new(std::sync::RwLock::new(
                urls.into_iter()
                    .map(|url| {
                        Arc::new(Endpoint {
                            url,
                            client: Mutex::new(None),
                            down_until: std::sync::Mutex::new(None),
                        })
                    })
                    .collect(),
            )),
            current: Arc::new(std::sync::Mutex::new(String::new())),
            timeout,
            tls: Arc::new(std::sync::RwLock::new(tls)),
            keepers: Arc::default(),
        }
    }

    /// Use a new certificate and trust from now on: every cached connection is dropped, so
    /// the next call connects with them (a peer that now presents a certificate from a CA
    /// only the new trust holds must still be reachable).
    pub async fn set_tls(&self, tls: TlsFiles) {
        *self.tls.write().unwrap() = tls;
        self.keepers.lock().unwrap().clear();
        let endpoints: Vec<Arc<Endpoint>> = self.endpoints.read().unwrap().clone();
        for e in endpoints {
            *e.client.lock().await = None;
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.endpoints
            .read()
            .unwrap()
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    /// Replace the member list (as membership changes), keeping live connections.
    pub fn set_urls(&self, urls: &[String]) {
        let mut g = self.endpoints.write().unwrap();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        for u in urls {
            match g.iter().find(|e| &e.url == u) {
                Some(e) => next.push(e.clone()),
                None => next.push(Arc::new(Endpoint {
                    url: u.clone(),
                    client: Mutex::new(None),
                    down_until: std::sync::Mutex::new(None),
                })),
            }
        }
        if !next.is_empty() {
            *g = next;
        }
    }

    fn endpoint(&self, i: usize) -> Option<Arc<Endpoint>> {
        self.endpoints.read().unwrap().get(i).cloned()
    }

    async fn client(&self, i: usize) -> Result<Client, DcsError> {
        let ep = self
            .endpoint(i)
            .ok_or_else(|| DcsError::Unreachable("member list changed".into()))?;
        let mut g = ep.client.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let tls = {
            let t = self.tls.read().unwrap();
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &t.key_pem))
        };
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(2), self.timeout);
        let c = tokio::time::timeout(self.timeout, Client::connect([ep.url.clone()], Some(opts)))
            .await
            .map_err(|_| DcsError::Timeout(self.timeout))?
            .map_err(|e| DcsError::Etcd(e.to_string()))?;
        *g = Some(c.clone());
        Ok(c)
    }

    async fn forget(&self, i: usize) {
        if let Some(ep) = self.endpoint(i) {
            *ep.client.lock().await = None;
            *ep.down_until.lock().unwrap() =
                Some(std::time::Instant::now() + Duration::from_secs(3));
        }
    }

    /// Members to try, in order: the last one that answered, then the others, with members
    /// that failed in the last seconds moved to the end (a dead member then costs nothing).
    fn order(&self) -> Vec<usize> {
        let eps = self.endpoints.read().unwrap();
        let cur = self.current.lock().unwrap().clone();
        let now = std::time::Instant::now();
        let mut idx: Vec<usize> = (0..eps.len()).collect();
        idx.sort_by_key(|&i| {
            let down = eps[i].down_until.lock().unwrap().is_some_and(|t| t > now);
            (down, eps[i].url != cur)
        });
        idx
    }

    /// One request attempt under the per-call deadline, timed for `/metrics`.
    async fn attempt<T, Fut>(
        &self,
        fut: Fut,
    ) -> Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let sent = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, fut).await;
        crate::metrics::record_etcd(sent.elapsed(), matches!(answer, Ok(Ok(_))));
        answer
    }

    /// Run `f` against members in turn, starting with the last one that worked.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, DcsError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let urls = self.urls();
        let mut last = String::from("no endpoints");
        for i in self.order() {
            if i >= urls.len() {
                continue;
            }
            let c = match self.client(i).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{}: {e}", urls[i]);
                    self.forget(i).await;
                    continue;
                }
            };
            match self.attempt(f(c)).await {
                Ok(Ok(v)) => {
                    *self.current.lock().unwrap() = urls[i].clone();
                    if let Some(ep) = self.endpoint(i) {
                        *ep.down_until.lock().unwrap() = None;
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    last = format!("{}: {e}", urls[i]);
                    if !retryable(&e) {
                        return Err(DcsError::Etcd(e.to_string()));
                    }
                    self.forget(i).await;
                }
                Err(_) => {
                    last = format!("{}: timed out after {:?}", urls[i], self.timeout);
                    self.forget(i).await;
                }
            }
        }
        Err(DcsError::Unreachable(last))
    }

    /// The member the last successful call went to.
    pub fn current_url(&self) -> String {
        self.current.lock().unwrap().clone()
    }

    /// Watch every key under `prefix` on the member calls currently go to (the first member
    /// in call order). Returns that member's URL with the stream, so a watcher can re-open
    /// its watch when calls move to another member.
    pub async fn watch_prefix(&self, prefix: &str) -> Result<(String, WatchStream), DcsError> {
        let urls = self.urls();
        let i = *self
            .order()
            .first()
            .ok_or_else(|| DcsError::Unreachable("no endpoints".into()))?;
        let url = urls
            .get(i)
            .cloned()
            .ok_or_else(|| DcsError::Unreachable("member list changed".into()))?;
        let mut c = self.client(i).await?;
        let opts = WatchOptions::new().with_prefix();
        match tokio::time::timeout(self.timeout, c.watch(prefix, Some(opts))).await {
            Ok(Ok(stream)) => Ok((url, stream)),
            Ok(Err(e)) => {
                self.forget(i).await;
                Err(DcsError::Etcd(e.to_string()))
            }
            Err(_) => {
                self.forget(i).await;
                Err(DcsError::Timeout(self.timeout))
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, DcsError> {
        let key = key.to_string();
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(to_kv))
    }

    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, DcsError> {
        let prefix = prefix.to_string();
        let resp = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(resp.kvs().iter().map(to_kv).collect())
    }

    /// A prefix read answered by the member itself, without a quorum (possibly stale): what
    /// this member last knew, for recovering from the loss of a majority.
    pub async fn get_prefix_local(&self, prefix: &str) -> Result<Vec<Kv>, DcsError> {
        let prefix = prefix.to_string();
        let resp = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_serializable()),
                    )
                    .await
                }
            })
            .await?;
        Ok(resp.kvs().iter().map(to_kv).collect())
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), DcsError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let opts = lease.map(|l| PutOptions::new().with_lease(l));
                c.put(key, value, opts).await
            }
        })
        .await?;
        Ok(())
    }

    /// Write `key` and read every key under `prefix` in one linearizable round trip (a
    /// transaction: the read sees the write). Returns the store revision the read saw.
    pub async fn put_and_get_prefix(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
        prefix: &str,
    ) -> Result<(i64, Vec<Kv>), DcsError> {
        let (key, value, prefix) = (key.to_string(), value.to_vec(), prefix.to_string());
        let resp = self
            .call(|mut c| {
                let (key, value, prefix) = (key.clone(), value.clone(), prefix.clone());
                async move {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    let txn = Txn::new().and_then([
                        TxnOp::put(key, value, opts),
                        TxnOp::get(prefix, Some(GetOptions::new().with_prefix())),
                    ]);
                    c.txn(txn).await
                }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().iter().map(to_kv).collect()),
                _ => None,
            })
            .ok_or_else(|| DcsError::Etcd("transaction answered without its read".into()))?;
        Ok((revision, kvs))
    }

    pub async fn delete(&self, key: &str) -> Result<(), DcsError> {
        let key = key.to_string();
        self.call(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    /// Put `key` only if it does not exist. Returns whether it was written.
    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<bool, DcsError> {
        let (key, value) = (key.to_string(), value.to_vec());
        let resp = self
            .call(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    let opts = lease.map(|l| PutOptions::new().with_lease(l));
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, value, opts)]);
                    c.txn(txn).await
                }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Put `key` only while its value is still `expected`. Returns whether it was written.
    pub async fn replace_if(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
    ) -> Result<bool, DcsError> {
        let (key, expected, value) = (key.to_string(), expected.to_vec(), value.to_vec());
        let resp = self
            .call(|mut c| {
                let (key, expected, value) = (key.clone(), expected.clone(), value.clone());
                async move {
                    let txn = Txn::new()
                        .when([Compare::value(key.clone(), CompareOp::Equal, expected)])
                        .and_then([TxnOp::put(key, value, None)]);
                    c.txn(txn).await
                }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Leadership acquisition: the leader key must be absent and the term unchanged; then the
    /// key (bound to `lease`) and the new term are written atomically.
    pub async fn acquire_leader(
        &self,
        expected_term: u64,
        record: &[u8],
        lease: i64,
    ) -> Result<bool, DcsError> {
        let record = record.to_vec();
        let term_cmp = if expected_term == 0 {
            Compare::create_revision(TERM, CompareOp::Equal, 0)
        } else {
            Compare::value(TERM, CompareOp::Equal, expected_term.to_string())
        };
        let resp = self
            .call(|mut c| {
                let record = record.clone();
                let term_cmp = term_cmp.clone();
                async move {
                    let txn = Txn::new()
                        .when([
                            Compare::create_revision(LEADER, CompareOp::Equal, 0),
                            term_cmp,
                        ])
                        .and_then([
                            TxnOp::put(
                                LEADER,
                                record.clone(),
                                Some(PutOptions::new().with_lease(lease)),
                            ),
                            TxnOp::put(TERM, (expected_term + 1).to_string(), None),
                            // Outlives the lease: with failover off, who may lead again.
                            TxnOp::put(LAST_LEADER, record, None),
                        ]);
                    c.txn(txn).await
                }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Delete `key` only while it is still bound to `lease` (never someone else's key).
    pub async fn delete_if_lease(&self, key: &str, lease: i64) -> Result<bool, DcsError> {
        let key = key.to_string();
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    let txn = Txn::new()
                        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(key, None)]);
                    c.txn(txn).await
                }
            })
            .await?;
        Ok(resp.succeeded())
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, DcsError> {
        let r = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok(r.id())
    }

    /// Renew lease `id` once; its remaining TTL in seconds (`0`: the lease is gone). Uses the
    /// lease's open stream while its member answers; on any failure the stream is dropped, the
    /// member is skipped and a new stream is opened on the next one, as for any other call.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, DcsError> {
        let slot = self.keeper_slot(id);
        let mut held = slot.lock().await;
        if let Some(k) = held.as_mut() {
            if self.urls().contains(&k.url) {
                let answer = self
                    .attempt(async {
                        k.keeper.keep_alive().await?;
                        k.stream.message().await
                    })
                    .await;
                if let Ok(Ok(Some(r))) = answer {
                    k.used = Instant::now();
                    if r.ttl() <= 0 {
                        *held = None;
                    }
                    return Ok(r.ttl());
                }
                // A late answer must never be read as the next renewal's: the stream goes.
                let url = k.url.clone();
                *held = None;
                if let Some(i) = self.urls().iter().position(|u| *u == url) {
                    self.forget(i).await;
                }
            } else {
                *held = None;
            }
        }
        let (ttl, keeper, stream) = self
            .call(|mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                let ttl = stream.message().await?.map(|r| r.ttl()).unwrap_or(0);
                Ok((ttl, keeper, stream))
            })
            .await?;
        if ttl > 0 {
            *held = Some(Keeper {
                url: self.current_url(),
                keeper,
                stream,
                used: Instant::now(),
            });
        }
        Ok(ttl)
    }

    /// The keep-alive slot of lease `id` (made on first use; idle slots are closed then).
    fn keeper_slot(&self, id: i64) -> KeeperSlot {
        let mut slots = self.keepers.lock().unwrap();
        if !slots.contains_key(&id) {
            // A slot in use right now is locked: leave it; its lease is not idle.
            slots.retain(|_, s| {
                s.try_lock()
                    .map(|k| k.as_ref().is_some_and(|k| k.used.elapsed() < KEEPER_IDLE))
                    .unwrap_or(true)
            });
        }
        slots.entry(id).or_default().clone()
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), DcsError> {
        self.keepers.lock().unwrap().remove(&id);
        self.call(|mut c| async move { c.lease_revoke(id).await })
            .await
            .map(|_| ())
    }

    pub async fn members(&self) -> Result<Vec<Member>, DcsError> {
        let r = self
            .call(|mut c| async move { c.member_list().await })
            .await?;
        Ok(r.members()
            .iter()
            .map(|m| Member {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                learner: m.is_learner(),
            })
            .collect())
    }

    /// Add a non-voting learner (quorum unchanged until it is promoted).
    pub async fn member_add_learner(&self, peer_url: &str) -> Result<u64, DcsError> {
        let url = peer_url.to_string();
        let r = self
            .call(|mut c| {
                let url = url.clone();
                async move {
                    c.member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                        .await
                }
            })
            .await?;
        r.member()
            .map(|m| m.id())
            .ok_or_else(|| DcsError::Etcd("member add returned no member".into()))
    }

    /// [`Self::member_add_learner`], retried for up to 30 s while etcd refuses it as an
    /// "unhealthy cluster": it does so for a few seconds after the previous membership change.
    pub async fn member_add_learner_retrying(&self, peer_url: &str) -> Result<u64, DcsError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.member_add_learner(peer_url).await {
                Ok(id) => return Ok(id),
                Err(e)
                    if std::time::Instant::now() < deadline
                        && e.to_string().contains("unhealthy cluster") =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn member_promote(&self, id: u64) -> Result<(), DcsError> {
        self.call(|mut c| async move { c.member_promote(id).await })
            .await
            .map(|_| ())
    }

    /// Run `f` on the member at `url` only (no failover): for calls that are about that
    /// member itself.
    async fn call_at<T, F, Fut>(&self, url: &str, f: F) -> Result<T, DcsError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let i = self
            .urls()
            .iter()
            .position(|u| u == url)
            .ok_or_else(|| DcsError::Unreachable(format!("{url} is not a known member")))?;
        let c = self.client(i).await?;
        match self.attempt(f(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(DcsError::Etcd(e.to_string())),
            Err(_) => Err(DcsError::Timeout(self.timeout)),
        }
    }

    /// Raft view of the member at `url`: (its own member id, the raft leader's member id).
    pub async fn member_raft_status(&self, url: &str) -> Result<(u64, u64), DcsError> {
        let r = self
            .call_at(url, |mut c| async move { c.status().await })
            .await?;
        let me = r.header().map(|h| h.member_id()).unwrap_or(0);
        Ok((me, r.leader()))
    }

    /// Ask the raft leader at `url` to hand raft leadership to member `target`.
    pub async fn move_leader(&self, url: &str, target: u64) -> Result<(), DcsError> {
        self.call_at(url, |mut c| async move { c.move_leader(target).await })
            .await
            .map(|_| ())
    }

    pub async fn member_remove(&self, id: u64) -> Result<(), DcsError> {
        self.call(|mut c| async move { c.member_remove(id).await })
            .await
            .map(|_| ())
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

fn to_kv(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).to_string(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
        mod_revision: kv.mod_revision(),
    }
}

/// Transport failures move on to the next member; a refused request (bad compare, auth) would
/// be refused by every member, so it is returned at once.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic_code::Unavailable
                | tonic_code::DeadlineExceeded
                | tonic_code::Unknown
                | tonic_code::Internal
                | tonic_code::Aborted
                | tonic_code::Cancelled
        ),
        _ => true,
    }
}
