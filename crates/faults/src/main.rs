//! `larder-faults`: fault-injection runs and the failover benchmark (see docs/faults.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use larder_faults::checker;
use larder_faults::clients::{self, ClientOptions, Clients};
use larder_faults::cluster::Cluster;
use larder_faults::hosts::TestNet;
use larder_faults::larder::{LarderCluster, LarderConfig};
use larder_faults::patroni::{PatroniCluster, PatroniConfig, Timing};
use larder_faults::scenario::{self, BenchOptions, Scenario};
use larder_faults::schedule;
use larder_faults::stats;

#[derive(Parser)]
#[command(
    name = "larder-faults",
    about = "Fault injection and failover benchmark for Larder"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum System {
    Larder,
    Patroni,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Settings {
    Defaults,
    Aggressive,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// System under test.
    #[arg(long, value_enum, default_value = "larder")]
    system: System,
    /// Patroni timing: its defaults, or the most aggressive values it accepts.
    #[arg(long, value_enum, default_value = "defaults")]
    settings: Settings,
    /// Number of cluster nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The `larder` binary (default: the one next to this executable, i.e. the same cargo
    /// target directory and profile).
    #[arg(long, env = "LARDER_BIN")]
    larder_bin: Option<PathBuf>,
    /// Leader lease assumed for Larder when its larder.toml cannot be read (sizes the
    /// "longer than the lease" faults; the configured value wins).
    #[arg(long, default_value_t = 10)]
    larder_lease_secs: u64,
    /// Python venv holding patroni and patronictl.
    #[arg(long, env = "PATRONI_VENV", default_value = "/opt/larder-bench-venv")]
    patroni_venv: PathBuf,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Milliseconds between two inserts of one client.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// An insert without an answer after this long counts as unknown.
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
    /// Output directory (history, results).
    #[arg(long, default_value = "target/larder-faults")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove leftovers of killed runs (namespaces, links, mounts named lf*).
    Cleanup,
    /// Re-measure the trial windows of a saved benchmark directory (result.json +
    /// history.jsonl) over whole trial periods, as `bench` now does.
    Remeasure { dir: PathBuf },
    /// Re-run the history checks that need no final state (split brain by term, dual
    /// leaders) on a saved history file.
    Check { history: PathBuf },
    /// Create test hosts and keep them until SIGINT/SIGTERM (for exploring by hand:
    /// `ip netns exec lf<run>-n1 bash`).
    Hosts {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Failover benchmark: repeated trials per scenario, one writer every --interval-ms.
    Bench {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        trials: u32,
        /// Scenarios: kill-node (a), kill-postgres (b), switchover (c).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "kill-node,kill-postgres,switchover"
        )]
        scenarios: Vec<String>,
        /// Seconds to sample the idle agent's CPU and RSS before the workload starts.
        #[arg(long, default_value_t = 20)]
        idle_secs: u64,
    },
    /// Seeded, randomized fault schedule for N minutes, then heal and check.
    Run {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Size of the loop filesystem under each node's data (for the disk-full fault).
        #[arg(long, default_value_t = 2048)]
        disk_mb: u64,
        #[arg(long, default_value_t = 3)]
        writers: u32,
    },
    /// Short fixed-seed pass over every fault (CI).
    Ci {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2048)]
        disk_mb: u64,
        #[arg(long, default_value_t = 3)]
        writers: u32,
    },
}

/// Two nodes may both answer the leader check for up to one haproxy check interval (2 s)
/// without haproxy ever seeing both UP at once; longer overlaps are violations.
const DUAL_LEADER_TOLERANCE_US: u64 = 2_000_000;

fn main() -> Result<()> {
    // Before any thread exists, so every later thread inherits the blocked signals.
    larder_faults::teardown::install_signal_teardown().context("installing signal handler")?;
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Cleanup => {
            let done = larder_faults::teardown::cleanup_all();
            if done.is_empty() {
                println!("nothing to clean up");
            }
            for d in done {
                println!("removed {d}");
            }
            Ok(())
        }
        Cmd::Remeasure { dir } => remeasure_saved(&dir),
        Cmd::Check { history } => {
            let entries = larder_faults::history::load(&history)?;
            let report = checker::check(&entries, &Vec::new(), DUAL_LEADER_TOLERANCE_US);
            println!(
                "writes ok {} failed {} unknown {}; longest write gap {:.3}s; violations {}",
                report.writes.ok,
                report.writes.failed,
                report.writes.unknown,
                report.longest_gap_us as f64 / 1e6,
                report.violations.len()
            );
            for v in &report.violations {
                println!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
            }
            if !report.ok() {
                bail!("{} violation(s)", report.violations.len());
            }
            Ok(())
        }
        Cmd::Hosts { nodes } => {
            let net = TestNet::create(nodes).context("creating test hosts")?;
            for n in net.nodes.iter().chain([&net.client]) {
                println!("{} {}", n.name, n.ip);
            }
            println!("ready; SIGINT/SIGTERM tears down");
            use std::io::Write;
            std::io::stdout().flush()?;
            // The signal thread tears down and exits; this thread only waits for it.
            loop {
                std::thread::park();
            }
        }
        Cmd::Bench {
            common,
            trials,
            scenarios,
            idle_secs,
        } => bench(&common, trials, &scenarios, idle_secs),
        Cmd::Run {
            common,
            minutes,
            seed,
            disk_mb,
            writers,
        } => fault_run(
            &common,
            schedule::Plan::random(seed, Duration::from_secs(minutes * 60)),
            disk_mb,
            writers,
        ),
        Cmd::Ci {
            common,
            disk_mb,
            writers,
        } => fault_run(
            &common,
            schedule::Plan::every_fault_once(),
            disk_mb,
            writers,
        ),
    }
}

fn larder_bin(c: &Common) -> PathBuf {
    c.larder_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("larder")))
            .unwrap_or_else(|| PathBuf::from("larder"))
    })
}

fn label(c: &Common) -> String {
    match (c.system, c.settings) {
        (System::Larder, _) => "larder".into(),
        (System::Patroni, Settings::Defaults) => "patroni-defaults".into(),
        (System::Patroni, Settings::Aggressive) => "patroni-aggressive".into(),
    }
}

fn start_cluster(c: &Common, disk_mb: u64, out: &std::path::Path) -> Result<Box<dyn Cluster>> {
    let mut net = TestNet::create(c.nodes).context("creating test hosts")?;
    net.keep_logs = Some(out.join("logs"));
    eprintln!(
        "test hosts: bridge {} subnet 10.213.{}.0/24, dir {}",
        net.bridge.name,
        net.run,
        net.dir.display()
    );
    Ok(match c.system {
        System::Patroni => Box::new(
            PatroniCluster::start(
                net,
                PatroniConfig {
                    venv: c.patroni_venv.clone(),
                    pg_bin: c.pg_bin.clone(),
                    etcd_bin: c.etcd_bin.clone(),
                    timing: match c.settings {
                        Settings::Defaults => Timing::DEFAULTS,
                        Settings::Aggressive => Timing::AGGRESSIVE,
                    },
                    label: label(c),
                    disk_mb,
                },
            )
            .context("starting the Patroni cluster")?,
        ),
        System::Larder => Box::new(
            LarderCluster::start(
                net,
                LarderConfig {
                    bin: larder_bin(c),
                    label: label(c),
                    lease: Duration::from_secs(c.larder_lease_secs),
                    disk_mb,
                },
            )
            .context("starting the Larder cluster")?,
        ),
    })
}

fn bench(c: &Common, trials: u32, scenarios: &[String], idle_secs: u64) -> Result<()> {
    let scenarios: Vec<Scenario> = scenarios
        .iter()
        .map(|s| Scenario::parse(s).with_context(|| format!("unknown scenario {s}")))
        .collect::<Result<_>>()?;
    let out = c.out.join(label(c));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = std::time::Instant::now();
    let mut cluster = start_cluster(c, 0, &out)?;
    let leader = cluster.wait_healthy(Duration::from_secs(300))?;
    eprintln!("{}: healthy, leader n{}", cluster.label(), leader + 1);
    let idle = cluster.agent_pid(leader).and_then(|pid| {
        stats::idle_usage(pid, Duration::from_secs(idle_secs)).map(|(cpu, rss)| (pid, cpu, rss))
    });
    let opts = ClientOptions {
        writers: 1,
        interval: Duration::from_millis(c.interval_ms),
        op_timeout: Duration::from_millis(c.op_timeout_ms),
        sample_period: Duration::from_millis(250),
        proxy_search: false,
    };
    let history = out.join("history.jsonl");
    let mut cl = Clients::start(cluster.as_ref(), &opts, &history)?;
    let bopts = BenchOptions {
        trials,
        resume_deadline: Duration::from_secs(300),
        heal_deadline: Duration::from_secs(300),
    };
    let mut all = Vec::new();
    let mut error = None;
    for s in &scenarios {
        let (trials, err) = scenario::run(cluster.as_mut(), &cl, *s, &bopts);
        all.extend(trials);
        if let Some(e) = err {
            error = Some(format!("{}: {e}", s.name()));
            break;
        }
    }
    // Heal, let the last writes replicate, then check the whole history.
    let healthy = cluster.wait_healthy(Duration::from_secs(300)).is_ok();
    cl.stop();
    let finals = clients::final_state(cluster.as_ref(), &cl.rec, Duration::from_secs(60));
    let report = checker::check(&cl.rec.entries(), &finals, DUAL_LEADER_TOLERANCE_US);
    scenario::remeasure(&cl.rec.entries(), &mut all);
    let per = summarize(&scenarios, &all);
    let result = serde_json::json!({
        "label": label(c),
        // The agent's CPU cost depends on how it was compiled; say which build was measured.
        "build": match c.system {
            System::Larder => {
                let p = larder_bin(c).to_string_lossy().to_string();
                if p.contains("/release/") { "release" } else if p.contains("/debug/") { "debug" } else { "unknown" }
            }
            System::Patroni => "pypi",
        },
        "nodes": c.nodes,
        "interval_ms": c.interval_ms,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "scenarios": per,
        "trials": all,
        "writes": {"ok": report.writes.ok, "failed": report.writes.failed, "unknown": report.writes.unknown},
        "lost": report.lost,
        "violations": report.violations.iter().map(|v| serde_json::json!({"kind": v.kind, "message": v.message})).collect::<Vec<_>>(),
        "idle": idle.map(|(pid, cpu, rss)| serde_json::json!({"pid": pid, "cpu_percent": cpu, "rss_bytes": rss, "window_s": idle_secs})),
        "healthy_at_end": healthy,
        "error": error,
    });
    let path = out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    for v in &report.violations {
        eprintln!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    println!("{}", serde_json::to_string_pretty(&result["scenarios"])?);
    println!(
        "lost acknowledged writes: {}; results in {}",
        report.lost,
        path.display()
    );
    drop(cl);
    drop(cluster);
    if let Some(e) = error {
        bail!("benchmark stopped early: {e}");
    }
    if !report.ok() {
        bail!("{} checker violation(s)", report.violations.len());
    }
    Ok(())
}

fn summarize(scenarios: &[Scenario], all: &[scenario::Trial]) -> Vec<serde_json::Value> {
    scenarios
        .iter()
        .map(|s| {
            let of_s: Vec<&scenario::Trial> = all.iter().filter(|t| t.scenario == *s).collect();
            // A switchover the tool acknowledged but that left the leader in place measured
            // nothing: such trials are counted, not averaged in.
            let void = |t: &&&scenario::Trial| {
                *s == Scenario::Switchover
                    && t.leader_after.as_deref() == Some(t.leader_before.as_str())
            };
            let w: Vec<f64> = of_s
                .iter()
                .filter(|t| !void(t))
                .map(|t| t.window_s)
                .collect();
            serde_json::json!({
                "scenario": s.name(),
                "trials": w.len(),
                "void_trials": of_s.iter().filter(|t| void(t)).count(),
                "p50_s": stats::percentile(&w, 50.0),
                "p90_s": stats::percentile(&w, 90.0),
                "p99_s": stats::percentile(&w, 99.0),
                "max_s": stats::percentile(&w, 100.0),
            })
        })
        .collect()
}

/// Applies [`scenario::remeasure`] to a saved benchmark (result.json + history.jsonl).
fn remeasure_saved(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("result.json");
    let mut result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let entries = larder_faults::history::load(&dir.join("history.jsonl"))?;
    let mut trials: Vec<scenario::Trial> = serde_json::from_value(result["trials"].clone())?;
    scenario::remeasure(&entries, &mut trials);
    let mut scenarios: Vec<Scenario> = Vec::new();
    for t in &trials {
        if !scenarios.contains(&t.scenario) {
            scenarios.push(t.scenario);
        }
    }
    result["scenarios"] = serde_json::Value::Array(summarize(&scenarios, &trials));
    result["trials"] = serde_json::to_value(&trials)?;
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result["scenarios"])?);
    Ok(())
}

fn fault_run(c: &Common, plan: schedule::Plan, disk_mb: u64, writers: u32) -> Result<()> {
    let out = c.out.join(format!("{}-faults", label(c)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut cluster = start_cluster(c, disk_mb, &out)?;
    let opts = ClientOptions {
        writers,
        interval: Duration::from_millis(c.interval_ms),
        op_timeout: Duration::from_millis(c.op_timeout_ms),
        sample_period: Duration::from_millis(200),
        proxy_search: c.system == System::Larder,
    };
    let history = out.join("history.jsonl");
    let mut cl = Clients::start(cluster.as_ref(), &opts, &history)?;
    let ropts = schedule::RunOptions {
        heal_deadline: Duration::from_secs(180),
        leader_bound: Duration::from_secs(90),
        beyond_lease: Duration::from_secs(5),
    };
    let (steps, error) = schedule::run(cluster.as_mut(), &cl, &plan, &ropts);
    let healthy = cluster.wait_healthy(ropts.heal_deadline);
    cl.stop();
    let finals = clients::final_state(cluster.as_ref(), &cl.rec, Duration::from_secs(60));
    let report = checker::check(&cl.rec.entries(), &finals, DUAL_LEADER_TOLERANCE_US);

    let mut t = comfy_table::Table::new();
    t.set_header(vec![
        "#",
        "fault",
        "target",
        "status",
        "held s",
        "write gap s",
        "writes back after heal s",
        "leader after",
    ]);
    for (i, s) in steps.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            s.fault.name().to_string(),
            s.target.clone(),
            s.status.clone(),
            format!("{:.1}", s.hold_s),
            format!("{:.3}", s.gap_s),
            format!("{:.3}", s.recovered_after_heal_s),
            s.leader_after.clone().unwrap_or_else(|| "?".into()),
        ]);
    }
    println!("{t}");
    let injected = steps.iter().filter(|s| s.status == "done").count();
    let mut sum = comfy_table::Table::new();
    sum.set_header(vec![
        "system",
        "faults injected",
        "ops ok",
        "ops failed",
        "ops unknown",
        "lost",
        "longest write gap s",
        "violations",
    ]);
    sum.add_row(vec![
        label(c),
        format!("{injected} (+{} skipped)", steps.len() - injected),
        report.writes.ok.to_string(),
        report.writes.failed.to_string(),
        report.writes.unknown.to_string(),
        report.lost.to_string(),
        format!(
            "{:.3} (at {:.1}s)",
            report.longest_gap_us as f64 / 1e6,
            report.longest_gap_at_us as f64 / 1e6
        ),
        report.violations.len().to_string(),
    ]);
    println!("{sum}");
    println!("history: {}", history.display());
    for v in &report.violations {
        eprintln!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    drop(cl);
    drop(cluster);
    if let Some(e) = error {
        bail!("fault run stopped: {e}");
    }
    if let Err(e) = healthy {
        bail!("cluster did not heal after the last fault: {e}");
    }
    if !report.ok() {
        bail!(
            "{} checker violation(s), see above",
            report.violations.len()
        );
    }
    Ok(())
}
