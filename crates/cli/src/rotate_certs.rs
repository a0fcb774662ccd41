//! `larder rotate-certs [--node NODE] [--days N] [--json]`: re-issue the node certificates from the
//! cluster CA across the cluster, one node at a time, with no restart and no failover
//! (`larder_agent::cert_rotation`). Prints each node's old and new expiry and the ports seen
//! presenting the new certificate.

use anyhow::bail;
use larder_agent::cert_rotation::Rotated;
use larder_agent::control::{self, Request};
use larder_core::paths::Paths;

pub async fn rotate_certs(
    paths: &Paths,
    node: Option<String>,
    days: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    if !json {
        eprintln!(
            "rotating the certificates of {}, one node at a time (followers first, the leader last)…",
            node.as_deref().unwrap_or("every node")
        );
    }
    let r = control::call(&paths.agent_socket(), &Request::RotateCerts { node, days }).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    let done: Vec<Rotated> = serde_json::from_value(r.data).map_err(|e| {
        anyhow::anyhow!("the agent's answer does not parse ({e}); is the agent a different Larder version? Restart it with `larder restart`")
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(());
    }
    print!("{}", table(&done));
    println!("✔ {}", r.message);
    Ok(())
}

fn table(done: &[Rotated]) -> String {
    let date = |t: i64| crate::report::unix_date(t);
    let mut t = comfy_table::Table::new();
    t.set_header(["Node", "Role", "Old expiry", "New expiry", "Presented on"]);
    for r in done {
        t.add_row([
            r.name.clone(),
            if r.was_leader { "leader" } else { "follower" }.to_string(),
            r.old
                .as_ref()
                .map(|c| date(c.not_after_unix))
                .unwrap_or_else(|| "?".into()),
            date(r.new.not_after_unix),
            r.checked.join(" "),
        ]);
    }
    format!("{t}\n")
}
