//! Starting and stopping this node's agent process.
//!
//! On a host booted with systemd where the package's `larder.service` is installed, the agent is
//! the unit: verbs drive `systemctl`, so systemd never restarts what `uninstall` stopped and a
//! reboot brings the node back. Everywhere else (containers, chroots, the local dev cluster,
//! nodes under another root) the CLI starts the agent detached in its own session, as before.

use anyhow::{bail, Context};
use larder_agent::control::{self, Request};
use larder_core::paths::Paths;
use std::path::Path;
use std::time::{Duration, Instant};

/// The systemd unit the Debian package installs.
pub const UNIT: &str = "larder.service";

/// Who starts and stops the agent on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Detached,
}

/// systemd manages the agent only for the node at root `/`, on a host booted with systemd
/// (`/run/systemd/system`, as `sd_booted` tests), with the unit installed.
/// `LARDER_NO_SYSTEMD=1` forces the detached mode (debugging the agent by hand).
pub fn manager(paths: &Paths) -> Manager {
    let unit_installed = [
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|d| Path::new(d).join(UNIT).exists());
    if paths.root() == Path::new("/")
        && Path::new("/run/systemd/system").is_dir()
        && unit_installed
        && std::env::var_os("LARDER_NO_SYSTEMD").is_none()
    {
        Manager::Systemd
    } else {
        Manager::Detached
    }
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let st = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("cannot run systemctl {}", args.join(" ")))?;
    if !st.success() {
        bail!(
            "systemctl {} failed ({st}); see `journalctl -u larder`",
            args.join(" ")
        );
    }
    Ok(())
}

fn agent_pid(paths: &Paths) -> Option<i32> {
    std::fs::read_to_string(paths.agent_pid())
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
}

pub fn agent_alive(paths: &Paths) -> bool {
    agent_pid(paths)
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// Start the agent (enabled at boot under systemd).
pub fn start_agent(paths: &Paths) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    if agent_alive(paths) {
        return Ok(());
    }
    if manager(paths) == Manager::Systemd {
        return systemctl(&["enable", "--now", UNIT]);
    }
    let log_dir = paths.service_log_dir("agent");
    std::fs::create_dir_all(&log_dir)?;
    std::fs::create_dir_all(paths.run_dir())?;
    // The agent writes its own rotated log (`current`); only what bypasses it (a panic) lands
    // here, so this file stays small.
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("console"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--root")
        .arg(paths.root())
        .arg("agent")
        .stdin(std::process::Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the agent")?;
    Ok(())
}

/// Stop the agent and every service and wait until its process is gone. With `disable`, a
/// systemd unit is also disabled so a reboot does not start it again (`uninstall`, `cleanse`).
pub async fn stop_agent(paths: &Paths, disable: bool) -> anyhow::Result<()> {
    let pid = agent_pid(paths);
    if manager(paths) == Manager::Systemd {
        if disable {
            systemctl(&["disable", "--now", UNIT])?;
        } else {
            systemctl(&["stop", UNIT])?;
        }
    } else if control::call(&paths.agent_socket(), &Request::Shutdown)
        .await
        .is_err()
    {
        if let Some(pid) = pid {
            // The socket is gone but the process may still be there (stuck, or starting):
            // SIGTERM makes it shut down in order; ESRCH means it is already gone.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(60);
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            if Instant::now() > deadline {
                bail!("the agent (pid {pid}) did not stop within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
