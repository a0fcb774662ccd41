//! The VIP that follows the leader, on real interfaces: 3 nodes in their own network
//! namespaces on one bridge plus a client namespace (names `lvip*`, addresses 10.231.<run>.x;
//! the fault suite's `lf*`/10.213.x hosts are never touched). A client writes to `VIP:5432`
//! the whole time while the leader's node is killed, its agent frozen and it is partitioned;
//! each time the VIP moves to the new leader, no acknowledged write is lost, and an ARP probe
//! from the client (every 50 ms through the run) never gets answers from two nodes at once.
//! The old leader, back, does not take the VIP back. Every node runs a recording role-change
//! hook (`hooks.on_*`) whose fence variant hangs: the hooks see promote/fence/start with the
//! right environment in order, the hanging one is killed at its timeout and the partitioned
//! leader still drops the VIP within its lease. Needs root.

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
    let mut net = TestNet::create_named(3, NAMING).expect("test hosts");
    // LARDER_TEST_KEEP=1: the nodes' logs survive the run (in /tmp/larder-vip-logs).
    if std::env::var_os("LARDER_TEST_KEEP").is_some() {
        net.keep_logs = Some("/tmp/larder-vip-logs".into());
    }
    let vip = NAMING.ip(net.run, 100);
    let (hook, hook_log) = recording_hook(&net.dir);
    let hook_toml = format!("\"{}\"", hook.display());
    let mut overrides: Vec<(String, String)> = vec![
        ("vip".into(), format!("\"{vip}\"")),
        ("vip_interface".into(), "\"eth0\"".into()),
        ("hooks.timeout_ms".into(), HOOK_TIMEOUT_MS.to_string()),
    ];
    for e in ["on_start", "on_promote", "on_demote", "on_fence"] {
        overrides.push((format!("hooks.{e}"), hook_toml.clone()));
    }
    let cfg = LarderConfig {
        bin: env!("CARGO_BIN_EXE_larder").into(),
        label: "larder-vip".into(),
        lease: Duration::from_secs(3),
        disk_mb: 0,
        overrides,
        clock_shim: false,
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
    // Fencing runs on time although the fence hook hangs: the VIP leaves within the lease.
    let start = Instant::now();
    while holds_vip(&c.net.nodes[l3], &vip) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "partitioned leader kept the VIP beyond its lease"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

    check_hooks(&c, &hook_log, &vip, &[first, l2, l3, l4]);
    // Every takeover announced the VIP: a failing `arping` is only a warning in the log (the
    // address is up either way), so look there.
    for i in 0..3 {
        let log = std::fs::read_to_string(c.root(i).join("var/log/larder/agent/current"))
            .expect("agent log");
        assert!(
            !log.contains("gratuitous ARP for the VIP"),
            "n{}: gratuitous ARP failed: {}",
            i + 1,
            log.lines()
                .find(|l| l.contains("gratuitous ARP for"))
                .unwrap_or("")
        );
    }
    drop(c); // processes, then namespaces, bridge and directory (TestNet's Drop)
}

const HOOK_TIMEOUT_MS: u64 = 1500;

/// A hook for every event that appends one line per run to `hooks.log` (shared by the
/// nodes: one small O_APPEND write per line keeps lines whole); on `fence` it then hangs far
/// beyond its timeout.
fn recording_hook(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("hooks.log");
    let path = dir.join("record-hook");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             printf '%s|%s|%s|%s|%s|%s\\n' \"$LARDER_NODE_NAME\" \"$LARDER_EVENT\" \"$LARDER_ROLE\" \
             \"$LARDER_TERM\" \"$LARDER_LEADER_NAME\" \"$LARDER_VIP\" >> '{}'\n\
             [ \"$LARDER_EVENT\" = fence ] && exec sleep 120\n\
             exit 0\n",
            log.display()
        ),
    )
    .expect("write hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
    (path, log)
}

struct HookRun {
    node: String,
    event: String,
    role: String,
    term: u64,
    leader: String,
    vip: String,
}

/// What the hooks recorded matches the run: each node's first event is `start`; the promotes
/// are exactly the leaders in the order they were elected, each as leader of its own,
/// strictly higher term with the VIP; the partitioned leader was told `fence` after its
/// promote, and its hanging fence hook was killed at the timeout.
fn check_hooks(c: &LarderCluster, log: &std::path::Path, vip: &str, leaders: &[usize]) {
    let text = std::fs::read_to_string(log).expect("hooks.log");
    let runs: Vec<HookRun> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 6, "malformed hook line {l:?}");
            HookRun {
                node: f[0].into(),
                event: f[1].into(),
                role: f[2].into(),
                term: f[3].parse().unwrap_or_else(|_| panic!("term in {l:?}")),
                leader: f[4].into(),
                vip: f[5].into(),
            }
        })
        .collect();
    eprintln!("hooks ran:\n{text}");
    for n in ["n1", "n2", "n3"] {
        let first = runs.iter().find(|r| r.node == n).map(|r| r.event.as_str());
        assert_eq!(first, Some("start"), "{n}'s first hook event");
    }
    let promotes: Vec<&HookRun> = runs.iter().filter(|r| r.event == "promote").collect();
    let want: Vec<String> = leaders.iter().map(|i| format!("n{}", i + 1)).collect();
    let got: Vec<&str> = promotes.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(got, want, "promote hooks vs. the leaders in election order");
    for w in promotes.windows(2) {
        assert!(
            w[1].term > w[0].term,
            "promote terms not increasing: {text}"
        );
    }
    for p in &promotes {
        assert!(
            p.role == "leader" && p.leader == p.node && p.vip == vip,
            "promote environment of {}: role {:?}, leader {:?}, vip {:?}",
            p.node,
            p.role,
            p.leader,
            p.vip
        );
    }
    let l3 = format!("n{}", leaders[2] + 1);
    let promoted_at = runs
        .iter()
        .position(|r| r.node == l3 && r.event == "promote")
        .expect("l3 promoted");
    let fence = runs[promoted_at..]
        .iter()
        .find(|r| r.node == l3 && r.event == "fence")
        .unwrap_or_else(|| panic!("no fence hook on the partitioned leader {l3}: {text}"));
    assert_eq!(fence.vip, vip);
    assert!(fence.term >= promotes[2].term, "fence term {}", fence.term);
    let agent_log = c.root(leaders[2]).join("var/log/larder/agent/current");
    let agent_log = std::fs::read_to_string(&agent_log).expect("agent log");
    assert!(
        agent_log.contains(&format!("killed after its timeout of {HOOK_TIMEOUT_MS} ms")),
        "the hanging fence hook on {l3} was not reported killed at its timeout"
    );
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
