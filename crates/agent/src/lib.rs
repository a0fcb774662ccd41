//! The per-node agent and the pieces the CLI shares with it.
//!
//! - [`agent`]: `larder agent` — wires everything and shuts down in order
//! - [`supervisor`]: runit-like process supervision with log rotation
//! - [`etcd`], [`postgres`]: the two supervised databases; [`search_service`]: the search
//!   process
//! - [`accounts`]: the unprivileged OS users etcd and the search service run as
//! - [`dcs`]: etcd client with per-call deadlines and member failover; key layout
//! - [`ha`]: the HA loop around the pure decision engine (`larder_core::decide`)
//! - [`state`]: the state the loop publishes for the health API and `status`
//! - [`markers`]: data-directory markers (diverged, rewind failed); [`clock`]: wall clock
//! - [`raft_placement`]: keeps etcd's raft leader off the Larder leader's node
//! - [`wake`]: etcd watch that wakes the HA loop on changes needing a decision now
//! - [`api`]: the health API on port 7331; [`metrics`]: its `/metrics`; [`ui`]: its `/ui`
//! - [`history`]: the leadership history in etcd and its cached copy
//! - [`control`]: the root-only control socket; [`operator`]: the cluster verbs it carries out
//! - [`pki`]: cluster CA and node certificates
//! - [`node`]: node identity and loaded config/secrets
//! - [`disk`]: free-space checks

pub mod accounts;
pub mod agent;
pub mod api;
pub mod build;
pub mod cert_rotation;
pub mod clock;
pub mod control;
pub mod dcs;
pub mod disk;
pub mod etcd;
pub mod etcd_seat;
pub mod ha;
pub mod history;
pub mod hooks;
pub mod identity;
pub mod leader_check;
pub mod markers;
pub mod metrics;
pub mod node;
pub mod node_requests;
pub mod operator;
pub mod pgbackrest;
pub mod pki;
pub mod postgres;
pub mod raft_placement;
pub mod search_service;
pub mod secret_rotation;
pub mod state;
pub mod supervisor;
pub mod ui;
pub mod upgrade;
pub mod vip;
pub mod wake;
