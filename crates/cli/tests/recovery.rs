//! `create-cluster --quorum-loss-recovery` with real etcd and PostgreSQL: two of three members
//! lost for good, the survivor rebuilds the cluster; refusals while quorum exists and when the
//! survivor may lack commits.

mod common;

use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn cluster_with_rows(subnet: u8) -> Cluster {
    let c = Cluster::with_nodes(subnet, 3);
    let l = c.wait_leader(None, T);
    l.sql("CREATE TABLE acked (id int primary key)").unwrap();
    for i in 0..200 {
        l.sql(&format!("INSERT INTO acked VALUES ({i})")).unwrap();
    }
    wait_streaming(&c, 2);
    c
}

#[test]
fn survivor_that_led_rebuilds_the_cluster_and_loses_nothing() {
    let c = cluster_with_rows(38);
    let leader = c.wait_leader(None, T).name.clone();
    let l = c.node(&leader);
    // With a quorum, recovery is refused and nothing changes.
    let o = l.larder(&["create-cluster", "--quorum-loss-recovery", "-y"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("still has a quorum"),
        "{o:?}"
    );
    assert!(l.is_leader());
    // Two members gone for good: stopped, their data deleted.
    let lost: Vec<&Node> = c.nodes.iter().filter(|n| n.name != leader).collect();
    for n in &lost {
        n.ok(&["cleanse", "-y"]);
    }
    wait_until(T, "the leader to lose its lease", || {
        (!l.is_leader()).then_some(())
    });
    let out = l.ok(&["create-cluster", "--quorum-loss-recovery", "-y"]);
    let _ = out;
    assert!(l.is_leader());
    assert_eq!(count(l), Some(200), "acknowledged writes lost");
    l.sql("INSERT INTO acked VALUES (1000)").unwrap();
    let st = l.status_json().unwrap();
    assert_eq!(st["ha"]["leader"]["name"], leader.as_str(), "{st}");
    // A lost node comes back the documented way: join-cluster after cleanse.
    c.join(c.nodes.iter().position(|n| n.name == lost[0].name).unwrap());
    wait_until(
        Duration::from_secs(60),
        "the rejoined node streaming",
        || {
            lost[0]
                .status_json()
                .filter(|s| s["ha"]["postgresql"]["state"] == "streaming")
        },
    );
    wait_until(T, "rows on the rejoined node", || {
        (count(lost[0]) == Some(201)).then_some(())
    });
}

#[test]
fn follower_survivor_needs_yes_and_old_members_stay_out() {
    let c = cluster_with_rows(39);
    let leader = c.wait_leader(None, T).name.clone();
    let survivor = c.nodes.iter().find(|n| n.name != leader).unwrap();
    // The other follower first, then the leader (so the survivor never leads in between);
    // they stop with their data kept: lost, not wiped.
    let mut others: Vec<&Node> = c.nodes.iter().filter(|n| n.name != survivor.name).collect();
    others.sort_by_key(|n| n.name == leader);
    for n in &others {
        n.ok(&["uninstall"]);
    }
    let o = survivor.larder(&["create-cluster", "--quorum-loss-recovery"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was a follower") && err.contains("--yes"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    survivor.ok(&["create-cluster", "--quorum-loss-recovery", "--yes"]);
    assert!(survivor.is_leader());
    assert_eq!(count(survivor), Some(200));
    // An old member started as it is cannot rejoin by accident: its etcd member was removed,
    // so it never reaches a quorum or a lease, and the survivor keeps leading.
    others[0].ok(&["start"]);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert!(!others[0].is_leader(), "a dropped member leads");
        assert!(survivor.is_leader(), "the survivor lost leadership");
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = survivor.ok(&["cluster-status"]);
    assert!(!table.contains(&others[0].name), "{table}");
}
