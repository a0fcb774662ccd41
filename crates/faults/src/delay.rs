//! Link delay, jitter and loss without `sch_netem`: iptables hands a host's packets to an
//! NFQUEUE inside its namespace, and a thread of this process gives each one an ACCEPT
//! verdict after a delay drawn per packet (base ± jitter, uniform or normal, seeded), or a
//! DROP verdict for the lost share — what `tc … netem delay D J loss L` does in the kernel.
//!
//! - Verdicts are issued in order of release time, not arrival, so jitter reorders packets
//!   exactly as netem with jitter does.
//! - The queue is bound before the iptables rule exists and the rule says `--queue-bypass`,
//!   the queue is configured fail-open (`NFQA_CFG_F_FAIL_OPEN`) with room for 16384 packets:
//!   a delayer that is gone, slow or full lets packets through undelayed instead of
//!   blackholing the link. Packets already held when the thread dies are dropped by the
//!   kernel (TCP retransmits them) — never a silent, lasting cut.
//! - Only the bridge-facing interface (`eth0`) is matched: loopback inside the namespace
//!   (PostgreSQL, etcd, the agent talking to their local peers) is never delayed.
//! - Teardown: [`Delayer::stop`] or `Drop` deletes the rules first, then releases every held
//!   packet and stops the thread. On SIGINT/SIGTERM the signal thread deletes the namespaces
//!   (rules go with them) and exits the process (the thread and its socket go with it).
//!
//! The netlink side is NFQUEUE's own protocol (nfnetlink subsystem 3) spoken directly over
//! an `AF_NETLINK` socket with `libc`: no C library, and full control over the receive buffer
//! and timed waits (`ppoll` until the next release), which the `nfq` crate does not expose.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// Queue number used inside every namespace (queues are per network namespace).
pub const QUEUE_NUM: u16 = 213;
/// Packets the kernel may hold for us before fail-open lets further ones pass undelayed.
pub const QUEUE_MAXLEN: u32 = 16384;
/// The iptables chain (mangle table) holding the NFQUEUE rule.
pub const CHAIN: &str = "larder-delay";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Distribution {
    /// base + U(-jitter, +jitter) (netem's default without a distribution table).
    Uniform,
    /// base + N(0, jitter) (netem `distribution normal`), clamped at 0.
    Normal,
}

/// Which of a host's packets are delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Direction {
    /// What the host sends on its link (netem on the host's NIC; Jepsen's convention): a
    /// packet between two impaired hosts pays one delay per direction.
    Egress,
    /// Sent and received: a packet between two impaired hosts pays two delays.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DelaySpec {
    pub delay: Duration,
    pub jitter: Duration,
    pub distribution: Distribution,
    pub loss_percent: f64,
    pub direction: Direction,
    pub seed: u64,
}

impl DelaySpec {
    /// One packet's fate: `None` = drop, else how long to hold it.
    fn draw(&self, rng: &mut Xoshiro256PlusPlus) -> Option<Duration> {
        if self.loss_percent > 0.0 && rng.random::<f64>() * 100.0 < self.loss_percent {
            return None;
        }
        let base = self.delay.as_secs_f64();
        let j = self.jitter.as_secs_f64();
        let d = if j == 0.0 {
            base
        } else {
            match self.distribution {
                Distribution::Uniform => base + j * (2.0 * rng.random::<f64>() - 1.0),
                Distribution::Normal => {
                    // Box-Muller.
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random::<f64>();
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    base + j * z
                }
            }
        };
        Some(Duration::from_secs_f64(d.max(0.0)))
    }
}

/// Counters of one delayer (read while it runs, final after [`Delayer::stop`]).
#[derive(Debug, Default)]
struct Counters {
    packets: AtomicU64,
    dropped: AtomicU64,
    delay_us_sum: AtomicU64,
    max_held: AtomicU64,
    /// Kernel messages lost to a full socket buffer (each leaves one packet held until the
    /// queue is unbound).
    enobufs: AtomicU64,
    verdict_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DelayStats {
    pub packets: u64,
    pub dropped: u64,
    pub mean_delay_ms: f64,
    pub max_held: u64,
    pub enobufs: u64,
    pub verdict_errors: u64,
}

impl DelayStats {
    pub fn describe(&self) -> String {
        format!(
            "{} packets, mean delay {:.1} ms, {} dropped, at most {} held, {} lost to ENOBUFS, {} verdict errors",
            self.packets,
            self.mean_delay_ms,
            self.dropped,
            self.max_held,
            self.enobufs,
            self.verdict_errors
        )
    }
}

impl Counters {
    fn snapshot(&self) -> DelayStats {
        let packets = self.packets.load(Ordering::Relaxed);
        let dropped = self.dropped.load(Ordering::Relaxed);
        let delayed = packets.saturating_sub(dropped);
        DelayStats {
            packets,
            dropped,
            mean_delay_ms: if delayed == 0 {
                0.0
            } else {
                self.delay_us_sum.load(Ordering::Relaxed) as f64 / delayed as f64 / 1000.0
            },
            max_held: self.max_held.load(Ordering::Relaxed),
            enobufs: self.enobufs.load(Ordering::Relaxed),
            verdict_errors: self.verdict_errors.load(Ordering::Relaxed),
        }
    }
}

/// A running delayer on one host. Dropping it removes the rules and stops the thread.
pub struct Delayer {
    ns: String,
    ifname: String,
    direction: Direction,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Delayer {
    /// Binds the queue inside `host`'s namespace, then installs the iptables rules.
    pub fn start(host: &Netns, spec: DelaySpec) -> Result<Delayer> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ns = host.name.clone();
        // Per-host stream of draws: the same seed gives every host a different sequence.
        let seed = spec.seed ^ fnv1a(host.name.as_bytes());
        let thread = {
            let (stop, counters, ns) = (stop.clone(), counters.clone(), ns.clone());
            std::thread::Builder::new()
                .name(format!("delay-{ns}"))
                .spawn(move || {
                    let setup = crate::netns::enter_thread(&ns).and_then(|()| Nfq::open());
                    let mut q = match setup {
                        Ok(q) => {
                            let _ = ready_tx.send(Ok(()));
                            q
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            let _ = ready_tx.send(Err(e));
                            return Err(Error::Invalid(msg));
                        }
                    };
                    let r = serve(&mut q, spec, seed, &stop, &counters);
                    if r.is_err() {
                        // Leave the queue: later packets bypass it (rule has --queue-bypass).
                        drop(q);
                    }
                    r
                })
                .map_err(|e| Error::io("delay thread spawn", e))?
        };
        let mut d = Delayer {
            ns,
            ifname: host.ifname.clone(),
            direction: spec.direction,
            stop,
            counters,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = d.shutdown();
                return Err(e);
            }
            Err(_) => {
                let _ = d.shutdown();
                return Err(Error::Invalid(format!(
                    "delay thread for {} did not bind its queue",
                    host.name
                )));
            }
        }
        if let Err(e) = install_rules(&d.ns, &d.ifname, d.direction) {
            let _ = d.shutdown();
            return Err(e);
        }
        Ok(d)
    }

    pub fn stats(&self) -> DelayStats {
        self.counters.snapshot()
    }

    /// Whether the thread still serves the queue.
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Removes the rules, releases held packets, stops the thread; returns the counters.
    pub fn stop(mut self) -> Result<DelayStats> {
        let r = self.shutdown();
        r.map(|()| self.counters.snapshot())
    }

    fn shutdown(&mut self) -> Result<()> {
        remove_rules(&self.ns, &self.ifname);
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(Error::Invalid(format!(
                "delay thread of {} panicked",
                self.ns
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.shutdown();
        }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

fn ipt(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, "iptables", "-w", "-t", "mangle"];
    full.extend_from_slice(args);
    crate::command::run("ip", &full)
}

fn install_rules(ns: &str, ifname: &str, dir: Direction) -> Result<()> {
    remove_rules(ns, ifname);
    let q = QUEUE_NUM.to_string();
    ipt(ns, &["-N", CHAIN])?;
    ipt(
        ns,
        &[
            "-A",
            CHAIN,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &q,
            "--queue-bypass",
        ],
    )?;
    ipt(ns, &["-I", "OUTPUT", "-o", ifname, "-j", CHAIN])?;
    if dir == Direction::Both {
        ipt(ns, &["-I", "PREROUTING", "-i", ifname, "-j", CHAIN])?;
    }
    Ok(())
}

/// Deletes the jump rules and the chain (each step may find nothing to delete).
pub fn remove_rules(ns: &str, ifname: &str) {
    while ipt(ns, &["-D", "OUTPUT", "-o", ifname, "-j", CHAIN]).is_ok() {}
    while ipt(ns, &["-D", "PREROUTING", "-i", ifname, "-j", CHAIN]).is_ok() {}
    let _ = ipt(ns, &["-F", CHAIN]);
    let _ = ipt(ns, &["-X", CHAIN]);
}

/// Whether NFQUEUE works here (iptables target + nfnetlink_queue), probed in a throw-away
/// namespace.
pub fn supported(probe_ns_name: &str) -> bool {
    use crate::command::run_quiet;
    if !run_quiet("ip", &["netns", "add", probe_ns_name]) {
        return false;
    }
    let host = Netns {
        name: probe_ns_name.to_string(),
        ip: String::new(),
        veth_host: String::new(),
        ifname: "lo".into(),
    };
    let spec = DelaySpec {
        delay: Duration::from_millis(1),
        jitter: Duration::ZERO,
        distribution: Distribution::Uniform,
        loss_percent: 0.0,
        direction: Direction::Egress,
        seed: 0,
    };
    let ok = Delayer::start(&host, spec).and_then(Delayer::stop).is_ok();
    run_quiet("ip", &["netns", "del", probe_ns_name]);
    ok
}

/// The thread's loop: receive packets, hold each until its release time, verdict.
fn serve(q: &mut Nfq, spec: DelaySpec, seed: u64, stop: &AtomicBool, c: &Counters) -> Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // (release time, arrival sequence, packet id): ties keep arrival order.
    let mut held: BinaryHeap<Reverse<(Instant, u64, u32)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut ids = Vec::new();
    let mut out = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            // Rules are already gone: let everything held or still unread go now, then leave
            // the queue (unbinding would drop what it still holds).
            ids.clear();
            q.receive(&mut ids, c);
            for id in ids.drain(..) {
                push_verdict(&mut out, id, NF_ACCEPT);
            }
            while let Some(Reverse((_, _, id))) = held.pop() {
                push_verdict(&mut out, id, NF_ACCEPT);
            }
            q.send_verdicts(&out);
            let _ = q.unbind();
            return Ok(());
        }
        let now = Instant::now();
        let wait = held
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        if !wait.is_zero() {
            q.wait_readable(wait);
        }
        ids.clear();
        q.receive(&mut ids, c);
        let now = Instant::now();
        for id in ids.drain(..) {
            c.packets.fetch_add(1, Ordering::Relaxed);
            match spec.draw(&mut rng) {
                None => {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    push_verdict(&mut out, id, NF_DROP);
                }
                Some(d) => {
                    c.delay_us_sum
                        .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
                    seq += 1;
                    held.push(Reverse((now + d, seq, id)));
                }
            }
        }
        c.max_held.fetch_max(held.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        while let Some(Reverse((t, _, id))) = held.peek().copied() {
            if t > now {
                break;
            }
            held.pop();
            push_verdict(&mut out, id, NF_ACCEPT);
        }
        if !out.is_empty() {
            if !q.send_verdicts(&out) {
                c.verdict_errors.fetch_add(1, Ordering::Relaxed);
            }
            out.clear();
        }
    }
}

// ---- nfnetlink_queue over a raw netlink socket -------------------------------------------

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

struct Nfq {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: nlmsghdr + nfgenmsg(AF_UNSPEC, v0, res_id = queue) + attributes.
fn nl_message(msg_type: u16, flags: u16, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&QUEUE_NUM.to_be_bytes());
    for (t, data) in attrs {
        let len = 4 + data.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&t.to_ne_bytes());
        m.extend_from_slice(data);
        m.resize(align4(m.len()), 0);
    }
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Length of one verdict message (header 16 + nfgenmsg 4 + attribute 12).
const VERDICT_LEN: usize = 32;

fn push_verdict(out: &mut Vec<u8>, id: u32, verdict: u32) {
    let mut hdr = [0u8; 8];
    hdr[0..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..8].copy_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nl_message(
        NFQNL_MSG_VERDICT,
        NLM_F_REQUEST,
        0,
        &[(NFQA_VERDICT_HDR, &hdr)],
    ));
}

fn os_err(what: &str) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

impl Nfq {
    /// Opens the socket in the calling thread's namespace, binds [`QUEUE_NUM`] and
    /// configures it (metadata only, GSO packets whole, fail-open, [`QUEUE_MAXLEN`]).
    fn open() -> Result<Nfq> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(os_err("netlink socket"));
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid (pid 0 = let the kernel assign).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(os_err("netlink bind"));
        }
        // A large receive buffer: a burst of queued packets must not overflow it (ENOBUFS
        // would leave those packets held until unbind).
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt with a c_int value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut q = Nfq {
            fd,
            seq: 0,
            buf: vec![0u8; 1 << 18],
        };
        q.config(&[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])])
            .map_err(|e| Error::Invalid(format!("binding NFQUEUE {QUEUE_NUM}: {e}")))?;
        let mut params = [0u8; 5];
        params[4] = NFQNL_COPY_META;
        q.config(&[(NFQA_CFG_PARAMS, &params)])?;
        q.config(&[(NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes())])?;
        let flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
        q.config(&[
            (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
            (NFQA_CFG_MASK, &flags.to_be_bytes()),
        ])?;
        Ok(q)
    }

    fn unbind(&mut self) -> Result<()> {
        self.config(&[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_UNBIND, 0, 0, 0])])
    }

    /// Sends a config request and waits for its acknowledgement.
    fn config(&mut self, attrs: &[(u16, &[u8])]) -> Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let m = nl_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, attrs);
        if !self.send(&m) {
            return Err(os_err("netlink send"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Invalid("no netlink acknowledgement".into()));
            }
            self.wait_readable(left);
            let n = self.recv_raw();
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return Err(Error::io("netlink recv", e));
            }
            let mut answer = None;
            for_each_message(&self.buf[..n as usize], |t, mseq, payload| {
                if t == NLMSG_ERROR && mseq == seq && payload.len() >= 4 {
                    answer = Some(i32::from_ne_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                }
            });
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => {
                    return Err(Error::io(
                        "nfqueue config",
                        std::io::Error::from_raw_os_error(-errno),
                    ))
                }
                None => {}
            }
        }
    }

    /// Sends a run of verdict messages, at most 1024 per datagram.
    fn send_verdicts(&self, data: &[u8]) -> bool {
        data.chunks(VERDICT_LEN * 1024).all(|c| self.send(c))
    }

    /// Whole-buffer send (several netlink messages in one datagram). False on failure.
    fn send(&self, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        // SAFETY: zeroed sockaddr_nl addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: data is a valid buffer of data.len() bytes; addr as above.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr() as *const libc::c_void,
                data.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        n == data.len() as isize
    }

    fn recv_raw(&mut self) -> isize {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    }

    /// Sleeps until the socket is readable or `timeout` passes (µs resolution).
    fn wait_readable(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
        unsafe {
            libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
        }
    }

    /// Drains every pending message; appends the ids of queued packets.
    fn receive(&mut self, ids: &mut Vec<u32>, c: &Counters) {
        loop {
            let n = self.recv_raw();
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        c.enobufs.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return,
                }
            }
            if n == 0 {
                return;
            }
            let packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
            for_each_message(&self.buf[..n as usize], |t, _, payload| {
                if t == packet_type {
                    if let Some(id) = packet_id(payload) {
                        ids.push(id);
                    }
                } else if t == NLMSG_ERROR {
                    // Only failed verdicts are answered (they carry no ACK flag).
                    if payload.len() >= 4 && payload[..4] != [0, 0, 0, 0] {
                        c.verdict_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

/// Calls `f(type, seq, payload)` for every netlink message in a datagram.
fn for_each_message(mut buf: &[u8], mut f: impl FnMut(u16, u32, &[u8])) {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return;
        }
        let t = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        f(t, seq, &buf[16..len]);
        buf = &buf[align4(len).min(buf.len())..];
    }
}

/// The packet id of an NFQNL_MSG_PACKET payload (nfgenmsg, then attributes).
fn packet_id(payload: &[u8]) -> Option<u32> {
    let mut a = payload.get(4..)?;
    while a.len() >= 4 {
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let t = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
        if len < 4 || len > a.len() {
            return None;
        }
        if t == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes([a[4], a[5], a[6], a[7]]));
        }
        a = &a[align4(len).min(a.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(d: u64, j: u64, dist: Distribution, loss: f64) -> DelaySpec {
        DelaySpec {
            delay: Duration::from_millis(d),
            jitter: Duration::from_millis(j),
            distribution: dist,
            loss_percent: loss,
            direction: Direction::Egress,
            seed: 7,
        }
    }

    #[test]
    fn uniform_draws_stay_in_range_and_spread() {
        let s = spec(50, 10, Distribution::Uniform, 0.0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let v: Vec<f64> = (0..10_000)
            .map(|_| s.draw(&mut rng).unwrap().as_secs_f64() * 1000.0)
            .collect();
        assert!(v.iter().all(|x| (40.0..=60.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 50.0).abs() < 0.5, "{mean}");
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        // U(-10, 10) has sd 10/sqrt(3) = 5.77.
        assert!((sd - 5.77).abs() < 0.3, "{sd}");
    }

    #[test]
    fn normal_draws_clamp_at_zero_and_loss_drops_its_share() {
        let s = spec(50, 50, Distribution::Normal, 10.0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let draws: Vec<Option<Duration>> = (0..20_000).map(|_| s.draw(&mut rng)).collect();
        let lost = draws.iter().filter(|d| d.is_none()).count() as f64 / 20_000.0;
        assert!((lost - 0.10).abs() < 0.01, "{lost}");
        assert!(draws.iter().flatten().any(|d| d.is_zero()));
    }

    #[test]
    fn packet_message_round_trip() {
        // A fake NFQNL_MSG_PACKET payload: nfgenmsg + NFQA_PACKET_HDR(id 0x01020304).
        let m = nl_message(
            NFQNL_MSG_PACKET,
            0,
            9,
            &[(NFQA_PACKET_HDR, &[1, 2, 3, 4, 8, 0, 3])],
        );
        let mut seen = Vec::new();
        for_each_message(&m, |t, seq, p| seen.push((t, seq, packet_id(p))));
        assert_eq!(seen, vec![(0x300, 9, Some(0x01020304))]);
        let mut v = Vec::new();
        push_verdict(&mut v, 5, NF_ACCEPT);
        assert_eq!(v.len(), VERDICT_LEN);
    }
}
