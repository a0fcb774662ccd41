//! Clock faults: a skewed or drifting host clock, made with an LD_PRELOAD shim
//! (`shim/clockskew.c`) because a time namespace can shift only the monotonic and boot-time
//! clocks, not CLOCK_REALTIME.
//!
//! The shim interposes libc's `clock_gettime`, `gettimeofday` and `time`; Rust's
//! `SystemTime::now()` and `Instant::now()` call `clock_gettime`, so a dynamically linked
//! `larder` sees the skew (the test below runs a real process under it). Go programs (etcd)
//! read the vDSO themselves and are not affected. Its parameters live in a small file the
//! suite rewrites while the process runs (the shim re-reads it at most every 100 ms):
//! `rt_offset_ns rt_ppm mono_offset_ns mono_ppm epoch_mono_ns`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The shim's source, compiled at run time by [`build`].
pub const SOURCE: &str = include_str!("../shim/clockskew.c");

/// Environment variable naming the skew file.
pub const FILE_ENV: &str = "LARDER_SKEW_FILE";

/// Compiles the shim into `dir` with the system C compiler; returns the shared object.
pub fn build(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let src = dir.join("clockskew.c");
    std::fs::write(&src, SOURCE).map_err(|e| Error::io(&src, e))?;
    let so = dir.join("clockskew.so");
    let (s, o) = (src.to_string_lossy(), so.to_string_lossy());
    crate::command::run(
        "cc",
        &["-shared", "-fPIC", "-O2", "-Wall", "-o", &o, &s, "-ldl"],
    )?;
    Ok(so)
}

/// The real CLOCK_MONOTONIC of this (unshimmed) process, in ns: the shim's drift epoch is on
/// this clock, which every namespace shares.
pub fn mono_now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// This (unshimmed) process's wall clock, unix ms.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One setting of the skew file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skew {
    pub rt_offset_ns: i64,
    pub rt_ppm: i64,
    pub mono_offset_ns: i64,
    pub mono_ppm: i64,
    pub epoch_mono_ns: i64,
}

impl Skew {
    /// The wall clock stepped by `offset_ms` (a jump), the monotonic clock untouched.
    pub fn jump(offset_ms: i64) -> Skew {
        Skew {
            rt_offset_ns: offset_ms * 1_000_000,
            ..Skew::default()
        }
    }

    /// Both clocks running `ppm` parts per million fast (negative: slow) from now.
    pub fn drift(ppm: i64) -> Skew {
        Skew {
            rt_ppm: ppm,
            mono_ppm: ppm,
            epoch_mono_ns: mono_now_ns(),
            ..Skew::default()
        }
    }

    /// Drift accumulated so far on the monotonic clock, in ns, at real monotonic time `at`.
    pub fn mono_drift_at(&self, at: i64) -> i64 {
        let e = (at - self.epoch_mono_ns).max(0);
        self.mono_offset_ns
            + e / 1_000_000 * self.mono_ppm
            + e % 1_000_000 * self.mono_ppm / 1_000_000
    }

    /// How a drift ends: the wall clock is stepped back to true time (what NTP does to a
    /// clock far off), the monotonic clock stops drifting but keeps what it gained — it may
    /// never go back. The kept offset is taken 250 ms ahead (the shim reads the file up to
    /// 100 ms late), so the monotonic clock steps forward by a fraction of a millisecond at
    /// most rather than backwards.
    pub fn ended(&self) -> Skew {
        let kept = self.mono_drift_at(mono_now_ns() + 250_000_000);
        Skew {
            mono_offset_ns: if self.mono_ppm >= 0 {
                kept
            } else {
                // A slow clock that stops being slow must not go back either: keep the loss.
                self.mono_drift_at(mono_now_ns())
            },
            ..Skew::default()
        }
    }

    pub fn render(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.rt_offset_ns, self.rt_ppm, self.mono_offset_ns, self.mono_ppm, self.epoch_mono_ns
        )
    }

    /// Writes the setting atomically (a reader sees the old line or the new one).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.render()).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.rt_offset_ns != 0 {
            parts.push(format!("wall clock {:+} ms", self.rt_offset_ns / 1_000_000));
        }
        if self.rt_ppm != 0 {
            parts.push(format!("wall clock drift {:+} ppm", self.rt_ppm));
        }
        if self.mono_offset_ns != 0 {
            parts.push(format!("monotonic {:+} µs", self.mono_offset_ns / 1_000));
        }
        if self.mono_ppm != 0 {
            parts.push(format!("monotonic drift {:+} ppm", self.mono_ppm));
        }
        if parts.is_empty() {
            "no skew".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const CHILD: &str = "LARDER_CLOCKSKEW_CHILD";

    fn unix_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    /// Run by [`shim_shifts_rust_clocks`] in a child process under the shim: prints the
    /// wall clock, then how long a 400 ms sleep lasted by `Instant`.
    #[test]
    fn clock_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let wall = unix_ms();
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
        println!("CLOCKS {wall} {}", t.elapsed().as_micros());
    }

    fn run_child(so: &Path, file: &Path) -> (i64, i64, i64) {
        let before = unix_ms();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "clockskew::tests::clock_child", "--nocapture"])
            .env(CHILD, "1")
            .env("LD_PRELOAD", so)
            .env(FILE_ENV, file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("CLOCKS "))
            .unwrap_or_else(|| {
                panic!(
                    "no CLOCKS line: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let v: Vec<i64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        (before, v[0], v[1])
    }

    #[test]
    fn shim_shifts_rust_clocks() {
        let dir = std::env::temp_dir().join(format!("larder-clockskew-{}", std::process::id()));
        let so = build(&dir).expect("cc must be installed (scripts/install-deps.sh)");
        let file = dir.join("skew");

        // No file: no skew.
        let (before, wall, slept_us) = run_child(&so, &file);
        assert!((wall - before).abs() < 5_000, "{before} {wall}");
        assert!((400_000..480_000).contains(&slept_us), "{slept_us}");

        // A +30 s jump moves SystemTime, not Instant.
        Skew::jump(30_000).write(&file).unwrap();
        let (before, wall, slept_us) = run_child(&so, &file);
        assert!((wall - before - 30_000).abs() < 5_000, "{before} {wall}");
        assert!((400_000..480_000).contains(&slept_us), "{slept_us}");

        // −30 s.
        Skew::jump(-30_000).write(&file).unwrap();
        let (before, wall, _) = run_child(&so, &file);
        assert!((wall - before + 30_000).abs() < 5_000, "{before} {wall}");

        // A 50 % fast clock: a 400 ms sleep lasts 600 ms by Instant.
        let d = Skew::drift(500_000);
        d.write(&file).unwrap();
        let (_, _, slept_us) = run_child(&so, &file);
        assert!((600_000..700_000).contains(&slept_us), "{slept_us}");

        // Ending the drift keeps the monotonic gain and steps the wall clock back.
        let e = d.ended();
        assert_eq!((e.rt_offset_ns, e.rt_ppm, e.mono_ppm), (0, 0, 0));
        assert!(e.mono_offset_ns > 0);
        e.write(&file).unwrap();
        let (before, wall, slept_us) = run_child(&so, &file);
        assert!((wall - before).abs() < 5_000, "{before} {wall}");
        assert!((400_000..480_000).contains(&slept_us), "{slept_us}");

        // A slow clock: a 400 ms sleep lasts 200 ms by Instant; its end keeps the loss.
        let d = Skew::drift(-500_000);
        d.write(&file).unwrap();
        let (_, _, slept_us) = run_child(&so, &file);
        assert!((200_000..260_000).contains(&slept_us), "{slept_us}");
        assert!(d.ended().mono_offset_ns < 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn drift_arithmetic() {
        let s = Skew {
            mono_ppm: 1_000,
            epoch_mono_ns: 1_000_000_000,
            ..Skew::default()
        };
        // 30 s at 1000 ppm = 30 ms.
        assert_eq!(s.mono_drift_at(31_000_000_000), 30_000_000);
        assert_eq!(s.mono_drift_at(0), 0);
        assert_eq!(Skew::jump(-30_000).render(), "-30000000000 0 0 0 0\n");
    }
}
