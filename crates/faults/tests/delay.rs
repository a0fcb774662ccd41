//! The link-delay fault against the real kernel: 50 ms ± 10 ms on one host's link, measured
//! from another host as TCP round trips. A functional check of the fault tool (the delay
//! really happens, with spread, only on that link, and goes away again) — not a timing
//! assertion on Larder. Needs root, like the rest of the suite.

use std::time::{Duration, Instant};

use larder_faults::hosts::TestNet;
use larder_faults::inns;
use larder_faults::netem::{self, Backend, Netem};
use larder_faults::netns::Netns;

/// Round trips of `n` TCP connects from `from` to a closed port: the SYN goes out, the
/// peer's kernel answers RST, so each sample is exactly one packet each way.
fn connect_rtts(from: &Netns, to_ip: &str, n: usize) -> Vec<f64> {
    let addr = format!("{to_ip}:9");
    inns::block_on(&from.name, move || async move {
        let mut v = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(&addr),
            )
            .await;
            match r {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    v.push(t.elapsed().as_secs_f64() * 1000.0)
                }
                other => panic!("probe to {addr}: {other:?}"),
            }
        }
        Ok(v)
    })
    .expect("probe thread")
}

/// Round trips of `n` one-byte echoes over one established TCP connection (`to` serves).
fn echo_rtts(from: &Netns, to: &Netns, n: usize) -> Vec<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = inns::block_on(&to.name, || async {
        std::net::TcpListener::bind("0.0.0.0:7000")
            .map_err(|e| larder_faults::Error::io("bind 7000", e))
    })
    .expect("listener");
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b) {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let addr = format!("{}:7000", to.ip);
    let v = inns::block_on(&from.name, move || async move {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.set_nodelay(true).unwrap();
        let mut v = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(b"x").await.unwrap();
            s.read_exact(&mut b).await.unwrap();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(v)
    })
    .expect("echo thread");
    server.join().unwrap();
    v
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    (m, sd)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)))
}

fn iptables_rules(ns: &Netns) -> String {
    ns.run("iptables", &["-w", "-t", "mangle", "-S"])
        .unwrap_or_default()
}

#[test]
fn fifty_ms_jitter_ten_on_one_link() {
    let net = TestNet::create(2).expect("create hosts");
    let (n1, n2, client) = (&net.nodes[0], &net.nodes[1], &net.client);
    let probe = format!("lf{}-delayprobe", net.run);
    let backend = Backend::detect(&probe).expect("a delay backend");
    eprintln!("backend: {}", backend.name());

    let base = connect_rtts(client, &n1.ip, 50);
    let (base_mean, _) = mean_sd(&base);
    assert!(base_mean < 5.0, "baseline RTT {base_mean:.2} ms");

    let imp =
        netem::apply_all(std::slice::from_ref(n1), Netem::jitter(50, 10), backend).expect("apply");
    eprintln!("applied: {}", imp.describe());

    // client -> n1: only n1's answer crosses an impaired egress: one delay per round trip.
    let rtt = connect_rtts(client, &n1.ip, 300);
    let (m, sd) = mean_sd(&rtt);
    let (lo, hi) = min_max(&rtt);
    eprintln!("connect RTT to n1: mean {m:.2} ms sd {sd:.2} min {lo:.2} max {hi:.2}");
    // U(40, 60) has mean 50 and sd 5.77; allow scheduling overhead on a busy 2-core box.
    assert!((48.0..56.0).contains(&m), "mean {m:.2} ms");
    assert!((4.0..9.0).contains(&sd), "sd {sd:.2} ms");
    assert!(lo >= 39.5, "min {lo:.2} ms");

    let echo = echo_rtts(client, n1, 200);
    let (em, esd) = mean_sd(&echo);
    eprintln!("echo RTT to n1: mean {em:.2} ms sd {esd:.2}");
    assert!((48.0..58.0).contains(&em), "echo mean {em:.2} ms");
    assert!(esd > 3.0, "echo sd {esd:.2} ms");

    // Other links are untouched, and so is loopback inside the impaired host.
    let (m2, _) = mean_sd(&connect_rtts(client, &n2.ip, 50));
    assert!(m2 < 5.0, "n2 RTT {m2:.2} ms");
    let (ml, _) = mean_sd(&connect_rtts(n1, "127.0.0.1", 50));
    assert!(ml < 5.0, "loopback RTT inside n1 {ml:.2} ms");

    if backend == Backend::Nfqueue {
        assert!(iptables_rules(n1).contains("larder-delay"));
        let stats = imp.stats();
        assert!(stats[0].1.packets >= 300, "{stats:?}");
    }
    let stats = imp.clear().expect("clear");
    for (h, s) in &stats {
        eprintln!("{h}: {}", s.describe());
        assert_eq!(s.enobufs, 0);
        assert_eq!(s.verdict_errors, 0);
    }
    assert!(!iptables_rules(n1).contains("larder-delay"), "rules left");
    let (after, _) = mean_sd(&connect_rtts(client, &n1.ip, 50));
    assert!(after < 5.0, "RTT after clear {after:.2} ms");
}

#[test]
fn both_directions_pay_twice_and_drop_removes_rules() {
    let net = TestNet::create(2).expect("create hosts");
    let (n1, n2) = (&net.nodes[0], &net.nodes[1]);
    let probe = format!("lf{}-delayprobe", net.run);
    let backend = Backend::detect(&probe).expect("a delay backend");
    let mut spec = Netem::jitter(20, 0);
    spec.direction = netem::Direction::Both;
    {
        let _imp = netem::apply_all(std::slice::from_ref(n1), spec, backend).expect("apply");
        // n2 -> n1: SYN delayed entering n1, RST delayed leaving it.
        let (m, _) = mean_sd(&connect_rtts(n2, &n1.ip, 50));
        assert!((39.0..46.0).contains(&m), "mean {m:.2} ms");
        // Dropped here without clear(): Drop must remove everything.
    }
    assert!(!iptables_rules(n1).contains("larder-delay"), "rules left");
    let (m, _) = mean_sd(&connect_rtts(n2, &n1.ip, 50));
    assert!(m < 5.0, "after drop {m:.2} ms");
}

#[test]
fn a_bypass_rule_without_delayer_does_not_cut_the_link() {
    // Fail-open: the rule the delayer installs, with nobody bound to the queue (as after a
    // crash of the delayer), lets packets pass instead of blackholing the link.
    let net = TestNet::create(2).expect("create hosts");
    let (n1, n2) = (&net.nodes[0], &net.nodes[1]);
    n1.run(
        "iptables",
        &[
            "-w",
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-o",
            "eth0",
            "-j",
            "NFQUEUE",
            "--queue-num",
            &larder_faults::delay::QUEUE_NUM.to_string(),
            "--queue-bypass",
        ],
    )
    .expect("rule");
    let (m, _) = mean_sd(&connect_rtts(n2, &n1.ip, 20));
    assert!(m < 5.0, "{m:.2} ms");
}
