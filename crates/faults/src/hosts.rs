//! The set of test hosts of one run: a bridge, one namespace per cluster node, one client
//! namespace, a working directory — and the guarantee that all of it disappears again.
//!
//! Teardown happens on `Drop` (normal end and panics, which unwind) and, for SIGINT/SIGTERM,
//! from the signal thread of [`crate::teardown`], which finds the run through a global
//! registry. Everything is named with the prefix `lf<run>` so `larder-faults cleanup` can
//! also remove what a `kill -9` of the suite left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bridge::Bridge;
use crate::disk::LoopDisk;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::teardown;

/// Root of every run's working directory; cleanup removes mounts below it.
pub const WORK_ROOT: &str = "/tmp/larder-faults";
/// Name prefix of every kernel object the suite creates.
pub const PREFIX: &str = "lf";
/// First two octets of the suite's private subnets; the third is the run number.
pub const SUBNET_BASE: &str = "10.213";
/// Host number of the client namespace inside the /24 (nodes are 1..=n).
pub const CLIENT_HOST: u8 = 200;

/// How one suite names its kernel objects and addresses: the fault suite's defaults (`lf`,
/// 10.213.x), or another suite's own (the VIP test: `lvip`, 10.231.x), so suites never touch
/// each other's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Naming {
    pub prefix: &'static str,
    pub subnet_base: &'static str,
    pub work_root: &'static str,
}

impl Naming {
    pub const FAULTS: Naming = Naming {
        prefix: PREFIX,
        subnet_base: SUBNET_BASE,
        work_root: WORK_ROOT,
    };
    pub fn bridge_name(&self, run: u16) -> String {
        format!("{}b{run}", self.prefix)
    }
    pub fn ns_name(&self, run: u16, host: &str) -> String {
        format!("{}{run}-{host}", self.prefix)
    }
    pub fn veth_name(&self, run: u16, host: &str) -> String {
        format!("{}v{run}{host}", self.prefix)
    }
    pub fn run_dir(&self, run: u16) -> PathBuf {
        Path::new(self.work_root).join(format!("r{run}"))
    }
    /// Address of host `k` of run `run`.
    pub fn ip(&self, run: u16, k: u8) -> String {
        format!("{}.{run}.{k}", self.subnet_base)
    }
}

#[derive(Debug)]
pub struct TestNet {
    pub run: u16,
    pub naming: Naming,
    pub dir: PathBuf,
    pub bridge: Bridge,
    pub nodes: Vec<Netns>,
    pub client: Netns,
    pub disks: Vec<LoopDisk>,
    /// Where the daemons' `*.log` files are copied before teardown deletes the run dir.
    pub keep_logs: Option<PathBuf>,
    torn_down: bool,
}

/// Names of everything belonging to run `run`, shared by setup, teardown and cleanup so the
/// three can never disagree.
pub fn bridge_name(run: u16) -> String {
    format!("{PREFIX}b{run}")
}
pub fn ns_name(run: u16, host: &str) -> String {
    format!("{PREFIX}{run}-{host}")
}
pub fn veth_name(run: u16, host: &str) -> String {
    format!("{PREFIX}v{run}{host}")
}
pub fn run_dir(run: u16) -> PathBuf {
    Path::new(WORK_ROOT).join(format!("r{run}"))
}

impl TestNet {
    /// Creates `n` node hosts (`n1`..`nN`, addresses 10.213.<run>.1..N) and the client host
    /// `c` (10.213.<run>.200). The run number is derived from the pid and moved forward past
    /// any run whose bridge still exists, so concurrent runs never share a subnet.
    pub fn create(n: usize) -> Result<Self> {
        Self::create_named(n, Naming::FAULTS)
    }

    /// [`TestNet::create`] with another suite's names and subnet.
    pub fn create_named(n: usize, naming: Naming) -> Result<Self> {
        if n == 0 || n > 9 {
            return Err(Error::Invalid(format!("node count {n} (1..=9)")));
        }
        let work_root = naming.work_root;
        std::fs::create_dir_all(work_root).map_err(|e| Error::io(work_root, e))?;
        // Creating the run directory is the reservation: `create_dir` is atomic, so two runs
        // (or two tests of one process) can never pick the same number.
        let mut run = (std::process::id() % 200) as u16 + 20;
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > 240 {
                return Err(Error::Invalid(
                    "no free run number (run `larder-faults cleanup`)".into(),
                ));
            }
            if !Bridge::exists(&naming.bridge_name(run)) {
                match std::fs::create_dir(naming.run_dir(run)) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io(naming.run_dir(run), e)),
                }
            }
            run = if run >= 250 { 20 } else { run + 1 };
        }
        teardown::register(naming, run);
        // `net` exists before the first kernel object does, so an error anywhere below drops
        // it and tears down whatever was already created.
        let mut net = TestNet {
            run,
            naming,
            dir: naming.run_dir(run),
            bridge: Bridge {
                name: naming.bridge_name(run),
            },
            nodes: Vec::new(),
            client: Netns {
                name: String::new(),
                ip: String::new(),
                veth_host: String::new(),
                ifname: String::new(),
            },
            disks: Vec::new(),
            keep_logs: None,
            torn_down: false,
        };
        net.bridge = Bridge::create(&naming.bridge_name(run))?;
        for k in 1..=n {
            let host = format!("n{k}");
            let ip = naming.ip(run, k as u8);
            let ns = Netns::create(
                &naming.ns_name(run, &host),
                &naming.veth_name(run, &host),
                &net.bridge.name,
                &ip,
                24,
            )?;
            net.nodes.push(ns);
        }
        net.client = Netns::create(
            &naming.ns_name(run, "c"),
            &naming.veth_name(run, "c"),
            &net.bridge.name,
            &naming.ip(run, CLIENT_HOST),
            24,
        )?;
        net.wait_reachable(&net.client.name, Duration::from_secs(10))?;
        Ok(net)
    }

    /// One more client host, `c<k>` at host number `CLIENT_HOST + k - 1` (k ≥ 2): a second
    /// Chef frontend with its own address, so the nodes see it as another checker. Torn down
    /// with the run (its names carry the run's prefix).
    pub fn add_client_host(&self, k: u8) -> Result<Netns> {
        if k < 2 || CLIENT_HOST as u16 + k as u16 - 1 > 254 {
            return Err(Error::Invalid(format!("client host number {k}")));
        }
        self.add_host(&format!("c{k}"), CLIENT_HOST + k - 1)
    }

    /// One more host named `host` at host number `k` of the run's subnet (a frontend, or a
    /// system's own coordinator such as pg_auto_failover's monitor). Torn down with the run.
    pub fn add_host(&self, host: &str, k: u8) -> Result<Netns> {
        let ns = Netns::create(
            &self.naming.ns_name(self.run, host),
            &self.naming.veth_name(self.run, host),
            &self.bridge.name,
            &self.naming.ip(self.run, k),
            24,
        )?;
        self.wait_reachable(&ns.name, Duration::from_secs(10))?;
        Ok(ns)
    }

    /// Polls until client host `ns` reaches every node (bridge ports forwarding, ARP
    /// answered). A TCP connect to a closed port is the probe: "connection refused" is a reply
    /// from the node's kernel, so it proves the path without needing ping or a listener.
    fn wait_reachable(&self, ns: &str, deadline: Duration) -> Result<()> {
        let ips: Vec<String> = self.nodes.iter().map(|n| n.ip.clone()).collect();
        crate::inns::block_on(ns, move || async move {
            let start = std::time::Instant::now();
            for ip in ips {
                loop {
                    let addr = format!("{ip}:9");
                    let r = tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(&addr),
                    )
                    .await;
                    let reached = match r {
                        Ok(Ok(_)) => true,
                        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                        Err(_) => false,
                    };
                    if reached {
                        break;
                    }
                    if start.elapsed() > deadline {
                        return Err(Error::Timeout {
                            what: format!("client namespace to reach {ip}"),
                            secs: deadline.as_secs_f64(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(())
        })
    }

    pub fn node(&self, idx: usize) -> &Netns {
        &self.nodes[idx]
    }

    /// Mounts a fresh `size_mb` loop filesystem at `mountpoint` (e.g. a node's data dir).
    pub fn add_disk(&mut self, name: &str, mountpoint: &Path, size_mb: u64) -> Result<LoopDisk> {
        let image = self.dir.join(format!("{name}.img"));
        let disk = LoopDisk::create(&image, mountpoint, size_mb)?;
        self.disks.push(disk.clone());
        Ok(disk)
    }

    /// Idempotent teardown: processes, mounts, namespaces, links, directory.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Some(keep) = &self.keep_logs {
            copy_logs(&self.dir, keep);
        }
        teardown::teardown_run_named(self.naming, self.run);
        teardown::unregister(self.naming, self.run);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Copies `*.log` files (one level deep) so a failed run can be diagnosed after teardown.
fn copy_logs(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    if let Ok(rd) = std::fs::read_dir(from) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                if let Some(name) = p.file_name() {
                    let _ = std::fs::copy(&p, to.join(name));
                }
            }
        }
    }
}
