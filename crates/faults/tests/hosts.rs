//! Test hosts against the real kernel: namespaces, links, partitions, process faults and the
//! loop disk, and that everything is gone afterwards. Needs root (as the fault suite does).

use std::time::{Duration, Instant};

use larder_faults::hosts::{bridge_name, TestNet};
use larder_faults::netns::{self, Netns};
use larder_faults::partition::{self, Partition};
use larder_faults::{inns, nemesis};

/// Whether `from` can open a TCP connection to `to_ip:port` within `timeout`.
/// `Refused` counts as reachable: the peer's kernel answered.
fn reaches(from: &Netns, to_ip: &str, port: u16, timeout: Duration) -> bool {
    let addr = format!("{to_ip}:{port}");
    inns::block_on(&from.name, move || async move {
        let r = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await;
        Ok(match r {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => false,
        })
    })
    .expect("probe thread")
}

#[test]
fn hosts_exist_while_alive_and_vanish_on_drop() {
    let net = TestNet::create(2).expect("create");
    let names: Vec<String> = net
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .chain([net.client.name.clone()])
        .collect();
    let listed = netns::list();
    for n in &names {
        assert!(listed.contains(n), "{n} missing from ip netns list");
    }
    let bridge = bridge_name(net.run);
    let dir = net.dir.clone();
    assert!(reaches(
        &net.client,
        &net.nodes[1].ip,
        9,
        Duration::from_secs(2)
    ));
    drop(net);
    let listed = netns::list();
    for n in &names {
        assert!(!listed.contains(n), "{n} still present after drop");
    }
    assert!(!larder_faults::bridge::Bridge::exists(&bridge));
    assert!(!dir.exists());
}

#[test]
fn hosts_are_torn_down_when_the_test_panics() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = names.clone();
    let r = std::thread::spawn(move || {
        let net = TestNet::create(1).expect("create");
        n2.lock().unwrap().push(net.nodes[0].name.clone());
        panic!("simulated test failure");
    })
    .join();
    assert!(r.is_err());
    let listed = netns::list();
    for n in names.lock().unwrap().iter() {
        assert!(!listed.contains(n), "{n} survived a panic");
    }
}

#[test]
fn partitions_cut_both_ways_or_one_way_and_heal() {
    let net = TestNet::create(2).expect("create");
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let t = Duration::from_millis(600);
    assert!(reaches(a, &b.ip, 9, t) && reaches(b, &a.ip, 9, t));

    Partition::new()
        .between(&[a], &[b])
        .apply(&net.nodes)
        .unwrap();
    assert!(
        !reaches(a, &b.ip, 9, t),
        "a still reaches b through a full cut"
    );
    assert!(
        !reaches(b, &a.ip, 9, t),
        "b still reaches a through a full cut"
    );
    assert!(
        reaches(&net.client, &a.ip, 9, t),
        "the client must not be cut"
    );

    partition::heal(&net.nodes).unwrap();
    assert!(reaches(a, &b.ip, 9, t) && reaches(b, &a.ip, 9, t));

    // a -/-> b: b drops what a sends, so a's connection attempts die; b's packets still
    // arrive at a, but a's answers are dropped at b, so b cannot complete a handshake either.
    Partition::new().one_way(a, b).apply(&net.nodes).unwrap();
    assert!(!reaches(a, &b.ip, 9, t));
    let rules = b.run("nft", &["list", "ruleset"]).unwrap();
    assert!(rules.contains(&a.ip), "{rules}");
    let a_rules = a.run("nft", &["list", "ruleset"]).unwrap();
    assert!(
        !a_rules.contains(&b.ip),
        "one-way rule leaked to the sender: {a_rules}"
    );
    partition::heal(&net.nodes).unwrap();
    assert!(reaches(a, &b.ip, 9, t));
}

#[test]
fn namespace_processes_can_be_frozen_and_killed() {
    let net = TestNet::create(1).expect("create");
    let n = &net.nodes[0];
    let log = net.dir.join("sleep.log");
    let mut child = n.spawn_daemon("sleep", &["300"], &log).unwrap();
    // ip netns exec execs into the program: wait for the process to show up in the netns.
    let deadline = Instant::now() + Duration::from_secs(5);
    while nemesis::find(n, "sleep 300").is_empty() {
        assert!(
            Instant::now() < deadline,
            "sleep never appeared in {}",
            n.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let frozen = nemesis::freeze_host(n).unwrap();
    assert!(!frozen.is_empty());
    for p in &frozen {
        assert_eq!(nemesis::state(*p), Some('T'), "pid {p} not stopped");
    }
    nemesis::thaw_pids(&frozen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while frozen.iter().any(|p| nemesis::state(*p) == Some('T')) {
        assert!(Instant::now() < deadline, "SIGCONT did not resume");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = nemesis::kill_host(n).unwrap();
    assert!(killed >= 1);
    assert!(n.pids().is_empty());
    let _ = child.wait();
}

#[test]
fn loop_disk_fills_to_enospc_and_frees() {
    let mut net = TestNet::create(1).expect("create");
    let mp = net.dir.join("disk");
    let disk = net.add_disk("t", &mp, 16).unwrap();
    let written = disk.fill().unwrap();
    assert!(written > 8 << 20, "only {written} bytes before ENOSPC");
    let err = std::fs::write(mp.join("more"), vec![0u8; 1 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    disk.free().unwrap();
    std::fs::write(mp.join("more"), vec![0u8; 1 << 20]).unwrap();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(mounts.contains(&*mp.to_string_lossy()));
    let mp_s = mp.to_string_lossy().to_string();
    drop(net);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&mp_s), "loop mount left behind");
}

#[test]
fn sigterm_tears_the_hosts_down() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_larder-faults");
    let mut child = std::process::Command::new(bin)
        .args(["hosts", "--nodes", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut names = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("ready") {
            break;
        }
        names.push(line.split_whitespace().next().unwrap().to_string());
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let listed = netns::list();
    assert!(names.iter().all(|n| listed.contains(n)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    let listed = netns::list();
    for n in &names {
        assert!(!listed.contains(n), "{n} survived SIGTERM");
    }
}

/// The blkio cgroup of `pid` as /proc says.
fn blkio_cgroup(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.split_once(":blkio:").map(|(_, p)| p.to_string()))
        .unwrap_or_default()
}

#[test]
fn slow_disk_throttles_the_hosts_processes_and_teardown_removes_the_cgroup() {
    use larder_faults::blkio::{self, Limits, Throttle};
    let mut net = TestNet::create(1).expect("create");
    let mp = net.dir.join("disk");
    let disk = net.add_disk("t", &mp, 16).unwrap();
    let n = net.nodes[0].clone();
    let log = net.dir.join("sleep.log");
    let mut child = n.spawn_daemon("sleep", &["300"], &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nemesis::find(&n, "sleep 300").is_empty() {
        assert!(Instant::now() < deadline, "sleep never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nemesis::find(&n, "sleep 300")[0];
    let home = blkio_cgroup(pid);
    let limits = Limits {
        read_iops: 20,
        write_iops: 20,
        read_bps: 1 << 20,
        write_bps: 1 << 20,
    };
    let name = blkio::cgroup_name(&n);
    let t = Throttle::apply(&n, &disk, &name, limits).unwrap();
    assert_eq!(blkio_cgroup(pid), format!("/{name}"));
    // 20 O_DSYNC writes at 20 IOPS: about a second (the unthrottled probe is ~10× faster).
    let took = t.probe(&mp, 20).unwrap();
    assert!(took >= Duration::from_millis(500), "probe took {took:?}");
    assert!(t.serviced().unwrap().writes >= 20);
    let dir = t.dir.clone();
    t.remove().unwrap();
    assert!(!dir.exists(), "cgroup left after heal");
    assert_eq!(blkio_cgroup(pid), home, "process not moved back");

    // A run that ends while the fault holds (an error, a panic) leaves no cgroup behind: the
    // throttle is never removed here, the hosts' teardown must do it.
    let held = Throttle::apply(&n, &disk, &name, limits).unwrap();
    let dir = held.dir.clone();
    drop(net);
    assert!(!dir.exists(), "teardown left {}", dir.display());
    let _ = child.wait();
}
