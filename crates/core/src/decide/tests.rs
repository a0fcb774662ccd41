//! Exact-action tests for each rule, then property tests of the safety invariants over random
//! situations.

use super::*;
use crate::model::Lsn;
use proptest::prelude::*;

fn pos(lsn: u64) -> WalPosition {
    WalPosition {
        timeline: 1,
        lsn: Lsn(lsn),
    }
}

fn member(guid: &str, p: u64, term: u64, leader_seen: Option<&str>) -> MemberStatus {
    MemberStatus {
        name: format!("node-{guid}"),
        address: "10.0.0.1".into(),
        position: pos(p),
        term,
        leader_seen: leader_seen.map(str::to_string),
        version: crate::version::VERSION.into(),
        protocol: crate::version::PROTOCOL,
        ..MemberStatus::test_member(guid, NodeRole::WaitingForLeader, PgState::Standby)
    }
}

fn leader(guid: &str, term: u64) -> LeaderRecord {
    LeaderRecord {
        guid: guid.into(),
        name: format!("node-{guid}"),
        address: "10.0.0.9".into(),
        term,
    }
}

fn local(pg: PgState, p: u64) -> LocalState {
    LocalState {
        pg,
        position: pos(p),
        pg_failures: 0,
        following: None,
        not_streaming_since_ms: None,
        diverged: false,
        rewind_failed: false,
        disk_free_mb: None,
        syncing: false,
        copy_failed_ms: None,
        switchover_scheduled: None,
    }
}

fn view(
    leader: Option<LeaderRecord>,
    term: u64,
    members: Vec<MemberStatus>,
    voters: &[&str],
) -> DcsView {
    DcsView {
        leader,
        term,
        members,
        voters: voters.iter().map(|s| s.to_string()).collect(),
        protocol: Some(crate::version::PROTOCOL),
        ..DcsView::default()
    }
}

fn obs(me: &str, local: LocalState, dcs: Option<DcsView>, lease: Option<HeldLease>) -> Observation {
    Observation {
        now_ms: 10_000,
        now_unix_ms: 1_000_000,
        me: me.into(),
        local,
        dcs,
        lease,
        sync_mode: SyncMode::Quorum,
        health: crate::config::HealthCheckConfig {
            max_pgsql_failures: 3,
            fatal_system_checks: true,
            disk_min_space_mb: 100,
            ..Default::default()
        },
        rejoin_timeout_ms: 5000,
        align_switchover: true,
        own_checks: vec![],
        request: None,
        vip: None,
    }
}

fn lease(term: u64, deadline: u64) -> Option<HeldLease> {
    Some(HeldLease {
        term,
        fence_deadline_ms: deadline,
    })
}

fn starts_with_fence(d: &Decision) -> bool {
    matches!(d.actions.first(), Some(Action::Fence { .. }))
}

fn acquires(d: &Decision) -> bool {
    d.actions
        .iter()
        .any(|a| matches!(a, Action::AcquireLeadership { .. }))
}

/// A cluster of a, b, c with cluster failover off, whose term 5 was acquired by b; the leader
/// key is gone (b's agent restarted). a and c run as standbys without upstream and have posted
/// their (equal) positions.
fn failover_off_after_leader_restart(me_pg: PgState) -> (DcsView, LocalState) {
    let mut v = view(
        None,
        5,
        vec![member("a", 100, 5, None), member("c", 100, 5, None)],
        &["a", "b", "c"],
    );
    v.cluster_failover = false;
    v.last_leader = Some(leader("b", 5));
    (v, local(me_pg, 100))
}

#[test]
fn failover_off_only_the_last_leader_may_lead_again() {
    let (v, l) = failover_off_after_leader_restart(PgState::Standby);
    let d = decide(&obs("b", l.clone(), Some(v.clone()), None));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeadership { term: 6 }],
        "{}",
        d.reason
    );
    // a is as advanced and has the lower GUID, but failover is off: it never runs...
    let mut va = v.clone();
    va.members = vec![member("b", 100, 5, None), member("c", 100, 5, None)];
    let d = decide(&obs("a", l.clone(), Some(va), None));
    assert!(!acquires(&d), "{:?}", d);
    assert!(
        d.reason.contains("cluster failover is disabled"),
        "{}",
        d.reason
    );
    // ...and b does not defer to a (which would leave the cluster leaderless).
    let mut vb = v;
    vb.members.push(member("b", 100, 5, None));
    let d = decide(&obs("b", l, Some(vb), None));
    assert!(acquires(&d), "{}", d.reason);
}

/// Seen in the cluster test: after a kill -9 of the leader, a follower posted the byte position
/// of the torn tail it had received (page-aligned) beyond the last complete record the restarted
/// leader replays. With failover off the last leader must not defer to it.
#[test]
fn failover_off_the_last_leader_does_not_defer_to_a_torn_tail() {
    let (mut v, l) = failover_off_after_leader_restart(PgState::Standby);
    v.members[1].position = pos(100 + 5_000);
    let d = decide(&obs("b", l, Some(v), None));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeadership { term: 6 }],
        "{}",
        d.reason
    );
}

#[test]
fn failover_off_a_leader_of_an_older_term_may_not_lead() {
    let (mut v, l) = failover_off_after_leader_restart(PgState::Standby);
    v.last_leader = Some(leader("b", 4));
    let d = decide(&obs("b", l, Some(v), None));
    assert!(!acquires(&d), "{}", d.reason);
}

/// Sequence test (each decision's actions fed back as the next observation): the leader's agent
/// restarts with cluster failover off and the same node leads again; the others never try.
#[test]
fn sequence_leader_restart_with_failover_off() {
    let (mut v, mut l) = failover_off_after_leader_restart(PgState::Stopped);
    let others = |v: &DcsView, me: &str| {
        let mut v = v.clone();
        v.members.retain(|m| m.guid != me);
        v.members.push(member(
            "b",
            100,
            v.term,
            v.leader.as_ref().map(|l| l.guid.as_str()),
        ));
        for g in ["a", "c"] {
            let d = decide(&obs(g, local(PgState::Standby, 100), Some(v.clone()), None));
            assert!(!acquires(&d), "{g} tried to lead: {}", d.reason);
        }
    };
    // 1. PostgreSQL down after the restart: start it as a standby without upstream.
    let d = decide(&obs("b", l.clone(), Some(v.clone()), None));
    assert_eq!(d.actions, vec![Action::StartStandby], "{}", d.reason);
    others(&v, "b");
    l.pg = PgState::Standby;
    // 2. Its position is known: acquire the next term.
    let d = decide(&obs("b", l.clone(), Some(v.clone()), None));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeadership { term: 6 }],
        "{}",
        d.reason
    );
    v.term = 6;
    v.leader = Some(leader("b", 6));
    v.last_leader = Some(leader("b", 6));
    let held = lease(6, 20_000);
    // 3. Lease held: promote, then keep the synchronous quorum.
    let d = decide(&obs("b", l.clone(), Some(v.clone()), held));
    let names = vec![
        crate::model::standby_name("a"),
        crate::model::standby_name("c"),
    ];
    assert_eq!(
        d.actions,
        vec![
            Action::Promote,
            Action::SetSyncStandbys {
                k: 1,
                names: names.clone()
            }
        ]
    );
    others(&v, "b");
    l.pg = PgState::Primary;
    // 4. Writable leader, steady.
    let d = decide(&obs("b", l, Some(v), held));
    assert_eq!(d.role, NodeRole::Leader);
    assert_eq!(d.actions, vec![Action::SetSyncStandbys { k: 1, names }]);
}

#[test]
fn single_node_bootstrap_acquires_term_one() {
    let o = obs(
        "a",
        local(PgState::Standby, 100),
        Some(view(None, 0, vec![], &["a"])),
        None,
    );
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::AcquireLeadership { term: 1 }]);
}

#[test]
fn stopped_pg_without_leader_is_started_as_standby_first() {
    let o = obs(
        "a",
        local(PgState::Stopped, 0),
        Some(view(None, 0, vec![], &["a"])),
        None,
    );
    let d = decide(&o);
    assert_eq!(d.actions[0], Action::StartStandby);
}

#[test]
fn leader_past_deadline_fences_before_anything_else() {
    let v = view(Some(leader("a", 3)), 3, vec![], &["a", "b", "c"]);
    let o = obs("a", local(PgState::Primary, 100), Some(v), lease(3, 10_000));
    let d = decide(&o);
    assert_eq!(d.role, NodeRole::DeposedLeader);
    assert!(matches!(d.actions[0], Action::Fence { .. }));
    assert_eq!(d.actions[1], Action::ReleaseLeadership);
}

#[test]
fn leader_without_etcd_keeps_serving_until_deadline() {
    let o = obs("a", local(PgState::Primary, 100), None, lease(3, 10_500));
    let d = decide(&o);
    assert_eq!(d.role, NodeRole::Leader);
    assert!(d.actions.is_empty());
}

#[test]
fn leader_seeing_another_key_fences() {
    let v = view(Some(leader("b", 4)), 4, vec![], &["a", "b", "c"]);
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 100),
        Some(v),
        lease(3, 20_000),
    ));
    assert_eq!(d.role, NodeRole::DeposedLeader);
    assert!(matches!(d.actions[0], Action::Fence { .. }));
}

#[test]
fn new_leader_promotes_and_sets_quorum_sync() {
    let v = view(Some(leader("a", 5)), 5, vec![], &["a", "b", "c"]);
    let d = decide(&obs(
        "a",
        local(PgState::Streaming, 100),
        Some(v),
        lease(5, 20_000),
    ));
    assert_eq!(d.role, NodeRole::Leader);
    assert_eq!(d.actions[0], Action::Promote);
    assert_eq!(
        d.actions[1],
        Action::SetSyncStandbys {
            k: 1,
            names: vec![
                crate::model::standby_name("b"),
                crate::model::standby_name("c")
            ]
        }
    );
}

#[test]
fn sync_quorum_sizes() {
    assert_eq!(sync_quorum(SyncMode::Quorum, 1), 0);
    assert_eq!(sync_quorum(SyncMode::Quorum, 3), 1);
    assert_eq!(sync_quorum(SyncMode::Quorum, 5), 2);
    assert_eq!(sync_quorum(SyncMode::Strict, 3), 2);
    assert_eq!(sync_quorum(SyncMode::Off, 5), 0);
    for n in 1..10 {
        // leader + k followers is a majority in quorum mode
        assert!(1 + sync_quorum(SyncMode::Quorum, n) >= majority(n));
    }
}

#[test]
fn leader_with_stopped_pg_restarts_it_as_primary() {
    let v = view(Some(leader("a", 2)), 2, vec![], &["a"]);
    let d = decide(&obs(
        "a",
        local(PgState::Stopped, 100),
        Some(v),
        lease(2, 20_000),
    ));
    assert_eq!(d.actions[0], Action::StartPrimary);
}

#[test]
fn leader_with_failed_pg_hands_over_when_a_follower_can_take_it() {
    let mut f = member("b", 100, 2, Some("a"));
    f.pg = PgState::Streaming;
    let v = view(Some(leader("a", 2)), 2, vec![f], &["a", "b", "c"]);
    let mut l = local(PgState::Stopped, 0);
    l.pg_failures = 3;
    let d = decide(&obs("a", l.clone(), Some(v.clone()), lease(2, 20_000)));
    assert_eq!(d.role, NodeRole::DeposedLeader);
    assert!(d.actions.contains(&Action::ReleaseLeadership));
    // Without a follower able to take over, keep trying to restart locally.
    let v2 = view(Some(leader("a", 2)), 2, vec![], &["a"]);
    let d2 = decide(&obs("a", l, Some(v2), lease(2, 20_000)));
    assert_eq!(d2.actions[0], Action::StartPrimary);
}

#[test]
fn leader_with_a_full_data_disk_hands_over_only_to_a_follower_with_room() {
    let mut f = member("b", 100, 2, Some("a"));
    f.pg = PgState::Streaming;
    f.eligible = true;
    let v = view(Some(leader("a", 2)), 2, vec![f.clone()], &["a", "b", "c"]);
    let mut full = local(PgState::Primary, 100);
    full.disk_free_mb = Some(0);
    let mut o = obs("a", full.clone(), Some(v), lease(2, 20_000));
    // Whatever `fatal_system_checks` says: a full disk refuses writes.
    o.health.fatal_system_checks = false;
    let d = decide(&o);
    assert_eq!(d.role, NodeRole::DeposedLeader, "{}", d.reason);
    assert!(starts_with_fence(&d) && d.actions.contains(&Action::ReleaseLeadership));
    // The follower's disk is full too (it posts itself not eligible): stay, nothing is better.
    f.eligible = false;
    let v = view(Some(leader("a", 2)), 2, vec![f], &["a", "b", "c"]);
    let d = decide(&obs("a", full, Some(v.clone()), lease(2, 20_000)));
    assert_eq!(d.role, NodeRole::Leader, "{}", d.reason);
    // Room left (at the full threshold): a leader as before.
    let mut roomy = local(PgState::Primary, 100);
    roomy.disk_free_mb = Some(crate::health::DISK_FULL_MB);
    let mut o = obs("a", roomy, Some(v), lease(2, 20_000));
    o.health.fatal_system_checks = false;
    assert_eq!(decide(&o).role, NodeRole::Leader);
}

#[test]
fn a_node_with_a_full_data_disk_does_not_run_for_leader() {
    let v = view(None, 4, vec![member("b", 100, 4, None)], &["a", "b", "c"]);
    let mut l = local(PgState::Standby, 200);
    l.disk_free_mb = Some(1);
    let mut o = obs("a", l, Some(v), None);
    o.health.fatal_system_checks = false;
    assert!(!acquires(&decide(&o)));
    o.local.disk_free_mb = None;
    assert!(acquires(&decide(&o)), "the same node with room runs");
}

#[test]
fn non_leader_primary_is_fenced() {
    let v = view(Some(leader("b", 2)), 2, vec![], &["a", "b", "c"]);
    let d = decide(&obs("a", local(PgState::Primary, 100), Some(v), None));
    assert!(matches!(d.actions[0], Action::Fence { .. }));
}

#[test]
fn follower_points_at_leader_then_stays() {
    let v = view(Some(leader("b", 2)), 2, vec![], &["a", "b", "c"]);
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert_eq!(
        d.actions,
        vec![Action::Follow {
            leader: leader("b", 2)
        }]
    );
    let mut l = local(PgState::Streaming, 100);
    l.following = Some("b".into());
    let d = decide(&obs("a", l, Some(v), None));
    assert!(d.actions.is_empty());
    assert_eq!(d.role, NodeRole::Follower);
}

/// b leads term 2 and its status shows the promoted primary (copies are only taken from it).
fn promoted_leader_view() -> DcsView {
    let mut b = member("b", 200, 2, Some("b"));
    b.pg = PgState::Primary;
    view(Some(leader("b", 2)), 2, vec![b], &["a", "b", "c"])
}

#[test]
fn copies_only_from_a_promoted_leader_and_not_right_after_a_failure() {
    // b holds the key but still runs as a standby (promotion under way): no copy yet.
    let v = view(
        Some(leader("b", 2)),
        2,
        vec![member("b", 200, 2, Some("b"))],
        &["a", "b", "c"],
    );
    let d = decide(&obs("a", local(PgState::Empty, 0), Some(v), None));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.reason.contains("finish promotion"), "{}", d.reason);
    // Promoted, but the last copy failed 1 s ago: wait out the backoff, then copy.
    let mut l = local(PgState::Empty, 0);
    l.copy_failed_ms = Some(9_000);
    let d = decide(&obs("a", l.clone(), Some(promoted_leader_view()), None));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    l.copy_failed_ms = Some(5_000);
    let d = decide(&obs("a", l, Some(promoted_leader_view()), None));
    assert_eq!(
        d.actions,
        vec![Action::Basebackup {
            leader: leader("b", 2)
        }]
    );
}

#[test]
fn empty_node_clones_diverged_node_rewinds_failed_rewind_clones() {
    let v = promoted_leader_view();
    let d = decide(&obs("a", local(PgState::Empty, 0), Some(v.clone()), None));
    assert_eq!(
        d.actions,
        vec![Action::Basebackup {
            leader: leader("b", 2)
        }]
    );
    let mut l = local(PgState::Stopped, 100);
    l.diverged = true;
    let d = decide(&obs("a", l.clone(), Some(v.clone()), None));
    assert_eq!(
        d.actions,
        vec![Action::Rewind {
            leader: leader("b", 2)
        }]
    );
    l.rewind_failed = true;
    let d = decide(&obs("a", l, Some(v), None));
    assert_eq!(
        d.actions,
        vec![Action::Basebackup {
            leader: leader("b", 2)
        }]
    );
}

#[test]
fn follower_not_streaming_past_timeout_rewinds() {
    let v = promoted_leader_view();
    let mut l = local(PgState::Standby, 100);
    l.following = Some("b".into());
    l.not_streaming_since_ms = Some(4_000);
    let d = decide(&obs("a", l.clone(), Some(v.clone()), None));
    assert_eq!(
        d.actions,
        vec![Action::Rewind {
            leader: leader("b", 2)
        }]
    );
    l.not_streaming_since_ms = Some(9_000);
    assert!(decide(&obs("a", l, Some(v), None)).actions.is_empty());
}

#[test]
fn candidate_waits_for_majority_of_fresh_positions() {
    // b still reports seeing the old leader: its position is not final yet.
    let v = view(
        None,
        4,
        vec![member("b", 100, 4, Some("c"))],
        &["a", "b", "c"],
    );
    let d = decide(&obs("a", local(PgState::Standby, 100), Some(v), None));
    assert!(!acquires(&d), "{d:?}");
    let v = view(None, 4, vec![member("b", 100, 4, None)], &["a", "b", "c"]);
    let d = decide(&obs("a", local(PgState::Standby, 100), Some(v), None));
    assert!(acquires(&d), "{d:?}");
}

#[test]
fn stale_term_posts_do_not_count() {
    let v = view(None, 4, vec![member("b", 100, 3, None)], &["a", "b", "c"]);
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
}

#[test]
fn less_advanced_candidate_waits() {
    let v = view(None, 4, vec![member("b", 200, 4, None)], &["a", "b", "c"]);
    let d = decide(&obs("a", local(PgState::Standby, 100), Some(v), None));
    assert!(!acquires(&d));
    assert!(d.reason.contains("more advanced"));
}

#[test]
fn equal_positions_lowest_guid_goes_first() {
    let v = view(None, 4, vec![member("a", 100, 4, None)], &["a", "b", "c"]);
    assert!(!acquires(&decide(&obs(
        "b",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None
    ))));
    let v = view(None, 4, vec![member("b", 100, 4, None)], &["a", "b", "c"]);
    assert!(acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
}

#[test]
fn failover_flags_block_election_but_not_bootstrap() {
    let mut v = view(None, 4, vec![member("b", 100, 4, None)], &["a", "b", "c"]);
    v.cluster_failover = false;
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert!(!acquires(&d));
    assert!(d.reason.contains("cluster failover is disabled"));
    v.cluster_failover = true;
    v.node_failover = false;
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
    let mut boot = view(None, 0, vec![], &["a"]);
    boot.cluster_failover = false;
    assert!(acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 1),
        Some(boot),
        None
    ))));
}

#[test]
fn non_voter_and_unhealthy_nodes_do_not_run() {
    let v = view(None, 4, vec![member("b", 100, 4, None)], &["b", "c"]);
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
    let v = view(None, 4, vec![member("b", 100, 4, None)], &["a", "b", "c"]);
    let mut l = local(PgState::Standby, 100);
    l.disk_free_mb = Some(10);
    assert!(
        !acquires(&decide(&obs("a", l, Some(v.clone()), None))),
        "disk below the minimum"
    );
    // Too far behind the leader's last posted position (lag is computed by the core).
    let mut lagging = v;
    lagging.leader = Some(leader("b", 4));
    lagging.members[0].position = pos(100 + 52_428_801);
    let mut streaming = local(PgState::Streaming, 100);
    streaming.following = Some("b".into());
    let d = decide(&obs("a", streaming, Some(lagging), None));
    assert_eq!(d.role, NodeRole::Ineligible, "{}", d.reason);
}

#[test]
fn switchover_only_target_with_checkpoint_may_acquire() {
    let mut v = view(
        None,
        4,
        vec![member("b", 100, 4, None), member("c", 100, 4, None)],
        &["a", "b", "c"],
    );
    v.switchover = Some(Switchover {
        target: Some("c".into()),
        term: 4,
        min_position: pos(100),
        from: "a".into(),
        deadline_unix_ms: 2_000_000,
    });
    // b is not the target
    assert!(!acquires(&decide(&obs(
        "b",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None
    ))));
    // c lacks the checkpoint
    assert!(!acquires(&decide(&obs(
        "c",
        local(PgState::Standby, 99),
        Some(v.clone()),
        None
    ))));
    // c has it; b's post (same position, lower guid) does not stop the named target
    let mut v2 = v.clone();
    v2.members = vec![member("a", 100, 4, None), member("d", 100, 4, None)];
    v2.voters = vec!["a".into(), "c".into(), "d".into()];
    assert!(acquires(&decide(&obs(
        "c",
        local(PgState::Standby, 100),
        Some(v2),
        None
    ))));
    // expired switchover no longer restricts
    let mut o = obs("b", local(PgState::Standby, 100), Some(v), None);
    o.now_unix_ms = 3_000_000;
    assert!(acquires(&decide(&o)));
}

#[test]
fn switchover_target_holding_the_checkpoint_needs_no_majority_of_posts() {
    // Nobody has posted a fresh position yet (statuses still show the old leader): the named
    // target holding the final checkpoint acquires anyway, others still wait.
    let mut v = view(
        None,
        4,
        vec![
            member("a", 100, 4, Some("a")),
            member("b", 100, 4, Some("a")),
        ],
        &["a", "b", "c"],
    );
    v.switchover = Some(Switchover {
        target: Some("c".into()),
        term: 4,
        min_position: pos(101),
        from: "a".into(),
        deadline_unix_ms: 2_000_000,
    });
    let d = decide(&obs(
        "c",
        local(PgState::Standby, 101),
        Some(v.clone()),
        None,
    ));
    assert_eq!(d.actions, vec![Action::AcquireLeadership { term: 5 }]);
    assert!(!acquires(&decide(&obs(
        "b",
        local(PgState::Standby, 101),
        Some(v.clone()),
        None
    ))));
    // A switchover record of an older term (someone acquired since) grants nothing.
    v.term = 5;
    assert!(!acquires(&decide(&obs(
        "c",
        local(PgState::Standby, 101),
        Some(v),
        None
    ))));
}

#[test]
fn streaming_standby_detaches_before_its_position_counts() {
    // The key is gone but this standby still receives WAL (old primary's agent frozen).
    let v = view(
        None,
        4,
        vec![member("b", 100, 4, None), member("c", 100, 4, None)],
        &["a", "b", "c"],
    );
    let d = decide(&obs(
        "a",
        local(PgState::Streaming, 200),
        Some(v.clone()),
        None,
    ));
    assert_eq!(d.actions, vec![Action::Detach]);
    // A member that posted while still streaming is not a final position: with only one
    // other final post, a majority is missing.
    let mut streaming = member("b", 100, 4, None);
    streaming.pg = PgState::Streaming;
    let v2 = view(None, 4, vec![streaming], &["a", "b", "c"]);
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 200),
        Some(v2),
        None
    ))));
    // Detached (Standby) posts count.
    assert!(acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 200),
        Some(v),
        None
    ))));
}

#[test]
fn stopped_members_positions_do_not_count() {
    // Full restart: b's PostgreSQL is not up yet, so its post says 0/0 — not its real WAL.
    let mut stopped = member("b", 0, 4, None);
    stopped.pg = PgState::Stopped;
    let v = view(None, 4, vec![stopped], &["a", "b", "c"]);
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
    // Nor may a node whose own PostgreSQL is stopped run: it starts it and waits.
    let v = view(None, 4, vec![member("b", 50, 4, None)], &["a", "b", "c"]);
    let d = decide(&obs("a", local(PgState::Stopped, 0), Some(v), None));
    assert_eq!(d.actions, vec![Action::StartStandby]);
}

#[test]
fn own_stale_key_is_not_treated_as_leadership() {
    let v = view(Some(leader("a", 4)), 4, vec![], &["a", "b", "c"]);
    let d = decide(&obs("a", local(PgState::Standby, 100), Some(v), None));
    assert!(d.actions.is_empty());
    assert_eq!(d.role, NodeRole::WaitingForLeader);
}

#[test]
fn etcd_unreachable_non_leader_waits() {
    let d = decide(&obs("a", local(PgState::Streaming, 100), None, None));
    assert!(d.actions.is_empty());
}

// ---- property tests -------------------------------------------------------------------------

/// A random cluster just after its leader (node 0) died: every voter's final position, which
/// voters are alive and have posted fresh statuses, and the highest acknowledged position —
/// by the quorum rule, present on at least k followers besides the leader.
#[derive(Debug, Clone)]
struct Scenario {
    n: usize,
    positions: Vec<u64>,
    fresh: Vec<bool>,
    acked: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=3)
        .prop_flat_map(|half| {
            let n = half * 2 + 1;
            (
                Just(n),
                prop::collection::vec(0u64..1000, n),
                prop::collection::vec(any::<bool>(), n),
            )
        })
        .prop_map(|(n, positions, fresh)| {
            let k = sync_quorum(SyncMode::Quorum, n);
            // The leader acknowledged everything up to the k-th highest follower position.
            let mut followers: Vec<u64> = positions[1..].to_vec();
            followers.sort_unstable_by(|a, b| b.cmp(a));
            let acked = followers[k - 1].min(positions[0]);
            Scenario {
                n,
                positions,
                fresh,
                acked,
            }
        })
}

fn guid(i: usize) -> String {
    format!("g{i}")
}

proptest! {
    /// Never promote a node missing an acknowledged commit.
    #[test]
    fn winner_holds_every_acknowledged_commit(s in scenario(), me in 1usize..7) {
        let me = 1 + (me - 1) % (s.n - 1);
        let voters: Vec<String> = (0..s.n).map(guid).collect();
        let members: Vec<MemberStatus> = (1..s.n)
            .filter(|i| *i != me && s.fresh[*i])
            .map(|i| member(&guid(i), s.positions[i], 7, None))
            .collect();
        let v = DcsView { leader: None, term: 7, members, voters, protocol: Some(crate::version::PROTOCOL), ..DcsView::default() };
        let d = decide(&obs(&guid(me), local(PgState::Standby, s.positions[me]), Some(v), None));
        if acquires(&d) {
            prop_assert!(s.positions[me] >= s.acked, "node {} at {} acquired but {} was acknowledged: {:?}", me, s.positions[me], s.acked, s);
        }
    }

    /// With cluster failover off, only the node that acquired the current term ever acquires
    /// (by itself; force-leader is the operator's override), whatever the positions say.
    #[test]
    fn failover_off_only_the_last_leader_acquires(s in scenario(), me in 0usize..7, last in 0usize..7, last_term_current in any::<bool>()) {
        let me = me % s.n;
        let last = last % s.n;
        let voters: Vec<String> = (0..s.n).map(guid).collect();
        let members: Vec<MemberStatus> = (0..s.n)
            .filter(|i| *i != me && s.fresh[*i])
            .map(|i| member(&guid(i), s.positions[i], 7, None))
            .collect();
        let mut v = DcsView { leader: None, term: 7, members, voters, protocol: Some(crate::version::PROTOCOL), ..DcsView::default() };
        v.cluster_failover = false;
        v.last_leader = Some(leader(&guid(last), if last_term_current { 7 } else { 6 }));
        let d = decide(&obs(&guid(me), local(PgState::Standby, s.positions[me]), Some(v), None));
        if acquires(&d) {
            prop_assert!(me == last && last_term_current, "{} acquired with failover off; last leader {} (term current: {})", me, last, last_term_current);
        }
    }

    /// force-leader never takes leadership while a live member is more advanced or a leader
    /// exists.
    #[test]
    fn force_leader_never_skips_a_more_advanced_member(s in scenario(), me in 0usize..7, has_leader in any::<bool>()) {
        let me = me % s.n;
        let members: Vec<MemberStatus> = (0..s.n)
            .filter(|i| *i != me && s.fresh[*i])
            .map(|i| member(&guid(i), s.positions[i], 7, None))
            .collect();
        let ahead = members.iter().any(|m| m.position > pos(s.positions[me]));
        let mut v = view(None, 7, members, &[]);
        if has_leader {
            v.leader = Some(leader(&guid((me + 1) % s.n), 7));
        }
        let mut o = obs(&guid(me), local(PgState::Standby, s.positions[me]), Some(v), None);
        o.request = Some(OperatorRequest::ForceLeader);
        let d = decide(&o);
        prop_assert_eq!(acquires(&d), !ahead && !has_leader, "{:?}", d.actions);
    }

    /// A leader whose renewal deadline passed always fences, whatever else it sees.
    #[test]
    fn expired_leader_always_fences(now in 0u64..100_000, deadline in 0u64..100_000, pg in prop_oneof![Just(PgState::Primary), Just(PgState::Stopped), Just(PgState::Streaming)], etcd in any::<bool>()) {
        let v = view(Some(leader("a", 3)), 3, vec![], &["a", "b", "c"]);
        let mut o = obs("a", local(pg, 1), if etcd { Some(v) } else { None }, lease(3, deadline));
        o.now_ms = now;
        let d = decide(&o);
        if now >= deadline {
            prop_assert!(starts_with_fence(&d));
            prop_assert!(!d.actions.contains(&Action::Promote));
            prop_assert!(!d.actions.contains(&Action::StartPrimary));
        }
    }

    /// Only a lease holder ever promotes or starts a primary; a primary without lease is fenced.
    #[test]
    fn writes_only_under_a_lease(p in 0u64..1000, pg in prop_oneof![Just(PgState::Primary), Just(PgState::Stopped), Just(PgState::Streaming), Just(PgState::Standby), Just(PgState::Empty)], has_leader in any::<bool>(), other in any::<bool>()) {
        let l = if has_leader { Some(leader(if other { "b" } else { "a" }, 2)) } else { None };
        let v = view(l, 2, vec![member("b", p, 2, None)], &["a", "b", "c"]);
        let d = decide(&obs("a", local(pg, p), Some(v), None));
        prop_assert!(!d.actions.contains(&Action::Promote));
        prop_assert!(!d.actions.contains(&Action::StartPrimary));
        if pg == PgState::Primary {
            prop_assert!(starts_with_fence(&d));
        }
    }
}

#[test]
fn follower_whose_postgres_cannot_start_rewinds_after_timeout() {
    let v = promoted_leader_view();
    let mut l = local(PgState::Stopped, 100);
    l.following = Some("b".into());
    l.not_streaming_since_ms = Some(9_000);
    // within the timeout: keep (re)starting it
    assert_eq!(
        decide(&obs("a", l.clone(), Some(v.clone()), None)).actions,
        vec![Action::Follow {
            leader: leader("b", 2)
        }]
    );
    // past it: the history may have forked
    l.not_streaming_since_ms = Some(1_000);
    assert_eq!(
        decide(&obs("a", l, Some(v), None)).actions,
        vec![Action::Rewind {
            leader: leader("b", 2)
        }]
    );
}

#[test]
fn demoted_leader_does_not_take_leadership_back() {
    let mut v = view(
        None,
        4,
        vec![member("b", 100, 4, None), member("c", 100, 4, None)],
        &["a", "b", "c"],
    );
    v.switchover = Some(Switchover {
        target: None,
        term: 4,
        min_position: pos(100),
        from: "a".into(),
        deadline_unix_ms: 2_000_000,
    });
    assert!(!acquires(&decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None
    ))));
    assert!(acquires(&decide(&obs(
        "b",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None
    ))));
    // the stepping-down node's equal, lower-GUID post does not make others wait for it
    v.members = vec![member("a", 100, 4, None), member("c", 100, 4, None)];
    assert!(acquires(&decide(&obs(
        "b",
        local(PgState::Standby, 100),
        Some(v),
        None
    ))));
}

// ---- Sequences: each decision's actions are applied to the next observation by hand, as the
// agent would carry them out, and every step's exact action list is asserted.

fn streaming(guid: &str, p: u64, term: u64, leader_guid: &str) -> MemberStatus {
    let mut m = member(guid, p, term, Some(leader_guid));
    m.pg = PgState::Streaming;
    m.role = NodeRole::Follower;
    m
}

fn primary(guid: &str, p: u64, term: u64) -> MemberStatus {
    let mut m = member(guid, p, term, Some(guid));
    m.pg = PgState::Primary;
    m.role = NodeRole::Leader;
    m
}

#[test]
fn switchover_start_is_timed_to_the_targets_checks_unless_turned_off() {
    // b is checked by one frontend every 2 s, last at 1_000_000 - 100 (next at 1_001_900):
    // starting at once would leave b writable at 1_000_450, seen only at that next check.
    let mut b = streaming("b", 300, 4, "a");
    b.check_phases = vec![crate::check_phase::CheckPhase {
        client: "fe".into(),
        last_unix_ms: 1_000_000 - 100,
        period_ms: 2_000,
    }];
    let mut v = view(
        Some(leader("a", 4)),
        4,
        vec![primary("a", 300, 4), b, streaming("c", 300, 4, "a")],
        &["a", "b", "c"],
    );
    v.switchover_request = Some(SwitchoverRequest {
        target: Some("b".into()),
        requested_unix_ms: 1,
    });
    let a = local(PgState::Primary, 300);
    let start_in = |align: bool| {
        let mut o = obs("a", a.clone(), Some(v.clone()), lease(4, 20_000));
        o.align_switchover = align;
        let d = decide(&o);
        d.actions
            .iter()
            .find_map(|x| match x {
                Action::ScheduleSwitchover { start_in_ms, .. } => Some(*start_in_ms),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no schedule: {:?} ({})", d.actions, d.reason))
    };
    assert!(start_in(true) > 0);
    assert_eq!(start_in(false), 0);
}

#[test]
fn sequence_planned_switchover() {
    let names =
        |gs: &[&str]| -> Vec<String> { gs.iter().map(|g| crate::model::standby_name(g)).collect() };
    // a leads term 4; b and c stream. The operator asks for b.
    let mut v = view(
        Some(leader("a", 4)),
        4,
        vec![
            primary("a", 300, 4),
            streaming("b", 300, 4, "a"),
            streaming("c", 300, 4, "a"),
        ],
        &["a", "b", "c"],
    );
    let req = SwitchoverRequest {
        target: Some("b".into()),
        requested_unix_ms: 1,
    };
    v.switchover_request = Some(req.clone());
    let a = local(PgState::Primary, 300);
    // 1. The leader: no frontend rhythm known, so no timing delay: publish the plan, step down.
    let d = decide(&obs("a", a.clone(), Some(v.clone()), lease(4, 20_000)));
    assert_eq!(
        d.actions,
        vec![
            Action::ScheduleSwitchover {
                start_in_ms: 0,
                ready_unix_ms: 1_000_000 + HANDOVER_MS
            },
            Action::StepDown {
                target: Some("b".into())
            },
        ]
    );
    assert_eq!(d.role, NodeRole::DeposedLeader);
    // A timed start: scheduled first, stepping down only once the time has come.
    let mut timed = a.clone();
    timed.switchover_scheduled = Some((req.clone(), 12_000));
    let d = decide(&obs("a", timed.clone(), Some(v.clone()), lease(4, 20_000)));
    assert_eq!(d.role, NodeRole::Leader, "{}", d.reason);
    assert!(!d
        .actions
        .iter()
        .any(|x| matches!(x, Action::StepDown { .. })));
    let mut later = obs("a", timed, Some(v.clone()), lease(4, 20_000));
    later.now_ms = 12_000;
    assert_eq!(
        decide(&later).actions,
        vec![Action::StepDown {
            target: Some("b".into())
        }]
    );
    // 2. Step-down done: key gone, the record names b and the shutdown checkpoint.
    v.leader = None;
    v.switchover_request = None;
    v.switchover = Some(Switchover {
        target: Some("b".into()),
        term: 4,
        min_position: pos(301),
        from: "a".into(),
        deadline_unix_ms: 1_000_000 + 15_000,
    });
    v.members = vec![
        member("a", 300, 4, None),
        streaming("b", 301, 4, "a"),
        streaming("c", 301, 4, "a"),
    ];
    // 3. Followers still receiving WAL detach first, so their posted positions are final.
    let b = local(PgState::Streaming, 301);
    assert_eq!(
        decide(&obs("b", b, Some(v.clone()), None)).actions,
        vec![Action::Detach]
    );
    // 4. Detached: b holds the checkpoint and acquires at once; c and a wait.
    let b = local(PgState::Standby, 301);
    assert_eq!(
        decide(&obs("b", b.clone(), Some(v.clone()), None)).actions,
        vec![Action::AcquireLeadership { term: 5 }]
    );
    assert!(!acquires(&decide(&obs(
        "c",
        local(PgState::Standby, 301),
        Some(v.clone()),
        None
    ))));
    let mut old = local(PgState::Stopped, 300);
    old.diverged = true;
    let d = decide(&obs("a", old.clone(), Some(v.clone()), None));
    assert_eq!(d.actions, vec![Action::StartStandby], "{}", d.reason);
    // 5. b leads: promote, keep the quorum, clear the record.
    v.term = 5;
    v.leader = Some(leader("b", 5));
    let d = decide(&obs("b", b, Some(v.clone()), lease(5, 20_000)));
    assert_eq!(
        d.actions,
        vec![
            Action::Promote,
            Action::SetSyncStandbys {
                k: 1,
                names: names(&["a", "c"])
            },
            Action::ClearSwitchover,
        ]
    );
    // 6. The old leader waits for b's promotion to show, then rewinds onto it.
    assert!(decide(&obs("a", old.clone(), Some(v.clone()), None))
        .actions
        .is_empty());
    v.switchover = None;
    v.members = vec![primary("b", 400, 5), streaming("c", 400, 5, "b")];
    assert_eq!(
        decide(&obs("a", old, Some(v), None)).actions,
        vec![Action::Rewind {
            leader: leader("b", 5)
        }]
    );
}

#[test]
fn sequence_switchover_refused_without_a_streaming_target() {
    let mut v = view(
        Some(leader("a", 4)),
        4,
        vec![primary("a", 300, 4), member("b", 300, 4, Some("a"))],
        &["a", "b"],
    );
    v.switchover_request = Some(SwitchoverRequest {
        target: Some("b".into()),
        requested_unix_ms: 1_000_000 - 1_000,
    });
    // Within the attach wait the request is held: b may re-attach any moment.
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 300),
        Some(v.clone()),
        lease(4, 20_000),
    ));
    assert_eq!(d.role, NodeRole::Leader);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::RefuseSwitchover { .. } | Action::StepDown { .. })),
        "{:?}",
        d.actions
    );
    // After it: refused, the leader keeps leading.
    v.switchover_request.as_mut().unwrap().requested_unix_ms =
        1_000_000 - super::switchover::ATTACH_WAIT_MS;
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 300),
        Some(v),
        lease(4, 20_000),
    ));
    assert_eq!(
        d.role,
        NodeRole::Leader,
        "a refused switchover leaves the leader leading"
    );
    assert!(
        d.actions.contains(&Action::RefuseSwitchover {
            reason: super::switchover::REFUSED.into()
        }),
        "{:?}",
        d.actions
    );
}

#[test]
fn sequence_failover_after_leader_loss() {
    // a led term 4 and died: its key expired with its lease, its status with its status lease.
    let mut v = view(
        None,
        4,
        vec![streaming("b", 300, 4, "a"), streaming("c", 200, 4, "a")],
        &["a", "b", "c"],
    );
    // 1. Both followers detach before posting.
    for (g, p) in [("b", 300), ("c", 200)] {
        assert_eq!(
            decide(&obs(g, local(PgState::Streaming, p), Some(v.clone()), None)).actions,
            vec![Action::Detach]
        );
    }
    v.members = vec![member("b", 300, 4, None), member("c", 200, 4, None)];
    // 2. b is the most advanced of a majority (b, c): it acquires; c waits for it.
    assert_eq!(
        decide(&obs(
            "b",
            local(PgState::Standby, 300),
            Some(v.clone()),
            None
        ))
        .actions,
        vec![Action::AcquireLeadership { term: 5 }]
    );
    let d = decide(&obs(
        "c",
        local(PgState::Standby, 200),
        Some(v.clone()),
        None,
    ));
    assert!(
        !acquires(&d) && d.reason.contains("more advanced"),
        "{}",
        d.reason
    );
    // 3. b promotes; c follows b.
    v.term = 5;
    v.leader = Some(leader("b", 5));
    let d = decide(&obs(
        "b",
        local(PgState::Standby, 300),
        Some(v.clone()),
        lease(5, 20_000),
    ));
    assert_eq!(
        d.actions,
        vec![
            Action::Promote,
            Action::SetSyncStandbys {
                k: 1,
                names: vec![
                    crate::model::standby_name("a"),
                    crate::model::standby_name("c")
                ]
            },
        ]
    );
    assert_eq!(
        decide(&obs("c", local(PgState::Standby, 200), Some(v), None)).actions,
        vec![Action::Follow {
            leader: leader("b", 5)
        }]
    );
}

#[test]
fn sequence_force_leader() {
    // Failover off, the leader of term 5 (a) is gone for good; nobody may lead by themselves.
    let mut v = view(
        None,
        5,
        vec![member("b", 200, 5, None), member("c", 300, 5, None)],
        &["a", "b", "c"],
    );
    v.cluster_failover = false;
    v.last_leader = Some(leader("a", 5));
    for (g, p) in [("b", 200), ("c", 300)] {
        assert!(!acquires(&decide(&obs(
            g,
            local(PgState::Standby, p),
            Some(v.clone()),
            None
        ))));
    }
    let forced = |g: &str, p: u64, pg: PgState, v: &DcsView| {
        let mut o = obs(g, local(pg, p), Some(v.clone()), None);
        o.request = Some(OperatorRequest::ForceLeader);
        decide(&o)
    };
    // On b: refused, c is more advanced (and named).
    let d = forced("b", 200, PgState::Standby, &v);
    assert!(
        matches!(&d.actions[..], [Action::RefuseRequest { reason }] if reason.contains("node-c")),
        "{:?}",
        d.actions
    );
    // On a node whose PostgreSQL is down: refused, its position is unknown.
    let d = forced("c", 0, PgState::Stopped, &v);
    assert!(
        matches!(&d.actions[..], [Action::RefuseRequest { reason }] if reason.contains("not running")),
        "{:?}",
        d.actions
    );
    // On c: acquires the next term, failover off or not.
    assert_eq!(
        forced("c", 300, PgState::Standby, &v).actions,
        vec![Action::AcquireLeadership { term: 6 }]
    );
    // Once c leads, force-leader anywhere is refused.
    v.leader = Some(leader("c", 6));
    v.term = 6;
    let d = forced("b", 200, PgState::Standby, &v);
    assert!(
        matches!(&d.actions[..], [Action::RefuseRequest { reason }] if reason.contains("is the leader")),
        "{:?}",
        d.actions
    );
}

#[test]
fn sequence_rejoin_after_rewind_failure() {
    let mut b = member("b", 500, 2, Some("b"));
    b.pg = PgState::Primary;
    let v = view(Some(leader("b", 2)), 2, vec![b], &["a", "b", "c"]);
    // 1. A former primary rewinds onto the leader.
    let mut a = local(PgState::Stopped, 400);
    a.diverged = true;
    assert_eq!(
        decide(&obs("a", a.clone(), Some(v.clone()), None)).actions,
        vec![Action::Rewind {
            leader: leader("b", 2)
        }]
    );
    // 2. The rewind failed (marker written, failure time kept): no copy within the backoff...
    a.rewind_failed = true;
    a.copy_failed_ms = Some(9_000);
    let d = decide(&obs("a", a.clone(), Some(v.clone()), None));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.role, NodeRole::Syncing);
    // 3. ...then a fresh base backup instead of another rewind.
    let mut o = obs("a", a, Some(v.clone()), None);
    o.now_ms = 14_000;
    assert_eq!(
        decide(&o).actions,
        vec![Action::Basebackup {
            leader: leader("b", 2)
        }]
    );
    // 4. Copied: follow the leader, then stream as a follower.
    let a = local(PgState::Stopped, 500);
    assert_eq!(
        decide(&obs("a", a, Some(v.clone()), None)).actions,
        vec![Action::Follow {
            leader: leader("b", 2)
        }]
    );
    let mut a = local(PgState::Streaming, 500);
    a.following = Some("b".into());
    let d = decide(&obs("a", a, Some(v), None));
    assert_eq!((d.role, d.actions), (NodeRole::Follower, vec![]));
}

#[test]
fn switchover_refused_with_failover_off_and_resync_rules() {
    let mut v = view(
        Some(leader("a", 4)),
        4,
        vec![primary("a", 300, 4), streaming("b", 300, 4, "a")],
        &["a", "b"],
    );
    v.cluster_failover = false;
    v.switchover_request = Some(SwitchoverRequest {
        target: Some("b".into()),
        requested_unix_ms: 1,
    });
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 300),
        Some(v.clone()),
        lease(4, 20_000),
    ));
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::RefuseSwitchover { reason } if reason.contains("cluster failover is disabled"))),
        "{:?}",
        d.actions
    );
    // pgsql-follow: refused on the leader, accepted on a follower.
    v.switchover_request = None;
    let mut o = obs(
        "a",
        local(PgState::Primary, 300),
        Some(v.clone()),
        lease(4, 20_000),
    );
    o.request = Some(OperatorRequest::Resync { full: false });
    let d = decide(&o);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::RefuseRequest { .. })),
        "{:?}",
        d.actions
    );
    assert_eq!(
        d.role,
        NodeRole::Leader,
        "a refused request changes nothing"
    );
    let mut o = obs("b", local(PgState::Streaming, 300), Some(v), None);
    o.request = Some(OperatorRequest::Resync { full: true });
    assert_eq!(decide(&o).actions, vec![Action::MarkResync { full: true }]);
}

#[test]
fn shutdown_hands_leadership_over_only_when_held() {
    assert_eq!(
        on_shutdown(true),
        vec![Action::StopForShutdown, Action::ReleaseLeadership]
    );
    assert!(on_shutdown(false).is_empty());
}

#[test]
fn protocol_is_recorded_once_and_a_newer_cluster_is_refused() {
    let mut v = view(Some(leader("a", 2)), 2, vec![primary("a", 10, 2)], &["a"]);
    v.protocol = None;
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 10),
        Some(v.clone()),
        lease(2, 20_000),
    ));
    assert!(
        d.actions.contains(&Action::RecordProtocol {
            from: None,
            version: crate::version::PROTOCOL
        }),
        "{:?}",
        d.actions
    );
    // Raised beyond this build while it leads: fence and step down, never act on it.
    v.protocol = Some(crate::version::PROTOCOL + 1);
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 10),
        Some(v.clone()),
        lease(2, 20_000),
    ));
    assert!(starts_with_fence(&d), "{:?}", d.actions);
    assert!(d.reason.contains("newer than this agent"), "{}", d.reason);
    v.leader = None;
    let d = decide(&obs("a", local(PgState::Standby, 10), Some(v), None));
    assert!(d.actions.is_empty() && d.role == NodeRole::Down, "{:?}", d);
}

fn down_record(guid: &str, was_leader: bool) -> crate::model::DownForUpgrade {
    crate::model::DownForUpgrade {
        guid: guid.into(),
        name: format!("node-{guid}"),
        was_leader,
        since_unix_ms: 1,
        returning: false,
    }
}

/// Sequence test of the full-downtime upgrade: `down-for-upgrade` on the leader a, then on b
/// and c; `upgrade` on b and c (records cleared) while a is still down; then on a. Nobody but
/// a leads at any step, and a (holder of the last term) wins the tie at the end.
#[test]
fn sequence_full_downtime_upgrade_old_leader_leads_again() {
    let mut v = view(
        Some(leader("a", 3)),
        3,
        vec![
            primary("a", 100, 3),
            member("b", 100, 3, Some("a")),
            member("c", 100, 3, Some("a")),
        ],
        &["a", "b", "c"],
    );
    v.last_leader = Some(leader("a", 3));
    v.nodes = ["a", "b", "c"]
        .iter()
        .map(|g| NodeRecord {
            guid: g.to_string(),
            name: format!("node-{g}"),
            address: String::new(),
        })
        .collect();
    // 1. down-for-upgrade on the leader: a clean stop, then the key goes.
    v.down_for_upgrade.push(down_record("a", true));
    let d = decide(&obs(
        "a",
        local(PgState::Primary, 100),
        Some(v.clone()),
        lease(3, 20_000),
    ));
    assert_eq!(d.role, NodeRole::Down);
    assert_eq!(
        d.actions,
        vec![Action::StopForShutdown, Action::ReleaseLeadership]
    );
    v.leader = None;
    v.members.retain(|m| m.guid != "a");
    for m in v.members.iter_mut() {
        m.leader_seen = None;
    }
    // Down and stopped: nothing more to do.
    let d = decide(&obs(
        "a",
        local(PgState::Stopped, 100),
        Some(v.clone()),
        None,
    ));
    assert_eq!((d.role, d.actions.clone()), (NodeRole::Down, vec![]));
    // 2. The followers detach and never take over while the leader is down for upgrade.
    for g in ["b", "c"] {
        let d = decide(&obs(
            g,
            local(PgState::Streaming, 100),
            Some(v.clone()),
            None,
        ));
        assert_eq!(d.actions, vec![Action::Detach], "{}", d.reason);
        let d = decide(&obs(g, local(PgState::Standby, 100), Some(v.clone()), None));
        assert!(!acquires(&d), "{g}: {}", d.reason);
        assert!(d.reason.contains("down for upgrade"), "{}", d.reason);
    }
    // 3. down-for-upgrade on b and c: PostgreSQL stopped cleanly (no fencing, no diverged mark).
    v.down_for_upgrade.push(down_record("b", false));
    v.down_for_upgrade.push(down_record("c", false));
    let d = decide(&obs(
        "b",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert_eq!(
        (d.role, d.actions),
        (NodeRole::Down, vec![Action::StopPostgres])
    );
    // 4. upgrade on b and c (followers first): still nobody leads while a is down.
    v.down_for_upgrade.retain(|d| d.guid == "a");
    for g in ["b", "c"] {
        let d = decide(&obs(g, local(PgState::Stopped, 100), Some(v.clone()), None));
        assert_eq!(d.actions, vec![Action::StartStandby], "{}", d.reason);
        let d = decide(&obs(g, local(PgState::Standby, 100), Some(v.clone()), None));
        assert!(!acquires(&d), "{g}: {}", d.reason);
    }
    // 5. upgrade on a (last): its record is marked returning, it starts as a standby and
    // posts its position while b and c still wait.
    v.down_for_upgrade[0].returning = true;
    let d = decide(&obs(
        "a",
        local(PgState::Stopped, 100),
        Some(v.clone()),
        None,
    ));
    assert_eq!(d.actions, vec![Action::StartStandby], "{}", d.reason);
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert!(!acquires(&d), "{}", d.reason);
    v.members.push(member("a", 100, 3, None));
    for g in ["b", "c"] {
        let d = decide(&obs(g, local(PgState::Standby, 100), Some(v.clone()), None));
        assert!(!acquires(&d), "{g}: {}", d.reason);
    }
    // Then the record goes: a held the last term and goes first, b and c defer to it.
    v.down_for_upgrade.clear();
    for g in ["b", "c"] {
        let d = decide(&obs(g, local(PgState::Standby, 100), Some(v.clone()), None));
        assert!(!acquires(&d), "{g}: {}", d.reason);
        assert!(d.reason.contains("goes first"), "{}", d.reason);
    }
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert_eq!(
        d.actions,
        vec![Action::AcquireLeadership { term: 4 }],
        "{}",
        d.reason
    );
}

#[test]
fn a_more_advanced_follower_still_wins_after_a_full_downtime_upgrade() {
    let mut v = view(
        None,
        3,
        vec![member("a", 100, 3, None), member("b", 120, 3, None)],
        &["a", "b", "c"],
    );
    v.last_leader = Some(leader("a", 3));
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert!(
        !acquires(&d) && d.reason.contains("more advanced"),
        "{}",
        d.reason
    );
    let d = decide(&obs("b", local(PgState::Standby, 120), Some(v), None));
    assert!(acquires(&d), "{}", d.reason);
}

#[test]
fn requests_are_refused_while_down_for_upgrade() {
    let mut v = view(None, 3, vec![member("b", 100, 3, None)], &["a", "b"]);
    v.down_for_upgrade.push(down_record("a", true));
    let mut o = obs("a", local(PgState::Stopped, 100), Some(v), None);
    o.request = Some(OperatorRequest::ForceLeader);
    let d = decide(&o);
    assert!(
        matches!(&d.actions[..], [Action::RefuseRequest { reason }] if reason.contains("down for upgrade")),
        "{:?}",
        d.actions
    );
}

#[test]
fn the_node_being_upgraded_does_not_run_for_leader() {
    let mut v = view(
        None,
        3,
        vec![member("a", 100, 3, None), member("b", 100, 3, None)],
        &["a", "b", "c"],
    );
    v.upgrade_lock = Some(crate::model::UpgradeLock {
        guid: "a".into(),
        name: "node-a".into(),
        started_unix_ms: 1,
    });
    let d = decide(&obs(
        "a",
        local(PgState::Standby, 100),
        Some(v.clone()),
        None,
    ));
    assert!(!acquires(&d), "{}", d.reason);
    assert!(d.reason.contains("being upgraded"), "{}", d.reason);
    // b may, and does not wait for a although a is equally advanced with a lower GUID.
    let d = decide(&obs("b", local(PgState::Standby, 100), Some(v), None));
    assert!(acquires(&d), "{}", d.reason);
}

#[test]
fn a_single_node_being_upgraded_leads_again() {
    let mut v = view(None, 3, vec![], &["a"]);
    v.upgrade_lock = Some(crate::model::UpgradeLock {
        guid: "a".into(),
        name: "node-a".into(),
        started_unix_ms: 1,
    });
    let d = decide(&obs("a", local(PgState::Standby, 100), Some(v), None));
    assert!(acquires(&d), "{}", d.reason);
}

#[test]
fn protocol_is_raised_only_once_every_member_speaks_the_new_one() {
    let mine = crate::version::PROTOCOL;
    let mut v = view(
        Some(leader("a", 2)),
        2,
        vec![primary("a", 10, 2), member("b", 10, 2, Some("a"))],
        &["a", "b"],
    );
    v.nodes = ["a", "b"]
        .iter()
        .map(|g| NodeRecord {
            guid: g.to_string(),
            name: g.to_string(),
            address: String::new(),
        })
        .collect();
    v.protocol = Some(mine - 1);
    let raise = Action::RecordProtocol {
        from: Some(mine - 1),
        version: mine,
    };
    let at = |v: &DcsView| {
        decide(&obs(
            "a",
            local(PgState::Primary, 10),
            Some(v.clone()),
            lease(2, 20_000),
        ))
    };
    assert!(at(&v).actions.contains(&raise), "{:?}", at(&v).actions);
    // b still runs the previous release: not yet.
    v.members[1].protocol = mine - 1;
    assert!(!at(&v).actions.contains(&raise));
    // b is down (no status): not yet either.
    v.members.truncate(1);
    assert!(!at(&v).actions.contains(&raise));
}

/// A standby whose WAL went past the leader's fork point keeps reconnecting on the old
/// timeline: it reports streaming for a moment each time, but it is no follower, and no
/// switchover may target it.
#[test]
fn streaming_on_an_older_timeline_is_not_following() {
    let mut lm = primary("a", 100, 3);
    lm.position.timeline = 2;
    let v = view(
        Some(leader("a", 3)),
        3,
        vec![lm, member("b", 100, 3, Some("a"))],
        &["a", "b"],
    );
    let mut l = local(PgState::Streaming, 100);
    l.following = Some("a".into());
    let d = decide(&obs("b", l.clone(), Some(v.clone()), None));
    assert_eq!(d.role, NodeRole::Ineligible, "{}", d.reason);
    l.position.timeline = 2;
    let d = decide(&obs("b", l, Some(v), None));
    assert_eq!(d.role, NodeRole::Follower, "{}", d.reason);
}
