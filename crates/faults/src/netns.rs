//! One network namespace = one test host: its own loopback, its own veth into the suite's
//! bridge, its own address. Processes started "on" a host run inside its namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::command::{render, run, run_quiet};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Netns {
    /// Namespace name (`ip netns` name, file under /run/netns).
    pub name: String,
    /// Address of the host on the suite's bridge.
    pub ip: String,
    /// Host-side end of the veth pair (in the root namespace, enslaved to the bridge).
    pub veth_host: String,
    /// Name of the interface inside the namespace.
    pub ifname: String,
}

impl Netns {
    /// Creates the namespace, a veth pair whose host end joins `bridge`, assigns
    /// `ip/prefix` inside and brings up loopback (PostgreSQL, etcd and haproxy all bind
    /// 127.0.0.1 as well).
    pub fn create(name: &str, veth_host: &str, bridge: &str, ip: &str, prefix: u8) -> Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            ip: ip.to_string(),
            veth_host: veth_host.to_string(),
            ifname: "eth0".to_string(),
        };
        run(
            "ip",
            &[
                "link", "add", veth_host, "type", "veth", "peer", "name", "eth0", "netns", name,
            ],
        )?;
        run("ip", &["link", "set", veth_host, "master", bridge, "up"])?;
        let cidr = format!("{ip}/{prefix}");
        run("ip", &["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", name, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a command inside the namespace and returns its stdout, failing on non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Starts a long-running daemon inside the namespace with stdout/stderr appended to
    /// `log`. It gets its own process group so a Ctrl-C typed at the suite reaches only the
    /// suite, which then tears every host down in order.
    pub fn spawn_daemon(&self, program: &str, args: &[&str], log: &Path) -> Result<Child> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(log, e))?;
        let file2 = file.try_clone().map_err(|e| Error::io(log, e))?;
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .process_group(0);
        cmd.spawn().map_err(|source| Error::Spawn {
            command: render(program, args),
            source,
        })
    }

    /// Every process whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        pids_of(&self.name)
    }

    /// Moves the calling OS thread into this namespace. Sockets the thread creates afterwards
    /// live in the namespace, which is how the in-process Rust clients (workload, sampler)
    /// sit on the client host without a helper process.
    pub fn enter_current_thread(&self) -> Result<()> {
        enter_thread(&self.name)
    }
}

/// PIDs in the named namespace; empty when it does not exist.
pub fn pids_of(name: &str) -> Vec<i32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

/// See [`Netns::enter_current_thread`].
pub fn enter_thread(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
    // SAFETY: plain syscall on a valid fd; CLONE_NEWNET only switches this thread's netns.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::io(&path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Lists namespace names (for cleanup by prefix).
pub fn list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn delete(name: &str) -> bool {
    run_quiet("ip", &["netns", "del", name])
}
