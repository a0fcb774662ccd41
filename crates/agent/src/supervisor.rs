//! A runit-like supervisor: keeps each service's process running (restart with backoff), puts
//! every child in its own process group so a kill reaches grandchildren, writes its output to a
//! size-rotated log, and tracks the state shown by `status` (pid, time in state).

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;

/// Runs before every start; an error refuses the start (counted as a failure, retried with
/// backoff). PostgreSQL uses it to make sure a non-leader can never come up writable.
pub type PreStart = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as this uid/gid (PostgreSQL refuses to run as root).
    pub user: Option<(u32, u32)>,
    pub cwd: Option<PathBuf>,
    /// Signal for a graceful stop (`SIGINT` is PostgreSQL's fast shutdown).
    pub stop_signal: Signal,
    pub pre_start: Option<PreStart>,
    /// Kill the service when the agent dies. PostgreSQL uses it: a primary must not outlive
    /// the agent that renews its lease (the agent's death then fences it at once).
    pub die_with_agent: bool,
    pub log_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceState {
    pub name: String,
    pub want_up: bool,
    pub running: bool,
    pub pid: Option<u32>,
    /// Unix seconds when the current state (running/down) began.
    pub since_unix: u64,
    pub restarts: u64,
    pub last_exit: Option<String>,
}

struct Entry {
    spec: ServiceSpec,
    state: ServiceState,
    wake: Arc<Notify>,
}

#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("unknown service {0:?}; known services: {1}")]
    Unknown(String, String),
    #[error("signal to {0} failed: {1}")]
    Signal(String, String),
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Register a service and start supervising it (`want_up` decides whether it runs now).
    pub fn add(&self, spec: ServiceSpec, want_up: bool) {
        let wake = Arc::new(Notify::new());
        let name = spec.name.clone();
        {
            let mut g = self.inner.lock().unwrap();
            if g.contains_key(&name) {
                return;
            }
            g.insert(
                name.clone(),
                Entry {
                    spec,
                    state: ServiceState {
                        name: name.clone(),
                        want_up,
                        running: false,
                        pid: None,
                        since_unix: now_unix(),
                        restarts: 0,
                        last_exit: None,
                    },
                    wake: wake.clone(),
                },
            );
        }
        let sup = self.clone();
        tokio::spawn(async move { sup.run_service(name, wake).await });
    }

    /// Replace a service's spec (reconfigure); takes effect at its next start.
    pub fn replace_spec(&self, spec: ServiceSpec) -> Result<(), SupervisorError> {
        self.check(&spec.name)?;
        let mut g = self.inner.lock().unwrap();
        let name = spec.name.clone();
        g.get_mut(&name).expect("checked").spec = spec;
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.inner.lock().unwrap().keys().cloned().collect()
    }

    pub fn list(&self) -> Vec<ServiceState> {
        self.inner
            .lock()
            .unwrap()
            .values()
            .map(|e| e.state.clone())
            .collect()
    }

    pub fn state(&self, name: &str) -> Option<ServiceState> {
        self.inner
            .lock()
            .unwrap()
            .get(name)
            .map(|e| e.state.clone())
    }

    fn check(&self, name: &str) -> Result<(), SupervisorError> {
        let g = self.inner.lock().unwrap();
        if g.contains_key(name) {
            Ok(())
        } else {
            Err(SupervisorError::Unknown(
                name.to_string(),
                g.keys().cloned().collect::<Vec<_>>().join(", "),
            ))
        }
    }

    pub fn start(&self, name: &str) -> Result<(), SupervisorError> {
        self.check(name)?;
        let mut g = self.inner.lock().unwrap();
        let e = g.get_mut(name).expect("checked");
        e.state.want_up = true;
        e.wake.notify_one();
        Ok(())
    }

    /// Mark down and stop gracefully; escalates to SIGKILL after `grace`. Returns once the
    /// process is gone.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<(), SupervisorError> {
        self.stop_with(name, None, grace).await
    }

    /// Like [`stop`](Self::stop) with an explicit first signal (e.g. SIGQUIT to fence
    /// PostgreSQL with an immediate shutdown).
    pub async fn stop_with(
        &self,
        name: &str,
        signal: Option<Signal>,
        grace: Duration,
    ) -> Result<(), SupervisorError> {
        self.check(name)?;
        let (pid, sig) = {
            let mut g = self.inner.lock().unwrap();
            let e = g.get_mut(name).expect("checked");
            e.state.want_up = false;
            e.wake.notify_one();
            (e.state.pid, signal.unwrap_or(e.spec.stop_signal))
        };
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
            let deadline = Instant::now() + grace;
            // Wait for *this* process to end: the HA loop may start the service again
            // meanwhile (a leader restarts its PostgreSQL), and waiting for "not running"
            // would then never end.
            while self
                .state(name)
                .is_some_and(|s| s.running && s.pid == Some(pid))
            {
                if Instant::now() >= deadline {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    pub async fn restart(&self, name: &str, grace: Duration) -> Result<(), SupervisorError> {
        self.stop(name, grace).await?;
        self.start(name)
    }

    /// Send a signal to the service's main process (runit's hup/int/term/kill verbs).
    pub fn signal(&self, name: &str, sig: Signal) -> Result<(), SupervisorError> {
        self.check(name)?;
        if let Some(pid) = self.state(name).and_then(|s| s.pid) {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), sig)
                .map_err(|e| SupervisorError::Signal(name.to_string(), e.to_string()))?;
        }
        Ok(())
    }

    /// Stop every service (agent shutdown), PostgreSQL-style graceful first.
    pub async fn stop_all(&self, grace: Duration) {
        for n in self.names().into_iter().rev() {
            let _ = self.stop(&n, grace).await;
        }
    }

    async fn run_service(&self, name: String, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(0);
        loop {
            let (want, spec) = {
                let g = self.inner.lock().unwrap();
                let e = &g[&name];
                (e.state.want_up, e.spec.clone())
            };
            if !want {
                wake.notified().await;
                backoff = Duration::from_millis(0);
                continue;
            }
            if !backoff.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = wake.notified() => {}
                }
                if !self.state(&name).map(|s| s.want_up).unwrap_or(false) {
                    continue;
                }
            }
            let started = Instant::now();
            let outcome = self.spawn_and_wait(&spec).await;
            let ran_long = started.elapsed() > Duration::from_secs(10);
            {
                let mut g = self.inner.lock().unwrap();
                let e = g.get_mut(&name).expect("registered");
                e.state.running = false;
                e.state.pid = None;
                e.state.since_unix = now_unix();
                e.state.last_exit = Some(outcome.clone());
                if e.state.want_up {
                    e.state.restarts += 1;
                }
            }
            tracing::warn!(service = %name, exit = %outcome, "service exited");
            // First restart is immediate (crash recovery should be fast); repeated quick
            // failures back off up to 5 s so a broken service does not spin.
            backoff = if ran_long {
                Duration::from_millis(0)
            } else if backoff.is_zero() {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
        }
    }

    async fn spawn_and_wait(&self, spec: &ServiceSpec) -> String {
        if let Some(hook) = &spec.pre_start {
            if let Err(e) = hook() {
                return format!("not started: {e}");
            }
        }
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        if let Some((uid, gid)) = spec.user {
            cmd.uid(uid).gid(gid);
        }
        if spec.die_with_agent {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
                });
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return format!("spawn of {} failed: {e}", spec.program.display()),
        };
        let pid = child.id();
        {
            let mut g = self.inner.lock().unwrap();
            let e = g.get_mut(&spec.name).expect("registered");
            e.state.running = true;
            e.state.pid = pid;
            e.state.since_unix = now_unix();
        }
        let log = Arc::new(Mutex::new(RotatingLog::new(
            spec.log_dir.clone(),
            spec.log_max_bytes,
            spec.log_keep,
        )));
        let t1 = child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, log.clone())));
        let t2 = child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, log.clone())));
        let status = child.wait().await;
        // Grandchildren (PostgreSQL backends after a postmaster crash) must not outlive the
        // main process, or they block the restart.
        if let Some(pid) = pid {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for t in [t1, t2].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }
}

async fn pump(stream: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.lock().unwrap().write_line(&line);
    }
}

/// `current` plus up to `keep` rotated files named `@<unix-millis>.s`, like svlogd.
pub struct RotatingLog {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    size: u64,
}

impl RotatingLog {
    pub fn new(dir: PathBuf, max_bytes: u64, keep: u32) -> RotatingLog {
        let _ = std::fs::create_dir_all(&dir);
        let size = std::fs::metadata(dir.join("current"))
            .map(|m| m.len())
            .unwrap_or(0);
        RotatingLog {
            dir,
            max_bytes,
            keep,
            size,
        }
    }

    pub fn write_line(&mut self, line: &str) {
        use std::io::Write;
        if self.size + line.len() as u64 + 1 > self.max_bytes && self.size > 0 {
            self.rotate();
        }
        let stamp = humantime_now();
        let text = format!("{stamp} {line}\n");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("current"))
        {
            let _ = f.write_all(text.as_bytes());
            self.size += text.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let _ = std::fs::rename(
            self.dir.join("current"),
            self.dir.join(format!("@{millis:015}.s")),
        );
        self.size = 0;
        let mut old: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .map(|n| n.starts_with('@'))
                            .unwrap_or(false)
                    })
                    .collect()
            })
            .unwrap_or_default();
        old.sort();
        while old.len() > self.keep as usize {
            let _ = std::fs::remove_file(old.remove(0));
        }
    }
}

fn humantime_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::new(dir.path().to_path_buf(), 100, 2);
        for i in 0..50 {
            log.write_line(&format!("line number {i}"));
            std::thread::sleep(Duration::from_millis(2));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.contains(&"current".to_string()));
        assert_eq!(names.iter().filter(|n| n.starts_with('@')).count(), 2);
        assert!(std::fs::metadata(dir.path().join("current")).unwrap().len() <= 100);
    }

    fn spec(dir: &std::path::Path, script: &str) -> ServiceSpec {
        ServiceSpec {
            name: "t".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            user: None,
            cwd: None,
            stop_signal: Signal::SIGTERM,
            pre_start: None,
            die_with_agent: false,
            log_dir: dir.to_path_buf(),
            log_max_bytes: 1 << 20,
            log_keep: 2,
        }
    }

    async fn wait_for(f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "condition not reached in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn restarts_a_killed_service_with_new_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new();
        sup.add(spec(dir.path(), "echo hello; exec sleep 1000"), true);
        wait_for(|| sup.state("t").unwrap().running).await;
        let pid = sup.state("t").unwrap().pid.unwrap();
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        wait_for(|| {
            let s = sup.state("t").unwrap();
            s.running && s.pid != Some(pid)
        })
        .await;
        assert_eq!(sup.state("t").unwrap().restarts, 1);
        let log = std::fs::read_to_string(dir.path().join("current")).unwrap();
        assert!(log.contains("hello"));
        sup.stop("t", Duration::from_secs(2)).await.unwrap();
        assert!(!sup.state("t").unwrap().running);
    }

    #[tokio::test]
    async fn pre_start_refusal_keeps_service_down() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new();
        let mut s = spec(dir.path(), "exec sleep 1000");
        s.pre_start = Some(Arc::new(|| Err("not allowed".into())));
        sup.add(s, true);
        wait_for(|| sup.state("t").unwrap().last_exit.is_some()).await;
        let st = sup.state("t").unwrap();
        assert!(!st.running);
        assert!(st.last_exit.unwrap().contains("not allowed"));
        assert!(sup.start("nope").is_err());
    }
}
