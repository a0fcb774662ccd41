//! Versions: the release (`larder --version`, posted by every member) and the cluster protocol
//! — the etcd layout and the meaning of what members post.
//!
//! **Rule (N / N−1).** An agent speaking protocol `P` runs in a cluster whose recorded protocol
//! ([`crate::keys::PROTOCOL`]) is `P` or `P − 1`, so a rolling upgrade can always run one node
//! at a time: new agents keep reading and writing what old ones understand until every member
//! reports `P`, and only then is the cluster's protocol raised. An agent refuses a cluster
//! recorded at a newer protocol (it would misread it) or more than one behind (upgrade one
//! release at a time). A refused agent never leads: a leader that sees the cluster raised
//! beyond it fences and steps down. PostgreSQL major upgrades (design in
//! docs/architecture.md) raise the protocol too, since followers must be re-cloned.

/// This build's release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The cluster protocol this build speaks.
pub const PROTOCOL: u32 = 1;

/// Whether an agent speaking `mine` may run in a cluster recorded at `cluster`; the error
/// names the fix.
pub fn check(cluster: u32, mine: u32) -> Result<(), String> {
    if cluster == mine || cluster + 1 == mine {
        return Ok(());
    }
    if cluster > mine {
        return Err(format!(
            "the cluster runs protocol {cluster}, newer than this agent's {mine} (Larder {VERSION}): install the Larder release the other members run, then `larder start`"
        ));
    }
    Err(format!(
        "the cluster runs protocol {cluster}, more than one behind this agent's {mine} (Larder {VERSION}): upgrade one release at a time (install the release after the cluster's, `larder upgrade` every node, then this one)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_and_n_minus_one_work_together() {
        assert!(check(3, 3).is_ok());
        assert!(
            check(2, 3).is_ok(),
            "a new agent in a not yet raised cluster"
        );
        let newer = check(4, 3).unwrap_err();
        assert!(newer.contains("newer"), "{newer}");
        let old = check(1, 3).unwrap_err();
        assert!(old.contains("one release at a time"), "{old}");
    }
}
