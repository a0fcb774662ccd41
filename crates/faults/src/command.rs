//! Running the system tools the suite drives (`ip`, `nft`, `tc`, `mount`, ...).
//!
//! Every fault is a real kernel operation done by the standard tool, so a failing step
//! reports the exact command line and its stderr.

use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Renders a command line for error messages and logs.
pub fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn output(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: render(program, args),
        source,
    })?;
    if let Some(input) = stdin {
        use std::io::Write;
        // The child reads all of stdin before it answers; a small rule set fits the pipe.
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(input.as_bytes())
                .map_err(|source| Error::Spawn {
                    command: render(program, args),
                    source,
                })?;
        }
    }
    child.wait_with_output().map_err(|source| Error::Spawn {
        command: render(program, args),
        source,
    })
}

/// Runs a command and fails with its stderr when it exits non-zero. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_stdin(program, args, None)
}

/// Like [`run`], feeding `stdin` to the command (used for `nft -f -`).
pub fn run_with_stdin(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = output(program, args, stdin)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: render(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command whose failure is expected during teardown (the object may already be
/// gone). Returns whether it succeeded.
pub fn run_quiet(program: &str, args: &[&str]) -> bool {
    output(program, args, None)
        .map(|o| o.status.success())
        .unwrap_or(false)
}
