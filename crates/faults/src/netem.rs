//! Link latency, jitter and loss with `tc qdisc ... netem` on a host's veth.
//!
//! The qdisc is put on both ends of the host's veth pair: inside the namespace it delays what
//! the host sends, on the bridge side what it receives, so a round trip through one
//! impaired host pays the delay twice — as a slow NIC or cable would.
//!
//! Some kernels (e.g. minimal VM kernels) are built without `sch_netem`; [`supported`]
//! probes for it so a schedule can report the fault as unavailable instead of failing
//! half-way.

use crate::command::{run, run_quiet};
use crate::error::{Error, Result};
use crate::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Netem {
    pub delay_ms: u32,
    pub jitter_ms: u32,
    pub loss_percent: f32,
}

impl Netem {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "netem".to_string(),
            "delay".into(),
            format!("{}ms", self.delay_ms),
        ];
        if self.jitter_ms > 0 {
            a.push(format!("{}ms", self.jitter_ms));
        }
        if self.loss_percent > 0.0 {
            a.push("loss".into());
            a.push(format!("{}%", self.loss_percent));
        }
        a
    }

    pub fn describe(&self) -> String {
        format!(
            "delay {}ms ±{}ms loss {}%",
            self.delay_ms, self.jitter_ms, self.loss_percent
        )
    }
}

/// Whether this kernel has the netem qdisc. Probed in a throw-away namespace so the root
/// namespace is never touched.
pub fn supported(probe_ns_name: &str) -> bool {
    if !run_quiet("ip", &["netns", "add", probe_ns_name]) {
        return false;
    }
    let ok = run_quiet(
        "ip",
        &[
            "netns",
            "exec",
            probe_ns_name,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
        ],
    );
    run_quiet("ip", &["netns", "del", probe_ns_name]);
    ok
}

/// Impairs the host's link in both directions.
pub fn apply(host: &Netns, netem: Netem) -> Result<()> {
    let args = netem.args();
    let mut inside: Vec<&str> = vec![
        "netns",
        "exec",
        &host.name,
        "tc",
        "qdisc",
        "replace",
        "dev",
        &host.ifname,
        "root",
    ];
    inside.extend(args.iter().map(String::as_str));
    run("ip", &inside).map_err(|e| match e {
        Error::Command { stderr, .. } if stderr.contains("qdisc kind is unknown") => {
            Error::Unsupported("tc netem (kernel built without sch_netem)".into())
        }
        other => other,
    })?;
    let mut outside: Vec<&str> = vec!["qdisc", "replace", "dev", &host.veth_host, "root"];
    outside.extend(args.iter().map(String::as_str));
    run("tc", &outside)?;
    Ok(())
}

/// Removes the impairment (no-op when none is installed).
pub fn clear(host: &Netns) {
    run_quiet(
        "ip",
        &[
            "netns",
            "exec",
            &host.name,
            "tc",
            "qdisc",
            "del",
            "dev",
            &host.ifname,
            "root",
        ],
    );
    run_quiet("tc", &["qdisc", "del", "dev", &host.veth_host, "root"]);
}
