//! This node's etcd member after its data directory is lost (a replaced disk, a wiped
//! directory): the member is replaced through the other members instead of started empty.
//!
//! Started empty, etcd does harm either way. The founding node's flags still say
//! `--initial-cluster-state=new` with itself as the only member, so it would bootstrap a
//! second, one-member cluster beside the real one — whose agent sees no leader key and could
//! elect itself while the real cluster has a leader. A joiner's flags say `existing`: it takes
//! its old member id with an empty raft log and panics at the first append ("tocommit out of
//! range"), restarting forever while the cluster runs one member short.
//!
//! So once the member has run as a voter with data, the node state records it (`etcd_seated`),
//! and from then on missing member data means loss: etcd is kept from starting, the old member
//! is removed and the node re-added as a learner through the other members, etcd starts empty
//! with the new membership, and the learner is promoted once it has caught up. Nothing happens
//! without a quorum of the other members; that case is
//! `larder create-cluster --quorum-loss-recovery`.

use crate::dcs::{Dcs, Member};
use crate::node::{Node, NodeState};
use crate::supervisor::Supervisor;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Whether etcd's data directory holds a member (a write-ahead log).
pub fn has_member_data(etcd_data: &Path) -> bool {
    std::fs::read_dir(etcd_data.join("member").join("wal"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .unwrap_or(false)
}

/// Why etcd must not start now, if it must not: run before every start of the service. Reads
/// the node state from disk, since the agent records `etcd_seated` after the spec was made.
/// A replacement's learner starts empty, by design.
pub fn start_refusal(state_file: &Path, etcd_data: &Path) -> Option<String> {
    let (seated, replacing) = NodeState::load(state_file)
        .map(|s| (s.etcd_seated, s.etcd_replacing.is_some()))
        .unwrap_or((false, false));
    (seated && !replacing && !has_member_data(etcd_data)).then(|| {
        format!(
            "{} has no member data although this node's etcd member ran before: the data is \
             lost; the agent replaces the member through the other members before starting it",
            etcd_data.display()
        )
    })
}

/// What the agent does about its etcd member, from what it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The member runs as a voter with data: record that, so a later loss is recognised.
    RecordSeated,
    /// Data lost: remove these member ids (the old member, or a half-done earlier attempt)
    /// and add this node again as a learner.
    Replace {
        remove: Vec<u64>,
    },
    /// A replacement's learner: promote it (etcd refuses until it has caught up).
    Promote(u64),
    /// The replacement is a voter: the replacement is over.
    Replaced,
}

/// The decision, pure. `replacing` is the learner a replacement added (until it is a voter),
/// `me` this node's entries in the member list (by name or peer URL; `None` when the list
/// could not be read), `answers` whether the local member answered.
pub fn step(
    seated: bool,
    replacing: Option<u64>,
    has_data: bool,
    answers: bool,
    me: Option<&[Member]>,
) -> Step {
    let Some(me) = me else {
        return Step::Nothing;
    };
    if let Some(id) = replacing {
        return match me {
            [m] if m.id == id && !m.learner => Step::Replaced,
            [m] if m.id == id && has_data && answers => Step::Promote(id),
            // Starting, or catching up before its first write-ahead log file.
            [m] if m.id == id => Step::Nothing,
            // The learner is gone (removed by hand, or never there): start over.
            _ => Step::Replace {
                remove: me.iter().map(|m| m.id).collect(),
            },
        };
    }
    if !seated {
        // A joiner's learner is promoted by `join-cluster`, not here: only a voter is seated.
        return if has_data && answers && me.iter().any(|m| !m.learner) {
            Step::RecordSeated
        } else {
            Step::Nothing
        };
    }
    if !has_data {
        return Step::Replace {
            remove: me.iter().map(|m| m.id).collect(),
        };
    }
    Step::Nothing
}

/// This node's entries in the member list: its name, or its peer URL (a member added but
/// never started has no name yet).
fn own_members(members: &[Member], node: &Node) -> Vec<Member> {
    let peer = node.etcd_peer_url();
    members
        .iter()
        .filter(|m| m.name == node.cfg.fqdn || m.peer_urls.contains(&peer))
        .cloned()
        .collect()
}

pub async fn run(node: Node, dcs: Dcs, sup: Supervisor, shutdown: CancellationToken) {
    let state_file = node.paths.node_state_file();
    let mut warned_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let Ok(mut state) = NodeState::load(&state_file) else {
            continue;
        };
        let has_data = has_member_data(&node.paths.etcd_data());
        let answers = dcs
            .member_raft_status(&node.etcd_client_url())
            .await
            .is_ok_and(|(id, _)| id != 0);
        let members = dcs.members().await.ok();
        if let Some(all) = &members {
            remember_members(&mut state, all, &state_file);
        }
        let me = members.as_ref().map(|all| own_members(all, &node));
        match step(
            state.etcd_seated,
            state.etcd_replacing,
            has_data,
            answers,
            me.as_deref(),
        ) {
            Step::Nothing => {
                if state.etcd_seated && !has_data && members.is_none() {
                    // Lost data and no quorum to replace it with: say so, now and then.
                    if warned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::error!(
                            "etcd data lost and the other members are unreachable or without \
                             quorum: etcd stays down here; if the others are gone too, run \
                             `larder create-cluster --quorum-loss-recovery` on the survivor \
                             with the newest data"
                        );
                        warned_at = Some(Instant::now());
                    }
                }
            }
            Step::RecordSeated => {
                state.etcd_seated = true;
                match state.save(&state_file) {
                    Ok(()) => tracing::info!("etcd member seated (recorded in node state)"),
                    Err(e) => tracing::warn!("cannot record the etcd member: {e:#}"),
                }
            }
            Step::Replace { remove } => {
                if let Err(e) = replace(&node, &dcs, &sup, &mut state, &remove).await {
                    tracing::warn!("replacing the lost etcd member failed (retried): {e:#}");
                }
            }
            Step::Promote(id) => match dcs.member_promote(id).await {
                Ok(()) => tracing::info!(id = %format!("{id:x}"), "etcd learner promoted to voter"),
                Err(e) => tracing::debug!("etcd learner not promoted yet: {e}"),
            },
            Step::Replaced => {
                state.etcd_replacing = None;
                match state.save(&state_file) {
                    Ok(()) => tracing::info!("lost etcd member replaced: a voter again"),
                    Err(e) => tracing::warn!("cannot record the replaced etcd member: {e:#}"),
                }
            }
        }
    }
}

/// Keep the other members' client URLs in the node state (rarely changes): an agent restarted
/// while its own member is down reaches the cluster through them.
fn remember_members(state: &mut NodeState, all: &[Member], state_file: &Path) {
    let mut urls: Vec<String> = all.iter().flat_map(|m| m.client_urls.clone()).collect();
    urls.sort();
    urls.dedup();
    if !urls.is_empty() && urls != state.etcd_members {
        state.etcd_members = urls;
        if let Err(e) = state.save(state_file) {
            tracing::warn!("cannot record the etcd members: {e:#}");
        }
    }
}

async fn replace(
    node: &Node,
    dcs: &Dcs,
    sup: &Supervisor,
    state: &mut NodeState,
    remove: &[u64],
) -> anyhow::Result<()> {
    tracing::warn!(
        data = %node.paths.etcd_data().display(),
        "etcd member data lost: replacing the member through the other members"
    );
    // Whatever runs on the emptied directory goes: a running etcd whose files were deleted
    // under it only fails later, and a new start is refused by the pre-start check.
    sup.stop(crate::etcd::SERVICE, Duration::from_secs(10))
        .await?;
    for id in remove {
        dcs.member_remove(*id).await?;
        tracing::info!(id = %format!("{id:x}"), "removed the lost etcd member");
    }
    let peer = node.etcd_peer_url();
    let id = dcs.member_add_learner_retrying(&peer).await?;
    let mut initial = Vec::new();
    for m in dcs.members().await? {
        let name = if m.id == id {
            node.cfg.fqdn.clone()
        } else {
            m.name.clone()
        };
        for u in &m.peer_urls {
            initial.push(format!("{name}={u}"));
        }
    }
    // Leftovers of the lost member (a partial directory) would make etcd refuse the start.
    let data = node.paths.etcd_data();
    if data.exists() {
        for e in std::fs::read_dir(&data)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    state.etcd_initial_cluster = initial.join(",");
    state.etcd_initial_state = "existing".into();
    state.etcd_replacing = Some(id);
    state.save(&node.paths.node_state_file())?;
    let mut fresh = node.clone();
    fresh.state = state.clone();
    let account = crate::etcd::prepare(&fresh)?;
    sup.replace_spec(crate::etcd::service_spec(&fresh, account))?;
    sup.start(crate::etcd::SERVICE)?;
    tracing::info!(id = %format!("{id:x}"), "etcd started empty as a learner; promoted once caught up");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: "n1".into(),
            peer_urls: vec![],
            client_urls: vec![],
            learner,
        }
    }

    #[test]
    fn first_run_is_recorded_only_as_a_voter_with_data() {
        let unseated = |data, answers, me: &[Member]| step(false, None, data, answers, Some(me));
        assert_eq!(unseated(true, true, &[m(1, false)]), Step::RecordSeated);
        // A joiner's learner belongs to join-cluster; no data or no answer: not yet.
        assert_eq!(unseated(true, true, &[m(1, true)]), Step::Nothing);
        assert_eq!(unseated(false, true, &[m(1, false)]), Step::Nothing);
        assert_eq!(unseated(true, false, &[m(1, false)]), Step::Nothing);
        // Never seated: an empty directory is a first start, whatever the members say.
        assert_eq!(unseated(false, false, &[]), Step::Nothing);
    }

    #[test]
    fn lost_data_replaces_every_entry_of_this_node() {
        let lost = |me: &[Member]| step(true, None, false, false, Some(me));
        assert_eq!(lost(&[m(7, false)]), Step::Replace { remove: vec![7] });
        // A half-done earlier attempt left a learner that never started: it goes too.
        assert_eq!(
            lost(&[m(7, false), m(9, true)]),
            Step::Replace { remove: vec![7, 9] }
        );
        // Removed already, not yet re-added.
        assert_eq!(lost(&[]), Step::Replace { remove: vec![] });
        // Seated with data: nothing to do, a learner or not.
        assert_eq!(
            step(true, None, true, true, Some(&[m(7, true)])),
            Step::Nothing
        );
    }

    #[test]
    fn no_member_list_means_no_action() {
        // Without a quorum of the others nothing may change (and nothing is bootstrapped).
        assert_eq!(step(true, None, false, false, None), Step::Nothing);
        assert_eq!(step(true, Some(9), true, true, None), Step::Nothing);
        assert_eq!(step(false, None, true, true, None), Step::Nothing);
    }

    #[test]
    fn a_replacement_starts_empty_catches_up_and_is_promoted() {
        let r = |data, answers, me: &[Member]| step(true, Some(9), data, answers, Some(me));
        // Started empty: waiting, not replaced again.
        assert_eq!(r(false, false, &[m(9, true)]), Step::Nothing);
        assert_eq!(r(false, true, &[m(9, true)]), Step::Nothing);
        assert_eq!(r(true, false, &[m(9, true)]), Step::Nothing);
        assert_eq!(r(true, true, &[m(9, true)]), Step::Promote(9));
        assert_eq!(r(true, true, &[m(9, false)]), Step::Replaced);
        // Its learner vanished, or another entry of this node is there: over again.
        assert_eq!(r(false, false, &[]), Step::Replace { remove: vec![] });
        assert_eq!(
            r(false, false, &[m(4, true)]),
            Step::Replace { remove: vec![4] }
        );
    }

    #[test]
    fn member_data_is_a_write_ahead_log() {
        let dir = std::env::temp_dir().join(format!("larder-seat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!has_member_data(&dir));
        std::fs::create_dir_all(dir.join("member/wal")).unwrap();
        assert!(!has_member_data(&dir));
        std::fs::write(
            dir.join("member/wal/0000000000000000-0000000000000000.wal"),
            b"x",
        )
        .unwrap();
        assert!(has_member_data(&dir));
        // Seated and no data: the start is refused; not seated: allowed (first start).
        let state = dir.join("node.json");
        let mut s = NodeState {
            guid: "g".into(),
            etcd_initial_cluster: "n1=https://a:2380".into(),
            etcd_initial_state: "new".into(),
            created_unix: 0,
            etcd_seated: true,
            etcd_members: vec![],
            etcd_replacing: None,
        };
        s.save(&state).unwrap();
        assert!(start_refusal(&state, &dir).is_none());
        std::fs::remove_dir_all(dir.join("member")).unwrap();
        assert!(start_refusal(&state, &dir).is_some());
        // The replacement's learner starts empty.
        s.etcd_replacing = Some(9);
        s.save(&state).unwrap();
        assert!(start_refusal(&state, &dir).is_none());
        s.etcd_replacing = None;
        s.etcd_seated = false;
        s.save(&state).unwrap();
        assert!(start_refusal(&state, &dir).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
