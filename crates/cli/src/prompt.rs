//! Confirmation of operations that cannot be undone: asked on a terminal, `--yes` answers it,
//! and without a terminal (scripts, CI) the operation is refused unless `--yes` was given.

use anyhow::bail;
use std::io::{BufRead, IsTerminal, Write};

/// Ask `question` (a y/N prompt) unless `yes`; `flag_hint` is how to skip it (e.g. `--yes`).
pub fn confirm(question: &str, yes: bool, flag_hint: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} — no terminal to ask on; re-run with {flag_hint} to confirm (nothing was changed)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// Ask `question` on a terminal unless `yes`; without a terminal go ahead (the operation is not
/// destructive, and scripts of chef-backend-ctl call it without `--yes`).
pub fn confirm_on_terminal(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    confirm(question, false, "--yes")
}
