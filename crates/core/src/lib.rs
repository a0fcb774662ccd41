//! Larder's pure core — no processes, no sockets, no clock reads.
//!
//! - [`config`]: `larder.toml`, strict parsing and cross-field validation
//! - [`secrets`]: the shared secrets file and the masked [`secrets::Secret`] type
//! - [`paths`]: every file location, derived from one root
//! - [`model`]: WAL positions, roles, what nodes post to etcd
//! - [`check_phase`]: frontends' health-check rhythm and switchover timing
//! - [`decide`]: the HA decision engine (observation in, actions out)
//! - [`pgconf`]: `pg_hba.conf` / `postgresql.conf` rendering
//! - [`security`]: effective TLS/authentication of the listeners, the health API's read ACL
//! - [`status`]: the `status` / `cluster-status` tables
//! - [`version`]: release and cluster protocol, and the N / N−1 rule
//! - [`chef_backend`]: reading chef-backend.rb and its secrets for `import-chef-backend`
//! - [`history`]: the bounded leadership history; [`histogram`]: latency histograms for
//!   the metrics
//! - [`search_stats`]: what the search service reports to the agent
//! - [`backup`], [`backup_source`]: pgBackRest configuration, archive gaps, where a backup reads from
//! - [`keys`]: the etcd layout; [`lease`]: fencing arithmetic; [`health`]: derived health facts

pub mod backup;
pub mod backup_source;
pub mod check_phase;
pub mod chef_backend;
pub mod config;
pub mod decide;
pub mod health;
pub mod histogram;
pub mod history;
pub mod keys;
pub mod lease;
pub mod model;
pub mod paths;
pub mod pgconf;
pub mod search_stats;
pub mod secrets;
pub mod security;
pub mod status;
pub mod version;
