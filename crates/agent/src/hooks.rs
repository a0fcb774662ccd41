//! Role-change hooks (`hooks.on_promote`, `on_demote`, `on_fence`, `on_start`): operator
//! programs run on leadership events, e.g. to move a cloud IP (contrib/aws/).
//!
//! Hooks run one at a time, in event order, in a task of their own: the HA loop only queues
//! an event, so a slow or hanging hook can never delay fencing or the loop. Each hook gets the
//! event in its environment, is killed (its whole process group) after `hooks.timeout_ms`, and
//! its output goes to the agent's log line by line. A failing hook is logged and reported in
//! `status` (`last_hook`); nothing else depends on it.

use larder_core::config::HooksConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Promote,
    Demote,
    Fence,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Promote => "promote",
            Event::Demote => "demote",
            Event::Fence => "fence",
        }
    }
}

/// What a hook is told (as `LARDER_*` environment variables).
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub role: String,
    pub term: u64,
    pub node_name: String,
    pub node_address: String,
    pub leader_name: String,
    pub leader_address: String,
    pub vip: String,
    pub vip_interface: String,
}

/// The outcome of the last hook run (shown in `status`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HookReport {
    pub event: String,
    pub path: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone)]
pub struct Hooks {
    tx: Option<tokio::sync::mpsc::UnboundedSender<(Event, Context)>>,
    pub last: Arc<Mutex<Option<HookReport>>>,
}

impl Hooks {
    /// Starts the hook runner (nothing runs when no hook is configured).
    pub fn start(cfg: &HooksConfig) -> Hooks {
        let last = Arc::new(Mutex::new(None));
        if cfg.configured().is_empty() {
            return Hooks { tx: None, last };
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Event, Context)>();
        let cfg = cfg.clone();
        let report = last.clone();
        tokio::spawn(async move {
            while let Some((event, ctx)) = rx.recv().await {
                let path = match event {
                    Event::Start => &cfg.on_start,
                    Event::Promote => &cfg.on_promote,
                    Event::Demote => &cfg.on_demote,
                    Event::Fence => &cfg.on_fence,
                };
                if path.is_empty() {
                    continue;
                }
                let timeout = Duration::from_millis(cfg.timeout_ms);
                let r = run(path, event, &ctx, timeout).await;
                if r.ok {
                    tracing::info!(hook = event.as_str(), "hook {path}: {}", r.detail);
                } else {
                    tracing::warn!(hook = event.as_str(), "hook {path} failed: {}", r.detail);
                }
                *report.lock().unwrap() = Some(r);
            }
        });
        Hooks { tx: Some(tx), last }
    }

    /// Queue an event; returns at once.
    pub fn fire(&self, event: Event, ctx: Context) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((event, ctx));
        }
    }
}

/// Runs one hook to completion or its timeout (then kills its process group).
pub async fn run(path: &str, event: Event, ctx: &Context, timeout: Duration) -> HookReport {
    let mut report = HookReport {
        event: event.as_str().into(),
        path: path.into(),
        ok: false,
        detail: String::new(),
    };
    let mut cmd = tokio::process::Command::new(path);
    cmd.env("LARDER_EVENT", event.as_str())
        .env("LARDER_ROLE", &ctx.role)
        .env("LARDER_TERM", ctx.term.to_string())
        .env("LARDER_NODE_NAME", &ctx.node_name)
        .env("LARDER_NODE_ADDRESS", &ctx.node_address)
        .env("LARDER_LEADER_NAME", &ctx.leader_name)
        .env("LARDER_LEADER_ADDRESS", &ctx.leader_address)
        .env("LARDER_VIP", &ctx.vip)
        .env("LARDER_VIP_INTERFACE", &ctx.vip_interface)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            report.detail = format!("could not start: {e}");
            return report;
        }
    };
    let pid = child.id();
    let mut lines = Vec::new();
    let out = child
        .stdout
        .take()
        .map(|o| tokio::io::BufReader::new(o).lines());
    let err = child
        .stderr
        .take()
        .map(|o| tokio::io::BufReader::new(o).lines());
    let name = event.as_str();
    let log = async move { tokio::join!(forward(name, out), forward(name, err)) };
    let waited = tokio::time::timeout(timeout, async {
        let (a, b) = log.await;
        lines.extend(a);
        lines.extend(b);
        child.wait().await
    })
    .await;
    match waited {
        Ok(Ok(status)) if status.success() => {
            report.ok = true;
            report.detail = "exited 0".into();
        }
        Ok(Ok(status)) => {
            report.detail = format!(
                "{status}{}",
                lines.last().map(|l| format!(": {l}")).unwrap_or_default()
            )
        }
        Ok(Err(e)) => report.detail = format!("waiting for it: {e}"),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            report.detail = format!("killed after its timeout of {} ms", timeout.as_millis());
        }
    }
    report
}

/// Logs a hook's output line by line and keeps it (for the failure report).
async fn forward<R: tokio::io::AsyncBufRead + Unpin>(
    name: &str,
    lines: Option<tokio::io::Lines<R>>,
) -> Vec<String> {
    let mut seen = Vec::new();
    if let Some(mut l) = lines {
        while let Ok(Some(line)) = l.next_line().await {
            tracing::info!(hook = name, "| {line}");
            seen.push(line);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn ctx() -> Context {
        Context {
            role: "leader".into(),
            term: 7,
            node_name: "n1".into(),
            node_address: "10.231.0.1".into(),
            leader_name: "n1".into(),
            leader_address: "10.231.0.1".into(),
            vip: "10.231.0.100".into(),
            vip_interface: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn hook_sees_its_environment_in_order() {
        let dir = tempdir();
        let log = dir.join("events");
        let s = script(
            &dir,
            "rec",
            &format!(
                "echo \"$LARDER_EVENT $LARDER_ROLE $LARDER_TERM $LARDER_LEADER_NAME $LARDER_LEADER_ADDRESS $LARDER_VIP $LARDER_VIP_INTERFACE\" >> {}",
                log.display()
            ),
        );
        let cfg = HooksConfig {
            on_promote: s.clone(),
            on_demote: s.clone(),
            on_fence: s.clone(),
            on_start: s,
            timeout_ms: 2000,
        };
        let hooks = Hooks::start(&cfg);
        for e in [Event::Start, Event::Promote, Event::Fence, Event::Demote] {
            hooks.fire(e, ctx());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() == 4 {
                let events: Vec<&str> =
                    text.lines().map(|l| l.split(' ').next().unwrap()).collect();
                assert_eq!(events, ["start", "promote", "fence", "demote"]);
                assert!(text.starts_with("start leader 7 n1 10.231.0.1 10.231.0.100 eth0\n"));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hooks did not run: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn hanging_hook_is_killed_at_its_timeout_and_failure_reported() {
        let dir = tempdir();
        let s = script(&dir, "hang", "echo started; sleep 30");
        let t = std::time::Instant::now();
        let r = run(&s, Event::Fence, &ctx(), Duration::from_millis(300)).await;
        assert!(!r.ok);
        assert!(
            r.detail.contains("killed after its timeout"),
            "{}",
            r.detail
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let f = script(&dir, "fail", "echo broken >&2; exit 3");
        let r = run(&f, Event::Promote, &ctx(), Duration::from_secs(5)).await;
        assert!(!r.ok && r.detail.contains("broken"), "{}", r.detail);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "larder-hooks-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
