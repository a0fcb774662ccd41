//! Where `larder backup` reads the database from (pure): a streaming follower when there is
//! one, else the leader, and the pgBackRest options that name those PostgreSQL hosts.
//!
//! pgBackRest's backup from a standby (`backup-standby=y`) needs both the standby and the
//! primary configured: it starts and stops the backup on the primary (`pg_backup_start`) and
//! copies the replicated files from the standby. Every node runs pgBackRest's TLS server
//! (supervised by the agent), so the node running `backup` reaches the other nodes'
//! PostgreSQL without SSH; it authenticates with a cluster-CA certificate whose CN is
//! [`CLIENT_CN`]. The repository itself is always local to the process that runs the backup
//! (a mount every node shares, or an object store): pgBackRest's TLS repository host is
//! marked internal by pgBackRest, so Larder does not use it.

use crate::model::{MemberStatus, NodeRole, PgState};
use serde::{Deserialize, Serialize};

/// CN of the client certificate every node presents to the other nodes' pgBackRest TLS
/// servers; the servers authorize exactly this CN (`tls-server-auth`). Only holders of the
/// cluster CA's key can issue it.
pub const CLIENT_CN: &str = "larder-pgbackrest";

/// Default port of the pgBackRest TLS server (`backup.server_port`), pgBackRest's own default.
pub const DEFAULT_SERVER_PORT: u16 = 8432;

/// What a node publishes (in its status) so other nodes can back up its PostgreSQL through
/// its pgBackRest TLS server. Paths differ between nodes only on test and dev clusters (each
/// node under its own root), but pgBackRest needs them from the client side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHost {
    /// Port of the node's pgBackRest TLS server.
    pub port: u16,
    /// The node's pgbackrest.conf (the remote side reads its log and lock paths there).
    pub config: String,
    pub pg_path: String,
    pub pg_socket: String,
    pub pg_port: u16,
}

/// One PostgreSQL host of the backup: this node's own, or another's through its TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgHost {
    Local,
    Remote {
        name: String,
        address: String,
        host: BackupHost,
    },
}

/// The plan for one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlan {
    /// pg1, pg2… in pgBackRest's numbering.
    pub hosts: Vec<PgHost>,
    /// Read from a standby (`backup-standby=y`).
    pub standby: bool,
    /// The node the data files are read from.
    pub source: String,
    /// Why this source, for the operator.
    pub note: String,
}

/// Client-side TLS files (the cluster CA and the [`CLIENT_CN`] certificate).
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// Choose where the backup reads from. `me` is this node's guid; `leader_guid` the current
/// leader's. A follower qualifies when it streams and publishes a TLS server; this node is
/// preferred (its reads stay local), then the least lagging follower.
pub fn plan(me: &str, leader_guid: &str, members: &[MemberStatus]) -> Result<SourcePlan, String> {
    let leader = members
        .iter()
        .find(|m| m.guid == leader_guid)
        .ok_or("the leader has posted no status; wait for it (see `larder cluster-status`)")?;
    let remote = |m: &MemberStatus| -> Result<PgHost, String> {
        let host = m.backup_host.clone().ok_or_else(|| {
            format!(
                "{} publishes no pgBackRest TLS server (it runs an older Larder, or backups are not configured there): upgrade it or set backup.repo_path on it",
                m.name
            )
        })?;
        Ok(PgHost::Remote {
            name: m.name.clone(),
            address: m.address.clone(),
            host,
        })
    };
    let host_of = |m: &MemberStatus| -> Result<PgHost, String> {
        if m.guid == me {
            Ok(PgHost::Local)
        } else {
            remote(m)
        }
    };
    let mut standbys: Vec<&MemberStatus> = members
        .iter()
        .filter(|m| {
            m.guid != leader_guid
                && m.pg == PgState::Streaming
                && matches!(m.role, NodeRole::Follower | NodeRole::Ineligible)
                && m.backup_host.is_some()
        })
        .collect();
    standbys.sort_by_key(|m| {
        (
            m.guid != me,
            m.lag_bytes.unwrap_or(u64::MAX),
            m.name.clone(),
        )
    });
    let Some(standby) = standbys.first() else {
        return Ok(SourcePlan {
            hosts: vec![host_of(leader)?],
            standby: false,
            source: leader.name.clone(),
            note: format!(
                "no follower streams from the leader: the backup is read from the leader {}",
                leader.name
            ),
        });
    };
    // pgBackRest needs pg1 to be this node's own PostgreSQL when this node takes part.
    let hosts = if standby.guid == me {
        vec![PgHost::Local, remote(leader)?]
    } else {
        vec![host_of(leader)?, remote(standby)?]
    };
    Ok(SourcePlan {
        hosts,
        standby: true,
        source: standby.name.clone(),
        note: format!(
            "read from the streaming follower {}; the leader {} only starts and stops the backup",
            standby.name, leader.name
        ),
    })
}

/// pgBackRest command-line options for the plan's hosts (they override the local
/// pgbackrest.conf, which describes only this node's own PostgreSQL as pg1). The `backup`
/// command itself also takes `--backup-standby` when [`SourcePlan::standby`].
pub fn host_options(plan: &SourcePlan, tls: &ClientTls, pg_user: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, h) in plan.hosts.iter().enumerate() {
        let n = i + 1;
        if let PgHost::Remote { address, host, .. } = h {
            out.extend([
                format!("--pg{n}-host={address}"),
                format!("--pg{n}-host-type=tls"),
                format!("--pg{n}-host-port={}", host.port),
                format!("--pg{n}-host-cert-file={}", tls.cert),
                format!("--pg{n}-host-key-file={}", tls.key),
                format!("--pg{n}-host-ca-file={}", tls.ca),
                format!("--pg{n}-host-config={}", host.config),
                format!("--pg{n}-path={}", host.pg_path),
                format!("--pg{n}-port={}", host.pg_port),
                format!("--pg{n}-socket-path={}", host.pg_socket),
                format!("--pg{n}-user={pg_user}"),
            ]);
        }
    }
    out
}

/// The `[global:server]` section of a node's pgbackrest.conf: its TLS server on the publish
/// address, with the node certificate, accepting only [`CLIENT_CN`] for the Larder stanza.
pub fn server_section(address: &str, port: u16, cert: &str, key: &str, ca: &str) -> String {
    format!(
        "\n[global:server]\ntls-server-address={address}\ntls-server-port={port}\ntls-server-cert-file={cert}\ntls-server-key-file={key}\ntls-server-ca-file={ca}\ntls-server-auth={CLIENT_CN}={}\n",
        crate::backup::STANZA
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(guid: &str, role: NodeRole, pg: PgState, lag: Option<u64>) -> MemberStatus {
        let mut m: MemberStatus = serde_json::from_value(serde_json::json!({
            "guid": guid, "name": format!("n{guid}"), "address": format!("10.0.0.{guid}"),
            "role": role, "pg": pg, "position": {"timeline": 1, "lsn": 0}, "eligible": true,
            "failover_enabled": true, "term": 1, "leader_seen": "1", "voter": true,
            "lag_bytes": lag, "search_ok": true, "etcd_ok": true, "seq": 1, "updated_unix_ms": 0,
        }))
        .unwrap();
        m.backup_host = Some(BackupHost {
            port: 8432,
            config: format!("/n{guid}/pgbackrest.conf"),
            pg_path: format!("/n{guid}/data"),
            pg_socket: format!("/n{guid}/run"),
            pg_port: 5432,
        });
        m
    }

    fn tls() -> ClientTls {
        ClientTls {
            cert: "/c".into(),
            key: "/k".into(),
            ca: "/ca".into(),
        }
    }

    fn cluster() -> Vec<MemberStatus> {
        vec![
            member("1", NodeRole::Leader, PgState::Primary, None),
            member("2", NodeRole::Follower, PgState::Streaming, Some(900)),
            member("3", NodeRole::Follower, PgState::Streaming, Some(10)),
        ]
    }

    fn remote_names(p: &SourcePlan) -> Vec<String> {
        p.hosts
            .iter()
            .map(|h| match h {
                PgHost::Local => "local".to_string(),
                PgHost::Remote { name, .. } => name.clone(),
            })
            .collect()
    }

    #[test]
    fn a_streaming_follower_backs_up_its_own_data() {
        let p = plan("2", "1", &cluster()).unwrap();
        assert!(p.standby);
        assert_eq!(p.source, "n2");
        assert_eq!(remote_names(&p), ["local", "n1"]);
    }

    #[test]
    fn the_leader_reads_from_the_least_lagging_follower() {
        let p = plan("1", "1", &cluster()).unwrap();
        assert!(p.standby);
        assert_eq!(p.source, "n3");
        assert_eq!(remote_names(&p), ["local", "n3"]);
        let o = host_options(&p, &tls(), "chef_pgsql");
        for want in [
            "--pg2-host=10.0.0.3",
            "--pg2-host-type=tls",
            "--pg2-host-port=8432",
            "--pg2-path=/n3/data",
            "--pg2-socket-path=/n3/run",
            "--pg2-host-config=/n3/pgbackrest.conf",
            "--pg2-user=chef_pgsql",
        ] {
            assert!(o.iter().any(|x| x == want), "{want} missing from {o:?}");
        }
        assert!(!o.iter().any(|x| x.starts_with("--pg1-")), "{o:?}");
    }

    #[test]
    fn a_follower_that_does_not_stream_uses_the_others() {
        let mut c = cluster();
        c[2].pg = PgState::Standby;
        let p = plan("3", "1", &c).unwrap();
        assert_eq!(p.source, "n2");
        assert_eq!(remote_names(&p), ["n1", "n2"]);
    }

    #[test]
    fn without_a_streaming_follower_the_leader_is_read_and_the_plan_says_so() {
        let mut c = cluster();
        c[1].pg = PgState::Stopped;
        c[2].role = NodeRole::Syncing;
        let p = plan("1", "1", &c).unwrap();
        assert!(!p.standby);
        assert_eq!(remote_names(&p), ["local"]);
        assert!(p.note.contains("no follower streams"), "{}", p.note);
        let p = plan("2", "1", &c).unwrap();
        assert_eq!(remote_names(&p), ["n1"]);
        let o = host_options(&p, &tls(), "u");
        assert!(o.contains(&"--pg1-host=10.0.0.1".to_string()), "{o:?}");
    }

    #[test]
    fn members_without_a_tls_server_are_not_used_or_named() {
        let mut c = cluster();
        c[1].backup_host = None;
        c[2].backup_host = None;
        let p = plan("1", "1", &c).unwrap();
        assert!(!p.standby);
        c[0].backup_host = None;
        let e = plan("2", "1", &c).unwrap_err();
        assert!(e.contains("n1 publishes no pgBackRest TLS server"), "{e}");
        assert!(plan("2", "9", &c).is_err());
    }
}
