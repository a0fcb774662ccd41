//! Network partitions with nftables rules inside the hosts' namespaces.
//!
//! Rules live in one table per host (`inet larder_faults`), so healing is "delete that table"
//! and can never touch anything else. Dropping on *input* at the receiver gives one-way
//! partitions for free: `A -/-> B` is one rule on B; a full cut adds the mirror rule on A.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::netns::Netns;

const TABLE: &str = "larder_faults";

/// Which sources each host drops. Built up by the helpers below, then applied at once.
#[derive(Debug, Default, Clone)]
pub struct Partition {
    /// receiver namespace name -> source addresses it drops
    drops: BTreeMap<String, Vec<String>>,
}

impl Partition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packets from `from` no longer reach `to` (one-way).
    pub fn one_way(mut self, from: &Netns, to: &Netns) -> Self {
        let list = self.drops.entry(to.name.clone()).or_default();
        if !list.contains(&from.ip) {
            list.push(from.ip.clone());
        }
        self
    }

    /// No packet crosses between any host of `a` and any host of `b`.
    pub fn between(mut self, a: &[&Netns], b: &[&Netns]) -> Self {
        for x in a {
            for y in b {
                self = self.one_way(x, y).one_way(y, x);
            }
        }
        self
    }

    /// Human summary for logs and histories: "n1<-{10.213.4.2}".
    pub fn describe(&self) -> String {
        self.drops
            .iter()
            .map(|(to, from)| format!("{to}<-x-{{{}}}", from.join(",")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Installs the rules. Existing partition rules on the affected hosts are replaced.
    pub fn apply(&self, hosts: &[Netns]) -> Result<()> {
        for host in hosts {
            if let Some(sources) = self.drops.get(&host.name) {
                install(host, sources)?;
            }
        }
        Ok(())
    }
}

fn install(host: &Netns, sources: &[String]) -> Result<()> {
    let _ = remove(host);
    // Input only: a full cut is the input rule on both sides (see `between`). For a one-way
    // cut the far side still receives, but its replies are dropped here, which is what a
    // one-way link failure looks like to TCP: SYNs arrive, nothing comes back.
    let set = sources.join(", ");
    let rules = format!(
        "table inet {TABLE} {{\n  chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {set} }} drop; }}\n}}\n"
    );
    crate::command::run_with_stdin(
        "ip",
        &["netns", "exec", &host.name, "nft", "-f", "-"],
        Some(&rules),
    )?;
    Ok(())
}

/// Removes this suite's rules from a host (no-op if absent).
pub fn remove(host: &Netns) -> Result<()> {
    let present = host
        .run("nft", &["list", "tables"])
        .map(|s| s.contains(TABLE))
        .unwrap_or(false);
    if present {
        host.run("nft", &["delete", "table", "inet", TABLE])?;
    }
    Ok(())
}

/// Heals every partition.
pub fn heal(hosts: &[Netns]) -> Result<()> {
    for h in hosts {
        remove(h)?;
    }
    Ok(())
}
