//! The status model behind `status` and `cluster-status`, and its rendering as the tables
//! Chef Backend operators know. Pure: the CLI gathers the data, this module formats it.

use crate::model::{MemberStatus, NodeRole, PgState};
use serde::{Deserialize, Serialize};

/// One row of `status`: `Service  Local Status  Time in State  Distributed Node Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    pub running: bool,
    pub pid: Option<u32>,
    pub seconds_in_state: u64,
    pub distributed: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRow {
    pub path: String,
    pub free_mb: u64,
    pub ok: bool,
}

/// One row of `cluster-status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRow {
    pub name: String,
    pub ip: String,
    pub guid: String,
    pub role: String,
    pub pg: String,
    pub es: String,
    pub online: bool,
    pub lag_bytes: Option<u64>,
    pub timeline: u32,
    pub lsn: String,
    pub term: u64,
    pub failover: bool,
    /// Release the member runs (`-` when offline or too old to say).
    #[serde(default)]
    pub version: String,
}

/// `1d 5h 59m 35s`, dropping leading zero units.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d}d"));
    }
    if d > 0 || h > 0 {
        parts.push(format!("{h}h"));
    }
    if d > 0 || h > 0 || m > 0 {
        parts.push(format!("{m}m"));
    }
    parts.push(format!("{s}s"));
    parts.join(" ")
}

pub fn local_status(row: &ServiceRow) -> String {
    match (row.running, row.pid) {
        (true, Some(pid)) => format!("running (pid {pid})"),
        (true, None) => "running".into(),
        (false, _) => "down".into(),
    }
}

/// Left-aligned columns separated by two spaces, header first.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

pub fn render_status(services: &[ServiceRow], disks: &[DiskRow]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                local_status(r),
                format_duration(r.seconds_in_state),
                r.distributed.clone(),
            ]
        })
        .collect();
    let mut out = render_table(
        &[
            "Service",
            "Local Status",
            "Time in State",
            "Distributed Node Status",
        ],
        &rows,
    );
    out.push('\n');
    let disk_rows: Vec<Vec<String>> = disks
        .iter()
        .map(|d| {
            vec![
                d.path.clone(),
                format!(
                    "{} ({} MB free)",
                    if d.ok { "OK" } else { "LOW" },
                    d.free_mb
                ),
            ]
        })
        .collect();
    out.push_str(&render_table(&["Disk", "Status"], &disk_rows));
    out
}

pub fn render_cluster(rows: &[ClusterRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.ip.clone(),
                r.guid.clone(),
                r.role.clone(),
                r.pg.clone(),
                r.es.clone(),
                r.lag_bytes
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.timeline.to_string(),
                r.term.to_string(),
                if r.failover { "on" } else { "off" }.into(),
                if r.version.is_empty() {
                    "-".into()
                } else {
                    r.version.clone()
                },
            ]
        })
        .collect();
    render_table(
        &[
            "Name", "IP", "GUID", "Role", "PG", "ES", "Lag", "TL", "Term", "Failover", "Version",
        ],
        &body,
    )
}

/// `leader: 1; waiting: 0; follower: 2; total: 3` over all registered members; members
/// without a live status count as waiting.
pub fn leaderl_summary(members: &[Option<&MemberStatus>]) -> String {
    let mut leader = 0;
    let mut follower = 0;
    let mut waiting = 0;
    for m in members {
        match m.map(|m| m.role) {
            Some(NodeRole::Leader) => leader += 1,
            Some(NodeRole::Follower) | Some(NodeRole::Ineligible) => follower += 1,
            _ => waiting += 1,
        }
    }
    format!(
        "leader: {leader}; waiting: {waiting}; follower: {follower}; total: {}",
        members.len()
    )
}

/// `leader: 1; offline: 0; syncing: 0; synced: 2`.
pub fn postgresql_summary(members: &[Option<&MemberStatus>]) -> String {
    let mut leader = 0;
    let mut offline = 0;
    let mut syncing = 0;
    let mut synced = 0;
    for m in members {
        match m {
            None => offline += 1,
            Some(m) => match m.pg {
                PgState::Primary => leader += 1,
                PgState::Streaming => synced += 1,
                PgState::Standby | PgState::Empty => syncing += 1,
                PgState::Stopped => offline += 1,
            },
        }
    }
    format!("leader: {leader}; offline: {offline}; syncing: {syncing}; synced: {synced}")
}

fn color(healthy: usize, total: usize) -> &'static str {
    if healthy == total {
        "green"
    } else if healthy > total / 2 {
        "yellow"
    } else {
        "red"
    }
}

/// `health: green; healthy nodes: 3/3`.
pub fn etcd_summary(healthy: usize, total: usize) -> String {
    format!(
        "health: {}; healthy nodes: {healthy}/{total}",
        color(healthy, total)
    )
}

/// `state: green; nodes online: 3/3`.
pub fn search_summary(online: usize, total: usize) -> String {
    format!(
        "state: {}; nodes online: {online}/{total}",
        color(online, total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: NodeRole, pg: PgState) -> MemberStatus {
        MemberStatus::test_member("g", role, pg)
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(5), "5s");
        assert_eq!(format_duration(65), "1m 5s");
        assert_eq!(format_duration(3600), "1h 0m 0s");
        assert_eq!(
            format_duration(86400 + 5 * 3600 + 59 * 60 + 35),
            "1d 5h 59m 35s"
        );
    }

    #[test]
    fn status_table_has_chef_columns_and_rows() {
        let rows = vec![
            ServiceRow {
                service: "leaderl".into(),
                running: true,
                pid: Some(6788),
                seconds_in_state: 107975,
                distributed: "leader: 1; waiting: 0; follower: 2; total: 3".into(),
            },
            ServiceRow {
                service: "postgresql".into(),
                running: false,
                pid: None,
                seconds_in_state: 3,
                distributed: "leader: 0; offline: 1; syncing: 0; synced: 0".into(),
            },
        ];
        let out = render_status(
            &rows,
            &[DiskRow {
                path: "/var/opt/larder".into(),
                free_mb: 1000,
                ok: true,
            }],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Service     Local Status        Time in State  Distributed Node Status"
        );
        assert_eq!(
            lines[1],
            "leaderl     running (pid 6788)  1d 5h 59m 35s  leader: 1; waiting: 0; follower: 2; total: 3"
        );
        assert!(lines[2].starts_with("postgresql  down                3s"));
        assert!(out.contains("/var/opt/larder  OK (1000 MB free)"));
    }

    #[test]
    fn summaries_count_roles() {
        let l = member(NodeRole::Leader, PgState::Primary);
        let f = member(NodeRole::Follower, PgState::Streaming);
        let s = member(NodeRole::Syncing, PgState::Standby);
        let ms = vec![Some(&l), Some(&f), Some(&s), None];
        assert_eq!(
            leaderl_summary(&ms),
            "leader: 1; waiting: 2; follower: 1; total: 4"
        );
        assert_eq!(
            postgresql_summary(&ms),
            "leader: 1; offline: 1; syncing: 1; synced: 1"
        );
        assert_eq!(etcd_summary(3, 3), "health: green; healthy nodes: 3/3");
        assert_eq!(etcd_summary(2, 3), "health: yellow; healthy nodes: 2/3");
        assert_eq!(search_summary(1, 3), "state: red; nodes online: 1/3");
    }

    #[test]
    fn cluster_table_columns() {
        let out = render_cluster(&[ClusterRow {
            name: "n1".into(),
            ip: "127.0.0.2".into(),
            guid: "0123456789abcdef0123456789abcdef".into(),
            role: "leader".into(),
            pg: "leader".into(),
            es: "master".into(),
            online: true,
            lag_bytes: None,
            timeline: 1,
            lsn: "0/1".into(),
            term: 4,
            failover: true,
            version: "0.2.0".into(),
        }]);
        assert!(out.starts_with("Name  IP         GUID"));
        assert!(
            out.lines().next().unwrap().ends_with("Failover  Version"),
            "{out}"
        );
        assert!(out.contains("n1    127.0.0.2  0123456789abcdef0123456789abcdef  leader  leader  master  -    1   4     on        0.2.0"), "{out}");
    }
}
