//! Removing what a run created — from `Drop`, from the SIGINT/SIGTERM thread, and from
//! `larder-faults cleanup` for leftovers of a run that was killed with -9.
//!
//! Order matters: processes first (a process inside a namespace keeps it alive after
//! `ip netns del` and keeps its mounts busy), then the slow-disk fault's blkio cgroups (only
//! an empty cgroup can be removed), then mounts and loop devices, then
//! namespaces (which takes the namespace end of each veth with it), then the bridge side.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::command::run_quiet;
use crate::hosts::{Naming, PREFIX, WORK_ROOT};
use crate::{nemesis, netns};

static RUNS: Mutex<BTreeSet<(&'static str, u16)>> = Mutex::new(BTreeSet::new());
static NAMINGS: Mutex<Vec<Naming>> = Mutex::new(Vec::new());

pub fn register(naming: Naming, run: u16) {
    let mut n = NAMINGS.lock().unwrap_or_else(|e| e.into_inner());
    if !n.contains(&naming) {
        n.push(naming);
    }
    RUNS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((naming.prefix, run));
}

pub fn unregister(naming: Naming, run: u16) {
    RUNS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(naming.prefix, run));
}

/// Removes everything of one run of the fault suite, by name.
pub fn teardown_run(run: u16) {
    teardown_run_named(Naming::FAULTS, run)
}

/// Removes everything of one run, by the names of its suite.
pub fn teardown_run_named(naming: Naming, run: u16) {
    let prefix = naming.prefix;
    let ns_prefix = format!("{prefix}{run}-");
    remove_namespaces(|n| n.starts_with(&ns_prefix));
    // After the processes: a cgroup can only be removed once nothing lives in it.
    crate::blkio::remove_cgroups(|n| n.starts_with(&ns_prefix));
    remove_mounts_under(&naming.run_dir(run));
    let b = naming.bridge_name(run);
    // veth host ends normally vanish with their namespace; delete stragglers explicitly.
    remove_links(|l| l == b || l.starts_with(&format!("{prefix}v{run}")));
    let _ = std::fs::remove_dir_all(naming.run_dir(run));
}

/// Removes leftovers of every run (the `cleanup` subcommand). Returns a description.
pub fn cleanup_all() -> Vec<String> {
    let mut done = Vec::new();
    let is_ours = |n: &str| {
        n.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .map(|num| !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or(false)
    };
    for n in netns::list() {
        if is_ours(&n) {
            done.push(format!("namespace {n}"));
        }
    }
    remove_namespaces(is_ours);
    for c in crate::blkio::remove_cgroups(is_ours) {
        done.push(format!("cgroup {c}"));
    }
    for m in mounts_under(Path::new(WORK_ROOT)) {
        done.push(format!("mount {m}"));
    }
    remove_mounts_under(Path::new(WORK_ROOT));
    let link_ours = |l: &str| {
        let rest = l.strip_prefix(PREFIX);
        matches!(rest, Some(r) if (r.starts_with('b') || r.starts_with('v'))
            && r[1..].chars().next().is_some_and(|c| c.is_ascii_digit()))
    };
    for l in links() {
        if link_ours(&l) {
            done.push(format!("link {l}"));
        }
    }
    remove_links(link_ours);
    if Path::new(WORK_ROOT).exists() {
        done.push(format!("directory {WORK_ROOT}"));
        let _ = std::fs::remove_dir_all(WORK_ROOT);
    }
    done
}

fn remove_namespaces(pred: impl Fn(&str) -> bool) {
    for n in netns::list().into_iter().filter(|n| pred(n)) {
        let _ = nemesis::kill_namespace(&n, Duration::from_secs(10));
        netns::delete(&n);
    }
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().to_string();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    // Deepest first, so nested mounts come off before their parents.
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

fn remove_mounts_under(root: &Path) {
    for m in mounts_under(root) {
        run_quiet("umount", &["-l", &m]);
    }
    // Loop devices whose image lived under root.
    if let Ok(out) = crate::command::run("losetup", &["-a"]) {
        let root = root.to_string_lossy().to_string();
        for line in out.lines() {
            if line.contains(&root) {
                if let Some(dev) = line.split(':').next() {
                    run_quiet("losetup", &["-d", dev]);
                }
            }
        }
    }
}

fn links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn remove_links(pred: impl Fn(&str) -> bool) {
    for l in links().into_iter().filter(|l| pred(l)) {
        run_quiet("ip", &["link", "del", &l]);
    }
}

/// Blocks SIGINT/SIGTERM in the calling thread (and every thread it spawns later) and starts
/// a thread that waits for them, tears down every registered run and exits 130/143.
/// Call first thing in `main`, before any runtime starts threads, so no other thread can
/// receive the signal and die without cleaning up.
pub fn install_signal_teardown() -> std::result::Result<(), nix::Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    std::thread::Builder::new()
        .name("teardown-on-signal".into())
        .spawn(move || {
            let sig = set.wait().unwrap_or(Signal::SIGTERM);
            eprintln!("larder-faults: {sig:?} received, tearing down test hosts");
            let runs: Vec<(&str, u16)> = RUNS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect();
            let namings = NAMINGS.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (prefix, r) in runs {
                let naming = namings
                    .iter()
                    .copied()
                    .find(|n| n.prefix == prefix)
                    .unwrap_or(Naming::FAULTS);
                teardown_run_named(naming, r);
            }
            std::process::exit(128 + sig as i32);
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}
