//! The one error type of the library. Every variant says what failed and where, so a fault
//! test that breaks on setup points at the command or file rather than at a generic I/O error.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not supported on this machine: {0}")]
    Unsupported(String),
    #[error("timed out after {secs:.1}s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error("postgres ({target}): {}", crate::pg::describe(.source))]
    Postgres {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("history file {path}: {message}")]
    History { path: PathBuf, message: String },
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal {
        pid: i32,
        signal: String,
        source: nix::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
