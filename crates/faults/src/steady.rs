//! Issue 5 §6, "no spurious failover": a healthy cluster under pgbench load with delay and
//! jitter on every link for N minutes must keep its leader. This module holds the parts
//! of `larder-faults steady`: the status sampler (every node's `/leader` and `/status`,
//! directly, from the client host), pgbench through haproxy, and the analysis of the
//! samples (leader changes, term changes, samples without a leader).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::pg::Target;

/// One node in one sampling round.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NodeSample {
    /// HTTP status of `GET /leader` (None = no answer within the timeout).
    pub leader_status: Option<u16>,
    /// From `GET /status`: role, term, and the leader this node believes in.
    pub role: Option<String>,
    pub term: Option<u64>,
    pub leader: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t_s: f64,
    pub nodes: Vec<NodeSample>,
}

/// Samples every node every `period` until stopped.
pub struct StatusSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl StatusSampler {
    /// `nodes`: (ip, agent port); runs in `client_ns`; also appends each sample to `log`.
    pub fn start(
        client_ns: &str,
        nodes: Vec<String>,
        port: u16,
        period: Duration,
        log: PathBuf,
    ) -> Result<StatusSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s2, st2) = (samples.clone(), stop.clone());
        let thread = crate::inns::spawn(client_ns, "status-sampler", move || async move {
            use std::io::Write;
            let mut f = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
            let start = Instant::now();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let timeout = Duration::from_secs(2);
            while !st2.load(Ordering::Relaxed) {
                tick.tick().await;
                let t_s = start.elapsed().as_secs_f64();
                let futs = nodes.iter().map(|ip| {
                    let addr = format!("{ip}:{port}");
                    async move {
                        let (l, s) = tokio::join!(
                            crate::http::get_status(&addr, "/leader?wait=0", timeout),
                            crate::http::get(&addr, "/status", timeout)
                        );
                        let mut n = NodeSample {
                            leader_status: l,
                            ..Default::default()
                        };
                        if let Some((200, body)) = s {
                            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                                n.role = v["role"].as_str().map(str::to_string);
                                n.term = v["term"].as_u64();
                                n.leader = v["leader"]["name"].as_str().map(str::to_string);
                            }
                        }
                        n
                    }
                });
                let nodes = futures_join_all(futs).await;
                let s = Sample { t_s, nodes };
                let _ = writeln!(f, "{}", serde_json::to_string(&s).unwrap_or_default());
                s2.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
            Ok(())
        })?;
        Ok(StatusSampler {
            stop,
            samples,
            thread: Some(thread),
        })
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stop(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for StatusSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Awaits every future concurrently (spawned on the current runtime).
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// What the samples say.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Analysis {
    pub samples: usize,
    /// Samples in which exactly one node answered `/leader` 200.
    pub one_leader: usize,
    /// Samples in which no node answered `/leader` 200.
    pub no_leader: usize,
    /// Samples in which more than one node answered 200.
    pub several_leaders: usize,
    /// Samples in which some node did not answer `/leader` at all (timeout/refused).
    pub unanswered: usize,
    /// Times the single 200-answering node differed from the previous one.
    pub leader_changes: usize,
    /// (t_s, from, to) of each change.
    pub changes: Vec<(f64, String, String)>,
    /// Leader (by /leader 200) at the first and last one-leader sample.
    pub first_leader: Option<String>,
    pub last_leader: Option<String>,
    /// Highest term any node reported, first and last sample with a term.
    pub first_term: Option<u64>,
    pub last_term: Option<u64>,
    /// Times the highest reported term went up, with (t_s, old, new).
    pub term_changes: usize,
    pub term_steps: Vec<(f64, u64, u64)>,
    /// Longest run of consecutive samples without exactly one leader, in seconds.
    pub longest_leaderless_s: f64,
}

/// Analyzes samples; `names[i]` names node i.
pub fn analyze(samples: &[Sample], names: &[String]) -> Analysis {
    let mut a = Analysis {
        samples: samples.len(),
        ..Default::default()
    };
    let mut current: Option<usize> = None;
    let mut max_term: Option<u64> = None;
    let mut leaderless_since: Option<f64> = None;
    for s in samples {
        let leaders: Vec<usize> = s
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.leader_status == Some(200))
            .map(|(i, _)| i)
            .collect();
        if s.nodes.iter().any(|n| n.leader_status.is_none()) {
            a.unanswered += 1;
        }
        match leaders.len() {
            0 => a.no_leader += 1,
            1 => a.one_leader += 1,
            _ => a.several_leaders += 1,
        }
        if leaders.len() == 1 {
            if let Some(since) = leaderless_since.take() {
                a.longest_leaderless_s = a.longest_leaderless_s.max(s.t_s - since);
            }
            let l = leaders[0];
            match current {
                Some(c) if c != l => {
                    a.leader_changes += 1;
                    a.changes.push((s.t_s, names[c].clone(), names[l].clone()));
                }
                None => a.first_leader = Some(names[l].clone()),
                _ => {}
            }
            current = Some(l);
        } else if leaderless_since.is_none() {
            leaderless_since = Some(s.t_s);
        }
        if let Some(t) = s.nodes.iter().filter_map(|n| n.term).max() {
            match max_term {
                None => a.first_term = Some(t),
                Some(m) if t > m => {
                    a.term_changes += 1;
                    a.term_steps.push((s.t_s, m, t));
                }
                _ => {}
            }
            max_term = Some(max_term.map_or(t, |m| m.max(t)));
        }
    }
    if let (Some(since), Some(last)) = (leaderless_since, samples.last()) {
        a.longest_leaderless_s = a.longest_leaderless_s.max(last.t_s - since);
    }
    a.last_leader = current.map(|c| names[c].clone());
    a.last_term = max_term;
    a
}

/// pgbench's summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PgbenchResult {
    pub exit_ok: bool,
    pub transactions: Option<u64>,
    pub failed: Option<u64>,
    pub tps: Option<f64>,
    pub latency_avg_ms: Option<f64>,
    pub latency_stddev_ms: Option<f64>,
}

/// Parses the summary pgbench prints at the end.
pub fn parse_pgbench(out: &str) -> PgbenchResult {
    let num = |line: &str| -> Option<f64> {
        line.split(['=', ':'])
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut r = PgbenchResult::default();
    for l in out.lines() {
        let l = l.trim();
        if l.starts_with("number of transactions actually processed") {
            r.transactions = l
                .split(':')
                .nth(1)
                .and_then(|x| x.split('/').next())
                .and_then(|x| x.trim().parse().ok());
        } else if l.starts_with("number of failed transactions") {
            r.failed = l
                .split(':')
                .nth(1)
                .and_then(|x| x.split_whitespace().next())
                .and_then(|x| x.parse().ok());
        } else if l.starts_with("latency average") {
            r.latency_avg_ms = num(l);
        } else if l.starts_with("latency stddev") {
            r.latency_stddev_ms = num(l);
        } else if l.starts_with("tps") && r.tps.is_none() {
            r.tps = num(l);
        }
    }
    r
}

/// How pgbench runs, from the client host through haproxy.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub bin: PathBuf,
    pub target: Target,
    pub dbname: String,
    pub clients: u32,
    pub scale: u32,
}

impl Pgbench {
    fn command(&self, client: &Netns, args: &[&str]) -> std::process::Command {
        let mut cmd = client.command("env");
        cmd.arg(format!("PGPASSWORD={}", self.target.password))
            .arg(&self.bin)
            .args([
                "-h",
                &self.target.host,
                "-p",
                &self.target.port.to_string(),
                "-U",
                &self.target.user,
            ])
            .args(args)
            .arg(&self.dbname);
        cmd
    }

    /// Creates the database (through haproxy) and runs `pgbench -i`.
    pub fn init(&self, client: &Netns, log: &Path) -> Result<()> {
        let t = self.target.clone();
        let db = self.dbname.clone();
        // Retried like the suite's own schema setup: until haproxy's first checks have run it
        // may route to a follower (read-only).
        crate::inns::block_on(&client.name, move || async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = async {
                    // Six fresh connections in a row must land on the primary: haproxy has
                    // run its checks and routes to the leader only.
                    for _ in 0..6 {
                        let c = crate::pg::connect(&t, Duration::from_secs(10)).await?;
                        let row = c
                            .query_one("SELECT pg_is_in_recovery()", &[])
                            .await
                            .map_err(|source| Error::Postgres {
                                target: t.describe(),
                                source,
                            })?;
                        if row.get::<_, bool>(0) {
                            return Err(Error::Invalid("haproxy routed to a standby".into()));
                        }
                    }
                    let c = crate::pg::connect(&t, Duration::from_secs(10)).await?;
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                        .await;
                    c.batch_execute(&format!("CREATE DATABASE {db}"))
                        .await
                        .map_err(|source| Error::Postgres {
                            target: t.describe(),
                            source,
                        })
                }
                .await;
                match r {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })?;
        let scale = self.scale.to_string();
        let out = self
            .command(client, &["-i", "-q", "-s", &scale])
            .output()
            .map_err(|e| Error::io(&self.bin, e))?;
        let _ = std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat());
        if !out.status.success() {
            return Err(Error::Command {
                command: "pgbench -i".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Runs the TPC-B-like default script for `duration`, progress every 10 s to `log`.
    pub fn run(&self, client: &Netns, duration: Duration, log: &Path) -> Result<PgbenchResult> {
        let (c, j, t) = (
            self.clients.to_string(),
            self.clients.clamp(1, 2).to_string(),
            duration.as_secs().max(1).to_string(),
        );
        let out = self
            .command(client, &["-n", "-c", &c, "-j", &j, "-T", &t, "-P", "10"])
            .output()
            .map_err(|e| Error::io(&self.bin, e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(log, &text);
        let mut r = parse_pgbench(&text);
        r.exit_ok = out.status.success();
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, statuses: &[Option<u16>], terms: &[u64]) -> Sample {
        Sample {
            t_s: t,
            nodes: statuses
                .iter()
                .zip(terms)
                .map(|(l, t)| NodeSample {
                    leader_status: *l,
                    term: Some(*t),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn steady_samples_have_no_changes() {
        let names: Vec<String> = ["n1", "n2", "n3"].iter().map(|x| x.to_string()).collect();
        let v: Vec<Sample> = (0..10)
            .map(|i| {
                s(
                    i as f64 * 0.5,
                    &[Some(200), Some(503), Some(503)],
                    &[4, 4, 4],
                )
            })
            .collect();
        let a = analyze(&v, &names);
        assert_eq!(a.leader_changes, 0);
        assert_eq!(a.term_changes, 0);
        assert_eq!(a.one_leader, 10);
        assert_eq!(a.first_leader.as_deref(), Some("n1"));
        assert_eq!(a.first_term, Some(4));
    }

    #[test]
    fn a_failover_is_one_change_with_a_gap_and_a_new_term() {
        let names: Vec<String> = ["n1", "n2", "n3"].iter().map(|x| x.to_string()).collect();
        let v = vec![
            s(0.0, &[Some(200), Some(503), Some(503)], &[4, 4, 4]),
            s(0.5, &[None, Some(503), Some(503)], &[4, 4, 4]),
            s(1.0, &[None, Some(503), Some(503)], &[4, 5, 5]),
            s(1.5, &[Some(503), Some(200), Some(503)], &[5, 5, 5]),
            // The same leader losing and winning its lease again: a term change only.
            s(2.0, &[Some(503), Some(200), Some(503)], &[5, 6, 6]),
        ];
        let a = analyze(&v, &names);
        assert_eq!(a.leader_changes, 1);
        assert_eq!(a.changes, vec![(1.5, "n1".into(), "n2".into())]);
        assert_eq!(a.no_leader, 2);
        assert_eq!(a.unanswered, 2);
        assert_eq!(a.term_changes, 2);
        assert_eq!((a.first_term, a.last_term), (Some(4), Some(6)));
        assert!((a.longest_leaderless_s - 1.0).abs() < 1e-9);
        assert_eq!(a.last_leader.as_deref(), Some("n2"));
    }

    #[test]
    fn parses_pgbench_15_summary() {
        let out = "transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 600 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 116.351 ms
latency stddev = 40.120 ms
initial connection time = 412.551 ms
tps = 68.722710 (without initial connection time)
";
        let r = parse_pgbench(out);
        assert_eq!(r.transactions, Some(41234));
        assert_eq!(r.failed, Some(0));
        assert_eq!(r.latency_avg_ms, Some(116.351));
        assert_eq!(r.latency_stddev_ms, Some(40.12));
        assert_eq!(r.tps, Some(68.72271));
    }
}
