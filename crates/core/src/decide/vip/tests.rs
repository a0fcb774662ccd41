//! Exact-action and sequence tests of the VIP rules.

use super::super::*;
use super::*;
use crate::config::SyncMode;
use crate::model::{
    DownForUpgrade, LeaderRecord, Lsn, MemberStatus, SwitchoverRequest, WalPosition,
};
use proptest::prelude::*;

const MARGIN: u64 = 300;

fn pos(lsn: u64) -> WalPosition {
    WalPosition {
        timeline: 1,
        lsn: Lsn(lsn),
    }
}

fn member(guid: &str, pg: PgState, leader_seen: Option<&str>) -> MemberStatus {
    MemberStatus {
        name: format!("node-{guid}"),
        address: "10.0.0.1".into(),
        position: pos(100),
        term: 3,
        leader_seen: leader_seen.map(str::to_string),
        lag_bytes: Some(0),
        version: crate::version::VERSION.into(),
        protocol: crate::version::PROTOCOL,
        ..MemberStatus::test_member(guid, NodeRole::Follower, pg)
    }
}

fn leader(guid: &str) -> LeaderRecord {
    LeaderRecord {
        guid: guid.into(),
        name: format!("node-{guid}"),
        address: "10.0.0.9".into(),
        term: 3,
    }
}

fn local(pg: PgState) -> LocalState {
    LocalState {
        pg,
        position: pos(100),
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

/// A 3-node cluster (a, b, c) led by `leader_guid`, b and c streaming from it.
fn view(leader_guid: Option<&str>) -> DcsView {
    let mut members = vec![member("a", PgState::Primary, None)];
    for g in ["b", "c"] {
        members.push(member(g, PgState::Streaming, leader_guid));
    }
    DcsView {
        leader: leader_guid.map(leader),
        term: 3,
        members,
        voters: vec!["a".into(), "b".into(), "c".into()],
        protocol: Some(crate::version::PROTOCOL),
        ..DcsView::default()
    }
}

/// Node a at `now`, leading with a fencing deadline of 12 000 ms unless `lease` is `None`.
fn obs(now: u64, pg: PgState, dcs: Option<DcsView>, lease: bool, present: bool) -> Observation {
    Observation {
        now_ms: now,
        now_unix_ms: 1_000_000 + now,
        me: "a".into(),
        local: local(pg),
        dcs,
        lease: lease.then_some(HeldLease {
            term: 3,
            fence_deadline_ms: 12_000,
        }),
        sync_mode: SyncMode::Quorum,
        health: Default::default(),
        rejoin_timeout_ms: 5000,
        align_switchover: true,
        own_checks: vec![],
        request: None,
        vip: Some(VipView {
            present,
            margin_ms: MARGIN,
        }),
    }
}

fn sync() -> Action {
    Action::SetSyncStandbys {
        k: 1,
        names: vec![
            crate::model::standby_name("b"),
            crate::model::standby_name("c"),
        ],
    }
}

fn vip_actions(d: &Decision) -> Vec<&Action> {
    d.actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::AddVip { .. } | Action::RenewVip { .. } | Action::RemoveVip { .. }
            )
        })
        .collect()
}

#[test]
fn writable_leader_adds_the_vip_last_with_a_lifetime_before_the_fence() {
    // 12 000 − 10 000 − 300 slack = 1 700 ms of room: a 1 s lifetime.
    let d = decide(&obs(
        10_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        false,
    ));
    assert_eq!(d.role, NodeRole::Leader);
    assert_eq!(d.actions, vec![sync(), Action::AddVip { lifetime_s: 1 }]);
    // Present: the lifetime is extended instead.
    let d = decide(&obs(
        10_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        true,
    ));
    assert_eq!(d.actions, vec![sync(), Action::RenewVip { lifetime_s: 1 }]);
    // A longer lease gives a longer lifetime, always ending before the fencing deadline.
    let d = decide(&obs(
        5_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        true,
    ));
    assert_eq!(d.actions.last(), Some(&Action::RenewVip { lifetime_s: 6 }));
}

#[test]
fn no_vip_configured_no_vip_actions() {
    let mut o = obs(10_000, PgState::Primary, Some(view(Some("a"))), true, false);
    o.vip = None;
    assert_eq!(decide(&o).actions, vec![sync()]);
}

#[test]
fn vip_waits_for_postgresql_to_be_writable() {
    let d = decide(&obs(
        10_000,
        PgState::Standby,
        Some(view(Some("a"))),
        true,
        false,
    ));
    assert_eq!(d.actions.first(), Some(&Action::Promote));
    assert!(vip_actions(&d).is_empty(), "{:?}", d.actions);
}

#[test]
fn late_renewal_drops_the_vip_before_the_fencing_deadline() {
    // 11 700 = deadline − margin: the VIP goes; PostgreSQL still serves until 12 000.
    let d = decide(&obs(
        11_700,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        true,
    ));
    assert_eq!(d.role, NodeRole::Leader);
    assert!(
        matches!(d.actions[0], Action::RemoveVip { .. }),
        "{:?}",
        d.actions
    );
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Fence { .. })));
    // Between the hard bound and the soft deadline: kept, but not extended.
    let d = decide(&obs(
        11_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        true,
    ));
    assert_eq!(d.actions, vec![sync()]);
    // Not added either when not even one second fits.
    let d = decide(&obs(
        11_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        false,
    ));
    assert_eq!(d.actions, vec![sync()]);
}

#[test]
fn fencing_removes_the_vip_first() {
    let d = decide(&obs(
        12_000,
        PgState::Primary,
        Some(view(Some("a"))),
        true,
        true,
    ));
    assert!(matches!(d.actions[0], Action::RemoveVip { .. }));
    assert!(matches!(d.actions[1], Action::Fence { .. }));
    assert_eq!(d.actions[2], Action::ReleaseLeadership);
    assert_eq!(d.actions.len(), 3);
    // Another node's key seen: the same order.
    let d = decide(&obs(
        10_000,
        PgState::Primary,
        Some(view(Some("b"))),
        true,
        true,
    ));
    assert!(matches!(d.actions[0], Action::RemoveVip { .. }));
    assert!(matches!(d.actions[1], Action::Fence { .. }));
}

#[test]
fn etcd_loss_keeps_the_vip_only_until_the_soft_deadline() {
    let d = decide(&obs(10_000, PgState::Primary, None, true, true));
    assert_eq!(d.actions, vec![Action::RenewVip { lifetime_s: 1 }]);
    let d = decide(&obs(11_750, PgState::Primary, None, true, true));
    assert!(
        matches!(d.actions.as_slice(), [Action::RemoveVip { .. }]),
        "{:?}",
        d.actions
    );
}

#[test]
fn a_node_without_the_lease_removes_a_vip_it_finds() {
    // A restarted node (its previous run's key may still exist) finds the VIP on its interface.
    for dcs in [Some(view(Some("a"))), Some(view(Some("b"))), None] {
        let d = decide(&obs(10_000, PgState::Standby, dcs, false, true));
        assert!(
            matches!(d.actions[0], Action::RemoveVip { .. }),
            "{:?}",
            d.actions
        );
        assert_eq!(vip_actions(&d).len(), 1);
    }
    // Not present: nothing to do.
    let d = decide(&obs(
        10_000,
        PgState::Streaming,
        Some(view(Some("b"))),
        false,
        false,
    ));
    assert!(vip_actions(&d).is_empty());
}

#[test]
fn planned_switchover_removes_the_vip_before_stepping_down() {
    let mut v = view(Some("a"));
    v.switchover_request = Some(SwitchoverRequest {
        target: Some("b".into()),
        requested_unix_ms: 1_000_000,
    });
    let d = decide(&obs(10_000, PgState::Primary, Some(v), true, true));
    let step = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::StepDown { .. }))
        .unwrap_or_else(|| panic!("no step-down: {:?} ({})", d.actions, d.reason));
    assert!(matches!(d.actions[0], Action::RemoveVip { .. }));
    assert!(step > 0);
}

#[test]
fn down_for_upgrade_removes_the_vip_before_handing_back() {
    let mut v = view(Some("a"));
    v.down_for_upgrade = vec![DownForUpgrade {
        guid: "a".into(),
        name: "node-a".into(),
        was_leader: true,
        since_unix_ms: 0,
        returning: false,
    }];
    let d = decide(&obs(10_000, PgState::Primary, Some(v), true, true));
    assert_eq!(d.role, NodeRole::Down);
    assert!(matches!(d.actions[0], Action::RemoveVip { .. }));
    assert_eq!(
        d.actions[1..],
        [Action::StopForShutdown, Action::ReleaseLeadership]
    );
}

#[test]
fn shutdown_removes_the_vip_first() {
    assert!(matches!(
        super::on_shutdown(true)[..],
        [Action::RemoveVip { .. }]
    ));
    assert!(super::on_shutdown(false).is_empty());
}

/// The shell as the tests see it: the VIP on the interface with a kernel expiry.
#[derive(Debug, Clone, Copy)]
struct Iface {
    present: bool,
    expires_ms: u64,
}

impl Iface {
    fn tick(&mut self, now: u64) {
        if self.present && now >= self.expires_ms {
            self.present = false;
        }
    }
    fn apply(&mut self, now: u64, actions: &[Action]) {
        for a in actions {
            match a {
                Action::AddVip { lifetime_s } | Action::RenewVip { lifetime_s } => {
                    self.present = true;
                    self.expires_ms = now + *lifetime_s as u64 * 1000;
                }
                Action::RemoveVip { .. } => self.present = false,
                _ => {}
            }
        }
    }
}

/// Sequence: a leader renews until `stop_renewing`, then its renewals fail; its loop runs every
/// 50 ms until `freeze` (a frozen or killed agent runs no more). Wherever the loop stops, the
/// VIP is gone by the fencing deadline − the kernel slack (the kernel lifetime), and — while the
/// loop runs — by the soft deadline.
fn run_sequence(stop_renewing: u64, freeze: u64) {
    let ttl_minus_margin = 2_000;
    let mut iface = Iface {
        present: false,
        expires_ms: 0,
    };
    let mut deadline = ttl_minus_margin;
    let mut now = 0;
    while now < 10_000 {
        iface.tick(now);
        if now < stop_renewing && now % 300 == 0 {
            deadline = now + ttl_minus_margin;
        }
        if now < freeze {
            let mut o = obs(
                now,
                PgState::Primary,
                Some(view(Some("a"))),
                true,
                iface.present,
            );
            o.lease = Some(HeldLease {
                term: 3,
                fence_deadline_ms: deadline,
            });
            if now >= deadline {
                o.lease = None; // fenced and released by the previous iteration
            }
            let d = decide(&o);
            iface.apply(now, &d.actions);
            if now + MARGIN >= deadline {
                assert!(
                    !iface.present,
                    "loop running at {now}: VIP held past the soft deadline"
                );
            }
        }
        if now + KERNEL_SLACK_MS >= deadline {
            assert!(
                !iface.present || iface.expires_ms + KERNEL_SLACK_MS <= deadline,
                "VIP may outlive the fencing deadline {deadline} (now {now}, {iface:?})"
            );
        }
        if now >= deadline {
            assert!(
                !iface.present,
                "VIP present at {now}, after the fencing deadline {deadline}"
            );
        }
        now += 50;
    }
}

#[test]
fn sequence_vip_gone_before_the_fence_whether_the_loop_runs_or_not() {
    // Loop keeps running (etcd lost), loop frozen with renewals, loop frozen without.
    run_sequence(3_000, u64::MAX);
    run_sequence(3_000, 3_000);
    run_sequence(u64::MAX, 4_000);
    run_sequence(3_000, 4_200);
}

proptest! {
    #[test]
    fn kernel_lifetime_always_ends_before_the_fencing_deadline(
        now in 0u64..1_000_000, room in 0u64..100_000,
    ) {
        let deadline = now + room;
        let s = lifetime_s(now, deadline) as u64;
        prop_assert!(now + s * 1000 + KERNEL_SLACK_MS <= deadline || s == 0);
        prop_assert!(s == 0 || room >= 1000 + KERNEL_SLACK_MS);
    }

    #[test]
    fn never_held_without_a_live_lease(now in 0u64..20_000, present: bool, lease: bool, pg in 0u8..4) {
        let pg = [PgState::Primary, PgState::Standby, PgState::Streaming, PgState::Stopped][pg as usize];
        let o = obs(now, pg, Some(view(Some("a"))), lease, present);
        let d = decide(&o);
        let adds = d.actions.iter().any(|a| matches!(a, Action::AddVip { .. } | Action::RenewVip { .. }));
        if adds {
            prop_assert!(lease && pg == PgState::Primary && now + MARGIN < 12_000);
            prop_assert_eq!(d.role, NodeRole::Leader);
        }
        if present && !(lease && pg == PgState::Primary && now + MARGIN < 12_000) {
            let removes = matches!(d.actions.first(), Some(Action::RemoveVip { .. }));
            prop_assert!(removes, "{:?}", d.actions);
        }
    }
}
