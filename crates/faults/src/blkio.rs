//! A slow disk for one test host: cgroup v1 blkio throttling of the host's loop device.
//!
//! The kernels of these machines have no device-mapper (so no `dm-delay`), but the blkio
//! controller's throttle works on loop devices. Throttling applies to the block I/O a process
//! of the cgroup *submits*; buffered writes are written back later by the flusher threads
//! (root cgroup, not throttled), but `fsync`, `fdatasync` and `O_DSYNC` writes submit their
//! writeback in the caller's context — PostgreSQL's WAL flushes and etcd's WAL syncs are
//! exactly those, so commits on the host become slow while its page cache stays fast, which
//! is what a saturated or degraded disk does to a database.
//!
//! Every process of the host's namespace is moved into a fresh cgroup (children forked later
//! inherit it); healing clears the limits, moves the processes back and removes the cgroup.
//! Cgroups are named `larder-faults-<namespace>`, so teardown and `larder-faults cleanup`
//! find a killed run's leftovers by the same names as its namespaces.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::run;
use crate::disk::LoopDisk;
use crate::error::{Error, Result};
use crate::netns::Netns;

/// Mount point of the cgroup v1 blkio hierarchy.
pub const ROOT: &str = "/sys/fs/cgroup/blkio";
/// Prefix of every cgroup the suite creates.
pub const CGROUP_PREFIX: &str = "larder-faults-";

/// Per-device throttle of one cgroup, in operations and bytes per second (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub read_iops: u64,
    pub write_iops: u64,
    pub read_bps: u64,
    pub write_bps: u64,
}

impl Limits {
    fn files(self) -> [(&'static str, u64); 4] {
        [
            ("blkio.throttle.read_iops_device", self.read_iops),
            ("blkio.throttle.write_iops_device", self.write_iops),
            ("blkio.throttle.read_bps_device", self.read_bps),
            ("blkio.throttle.write_bps_device", self.write_bps),
        ]
    }

    pub fn describe(self) -> String {
        format!(
            "{} write IOPS, {} KiB/s writes, {} read IOPS, {} KiB/s reads",
            self.write_iops,
            self.write_bps / 1024,
            self.read_iops,
            self.read_bps / 1024
        )
    }
}

/// I/O the throttle accounted to one device for one cgroup (`blkio.throttle.io_serviced` and
/// `io_service_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serviced {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl Serviced {
    pub fn since(self, earlier: Serviced) -> Serviced {
        Serviced {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }

    pub fn describe(self) -> String {
        format!(
            "{} writes ({} KiB), {} reads ({} KiB)",
            self.writes,
            self.write_bytes / 1024,
            self.reads,
            self.read_bytes / 1024
        )
    }
}

/// The cgroup a throttled host's processes live in while the fault holds.
pub fn cgroup_name(ns: &Netns) -> String {
    format!("{CGROUP_PREFIX}{}", ns.name)
}

/// `MAJ:MIN` of the loop device holding `disk`'s filesystem: the filesystem's `st_dev`,
/// checked against the loop device's backing file so the throttle cannot land on another
/// device (a stale mount, an unmounted mountpoint on the machine's own disk).
pub fn loop_device(disk: &LoopDisk) -> Result<String> {
    let meta = std::fs::metadata(&disk.mountpoint).map_err(|e| Error::io(&disk.mountpoint, e))?;
    let dev = meta.dev();
    let id = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let backing = format!("/sys/dev/block/{id}/loop/backing_file");
    let file = std::fs::read_to_string(&backing).map_err(|_| {
        Error::Invalid(format!(
            "{} is on device {id}, which is not a loop device",
            disk.mountpoint.display()
        ))
    })?;
    let want = std::fs::canonicalize(&disk.image).unwrap_or_else(|_| disk.image.clone());
    if Path::new(file.trim()) != want {
        return Err(Error::Invalid(format!(
            "{} is on loop device {id} backed by {}, not by {}",
            disk.mountpoint.display(),
            file.trim(),
            want.display()
        )));
    }
    Ok(id)
}

/// Whether the blkio controller with its throttle is mounted where the suite expects it.
fn controller_present() -> bool {
    Path::new(ROOT).join("cgroup.procs").exists()
        && Path::new(ROOT)
            .join("blkio.throttle.write_iops_device")
            .exists()
}

/// The blkio cgroup of `pid` relative to [`ROOT`] (`/` for the root), `None` when it is gone.
fn cgroup_of(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        ctrl.split(',')
            .any(|c| c == "blkio")
            .then(|| path.to_string())
    })
}

fn dir_of(cgroup: &str) -> PathBuf {
    Path::new(ROOT).join(cgroup.trim_start_matches('/'))
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// Moves `pid` into the cgroup at `dir`. A process that exited meanwhile is not an error.
fn move_pid(dir: &Path, pid: i32) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    match write(&procs, &pid.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(Error::io(procs, e)),
    }
}

/// The processes (thread-group ids) of the cgroup at `dir`.
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The counters of `dev` in a `blkio.throttle.io_serviced`-style file ("7:3 Write 120").
fn parse_stat(text: &str, dev: &str) -> (u64, u64) {
    let mut r = (0, 0);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        if f.next() != Some(dev) {
            continue;
        }
        match (f.next(), f.next().and_then(|v| v.parse().ok())) {
            (Some("Read"), Some(v)) => r.0 = v,
            (Some("Write"), Some(v)) => r.1 = v,
            _ => {}
        }
    }
    r
}

/// One host's disk under a throttle (the fault while it holds).
#[derive(Debug)]
pub struct Throttle {
    pub dir: PathBuf,
    pub dev: String,
    pub limits: Limits,
    /// Where each moved process came from; processes forked during the fault go where the
    /// host's processes came from (`home`).
    origin: BTreeMap<i32, String>,
    home: String,
}

impl Throttle {
    /// Creates the cgroup `name` with `limits` on `disk`'s loop device and moves every
    /// process of `ns` into it, re-reading the namespace until none is left outside (a
    /// supervisor may fork between two reads; a child forked after its parent moved inherits
    /// the cgroup).
    pub fn apply(ns: &Netns, disk: &LoopDisk, name: &str, limits: Limits) -> Result<Throttle> {
        if !controller_present() {
            return Err(Error::Unsupported(format!(
                "no cgroup v1 blkio controller with throttling at {ROOT}"
            )));
        }
        let dev = loop_device(disk)?;
        let dir = Path::new(ROOT).join(name);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut t = Throttle {
            dir,
            dev,
            limits,
            origin: BTreeMap::new(),
            home: "/".into(),
        };
        if let Err(e) = t.fill(ns) {
            let _ = t.remove();
            return Err(e);
        }
        Ok(t)
    }

    fn fill(&mut self, ns: &Netns) -> Result<()> {
        for (file, v) in self.limits.files() {
            let p = self.dir.join(file);
            write(&p, &format!("{} {v}", self.dev)).map_err(|e| Error::io(&p, e))?;
        }
        let start = Instant::now();
        loop {
            let inside = procs(&self.dir);
            let outside: Vec<i32> = ns
                .pids()
                .into_iter()
                .filter(|p| !inside.contains(p))
                .collect();
            if outside.is_empty() {
                break;
            }
            for p in outside {
                if let Some(cg) = cgroup_of(p) {
                    if self.origin.is_empty() {
                        self.home = cg.clone();
                    }
                    self.origin.insert(p, cg);
                    move_pid(&self.dir, p)?;
                }
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err(Error::Timeout {
                    what: format!(
                        "every process of {} to enter {}",
                        ns.name,
                        self.dir.display()
                    ),
                    secs: 5.0,
                });
            }
            // Poll interval for the next read (a process forked meanwhile is picked up then).
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.origin.is_empty() {
            return Err(Error::Invalid(format!(
                "no process on {} to throttle",
                ns.name
            )));
        }
        Ok(())
    }

    /// How many processes were moved in.
    pub fn moved(&self) -> usize {
        self.origin.len()
    }

    /// What the throttle accounted to the device for this cgroup so far.
    pub fn serviced(&self) -> Result<Serviced> {
        let read = |f: &str| {
            let p = self.dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
        };
        let (reads, writes) = parse_stat(&read("blkio.throttle.io_serviced")?, &self.dev);
        let (read_bytes, write_bytes) =
            parse_stat(&read("blkio.throttle.io_service_bytes")?, &self.dev);
        Ok(Serviced {
            reads,
            writes,
            read_bytes,
            write_bytes,
        })
    }

    /// Times `writes` synchronous 8 KiB writes into a new file in `dir` (on the throttled
    /// filesystem) from a process inside the cgroup — the proof that the throttle bites.
    pub fn probe(&self, dir: &Path, writes: u32) -> Result<Duration> {
        probe_writes(Some(&self.dir), dir, writes)
    }

    /// The heal: clears the limits first (nothing may still wait on them), moves every
    /// process back to where it came from, removes the cgroup. Returns what the throttle
    /// accounted in total.
    pub fn remove(self) -> Result<Serviced> {
        let total = self.serviced().unwrap_or_default();
        for (file, _) in self.limits.files() {
            let p = self.dir.join(file);
            // "MAJ:MIN 0" deletes the rule.
            write(&p, &format!("{} 0", self.dev)).map_err(|e| Error::io(&p, e))?;
        }
        let origin = self.origin.clone();
        let home = self.home.clone();
        empty_and_remove(&self.dir, |p| {
            dir_of(origin.get(&p).map(String::as_str).unwrap_or(&home))
        })?;
        Ok(total)
    }
}

/// Moves every process out of the cgroup at `dir` (to `dest(pid)`) until it stays empty, then
/// removes it. Repeated because a process of the cgroup may fork while the others move.
fn empty_and_remove(dir: &Path, dest: impl Fn(i32) -> PathBuf) -> Result<()> {
    let start = Instant::now();
    loop {
        for p in procs(dir) {
            move_pid(&dest(p), p)?;
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                return Err(Error::io(dir, e));
            }
            // EBUSY: a task entered (or had not left) between the read and the rmdir.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `writes` 8 KiB `O_DSYNC` writes into a fresh file in `dir` by `dd`, started inside the
/// cgroup at `cgroup` (the shell moves itself in before it becomes `dd`) or, with `None`,
/// where the suite runs (the unthrottled baseline). The file is removed afterwards.
pub fn probe_writes(cgroup: Option<&Path>, dir: &Path, writes: u32) -> Result<Duration> {
    let file = dir.join("larder-faults-slowdisk-probe");
    let enter = match cgroup {
        Some(cg) => format!("echo $$ > '{}' && ", cg.join("cgroup.procs").display()),
        None => String::new(),
    };
    let script = format!(
        "{enter}exec dd if=/dev/zero of='{}' bs=8k count={writes} oflag=dsync status=none",
        file.display()
    );
    let start = Instant::now();
    let r = run("sh", &["-c", &script]);
    let took = start.elapsed();
    let _ = std::fs::remove_file(&file);
    r.map(|_| took)
}

/// Removes the suite's cgroups whose name (after [`CGROUP_PREFIX`]) satisfies `pred`: their
/// processes go back to the root cgroup first (normally teardown has killed them already).
/// Returns the names removed.
pub fn remove_cgroups(pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(ROOT) else {
        return done;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        if !pred(rest) || !e.path().is_dir() {
            continue;
        }
        let dir = e.path();
        // Limits go with the cgroup; the processes must leave it before it can be removed.
        if empty_and_remove(&dir, |_| PathBuf::from(ROOT)).is_ok() {
            done.push(name);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_throttle_counters() {
        let text = "7:3 Read 12\n7:3 Write 340\n7:3 Sync 300\n7:3 Async 52\n7:3 Total 352\n\
                    7:4 Write 9\nTotal 361\n";
        assert_eq!(parse_stat(text, "7:3"), (12, 340));
        assert_eq!(parse_stat(text, "7:4"), (0, 9));
        assert_eq!(parse_stat(text, "8:0"), (0, 0));
    }

    #[test]
    fn cgroups_are_named_after_the_namespace() {
        let ns = Netns {
            name: "lf42-n2".into(),
            ip: String::new(),
            veth_host: String::new(),
            ifname: String::new(),
        };
        assert_eq!(cgroup_name(&ns), "larder-faults-lf42-n2");
    }
}
