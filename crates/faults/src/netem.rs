//! Link latency, jitter and loss on every host of a run: `tc qdisc … netem` where the kernel
//! has `sch_netem`, otherwise the NFQUEUE delayer of [`crate::delay`] (same semantics: a
//! delay drawn per packet, jitter reorders, optional loss).
//!
//! [`Direction::Egress`] impairs what each host sends on its link (netem on the host's NIC,
//! Jepsen's convention): between two impaired hosts a packet pays one delay each way.
//! [`Direction::Both`] also impairs what it receives (tc: the bridge end of its veth too).
//!
//! Some kernels (e.g. minimal VM kernels) are built without `sch_netem`; [`Backend::detect`]
//! probes in a throw-away namespace and says which backend is used, so the output and the
//! history always name it.

use std::time::Duration;

use crate::command::{run, run_quiet};
use crate::delay::{DelaySpec, DelayStats, Delayer};
use crate::error::{Error, Result};
use crate::netns::Netns;

pub use crate::delay::{Direction, Distribution};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Netem {
    pub delay_ms: u32,
    pub jitter_ms: u32,
    pub loss_percent: f32,
    pub distribution: Distribution,
    pub direction: Direction,
    /// Seed of the per-packet draws (NFQUEUE backend; tc netem has its own RNG).
    pub seed: u64,
}

impl Netem {
    /// `delay_ms` ± `jitter_ms`, uniform, egress, no loss.
    pub fn jitter(delay_ms: u32, jitter_ms: u32) -> Netem {
        Netem {
            delay_ms,
            jitter_ms,
            loss_percent: 0.0,
            distribution: Distribution::Uniform,
            direction: Direction::Egress,
            seed: 5,
        }
    }

    /// Parses "50ms±50ms", "50ms+-50ms", "50±10" or "50ms" (milliseconds).
    pub fn parse(s: &str) -> Result<Netem> {
        let bad = || Error::Invalid(format!("{s:?}: expected e.g. 50ms±50ms"));
        let (d, j) = match s.split_once('±').or_else(|| s.split_once("+-")) {
            Some((d, j)) => (d, j),
            None => (s, "0"),
        };
        let ms = |x: &str| -> Result<u32> {
            x.trim()
                .trim_end_matches("ms")
                .trim()
                .parse()
                .map_err(|_| bad())
        };
        Ok(Netem::jitter(ms(d)?, ms(j)?))
    }

    fn tc_args(&self) -> Vec<String> {
        let mut a = vec![
            "netem".to_string(),
            "delay".into(),
            format!("{}ms", self.delay_ms),
        ];
        if self.jitter_ms > 0 {
            a.push(format!("{}ms", self.jitter_ms));
            if self.distribution == Distribution::Normal {
                a.push("distribution".into());
                a.push("normal".into());
            }
        }
        if self.loss_percent > 0.0 {
            a.push("loss".into());
            a.push(format!("{}%", self.loss_percent));
        }
        a
    }

    fn delay_spec(&self) -> DelaySpec {
        DelaySpec {
            delay: Duration::from_millis(self.delay_ms as u64),
            jitter: Duration::from_millis(self.jitter_ms as u64),
            distribution: self.distribution,
            loss_percent: self.loss_percent as f64,
            direction: self.direction,
            seed: self.seed,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "delay {}ms ±{}ms {:?} loss {}% {:?}",
            self.delay_ms, self.jitter_ms, self.distribution, self.loss_percent, self.direction
        )
        .to_lowercase()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `tc qdisc … netem` (kernel `sch_netem`).
    Tc,
    /// iptables NFQUEUE + the userspace delayer of [`crate::delay`].
    Nfqueue,
}

impl Backend {
    /// tc netem when the kernel has it, else NFQUEUE when that works, else `Unsupported`.
    pub fn detect(probe_ns_name: &str) -> Result<Backend> {
        if tc_supported(probe_ns_name) {
            Ok(Backend::Tc)
        } else if crate::delay::supported(probe_ns_name) {
            Ok(Backend::Nfqueue)
        } else {
            Err(Error::Unsupported(
                "neither tc netem (sch_netem) nor iptables NFQUEUE works on this kernel".into(),
            ))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Tc => "tc netem",
            Backend::Nfqueue => "nfqueue delayer",
        }
    }
}

/// Whether some backend exists on this machine.
pub fn supported(probe_ns_name: &str) -> bool {
    Backend::detect(probe_ns_name).is_ok()
}

/// Whether this kernel has the netem qdisc. Probed in a throw-away namespace so the root
/// namespace is never touched.
pub fn tc_supported(probe_ns_name: &str) -> bool {
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

/// An impairment installed on a set of hosts. Dropping it (or [`Impaired::clear`]) removes
/// it from every host.
pub struct Impaired {
    pub backend: Backend,
    pub spec: Netem,
    hosts: Vec<Netns>,
    delayers: Vec<(String, Delayer)>,
    cleared: bool,
}

impl Impaired {
    /// "delay 50ms ±50ms uniform loss 0% egress via nfqueue delayer".
    pub fn describe(&self) -> String {
        format!("{} via {}", self.spec.describe(), self.backend.name())
    }

    /// Per-host counters of the NFQUEUE delayers (empty for tc).
    pub fn stats(&self) -> Vec<(String, DelayStats)> {
        self.delayers
            .iter()
            .map(|(n, d)| (n.clone(), d.stats()))
            .collect()
    }

    /// Hosts whose delayer thread has stopped (it failed; its link is undelayed, fail-open).
    pub fn dead(&self) -> Vec<String> {
        self.delayers
            .iter()
            .filter(|(_, d)| !d.alive())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Removes the impairment everywhere; returns the delayers' final counters.
    pub fn clear(mut self) -> Result<Vec<(String, DelayStats)>> {
        self.clear_inner()
    }

    fn clear_inner(&mut self) -> Result<Vec<(String, DelayStats)>> {
        self.cleared = true;
        for h in &self.hosts {
            clear_tc(h);
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for (n, d) in self.delayers.drain(..) {
            match d.stop() {
                Ok(s) => out.push((n, s)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

impl Drop for Impaired {
    fn drop(&mut self) {
        if !self.cleared {
            let _ = self.clear_inner();
        }
    }
}

/// Impairs every host in `hosts`. On error, whatever was installed is removed again.
pub fn apply_all(hosts: &[Netns], spec: Netem, backend: Backend) -> Result<Impaired> {
    let mut imp = Impaired {
        backend,
        spec,
        hosts: Vec::new(),
        delayers: Vec::new(),
        cleared: false,
    };
    for h in hosts {
        match backend {
            Backend::Tc => {
                imp.hosts.push(h.clone());
                apply_tc(h, spec)?;
            }
            Backend::Nfqueue => {
                let d = Delayer::start(h, spec.delay_spec())?;
                imp.delayers.push((h.name.clone(), d));
            }
        }
    }
    Ok(imp)
}

/// Impairs one host's link with tc netem.
fn apply_tc(host: &Netns, netem: Netem) -> Result<()> {
    let args = netem.tc_args();
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
    if netem.direction == Direction::Both {
        let mut outside: Vec<&str> = vec!["qdisc", "replace", "dev", &host.veth_host, "root"];
        outside.extend(args.iter().map(String::as_str));
        run("tc", &outside)?;
    }
    Ok(())
}

/// Removes a tc netem impairment (no-op when none is installed).
fn clear_tc(host: &Netns) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jitter_specs() {
        let n = Netem::parse("50ms±50ms").unwrap();
        assert_eq!((n.delay_ms, n.jitter_ms), (50, 50));
        let n = Netem::parse("20+-5").unwrap();
        assert_eq!((n.delay_ms, n.jitter_ms), (20, 5));
        let n = Netem::parse("30ms").unwrap();
        assert_eq!((n.delay_ms, n.jitter_ms), (30, 0));
        assert!(Netem::parse("fast").is_err());
    }
}
