//! Asking this node's agent over its control socket: its status, and waiting for a condition
//! on it (long operations follow the agent's status until done).

use anyhow::bail;
use larder_agent::control::{self, AgentStatus, Request};
use larder_core::paths::Paths;
use std::time::{Duration, Instant};

pub async fn agent_status(paths: &Paths) -> anyhow::Result<AgentStatus> {
    let r = control::call(&paths.agent_socket(), &Request::Status).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    serde_json::from_value(r.data).map_err(|e| {
        anyhow::anyhow!("the agent's status does not parse ({e}); is the agent a different Larder version? Restart it with `larder restart`")
    })
}

/// Poll the agent until `done` says so or `timeout` passes.
pub async fn wait_for(
    paths: &Paths,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&AgentStatus) -> bool,
) -> anyhow::Result<AgentStatus> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::new();
    loop {
        match agent_status(paths).await {
            Ok(s) => {
                if done(&s) {
                    return Ok(s);
                }
                if let Some(e) = &s.ha.last_error {
                    last_err = e.clone();
                }
            }
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for {what}{}; see `larder tail`",
                timeout.as_secs(),
                if last_err.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_err})")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
