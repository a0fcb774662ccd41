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
use larder_faults::pgaf::{PgafCluster, PgafConfig};
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
    /// pg_auto_failover (monitor + one keeper per node).
    Pgaf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Dist {
    Uniform,
    Normal,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Dir {
    Egress,
    Both,
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
    /// Larder only: give the cluster a VIP (`vip` on the nodes' eth0) and let the clients
    /// write to it directly, without haproxy: the older Chef HA pattern.
    #[arg(long)]
    via_vip: bool,
    /// Number of cluster nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The `larder` binary (default: the one next to this executable, i.e. the same cargo
    /// target directory and profile).
    #[arg(long, env = "LARDER_BIN")]
    larder_bin: Option<PathBuf>,
    /// Leader lease assumed for Larder when its larder.toml does not set
    /// `leaderl.leader_ttl_seconds` (Larder's default, 3 s; sizes the "longer than the lease"
    /// faults and the availability bounds; the configured value wins).
    #[arg(long, default_value_t = 3)]
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
    /// larder.toml setting for every node instead of Larder's default, e.g.
    /// `--larder-set leaderl.leader_ttl_seconds=2 --larder-set etcd.election_timeout=500`.
    #[arg(long = "larder-set", value_name = "KEY=VALUE")]
    larder_set: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove leftovers of killed runs (namespaces, links, mounts named lf*, blkio cgroups
    /// named larder-faults-lf*).
    Cleanup,
    /// Print haproxy's configuration as a Chef frontend writes it for Chef Backend, listening
    /// on `--bind` (bench/upgrade/run.sh puts it beside a loopback cluster).
    HaproxyConfig {
        /// Address the proxied services listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// A backend node as NAME=IP (repeat per node).
        #[arg(long = "server", value_name = "NAME=IP", required = true)]
        servers: Vec<String>,
        /// Proxy PostgreSQL (5432) only, not search (9200).
        #[arg(long)]
        pg_only: bool,
    },
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
        /// Chef frontends, each its own host with its own haproxy (started a second apart, so
        /// their checks run at different phases) and one writer; every trial reports each
        /// frontend's gap.
        #[arg(long, default_value_t = 2)]
        frontends: u32,
        /// Proxy only PostgreSQL on the frontends, not search too (a Chef frontend proxies
        /// both, and both backends check `/leader`; the benchmark runs before 2026-12 did this).
        #[arg(long)]
        pg_only_frontend: bool,
    },
    /// HTTP check for haproxy on a pg_auto_failover node: `GET /primary` answers 200 iff
    /// the local PostgreSQL is out of recovery and read-write, else 503.
    PrimaryCheck {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        pg_host: String,
        #[arg(long, default_value_t = 5432)]
        pg_port: u16,
        #[arg(long, default_value = "postgres")]
        pg_user: String,
    },
    /// Seeded, randomized fault schedule for N minutes, then heal and check.
    Run {
        #[command(flatten)]
        common: Common,
        /// Leave this fault out (repeatable; local use: it is printed in the summary).
        #[arg(long = "skip", value_parser = parse_fault)]
        skip: Vec<schedule::Fault>,
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
    /// No spurious failover (issue 5 §6): delay and jitter on every node's link, pgbench
    /// through haproxy for N minutes, every node's /leader and /status sampled; reports
    /// leader and term changes (exit 1 on any leader change or checker violation).
    Steady {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Delay ± jitter per packet, e.g. 50ms±50ms (or 50ms+-50ms).
        #[arg(long, default_value = "50ms±50ms")]
        jitter: String,
        /// Jitter distribution.
        #[arg(long, value_enum, default_value = "uniform")]
        distribution: Dist,
        /// egress: what each node sends (one delay per hop, netem's usual setup);
        /// both: also what it receives.
        #[arg(long, value_enum, default_value = "egress")]
        direction: Dir,
        #[arg(long, default_value_t = 0.0)]
        loss_percent: f32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        pgbench_clients: u32,
        #[arg(long, default_value_t = 10)]
        pgbench_scale: u32,
        /// Milliseconds between two samples of every node's /leader and /status.
        #[arg(long, default_value_t = 500)]
        sample_ms: u64,
    },
    /// Short fixed-seed pass over every fault (CI).
    Ci {
        #[command(flatten)]
        common: Common,
        /// Leave this fault out (repeatable; local use: it is printed in the summary).
        #[arg(long = "skip", value_parser = parse_fault)]
        skip: Vec<schedule::Fault>,
        #[arg(long, default_value_t = 2048)]
        disk_mb: u64,
        #[arg(long, default_value_t = 3)]
        writers: u32,
    },
}

/// The suite's sampler may see two nodes answer the leader check for up to one haproxy check
/// interval (2 s) while the old leader's answer is about to turn (it is sampled, not held);
/// longer overlaps are violations. Shorter ones are still reported (`claim_overlaps`), and
/// what haproxy itself held UP is reported from its log (`routing`): it checks each server
/// independently with `rise 1`, so a short overlap can make it route to either node. Safety is
/// the checker's timeline/probe rule (two nodes accepting writes), not this tolerance.
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
        Cmd::HaproxyConfig {
            bind,
            servers,
            pg_only,
        } => {
            print!(
                "{}",
                larder_faults::upgrade_bench::haproxy_config(&bind, &servers, pg_only)?
            );
            Ok(())
        }
        Cmd::Remeasure { dir } => remeasure_saved(&dir),
        Cmd::PrimaryCheck {
            listen,
            pg_host,
            pg_port,
            pg_user,
        } => {
            let target = larder_faults::pg::Target {
                host: pg_host,
                port: pg_port,
                user: pg_user,
                password: String::new(),
                dbname: "postgres".into(),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(larder_faults::pgaf::serve_primary_check(&listen, target))?;
            Ok(())
        }
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
            frontends,
            pg_only_frontend,
        } => bench(
            &common,
            trials,
            &scenarios,
            idle_secs,
            BenchClients {
                frontends,
                pg_only_frontend,
            },
        ),
        Cmd::Run {
            common,
            skip,
            minutes,
            seed,
            disk_mb,
            writers,
        } => fault_run(
            &common,
            schedule::Plan::random(seed, Duration::from_secs(minutes * 60)).skipping(skip),
            disk_mb,
            writers,
        ),
        Cmd::Steady {
            common,
            minutes,
            jitter,
            distribution,
            direction,
            loss_percent,
            seed,
            pgbench_clients,
            pgbench_scale,
            sample_ms,
        } => {
            let mut spec = larder_faults::netem::Netem::parse(&jitter)?;
            spec.distribution = match distribution {
                Dist::Uniform => larder_faults::netem::Distribution::Uniform,
                Dist::Normal => larder_faults::netem::Distribution::Normal,
            };
            spec.direction = match direction {
                Dir::Egress => larder_faults::netem::Direction::Egress,
                Dir::Both => larder_faults::netem::Direction::Both,
            };
            spec.loss_percent = loss_percent;
            spec.seed = seed;
            steady(
                &common,
                SteadyArgs {
                    minutes,
                    spec,
                    pgbench_clients,
                    pgbench_scale,
                    sample: Duration::from_millis(sample_ms),
                },
            )
        }
        Cmd::Ci {
            common,
            skip,
            disk_mb,
            writers,
        } => fault_run(
            &common,
            schedule::Plan::every_fault_once().skipping(skip),
            disk_mb,
            writers,
        ),
    }
}

fn parse_fault(s: &str) -> std::result::Result<schedule::Fault, String> {
    schedule::Fault::from_id(s)
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
        (System::Larder, _) if c.via_vip => "larder-vip".into(),
        // The same cluster with switchovers started at once, for the comparison in one run.
        (System::Larder, _)
            if c.larder_set
                .iter()
                .any(|s| s.replace(' ', "") == "leaderl.align_switchover_to_checks=false") =>
        {
            "larder-unaligned".into()
        }
        (System::Larder, _) => "larder".into(),
        (System::Patroni, Settings::Defaults) => "patroni-defaults".into(),
        (System::Patroni, Settings::Aggressive) => "patroni-aggressive".into(),
        (System::Pgaf, _) => "pg-auto-failover".into(),
    }
}

/// `clock_shim`: run the Larder nodes under the clock-skew shim (for the clock faults).
fn start_cluster(
    c: &Common,
    disk_mb: u64,
    clock_shim: bool,
    out: &std::path::Path,
) -> Result<Box<dyn Cluster>> {
    if !c.larder_set.is_empty() && c.system != System::Larder {
        bail!("--larder-set applies to --system larder only");
    }
    if c.via_vip && c.system != System::Larder {
        bail!("--via-vip applies to --system larder only");
    }
    let mut net = TestNet::create(c.nodes).context("creating test hosts")?;
    let vip = vip_address(&net);
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
        System::Pgaf => Box::new(
            PgafCluster::start(
                net,
                PgafConfig {
                    autoctl: PathBuf::from("/usr/bin/pg_autoctl"),
                    pg_bin: c.pg_bin.clone(),
                    check_bin: std::env::current_exe().context("locating larder-faults")?,
                    label: label(c),
                },
            )
            .context("starting the pg_auto_failover cluster")?,
        ),
        System::Larder => Box::new(
            LarderCluster::start(
                net,
                LarderConfig {
                    bin: larder_bin(c),
                    label: label(c),
                    lease: Duration::from_secs(c.larder_lease_secs),
                    disk_mb,
                    overrides: {
                        let mut o: Vec<(String, String)> = c
                            .larder_set
                            .iter()
                            .map(|s| larder_faults::larder::parse_override(s))
                            .collect::<std::result::Result<_, _>>()?;
                        if c.via_vip {
                            o.push(("vip".into(), format!("\"{vip}\"")));
                            o.push(("vip_interface".into(), "\"eth0\"".into()));
                        }
                        o
                    },
                    clock_shim,
                },
            )
            .context("starting the Larder cluster")?,
        ),
    })
}

/// The VIP of a run: a free host number on the run's subnet (nodes take 1–9, the client 200).
fn vip_address(net: &TestNet) -> String {
    net.naming.ip(net.run, 100)
}

/// How the benchmark's clients are set up (the `bench` flags beyond the common ones).
struct BenchClients {
    frontends: u32,
    pg_only_frontend: bool,
}

fn bench(
    c: &Common,
    trials: u32,
    scenarios: &[String],
    idle_secs: u64,
    bc: BenchClients,
) -> Result<()> {
    let scenarios: Vec<Scenario> = scenarios
        .iter()
        .map(|s| Scenario::parse(s).with_context(|| format!("unknown scenario {s}")))
        .collect::<Result<_>>()?;
    let out = c.out.join(label(c));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = std::time::Instant::now();
    let mut cluster = start_cluster(c, 0, false, &out)?;
    let leader = cluster.wait_healthy(Duration::from_secs(300))?;
    eprintln!("{}: healthy, leader n{}", cluster.label(), leader + 1);
    let pids = cluster.agent_pids(leader);
    let idle = pids.first().copied().and_then(|pid| {
        stats::idle_usage_sum(&pids, Duration::from_secs(idle_secs))
            .map(|(cpu, rss)| (pid, cpu, rss))
    });
    let opts = ClientOptions {
        writers: 1,
        interval: Duration::from_millis(c.interval_ms),
        op_timeout: Duration::from_millis(c.op_timeout_ms),
        sample_period: Duration::from_millis(250),
        // As a Chef frontend: search is proxied too, and its backend checks `/leader` as well
        // (for Patroni those checks go to its REST API like the PostgreSQL backend's).
        proxy_search: !bc.pg_only_frontend,
        search_workload: false,
        direct_host: c.via_vip.then(|| vip_address(cluster.net())),
        frontends: bc.frontends,
    };
    let history = out.join("history.jsonl");
    let mut cl = Clients::start(cluster.as_ref(), &opts, &history)?;
    // A real frontend checks all the time, so a user's switchover finds every node knowing the
    // frontends' check rhythm. The haproxy instances have only just started here: wait until
    // every node publishes each checker (frontends × proxied services) rather than measuring
    // the first seconds of a frontend's life (which made the first trials 1.2–1.9 s).
    let rhythms_known = match c.system {
        System::Larder => {
            // Counted per frontend (client address), not per checker: a frontend's two
            // checkers (PostgreSQL and search backends) that run within the tracker's
            // tolerance of each other are one checker to the node, and to the timing.
            let want = bc.frontends.max(1) as usize;
            let waited = std::time::Instant::now();
            let ok = wait_rhythms_learned(cluster.as_ref(), want, Duration::from_secs(90));
            eprintln!(
                "check rhythms {} on every node after {:.1}s ({want} frontends)",
                if ok { "known" } else { "NOT known" },
                waited.elapsed().as_secs_f64()
            );
            Some(ok)
        }
        _ => None,
    };
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
            System::Pgaf => "debian",
        },
        "nodes": c.nodes,
        "frontends": bc.frontends,
        "check_rhythms_known_before_trials": rhythms_known,
        "frontend_services": if bc.pg_only_frontend { "postgresql" } else { "postgresql+search" },
        "interval_ms": c.interval_ms,
        "resume_deadline_s": bopts.resume_deadline.as_secs_f64(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "scenarios": per,
        "trials": all,
        "writes": {"ok": report.writes.ok, "failed": report.writes.failed, "unknown": report.writes.unknown},
        "lost": report.lost,
        "violations": report.violations.iter().map(|v| serde_json::json!({"kind": v.kind, "message": v.message})).collect::<Vec<_>>(),
        "idle": idle.map(|(pid, cpu, rss)| serde_json::json!({"pid": pid, "pids": pids, "cpu_percent": cpu, "rss_bytes": rss, "window_s": idle_secs})),
        "healthy_at_end": healthy,
        "error": error,
        "haproxy_dual_up": larder_faults::routing::dual_up_intervals(&cl.rec.entries(), cl.rec.now_us())
            .iter()
            .map(|d| serde_json::json!({"servers": d.servers, "from_s": d.from_us as f64 / 1e6, "to_s": d.to_us as f64 / 1e6}))
            .collect::<Vec<_>>(),
    });
    let path = out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    for v in &report.violations {
        eprintln!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    println!("{}", serde_json::to_string_pretty(&result["scenarios"])?);
    print_routing(&cl.rec.entries(), &report);
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

/// Polls every node's `/status` until each lists checkers of at least `want` frontends
/// (distinct clients in `frontend_checks`); false at the deadline.
fn wait_rhythms_learned(cluster: &dyn Cluster, want: usize, deadline: Duration) -> bool {
    let ips: Vec<String> = cluster.net().nodes.iter().map(|n| n.ip.clone()).collect();
    let port = cluster.check().port;
    // Asked from a node's host: `/status` answers only members and
    // `leaderl.status_allowed_cidrs`, and the client host is neither (asked from there, every
    // answer was a 403 and the wait always ran out).
    larder_faults::inns::block_on(&cluster.net().nodes[0].name, move || async move {
        let start = std::time::Instant::now();
        loop {
            let mut all = true;
            for ip in &ips {
                let addr = format!("{ip}:{port}");
                let n = match larder_faults::http::get(&addr, "/status", Duration::from_secs(2))
                    .await
                {
                    Some((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| {
                            v["frontend_checks"].as_array().map(|c| {
                                c.iter()
                                    .filter_map(|p| p["client"].as_str())
                                    .collect::<std::collections::HashSet<_>>()
                                    .len()
                            })
                        })
                        .unwrap_or(0),
                    _ => 0,
                };
                all &= n >= want;
            }
            if all {
                return Ok(true);
            }
            if start.elapsed() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .unwrap_or(false)
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
                // Windows of trials without recovery are lower bounds; the report prints any
                // percentile at or above the shortest of them as "no recovery".
                "no_recovery": of_s.iter().filter(|t| !t.recovered).count(),
                "no_recovery_min_s": of_s.iter().filter(|t| !t.recovered).map(|t| t.window_s).reduce(f64::min),
                // Each frontend's own gaps: the worst-frontend figures above hide which
                // frontend pays.
                "frontends": (0..of_s.iter().map(|t| t.frontend_windows_s.len()).max().unwrap_or(0))
                    .map(|k| {
                        let fw: Vec<f64> = of_s
                            .iter()
                            .filter(|t| !void(t))
                            .filter_map(|t| t.frontend_windows_s.get(k).copied())
                            .collect();
                        serde_json::json!({
                            "frontend": k + 1,
                            "p50_s": stats::percentile(&fw, 50.0),
                            "max_s": stats::percentile(&fw, 100.0),
                        })
                    })
                    .collect::<Vec<_>>(),
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
    let mut cluster = start_cluster(c, disk_mb, plan.may_skew_clocks(), &out)?;
    let opts = ClientOptions {
        writers,
        interval: Duration::from_millis(c.interval_ms),
        op_timeout: Duration::from_millis(c.op_timeout_ms),
        sample_period: Duration::from_millis(200),
        proxy_search: c.system == System::Larder,
        search_workload: c.system == System::Larder,
        direct_host: c.via_vip.then(|| vip_address(cluster.net())),
        frontends: 1,
    };
    let history = out.join("history.jsonl");
    let mut cl = Clients::start(cluster.as_ref(), &opts, &history)?;
    let ropts = schedule::RunOptions {
        heal_deadline: Duration::from_secs(180),
        leader_bound: Duration::from_secs(90),
        beyond_lease: Duration::from_secs(5),
        check_interval: larder_faults::haproxy::CHECK_INTERVAL,
    };
    let (steps, error) = schedule::run(cluster.as_mut(), &cl, &plan, &ropts);
    let healthy = cluster.wait_healthy(ropts.heal_deadline);
    cl.stop();
    // Search first: its "searchable after heal" time is measured from the last heal.
    let search = search_final(cluster.as_ref(), &cl);
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
        "expected",
        "gap while held s",
        "verdict",
    ]);
    let bound = schedule::availability_bound(cluster.lease(), ropts.check_interval);
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
            match s.expect {
                schedule::Expect::Bounded => format!("gap ≤ {:.1}s", bound.as_secs_f64()),
                e => e.as_str().to_string(),
            },
            format!("{:.3}", s.in_place_gap_s),
            match &s.failure {
                None if s.status == "done" => "ok".into(),
                None => "-".into(),
                Some(_) => "FAIL".into(),
            },
        ]);
    }
    println!("{t}");
    let availability: Vec<String> = steps
        .iter()
        .filter_map(|s| s.failure.as_ref().map(|f| format!("{}: {f}", s.fault.id())))
        .collect();
    let injected = steps.iter().filter(|s| s.status == "done").count();
    // A fault that could not run is a failure, not a pass: only `--skip` leaves one out.
    let unsupported: Vec<String> = steps
        .iter()
        .filter(|s| s.status.starts_with("skipped"))
        .map(|s| format!("{} ({}): {}", s.fault.id(), s.fault.name(), s.status))
        .collect();
    let skipped_by_flag: Vec<&str> = plan.skip.iter().map(|f| f.id()).collect();
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
        if skipped_by_flag.is_empty() {
            format!("{injected} (+{} could not run)", unsupported.len())
        } else {
            format!(
                "{injected} (+{} could not run; --skip {})",
                unsupported.len(),
                skipped_by_flag.join(", ")
            )
        },
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
    if let Some(s) = &search {
        println!("{}", search_table(s));
    }
    print_routing(&cl.rec.entries(), &report);
    println!("history: {}", history.display());
    for v in &report.violations {
        eprintln!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    let search_violations = search.as_ref().map_or(0, |s| s.report.violations.len());
    for v in search.iter().flat_map(|s| &s.report.violations) {
        eprintln!("SEARCH VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    drop(cl);
    drop(cluster);
    if let Some(e) = error {
        bail!("fault run stopped: {e}");
    }
    if !unsupported.is_empty() {
        bail!(
            "{} fault(s) could not run: {}. Install what is missing (scripts/install-deps.sh; loop devices and nftables need root), or leave a fault out on purpose with --skip ID for a local run",
            unsupported.len(),
            unsupported.join("; ")
        );
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
    if search_violations > 0 {
        bail!("{search_violations} search checker violation(s), see above");
    }
    if c.system == System::Larder && search.is_none() {
        bail!("the search workload did not run (no search credentials in the secrets file?)");
    }
    if !availability.is_empty() {
        bail!(
            "{} fault(s) broke their availability bound: {}",
            availability.len(),
            availability.join("; ")
        );
    }
    Ok(())
}

/// The search workload's final reads and their verdict.
struct SearchOutcome {
    fin: larder_faults::search::FinalSearch,
    report: larder_faults::search_check::SearchReport,
    /// Last heal of the schedule (recorder µs).
    last_heal_us: Option<u64>,
    /// When the final polling began (recorder µs): after the heal, the wait for a healthy
    /// cluster and the workload's stop.
    polling_from_us: u64,
    /// How long the final polling waited at most.
    deadline: Duration,
}

/// After the SQL checks: every node's search read until it converged (bounded), then again,
/// with the leader's change log; judged by `search_check`.
fn search_final(cluster: &dyn Cluster, cl: &Clients) -> Option<SearchOutcome> {
    use larder_faults::history::Entry;
    let target = cl.search.clone()?;
    let nodes: Vec<(String, String)> = cluster
        .net()
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("n{}", i + 1), n.ip.clone()))
        .collect();
    let leader_pg = cluster
        .leader()
        .map(|l| cluster.pg_target().with_host(&cluster.net().nodes[l].ip));
    let deadline = Duration::from_secs(120);
    let polling_from_us = cl.rec.now_us();
    let fin = larder_faults::search::final_state(
        cl.client_ns(),
        &target,
        nodes,
        leader_pg,
        &cl.rec,
        deadline,
    );
    let entries = cl.rec.entries();
    let last_heal_us = entries.iter().rev().find_map(|e| match e {
        Entry::Event(ev) if ev.what == "heal" => Some(ev.at_us),
        _ => None,
    });
    let report = larder_faults::search_check::check(&entries, &fin.nodes, fin.log.as_ref());
    cl.rec.event(
        "check",
        format!(
            "search: {} after {} round(s), {} violation(s)",
            match fin.converged_at_us {
                Some(at) => format!("every node searchable at {:.3}s", at as f64 / 1e6),
                None => format!("not converged within {}s", deadline.as_secs()),
            },
            fin.rounds,
            report.violations.len()
        ),
    );
    Some(SearchOutcome {
        fin,
        report,
        last_heal_us,
        polling_from_us,
        deadline,
    })
}

fn search_table(s: &SearchOutcome) -> comfy_table::Table {
    let r = &s.report;
    let mut t = comfy_table::Table::new();
    t.set_header(vec![
        "search",
        "bulks ok",
        "bulks failed",
        "bulks unknown",
        "acked docs",
        "acked deletes",
        "searches ok/failed/unknown",
        "lost",
        "deleted found",
        "not in PostgreSQL",
        "nodes disagree",
        "violations",
        "searchable after heal s",
    ]);
    t.add_row(vec![
        "_bulk + _search via haproxy:9200".to_string(),
        r.bulks.ok.to_string(),
        r.bulks.failed.to_string(),
        r.bulks.unknown.to_string(),
        r.acked_docs.to_string(),
        r.acked_deletes.to_string(),
        format!(
            "{}/{}/{}",
            r.queries.ok, r.queries.failed, r.queries.unknown
        ),
        r.lost.to_string(),
        r.deleted_found.to_string(),
        r.not_in_pg.to_string(),
        r.disagree.to_string(),
        r.violations.len().to_string(),
        match (s.fin.converged_at_us, s.last_heal_us) {
            (Some(at), Some(heal)) => format!(
                "{:.3} (polling from {:.3}, {} round(s))",
                at.saturating_sub(heal) as f64 / 1e6,
                s.polling_from_us.saturating_sub(heal) as f64 / 1e6,
                s.fin.rounds
            ),
            (Some(at), None) => format!("{:.3} since start", at as f64 / 1e6),
            (None, _) => format!("not within {}s", s.deadline.as_secs()),
        },
    ]);
    t
}

/// What haproxy routed by, and what the sampler saw, about two leaders at once.
fn print_routing(entries: &[larder_faults::history::Entry], report: &checker::Report) {
    let end = entries.iter().map(|e| e.end_us()).max().unwrap_or(0);
    println!(
        "{}",
        larder_faults::routing::describe(&larder_faults::routing::dual_up_intervals(entries, end))
    );
    let longest = report
        .claim_overlaps
        .iter()
        .map(|o| o.3 - o.2)
        .max()
        .unwrap_or(0);
    println!(
        "sampler: two nodes answered the leader check 2xx at once {} time(s), longest {:.3}s",
        report.claim_overlaps.len(),
        longest as f64 / 1e6
    );
}

struct SteadyArgs {
    minutes: u64,
    spec: larder_faults::netem::Netem,
    pgbench_clients: u32,
    pgbench_scale: u32,
    sample: Duration,
}

/// `larder-faults steady`: see [`larder_faults::steady`].
fn steady(c: &Common, a: SteadyArgs) -> Result<()> {
    use larder_faults::netem;
    use larder_faults::steady::{self, Pgbench, StatusSampler};
    if c.system != System::Larder {
        bail!("steady samples Larder's /status; use --system larder");
    }
    let out = c.out.join(format!("{}-steady", label(c)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let command_line: Vec<String> = std::env::args().collect();
    let started = std::time::Instant::now();
    let cluster = start_cluster(c, 0, false, &out)?;
    let leader = cluster.wait_healthy(Duration::from_secs(300))?;
    eprintln!("healthy, leader n{}", leader + 1);
    let names: Vec<String> = (1..=cluster.node_count())
        .map(|i| format!("n{i}"))
        .collect();
    // The paced writer and direct probes of the fault suite run too (one writer, 100 ms), so
    // the checker vouches for durability and single-writer under the same delay.
    let opts = ClientOptions {
        writers: 1,
        interval: Duration::from_millis(100),
        op_timeout: Duration::from_millis(c.op_timeout_ms),
        sample_period: Duration::from_millis(500),
        proxy_search: false,
        search_workload: false,
        direct_host: c.via_vip.then(|| vip_address(cluster.net())),
        frontends: 1,
    };
    let history = out.join("history.jsonl");
    let mut cl = Clients::start(cluster.as_ref(), &opts, &history)?;
    let client = cluster.net().client.clone();
    let bench = Pgbench {
        bin: c.pg_bin.join("pgbench"),
        target: cluster.pg_target(),
        dbname: "larder_pgbench".into(),
        clients: a.pgbench_clients,
        scale: a.pgbench_scale,
    };
    eprintln!("pgbench -i -s {} through haproxy", a.pgbench_scale);
    bench
        .init(&client, &out.join("pgbench-init.log"))
        .context("pgbench -i")?;
    let probe = format!(
        "{}{}-netemprobe",
        larder_faults::hosts::PREFIX,
        cluster.net().run
    );
    let backend = netem::Backend::detect(&probe)?;
    let nodes = cluster.net().nodes.clone();
    let ips: Vec<String> = nodes.iter().map(|n| n.ip.clone()).collect();
    let mut sampler = StatusSampler::start(
        &client.name,
        ips,
        7331,
        a.sample,
        out.join("status-samples.jsonl"),
    )?;
    // A few healthy samples first, so the analysis starts from a known leader and term.
    std::thread::sleep(Duration::from_secs(3));
    let imp = netem::apply_all(&nodes, a.spec, backend)?;
    let what = imp.describe();
    cl.rec
        .event("note", format!("steady: {what} on every node"));
    eprintln!(
        "{what} on every node; pgbench -c {} for {} min",
        a.pgbench_clients, a.minutes
    );
    let pg = bench.run(
        &client,
        Duration::from_secs(a.minutes * 60),
        &out.join("pgbench.log"),
    );
    let dead = imp.dead();
    let delay_stats = imp.clear().context("removing the delay")?;
    cl.rec.event("note", "steady: delay removed");
    let samples = sampler.stop();
    let pg = pg?;
    let an = steady::analyze(&samples, &names);
    let healthy = cluster.wait_healthy(Duration::from_secs(120)).is_ok();
    cl.stop();
    let finals = clients::final_state(cluster.as_ref(), &cl.rec, Duration::from_secs(60));
    let report = checker::check(&cl.rec.entries(), &finals, DUAL_LEADER_TOLERANCE_US);

    let mut t = comfy_table::Table::new();
    t.set_header(vec!["steady run", "value"]);
    let rows: Vec<(&str, String)> = vec![
        ("delay (every node)", what.clone()),
        ("duration", format!("{} min", a.minutes)),
        (
            "pgbench",
            format!(
                "-c {} -s {}: {} tps, latency avg {} ms (sd {}), {} transactions, {} failed, exit {}",
                a.pgbench_clients,
                a.pgbench_scale,
                pg.tps.map_or("?".into(), |x| format!("{x:.1}")),
                pg.latency_avg_ms.map_or("?".into(), |x| format!("{x:.1}")),
                pg.latency_stddev_ms.map_or("?".into(), |x| format!("{x:.1}")),
                pg.transactions.map_or("?".into(), |x| x.to_string()),
                pg.failed.map_or("?".into(), |x| x.to_string()),
                if pg.exit_ok { "ok" } else { "FAILED" }
            ),
        ),
        (
            "status samples",
            format!("{} (every {} ms)", an.samples, a.sample.as_millis()),
        ),
        ("leader changes", an.leader_changes.to_string()),
        (
            "leader first / last",
            format!(
                "{} / {}",
                an.first_leader.as_deref().unwrap_or("?"),
                an.last_leader.as_deref().unwrap_or("?")
            ),
        ),
        (
            "term changes (first -> last)",
            format!(
                "{} ({} -> {})",
                an.term_changes,
                an.first_term.map_or("?".into(), |x| x.to_string()),
                an.last_term.map_or("?".into(), |x| x.to_string())
            ),
        ),
        (
            "samples: no node /leader 200",
            format!(
                "{} (longest run {:.1} s)",
                an.no_leader, an.longest_leaderless_s
            ),
        ),
        ("samples: several /leader 200", an.several_leaders.to_string()),
        (
            "samples: a node did not answer",
            an.unanswered.to_string(),
        ),
        (
            "writer ops ok/failed/unknown",
            format!(
                "{}/{}/{}",
                report.writes.ok, report.writes.failed, report.writes.unknown
            ),
        ),
        ("lost acknowledged writes", report.lost.to_string()),
        (
            "longest write gap",
            format!("{:.3} s", report.longest_gap_us as f64 / 1e6),
        ),
        ("checker violations", report.violations.len().to_string()),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    for (h, s) in &delay_stats {
        t.add_row(vec![format!("delayer {h}"), s.describe()]);
    }
    println!("{t}");
    for (ts, from, to) in &an.changes {
        println!("leader change at {ts:.1}s: {from} -> {to}");
    }
    for (ts, old, new) in &an.term_steps {
        println!("term change at {ts:.1}s: {old} -> {new}");
    }
    let result = serde_json::json!({
        "command": command_line.join(" "),
        "label": label(c),
        "larder_set": c.larder_set,
        "build": if larder_bin(c).to_string_lossy().contains("/release/") { "release" } else { "debug" },
        "delay": what,
        "backend": backend.name(),
        "minutes": a.minutes,
        "pgbench": pg,
        "pgbench_clients": a.pgbench_clients,
        "pgbench_scale": a.pgbench_scale,
        "analysis": an,
        "delayers": delay_stats,
        "dead_delayers": dead,
        "writes": {"ok": report.writes.ok, "failed": report.writes.failed, "unknown": report.writes.unknown},
        "lost": report.lost,
        "longest_write_gap_s": report.longest_gap_us as f64 / 1e6,
        "violations": report.violations.iter().map(|v| serde_json::json!({"kind": v.kind, "message": v.message})).collect::<Vec<_>>(),
        "healthy_at_end": healthy,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let path = out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    println!(
        "results in {} (status samples: status-samples.jsonl, history: history.jsonl, logs/)",
        path.display()
    );
    for v in &report.violations {
        eprintln!("VIOLATION {}: {}\n{}", v.kind, v.message, v.excerpt);
    }
    if !an.changes.is_empty() || !an.term_steps.is_empty() {
        let from = an
            .changes
            .first()
            .map(|c| c.0)
            .into_iter()
            .chain(an.term_steps.first().map(|s| s.0))
            .fold(f64::MAX, f64::min);
        let excerpt: Vec<String> = samples
            .iter()
            .filter(|s| s.t_s >= from - 5.0 && s.t_s <= from + 10.0)
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect();
        eprintln!(
            "status samples around the first change:\n{}",
            excerpt.join("\n")
        );
    }
    drop(cl);
    drop(cluster);
    if !dead.is_empty() {
        bail!(
            "delayer died on {} (those links ran undelayed)",
            dead.join(",")
        );
    }
    if an.leader_changes > 0 {
        bail!("{} leader change(s) under {what}", an.leader_changes);
    }
    if !report.ok() {
        bail!("{} checker violation(s)", report.violations.len());
    }
    if !pg.exit_ok {
        bail!("pgbench failed (see pgbench.log)");
    }
    Ok(())
}
