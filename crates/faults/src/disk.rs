//! A small loop-mounted ext4 filesystem under a host's data directory, so "the leader's disk
//! is full" can be produced for real (ENOSPC from the kernel) without touching the machine's
//! own disks.

use std::path::{Path, PathBuf};

use crate::command::{run, run_quiet};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct LoopDisk {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
}

/// Name of the file the fault writes; removing it heals the fault.
const FILLER: &str = "larder-faults-filler";

impl LoopDisk {
    /// Creates an `size_mb` image, formats it ext4 and mounts it (loop) at `mountpoint`.
    pub fn create(image: &Path, mountpoint: &Path, size_mb: u64) -> Result<Self> {
        std::fs::create_dir_all(mountpoint).map_err(|e| Error::io(mountpoint, e))?;
        let f = std::fs::File::create(image).map_err(|e| Error::io(image, e))?;
        f.set_len(size_mb * 1024 * 1024)
            .map_err(|e| Error::io(image, e))?;
        drop(f);
        let img = image.to_string_lossy().to_string();
        let mnt = mountpoint.to_string_lossy().to_string();
        // -m 0: no root-reserved blocks, otherwise a root-run process could still write
        // after "disk full" and the fault would not be what it claims.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &img])?;
        run("mount", &["-o", "loop", &img, &mnt])?;
        Ok(LoopDisk {
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Allocates a filler file until not one more block fits (ENOSPC), in halving steps from
    /// 1 GiB down to 4 KiB. Returns the bytes allocated.
    ///
    /// `fallocate`, not writes: it is instant and exact. Writing gigabytes of filler first
    /// starved PostgreSQL's commit fsyncs on the same disk for seconds (a gap caused by the
    /// harness, not the fault), and left room that ext4 handed back after the final sync, so
    /// PostgreSQL could still extend its files and the "full" disk was not full.
    pub fn fill(&self) -> Result<u64> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let path = self.mountpoint.join(FILLER);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut size: i64 = 0;
        let mut step: i64 = 1 << 30;
        while step >= 4096 {
            match fallocate(&f, FallocateFlags::empty(), size, step) {
                Ok(()) => size += step,
                Err(nix::errno::Errno::ENOSPC) => step /= 2,
                Err(e) => return Err(Error::io(&path, std::io::Error::from(e))),
            }
        }
        f.sync_all().map_err(|e| Error::io(&path, e))?;
        Ok(size as u64)
    }

    /// Removes the filler (the fault's heal).
    pub fn free(&self) -> Result<()> {
        let path = self.mountpoint.join(FILLER);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Unmounts (lazily, so a process that still has files open cannot block teardown) and
    /// deletes the image; `mount -o loop` set the loop device to auto-clear on unmount.
    pub fn destroy(&self) {
        let mnt = self.mountpoint.to_string_lossy().to_string();
        run_quiet("umount", &["-l", &mnt]);
        detach_loops_backed_by(&self.image);
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Detaches every loop device whose backing file is `image` (leftovers of a killed run).
pub fn detach_loops_backed_by(image: &Path) {
    let img = image.to_string_lossy().to_string();
    if let Ok(out) = run("losetup", &["-j", &img]) {
        for line in out.lines() {
            if let Some(dev) = line.split(':').next() {
                run_quiet("losetup", &["-d", dev]);
            }
        }
    }
}
