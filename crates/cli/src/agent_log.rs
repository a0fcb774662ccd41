//! The agent's own log: `/var/log/larder/agent/current`, rotated by size like the supervised
//! services' logs (`log_rotation.*`), and copied to stderr when someone reads it there
//! (a terminal, or systemd's journal).

use larder_agent::supervisor::RotatingLog;
use larder_core::config::{Config, LogRotation};
use larder_core::paths::Paths;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

/// One writer per log event (tracing's `MakeWriter`); complete lines go to the rotated file.
#[derive(Clone)]
pub struct AgentLog {
    file: Arc<Mutex<RotatingLog>>,
    to_stderr: bool,
    pending: Vec<u8>,
}

impl AgentLog {
    pub fn open(paths: &Paths) -> AgentLog {
        // A broken config is reported by the agent itself right after; log with defaults.
        let rot = Config::load(&paths.config_file())
            .map(|c| c.log_rotation)
            .unwrap_or_else(|_| LogRotation::default());
        AgentLog {
            file: Arc::new(Mutex::new(RotatingLog::new(
                paths.service_log_dir("agent"),
                rot.file_maxbytes,
                rot.num_to_keep,
            ))),
            to_stderr: std::io::stderr().is_terminal()
                || std::env::var_os("JOURNAL_STREAM").is_some(),
            pending: Vec::new(),
        }
    }

    fn emit_lines(&mut self) {
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            self.file.lock().unwrap().write_line(&text);
        }
    }
}

impl Write for AgentLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.to_stderr {
            std::io::stderr().write_all(buf)?;
        }
        self.pending.extend_from_slice(buf);
        self.emit_lines();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for AgentLog {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.pending.push(b'\n');
            self.emit_lines();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_rotated_file_whole() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let mut w = AgentLog::open(&paths);
        w.to_stderr = false;
        w.write_all(b"first li").unwrap();
        w.write_all(b"ne\nsecond").unwrap();
        drop(w);
        let text = std::fs::read_to_string(paths.service_log_dir("agent").join("current")).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(lines, ["first line", "second"]);
    }
}
