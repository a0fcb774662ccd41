//! `larder history [--json]`: the leadership history (`larder_core::history`), one row per
//! won term like `patronictl history`, with the write gap of each hand-over.

use anyhow::bail;
use larder_agent::control::{self, Request};
use larder_core::history::{format_ms, Entry, History};
use larder_core::paths::Paths;

pub async fn history(paths: &Paths, json: bool) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    let r = control::call(&paths.agent_socket(), &Request::History).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    let h: History = serde_json::from_value(r.data).map_err(|e| {
        anyhow::anyhow!("the agent's history does not parse ({e}); is the agent a different Larder version? Restart it with `larder restart`")
    })?;
    if json {
        let rows: Vec<serde_json::Value> = h.entries.iter().map(json_row).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if h.entries.is_empty() {
        println!("no leadership history recorded yet");
        return Ok(());
    }
    print!("{}", table(&h));
    Ok(())
}

/// An entry plus its gap in milliseconds and as printed.
fn json_row(e: &Entry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).expect("entry serializes");
    v["gap_ms"] = serde_json::json!(e.gap_ms());
    v["gap"] = serde_json::json!(e.gap_ms().map(format_ms));
    v
}

/// `2026-12-01 10:00:00.123Z`
fn when(unix_ms: u64) -> String {
    let s = crate::gather_logs::utc_stamp(unix_ms / 1000);
    format!(
        "{}-{}-{} {}:{}:{}.{:03}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15],
        unix_ms % 1000
    )
}

fn table(h: &History) -> String {
    let mut t = comfy_table::Table::new();
    t.set_header([
        "Term",
        "Writable since (UTC)",
        "Kind",
        "From",
        "To",
        "Write gap",
        "Reason",
    ]);
    for e in &h.entries {
        t.add_row([
            e.term.to_string(),
            when(e.gap_end_unix_ms),
            e.kind.as_str().to_string(),
            e.from.clone().unwrap_or_else(|| "-".into()),
            e.to.clone(),
            e.gap_ms().map(format_ms).unwrap_or_else(|| "-".into()),
            e.reason.clone(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_core::history::Kind;

    #[test]
    fn rows_show_kind_gap_and_time() {
        let mut h = History::default();
        h.append(
            Entry {
                term: 2,
                kind: Kind::Failover,
                from: Some("be1".into()),
                to: "be2".into(),
                reason: "lease expired: be1 stopped renewing".into(),
                gap_start_unix_ms: Some(1_764_583_200_000),
                gap_end_unix_ms: 1_764_583_203_456,
                detected_unix_ms: None,
                acquired_unix_ms: 1_764_583_203_000,
            },
            10,
        );
        let out = table(&h);
        assert!(out.contains("2025-12-01 10:00:03.456Z"), "{out}");
        assert!(out.contains("failover") && out.contains("3.456s"), "{out}");
        let row = json_row(&h.entries[0]);
        assert_eq!(row["gap_ms"], 3456);
        assert_eq!(row["kind"], "failover");
    }
}
