//! Requests addressed to one node through etcd, and their answers: how an operator command run
//! on one member acts on every member in turn (`rotate-certs`, `rotate-secrets`). The requester
//! writes `request_key` (a JSON object with an `id`); the node's agent, told by its etcd watch
//! (and polling slowly in case the watch missed it), carries it out once and writes its answer,
//! tagged with the same id, under `answer_key`.
//! etcd is reachable only with a cluster certificate, so only members can ask or answer.

use crate::dcs::Dcs;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often an agent looks for a request addressed to it without being told (the watch is
/// re-opened when etcd members change, and a change in between is not seen).
const POLL: Duration = Duration::from_secs(10);

/// A request or answer: what ties the two together.
pub trait Tagged {
    fn id(&self) -> &str;
}

/// [`Tagged`] for structs whose `id: String` field is the tag.
macro_rules! tagged_by_id {
    ($($t:ty),+) => {
        $(impl $crate::node_requests::Tagged for $t {
            fn id(&self) -> &str {
                &self.id
            }
        })+
    };
}
pub(crate) use tagged_by_id;

/// Carry out every new request under `request_key` with `handle` and publish its answer under
/// `answer_key`, until shutdown. A request already answered (before an agent restart too) is
/// not carried out again.
pub async fn serve<R, A, F, Fut>(
    dcs: Dcs,
    mut changed: tokio::sync::watch::Receiver<u64>,
    request_key: String,
    answer_key: String,
    shutdown: CancellationToken,
    mut handle: F,
) where
    R: DeserializeOwned + Tagged,
    A: Serialize + DeserializeOwned + Tagged,
    F: FnMut(R) -> Fut,
    Fut: Future<Output = A>,
{
    let mut answered: Option<String> = None;
    let mut first = true;
    loop {
        // A request made while this agent was down is looked for at once.
        if !first {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        first = false;
        let Ok(Some(kv)) = dcs.get(&request_key).await else {
            continue;
        };
        let Ok(req) = serde_json::from_slice::<R>(&kv.value) else {
            continue;
        };
        let id = req.id().to_string();
        if answered.as_deref() == Some(id.as_str()) {
            continue;
        }
        if answered.is_none() {
            if let Ok(Some(a)) = dcs.get(&answer_key).await {
                if serde_json::from_slice::<A>(&a.value).is_ok_and(|a| a.id() == id) {
                    answered = Some(id);
                    continue;
                }
            }
        }
        let answer = handle(req).await;
        if let Ok(v) = serde_json::to_vec(&answer) {
            if dcs.put(&answer_key, &v, None).await.is_ok() {
                answered = Some(id);
            }
        }
    }
}

/// Write `req` under `request_key` and wait up to `timeout` for the answer with its id; the
/// request is removed either way.
pub async fn ask<R, A>(
    dcs: &Dcs,
    request_key: &str,
    answer_key: &str,
    req: &R,
    timeout: Duration,
) -> anyhow::Result<A>
where
    R: Serialize + Tagged,
    A: DeserializeOwned + Tagged,
{
    dcs.put(request_key, &serde_json::to_vec(req)?, None)
        .await?;
    let deadline = Instant::now() + timeout;
    let answer = loop {
        if let Ok(Some(kv)) = dcs.get(answer_key).await {
            if let Ok(a) = serde_json::from_slice::<A>(&kv.value) {
                if a.id() == req.id() {
                    break Ok(a);
                }
            }
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "no answer within {} s; is its agent running a Larder release without this command (see `larder cluster-status`)?",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = dcs.delete(request_key).await;
    answer
}

/// A fresh request id.
pub fn new_id() -> String {
    format!("{}-{}", crate::clock::unix_ms(), std::process::id())
}
