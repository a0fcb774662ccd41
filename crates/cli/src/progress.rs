//! Progress display for long operations: numbered steps, and a byte bar for data copies.
//! Progress goes to stderr, and not at all in a `--json` run ([`quiet`]): a machine reading
//! the JSON gets nothing else.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Print no progress from now on (the command was run with `--json`).
pub fn quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

fn shown() -> bool {
    !QUIET.load(Ordering::Relaxed)
}

/// A detail line under the current step.
pub fn note(line: &str) {
    if shown() {
        eprintln!("      {line}");
    }
}

pub struct Steps {
    total: usize,
    n: usize,
    started: Instant,
    step_started: Instant,
}

impl Steps {
    pub fn new(total: usize) -> Steps {
        Steps {
            total,
            n: 0,
            started: Instant::now(),
            step_started: Instant::now(),
        }
    }
    pub fn step(&mut self, what: &str) {
        if !shown() {
            self.n += 1;
            return;
        }
        if self.n > 0 {
            eprintln!(
                "      done in {:.1}s",
                self.step_started.elapsed().as_secs_f64()
            );
        }
        self.n += 1;
        self.step_started = Instant::now();
        eprintln!("[{}/{}] {what}", self.n, self.total);
    }
    pub fn finish(&self, msg: &str) {
        if !shown() {
            return;
        }
        eprintln!(
            "      done in {:.1}s",
            self.step_started.elapsed().as_secs_f64()
        );
        eprintln!("✔ {msg} ({:.1}s)", self.started.elapsed().as_secs_f64());
    }
}

/// Bytes, rate and ETA of a base backup (pg_basebackup reports kB).
pub struct CopyBar {
    bar: ProgressBar,
}

impl CopyBar {
    pub fn new() -> CopyBar {
        let bar = if shown() && std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "      {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        CopyBar { bar }
    }
    pub fn update(&self, done_kb: u64, total_kb: u64) {
        self.bar.set_length(total_kb * 1024);
        self.bar.set_position(done_kb * 1024);
    }
    /// Update from the agent's status JSON (`ha.copy_progress`), if a copy is running.
    pub fn update_from_status(&self, s: &larder_agent::control::AgentStatus) {
        if let Some(p) = &s.ha.copy_progress {
            self.update(p.done_kb, p.total_kb);
        }
    }
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quiet_steps_still_count() {
        super::quiet();
        let mut s = super::Steps::new(2);
        s.step("a");
        s.step("b");
        s.finish("done");
        assert_eq!(s.n, 2);
    }
}
