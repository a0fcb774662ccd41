//! Larder's fault-injection suite and failover benchmark.
//!
//! Module map:
//! - [`hosts`]: one run's test hosts (bridge + a network namespace per node + a client
//!   namespace) built on [`bridge`] and [`netns`]; [`teardown`] removes them on drop, on
//!   SIGINT/SIGTERM and for `larder-faults cleanup`.
//! - Faults: [`nemesis`] (kill -9, SIGSTOP/SIGCONT of processes and whole hosts),
//!   [`partition`] (nftables drops, also one-way), [`netem`] (latency/jitter/loss with tc
//!   netem, or without `sch_netem` the NFQUEUE delayer of [`delay`]),
//!   [`disk`] (a small loop-mounted filesystem to fill), [`blkio`] (that filesystem's loop
//!   device throttled by a cgroup: a slow disk).
//! - Client side: [`haproxy`] configured as a Chef frontend, [`workload`] (paced inserts),
//!   [`sampler`] (health endpoints + direct writes on every node), [`history`] (JSON lines),
//!   [`checker`] (durability, split brain, availability gaps), [`stats`]; the search
//!   workload [`search`] (`_bulk` and `_search` through haproxy's 9200 over [`https`]) and
//!   its checker [`search_check`].
//! - Clusters under test: [`patroni`] (the baseline: etcd 3.4 + Patroni + PostgreSQL 15) and
//!   [`larder`] (the `larder` binary), both behind [`cluster::Cluster`].
//! - [`scenario`] runs the failover benchmark trials, [`schedule`] the randomized fault
//!   schedule, [`steady`] the no-spurious-failover run (delay on every link + pgbench).
//! - [`upgrade_bench`]: helpers of the rolling-upgrade benchmark (bench/upgrade/).

pub mod arp;
pub mod blkio;
pub mod bridge;
pub mod checker;
pub mod clients;
pub mod clockskew;
pub mod cluster;
pub mod command;
pub mod delay;
pub mod disk;
pub mod error;
pub mod haproxy;
pub mod history;
pub mod hosts;
pub mod http;
pub mod https;
pub mod inns;
pub mod larder;
pub mod nemesis;
pub mod netem;
pub mod netns;
pub mod partition;
pub mod patroni;
pub mod pg;
pub mod pgaf;
pub mod routing;
pub mod sampler;
pub mod scenario;
pub mod schedule;
pub mod search;
pub mod search_check;
pub mod stats;
pub mod steady;
pub mod teardown;
pub mod upgrade_bench;
pub mod workload;

pub use error::{Error, Result};
