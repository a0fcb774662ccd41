//! The Linux bridge every test host's veth is plugged into: the suite's private LAN.

use crate::command::{run, run_quiet};
use crate::error::Result;

/// A bridge created by the suite. It carries no address in the root namespace: the hosts
/// talk to each other and to the client namespace only, so nothing of the suite is
/// reachable from (or leaks to) the machine's own network stack.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn create(name: &str) -> Result<Self> {
        run("ip", &["link", "add", name, "type", "bridge"])?;
        // Forwarding delay 0: a fresh port would otherwise sit in "learning" for 15 s and the
        // first health checks would fail for reasons that have nothing to do with the test.
        run(
            "ip",
            &["link", "set", name, "type", "bridge", "forward_delay", "0"],
        )?;
        run("ip", &["link", "set", name, "up"])?;
        Ok(Bridge {
            name: name.to_string(),
        })
    }

    pub fn exists(name: &str) -> bool {
        run_quiet("ip", &["link", "show", name])
    }

    pub fn delete(name: &str) -> bool {
        run_quiet("ip", &["link", "del", name])
    }
}
