//! Process faults: kill -9, SIGSTOP/SIGCONT of one process or of a whole test host.
//!
//! A "whole node" is every process in the host's network namespace, which is exactly what
//! dies when a real machine loses power (agent, etcd, PostgreSQL, search, their children).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::netns::{pids_of, Netns};

/// Sends `sig` to `pid`. A process that is already gone is not an error: the fault wanted it
/// dead or stopped and the race with its own exit is normal.
pub fn signal(pid: i32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal {
            pid,
            signal: format!("{sig:?}"),
            source,
        }),
    }
}

/// The NUL-separated command line of a process, joined by spaces ("" if it vanished).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// `comm` of a process (kernel-truncated executable name).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Parent pid, from /proc/<pid>/stat (field 4, after the parenthesised comm).
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Processes of a namespace whose command line contains `needle`.
pub fn find(ns: &Netns, needle: &str) -> Vec<i32> {
    ns.pids()
        .into_iter()
        .filter(|p| cmdline(*p).contains(needle))
        .collect()
}

/// The PostgreSQL postmaster(s) of a host: `postgres` processes whose parent is not itself a
/// postgres process (backends, walsenders, checkpointer are its children).
pub fn postmasters(ns: &Netns) -> Vec<i32> {
    ns.pids()
        .into_iter()
        .filter(|p| comm(*p) == "postgres")
        .filter(|p| ppid(*p).map(|pp| comm(pp) != "postgres").unwrap_or(true))
        .collect()
}

/// kill -9 one process.
pub fn kill9(pid: i32) -> Result<()> {
    signal(pid, Signal::SIGKILL)
}

/// Freezes a process (SIGSTOP): it keeps its sockets and leases but does nothing.
pub fn freeze(pid: i32) -> Result<()> {
    signal(pid, Signal::SIGSTOP)?;
    wait_stopped(&[pid], Duration::from_secs(5))
}

pub fn thaw(pid: i32) -> Result<()> {
    signal(pid, Signal::SIGCONT)
}

/// Scheduler state letter of a process (`R`, `S`, `T` stopped, `Z` zombie...).
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits until every pid is stopped (or gone). SIGSTOP takes effect when the process is next
/// scheduled, so "signal sent" is not yet "frozen"; a fault's hold time starts from here.
pub fn wait_stopped(pids: &[i32], deadline: Duration) -> Result<()> {
    let start = Instant::now();
    for p in pids {
        while let Some(st) = state(*p) {
            if st == 'T' || st == 't' || st == 'Z' || st == 'X' {
                break;
            }
            if start.elapsed() > deadline {
                return Err(Error::Timeout {
                    what: format!("pid {p} to stop (state {st})"),
                    secs: deadline.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Freezes every process of a host. Returns the pids frozen so exactly those are thawed —
/// processes that appear later (none should: their parents are stopped) are left alone.
pub fn freeze_host(ns: &Netns) -> Result<Vec<i32>> {
    let pids = ns.pids();
    for p in &pids {
        freeze(*p)?;
    }
    wait_stopped(&pids, Duration::from_secs(5))?;
    Ok(pids)
}

pub fn thaw_pids(pids: &[i32]) -> Result<()> {
    for p in pids {
        thaw(*p)?;
    }
    Ok(())
}

/// kill -9 every process of a namespace, repeating until none is left: a supervisor that
/// runs between two reads of the pid list could otherwise fork a fresh child. Stopped
/// processes die from SIGKILL too, so no SIGCONT is needed.
pub fn kill_namespace(name: &str, deadline: Duration) -> Result<usize> {
    let start = Instant::now();
    let mut killed = 0;
    loop {
        let pids = pids_of(name);
        if pids.is_empty() {
            return Ok(killed);
        }
        // Stop first so no process can react (respawn, fork) while its siblings die.
        for p in &pids {
            signal(*p, Signal::SIGSTOP)?;
        }
        for p in &pids {
            signal(*p, Signal::SIGKILL)?;
            killed += 1;
        }
        if start.elapsed() > deadline {
            return Err(Error::Timeout {
                what: format!("every process of namespace {name} to die"),
                secs: deadline.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill -9 every process of the host (power loss).
pub fn kill_host(ns: &Netns) -> Result<usize> {
    kill_namespace(&ns.name, Duration::from_secs(10))
}
