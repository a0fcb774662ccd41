//! Observability on a real three-node cluster: `/metrics` checked by `promtool` and scraped
//! by a real Prometheus server, the leadership history after a failover and a switchover
//! (`larder history --json`), and the status page rendered by a real headless Chromium.
//!
//! `promtool`, `prometheus` (Debian package `prometheus`) and `chromium` are required: the test
//! fails, naming `scripts/install-deps.sh`, when one is missing.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
/// Prometheus listens here (this test's second loopback subnet).
const PROMETHEUS: &str = "127.0.44.1:9090";

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on PATH: run scripts/install-deps.sh (Debian packages prometheus and chromium)");
}

/// GET with extra headers: (status, content type, body).
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

fn metrics_of(n: &Node) -> String {
    let (code, _, body) = get(&format!("{}:7331", n.ip), "/metrics", &[]);
    assert_eq!(code, 200, "/metrics on {}", n.name);
    body
}

fn promtool_check(text: &str, what: &str) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics rejects {what}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A Prometheus server scraping every node's `/metrics` each second.
struct Prometheus {
    child: Child,
}

impl Prometheus {
    fn start(dir: &Path, nodes: &[Node]) -> Prometheus {
        let targets: Vec<String> = nodes.iter().map(|n| format!("'{}:7331'", n.ip)).collect();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: larder\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        wait_until(T, "Prometheus to be ready", || {
            (http_status(PROMETHEUS, "/-/ready") == 200).then_some(())
        });
        Prometheus { child }
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, _, body) = get(PROMETHEUS, &format!("/api/v1/query?query={enc}"), &[]);
        assert_eq!(code, 200, "query {q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// The leader-change counters summed per scraped node (`instance`).
fn changes_by_instance(p: &Prometheus) -> std::collections::BTreeMap<String, f64> {
    p.query("sum by (instance) (larder_leader_changes_total)")
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap().to_string(),
                value(s),
            )
        })
        .collect()
}

fn chromium(args: &[&str], url: &str, profile: &Path) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg(tool("chromium"))
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn metrics_history_and_status_page() {
    for t in ["promtool", "prometheus", "chromium"] {
        tool(t);
    }
    let c = Cluster::with_nodes(43, 3);
    let first = c.wait_leader(None, T).name.clone();
    wait_streaming(&c, 2);

    // 1. Every node's exposition passes promtool's parser and linter; OpenMetrics on request.
    for n in &c.nodes {
        let text = metrics_of(n);
        promtool_check(&text, &format!("{}'s /metrics", n.name));
        for family in [
            "larder_role{role=\"leader\"}",
            "larder_term ",
            "larder_ha_loop_duration_seconds_bucket",
            "larder_etcd_request_duration_seconds_count",
            "larder_postgresql_wal_position_bytes",
            "larder_disk_free_bytes",
        ] {
            assert!(text.contains(family), "{}: no {family} in\n{text}", n.name);
        }
        let (_, ctype, om) = get(
            &format!("{}:7331", n.ip),
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
        );
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(
            om.ends_with("# EOF\n") && om.contains("# TYPE larder_leader_changes counter"),
            "{om}"
        );
    }
    let leader_text = metrics_of(c.node(&first));
    assert!(
        leader_text.contains("larder_replication_lag_bytes{follower="),
        "{leader_text}"
    );
    assert!(
        leader_text.contains("larder_lease_remaining_seconds "),
        "{leader_text}"
    );

    // 2. A real Prometheus scrapes all three: exactly one leader.
    let prom = Prometheus::start(c.dir.path(), &c.nodes);
    wait_until(T, "all three targets up", || {
        (prom.query("up == 1").len() == 3).then_some(())
    });
    let leaders = prom.query("larder_role{role=\"leader\"} == 1");
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_eq!(
        leaders[0]["metric"]["instance"],
        format!("{}:7331", c.node(&first).ip)
    );
    let before = changes_by_instance(&prom);

    // 3. Kill the leader: the survivors' counters rise by one, labelled from → to.
    let old = c.node(&first);
    let pg = old.pg_pid();
    old.kill_agent();
    if let Some(p) = pg {
        ensure_dead(p);
    }
    let second = c.wait_leader(Some(&first), T).name.clone();
    let survivors: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.name != first)
        .map(|n| format!("{}:7331", n.ip))
        .collect();
    let q = format!(
        "larder_leader_changes_total{{kind=\"failover\",from=\"{first}\",to=\"{second}\"}}"
    );
    wait_until(
        T,
        "Prometheus to see the failover counted on both survivors",
        || {
            let s = prom.query(&q);
            (s.len() == 2 && s.iter().all(|x| value(x) == 1.0)).then_some(())
        },
    );
    let after = changes_by_instance(&prom);
    for inst in &survivors {
        assert_eq!(
            after.get(inst).copied().unwrap_or(0.0),
            before.get(inst).copied().unwrap_or(0.0) + 1.0,
            "{inst} counted exactly one hand-over (before {before:?}, after {after:?})"
        );
    }
    let leaders = prom.query("larder_role{role=\"leader\"} == 1");
    assert_eq!(leaders.len(), 1, "{leaders:?}");

    // 4. The old leader comes back; a planned switchover hands leadership back to it.
    old.ok(&["start"]);
    wait_streaming(&c, 2);
    c.node(&second).ok(&["promote", &first]);
    c.wait_leader(Some(&second), T);

    // 5. `larder history --json` shows both hand-overs, with reason and write gap.
    let out = wait_until(T, "both hand-overs in the history", || {
        let h: Vec<Value> =
            serde_json::from_str(&c.node(&second).ok(&["history", "--json"])).ok()?;
        let has = |kind: &str, from: &str, to: &str| {
            h.iter()
                .any(|e| e["kind"] == kind && e["from"] == from && e["to"] == to)
        };
        (has("failover", &first, &second) && has("switchover", &second, &first)).then_some(h)
    });
    let failover = out.iter().find(|e| e["kind"] == "failover").unwrap();
    let switchover = out.iter().find(|e| e["kind"] == "switchover").unwrap();
    assert!(
        failover["reason"]
            .as_str()
            .unwrap()
            .contains("lease expired"),
        "{failover}"
    );
    assert!(
        switchover["reason"]
            .as_str()
            .unwrap()
            .contains("switchover"),
        "{switchover}"
    );
    for e in [failover, switchover] {
        let gap = e["gap_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no gap in {e}"));
        // A killed leader's gap is at least the lease's remaining life; a switchover's is short.
        assert!(gap > 0 && gap < 60_000, "implausible gap {gap} ms in {e}");
        assert!(e["gap"].is_string(), "{e}");
    }
    assert!(
        failover["gap_ms"].as_u64() > switchover["gap_ms"].as_u64(),
        "{out:?}"
    );
    let table = c.node(&first).ok(&["history"]);
    eprintln!("larder history:\n{table}");
    assert!(
        table.contains("failover") && table.contains("switchover"),
        "{table}"
    );

    // 6. The status page in a real browser: the leader's row and both timeline entries.
    let url = format!("http://{}:7331/ui", c.node(&second).ip);
    let profile = c.dir.path().join("chromium");
    let dom = wait_until(T, "the status page to render the cluster", || {
        let o = chromium(
            &["--virtual-time-budget=8000", "--dump-dom"],
            &url,
            &profile,
        );
        let dom = String::from_utf8_lossy(&o.stdout).to_string();
        let leader_row = format!("<tr class=\"leader\" data-node=\"{first}\">");
        let fo = format!("data-kind=\"failover\" data-from=\"{first}\" data-to=\"{second}\"");
        let so = format!("data-kind=\"switchover\" data-from=\"{second}\" data-to=\"{first}\"");
        (dom.contains(&leader_row) && dom.contains(&fo) && dom.contains(&so)).then_some(dom)
    });
    for n in &c.nodes {
        assert!(
            dom.contains(&format!("data-node=\"{}\"", n.name)),
            "row for {}",
            n.name
        );
    }
    assert!(dom.contains("class=\"term\""), "timeline bars drawn");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("ui.png");
    let _ = std::fs::remove_file(&shot);
    let o = chromium(
        &[
            "--virtual-time-budget=8000",
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1300",
        ],
        &url,
        &profile,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is a real PNG"
    );
}
