//! The VIP that follows the leader, on real interfaces: 3 nodes in their own network
//! namespaces on one bridge plus a client namespace (names `lvip*`, addresses 10.231.<run>.x;
//! the fault suite's `lf*`/10.213.x hosts are never touched). A client writes to `VIP:5432`
//! the whole time while the leader's node is killed, its agent frozen and it is partitioned;
//! each time the VIP moves to the new leader, no acknowledged write is lost, and an ARP probe
//! from the client (every 50 ms through the run) never gets answers from two nodes at once.
//! The old leader, back, does not take the VIP back. Needs root.

use larder_faults::arp::ArpProber;
use larder_faults::cluster::Cluster;
use larder_faults::hosts::{Naming, TestNet};
use larder_faults::larder::{LarderCluster, LarderConfig};
use larder_faults::netns::Netns;
use larder_faults::partition::{self, Partition};
use larder_faults::{inns, nemesis, pg};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMING: Naming = Naming {
    prefix: "lvip",
    subnet_base: "10.231",
    work_root: "/tmp/larder-vip",
};

fn holds_vip(ns: &Netns, vip: &str) -> bool {
    ns.run("ip", &["-o", "-4", "addr", "show", "dev", "eth0"])
        .map(|o| o.contains(&format!("inet {vip}/")))
        .unwrap_or(false)
}

fn holders(c: &LarderCluster, vip: &str) -> Vec<usize> {
    (0..c.net.nodes.len())
        .filter(|i| holds_vip(&c.net.nodes[*i], vip))
        .collect()
}

/// Waits until exactly node `want` (or any single node when `None`) holds the VIP.
fn wait_vip_on(c: &LarderCluster, vip: &str, want: Option<usize>, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let h = holders(c, vip);
        if h.len() == 1 && want.is_none_or(|w| w == h[0]) {
            return h[0];
        }
        assert!(
            start.elapsed() < limit,
            "VIP not on {want:?} within {limit:?}: held by {h:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ARP probes from the client every 50 ms (raw socket, 45 ms reply window); records every
/// probe answered by more than one MAC and returns (probes sent, probes answered).
fn arp_sampler(
    client: Netns,
    vip: String,
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<Vec<String>>>,
) -> (u32, u32) {
    client
        .enter_current_thread()
        .expect("enter the client namespace");
    let prober = ArpProber::new("eth0", client.ip.parse().unwrap()).expect("ARP prober");
    let target = vip.parse().unwrap();
    let (mut sent, mut answered) = (0, 0);
    let run = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let macs = prober
            .probe(target, Duration::from_millis(45))
            .expect("ARP probe");
        sent += 1;
        if !macs.is_empty() {
            answered += 1;
        }
        if macs.len() > 1 {
            worst
                .lock()
                .unwrap()
                .push(format!("{:.2}s: {macs:02x?}", run.elapsed().as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
    }
    (sent, answered)
}

/// Inserts through the VIP, one at a time, until stopped; returns the acknowledged ids.
fn writer(client: String, target: pg::Target, stop: Arc<AtomicBool>) -> Vec<i64> {
    inns::block_on(&client, move || async move {
        let mut acked = Vec::new();
        let mut id: i64 = 0;
        let mut conn: Option<tokio_postgres::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                conn = pg::connect(&target, Duration::from_secs(1)).await.ok();
                if conn.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            id += 1;
            let c = conn.as_ref().unwrap();
            match tokio::time::timeout(Duration::from_secs(2), c.query(pg::INSERT, &[&id, &0i32]))
                .await
            {
                Ok(Ok(_)) => acked.push(id),
                _ => conn = None,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(acked)
    })
    .expect("writer")
}

#[test]
fn vip_follows_the_leader_through_kill_freeze_and_partition() {
    let net = TestNet::create_named(3, NAMING).expect("test hosts");
    let vip = NAMING.ip(net.run, 100);
    let cfg = LarderConfig {
        bin: env!("CARGO_BIN_EXE_larder").into(),
        label: "larder-vip".into(),
        lease: Duration::from_secs(3),
        disk_mb: 0,
        overrides: vec![
            ("vip".into(), format!("\"{vip}\"")),
            ("vip_interface".into(), "\"eth0\"".into()),
        ],
    };
    let mut c = LarderCluster::start(net, cfg).expect("cluster up");
    let first = c.wait_healthy(Duration::from_secs(120)).expect("healthy");
    assert_eq!(
        wait_vip_on(&c, &vip, Some(first), Duration::from_secs(10)),
        first
    );

    // Schema through the VIP, then the writer and the ARP sampler for the whole run.
    let target = c.pg_target().with_host(&vip);
    let t2 = target.clone();
    inns::block_on(&c.net.client.name.clone(), move || async move {
        let cl = pg::connect(&t2, Duration::from_secs(5)).await?;
        pg::create_schema(&cl)
            .await
            .map_err(|e| larder_faults::Error::Invalid(e.to_string()))
    })
    .expect("schema");
    let stop = Arc::new(AtomicBool::new(false));
    let dual = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (cl, v, s, d) = (
            c.net.client.clone(),
            vip.clone(),
            stop.clone(),
            dual.clone(),
        );
        std::thread::spawn(move || arp_sampler(cl, v, s, d))
    };
    let writes = {
        let (cl, t, s) = (c.net.client.name.clone(), target.clone(), stop.clone());
        std::thread::spawn(move || writer(cl, t, s))
    };
    std::thread::sleep(Duration::from_secs(2));

    // 1. Kill the leader's node.
    let old = first;
    nemesis::kill_host(&c.net.nodes[old]).expect("kill");
    let l2 = c.wait_healthy_without(old);
    assert_ne!(l2, old);
    wait_vip_on(&c, &vip, Some(l2), Duration::from_secs(15));
    // The old leader comes back as a follower and does not take the VIP.
    c.start_node(old).expect("restart");
    c.wait_healthy(Duration::from_secs(120))
        .expect("healthy after restart");
    assert_eq!(wait_vip_on(&c, &vip, None, Duration::from_secs(10)), l2);
    assert!(!holds_vip(&c.net.nodes[old], &vip));

    // 2. Freeze the leader's agent longer than the lease.
    let pid = c.agent_pid(l2).expect("agent pid");
    nemesis::freeze(pid).expect("freeze");
    let start = Instant::now();
    // The kernel lifetime removes it from the frozen node before anyone else is elected.
    while holds_vip(&c.net.nodes[l2], &vip) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "VIP outlived the lease on a frozen agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let l3 = wait_vip_on(&c, &vip, None, Duration::from_secs(15));
    assert_ne!(l3, l2);
    nemesis::thaw(pid).expect("thaw");
    c.wait_healthy(Duration::from_secs(120))
        .expect("healthy after thaw");
    assert_eq!(wait_vip_on(&c, &vip, None, Duration::from_secs(10)), l3);

    // 3. Partition the leader from the other nodes (the client still reaches everyone).
    let others: Vec<&Netns> = (0..3)
        .filter(|i| *i != l3)
        .map(|i| &c.net.nodes[i])
        .collect();
    let p = Partition::new().between(&[&c.net.nodes[l3]], &others);
    p.apply(&c.net.nodes).expect("partition");
    let l4 = wait_vip_on_other(&c, &vip, l3, Duration::from_secs(15));
    partition::heal(&c.net.nodes).expect("heal");
    c.wait_healthy(Duration::from_secs(120))
        .expect("healthy after heal");
    assert_eq!(wait_vip_on(&c, &vip, None, Duration::from_secs(10)), l4);

    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let acked = writes.join().expect("writer thread");
    let (sent, answered) = sampler.join().expect("sampler thread");
    eprintln!(
        "ARP probes: {sent} sent, {answered} answered; {} writes acknowledged",
        acked.len()
    );
    // The probe must really see the VIP (most of the run it is held by someone).
    assert!(
        sent > 200 && answered * 2 > sent,
        "ARP sampler saw too little: {answered}/{sent}"
    );
    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {}",
        acked.len()
    );
    let present: BTreeSet<i64> = inns::block_on(&c.net.client.name.clone(), move || async move {
        pg::read_ids(&target, Duration::from_secs(5)).await
    })
    .expect("read ids")
    .into_iter()
    .collect();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let dual = dual.lock().unwrap();
    assert!(
        dual.is_empty(),
        "ARP answered by two nodes at once: {:?}",
        dual.first()
    );
    drop(c); // processes, then namespaces, bridge and directory (TestNet's Drop)
}

fn wait_vip_on_other(c: &LarderCluster, vip: &str, not: usize, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let h = holders(c, vip);
        if h.len() == 1 && h[0] != not {
            return h[0];
        }
        assert!(
            start.elapsed() < limit,
            "VIP did not leave n{}: {h:?}",
            not + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

trait WaitWithout {
    fn wait_healthy_without(&self, dead: usize) -> usize;
}

impl WaitWithout for LarderCluster {
    /// A new leader other than `dead` answering `/leader`.
    fn wait_healthy_without(&self, dead: usize) -> usize {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                if l != dead {
                    return l;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no new leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
