//! pgBackRest as Larder drives it (pure parts): its configuration, the archive command, the
//! repository as `pgbackrest info` describes it, and gaps in the WAL archive.
//!
//! The leader archives (`archive_mode = on`). The pitfall after a failover is the segments the
//! old leader completed but had not archived yet when it died: the new leader received them
//! (a synchronous standby holds every acknowledged commit) but, as a standby, never archived
//! them. So after every promotion the new leader pushes each older-timeline segment still in
//! its `pg_wal` ([`catch_up_segments`]; pgBackRest accepts one already archived with the same
//! content), while PostgreSQL itself archives the new timeline's history file and the old
//! timeline's partial segment. [`wal_gaps`] checks the result.

use crate::config::Config;
use serde_json::Value;

/// The one stanza of a Larder cluster.
pub const STANZA: &str = "larder";

/// Where pgBackRest keeps its own files on a node.
#[derive(Debug, Clone)]
pub struct Files {
    pub pg_data: String,
    pub socket_dir: String,
    pub log_dir: String,
    pub lock_dir: String,
    pub spool_dir: String,
    /// The node certificate, its key and the cluster CA as PostgreSQL's user can read them
    /// (the TLS server runs as that user).
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_ca: String,
}

/// Why a `backup.pgbackrest` option was refused.
pub fn check_option(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "backup.pgbackrest key {key:?} is not a pgBackRest option name (lowercase letters, digits and dashes)"
        ));
    }
    // Larder sets these itself; letting them through would point backups somewhere else.
    for own in [
        "repo1-path",
        "pg1-path",
        "pg1-port",
        "pg1-socket-path",
        "stanza",
    ] {
        if key == own {
            return Err(format!(
                "backup.pgbackrest.{key} is set by Larder (use backup.repo_path or the postgresql settings)"
            ));
        }
    }
    if value.contains('\n') || value.contains('\r') {
        return Err(format!("backup.pgbackrest.{key} must be one line"));
    }
    Ok(())
}

/// `pgbackrest.conf` for this node.
pub fn render_conf(cfg: &Config, files: &Files) -> String {
    let b = &cfg.backup;
    let mut out = String::from("# Managed by Larder; edits are overwritten.\n[global]\n");
    let mut global: Vec<(String, String)> = vec![
        ("repo1-path".into(), b.repo_path.clone()),
        ("repo1-retention-full".into(), b.retention_full.to_string()),
        ("log-path".into(), files.log_dir.clone()),
        ("lock-path".into(), files.lock_dir.clone()),
        ("spool-path".into(), files.spool_dir.clone()),
        ("log-level-console".into(), "warn".into()),
        ("log-level-file".into(), "info".into()),
        // Checkpoint at once instead of waiting for the next one.
        ("start-fast".into(), "y".into()),
        ("compress-type".into(), "lz4".into()),
    ];
    for (k, v) in &b.pgbackrest {
        if let Some(slot) = global.iter_mut().find(|(gk, _)| gk == k) {
            slot.1 = v.clone();
        } else {
            global.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in global {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&format!(
        "\n[{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user={}\n",
        files.pg_data, cfg.postgresql.port, files.socket_dir, cfg.postgresql.db_superuser
    ));
    out.push_str(&crate::backup_source::server_section(
        &cfg.publish_address,
        b.server_port,
        &files.tls_cert,
        &files.tls_key,
        &files.tls_ca,
    ));
    out
}

/// PostgreSQL's `archive_command` for a node whose pgBackRest config is `conf`.
pub fn archive_command(conf: &str) -> String {
    format!("pgbackrest --config={conf} --stanza={STANZA} archive-push %p")
}

/// One backup in the repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupSet {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    pub start_unix: u64,
    pub stop_unix: u64,
    /// First and last WAL segment the backup needs.
    pub wal_start: String,
    pub wal_stop: String,
    pub lsn_start: String,
    pub lsn_stop: String,
    /// Database size, and what the backup takes in the repository.
    pub size: u64,
    pub repo_size: u64,
    /// The backup this one depends on (diff/incr).
    pub prior: Option<String>,
}

/// The stanza as `pgbackrest info --output=json` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepoInfo {
    pub backups: Vec<BackupSet>,
    /// Oldest and newest archived segment.
    pub archive_min: Option<String>,
    pub archive_max: Option<String>,
    /// pgBackRest's status message (`ok`, `no valid backups`, …).
    pub status: String,
    /// A backup is running, with its progress when pgBackRest reports it (bytes done, total).
    pub running: Option<(u64, u64)>,
}

/// Parse `pgbackrest info --output=json` for [`STANZA`].
pub fn parse_info(json: &str) -> Result<RepoInfo, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("pgbackrest info: {e}"))?;
    let stanza = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == STANZA))
        .ok_or_else(|| format!("pgbackrest info lists no stanza {STANZA:?}"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let num = |v: &Value| v.as_u64().unwrap_or(0);
    let backups = stanza["backup"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| BackupSet {
                    label: text(&b["label"]),
                    kind: text(&b["type"]),
                    start_unix: num(&b["timestamp"]["start"]),
                    stop_unix: num(&b["timestamp"]["stop"]),
                    wal_start: text(&b["archive"]["start"]),
                    wal_stop: text(&b["archive"]["stop"]),
                    lsn_start: text(&b["lsn"]["start"]),
                    lsn_stop: text(&b["lsn"]["stop"]),
                    size: num(&b["info"]["size"]),
                    repo_size: num(&b["info"]["repository"]["delta"]),
                    prior: b["prior"].as_str().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    let archive = stanza["archive"].as_array().and_then(|a| a.last());
    let lock = &stanza["status"]["lock"]["backup"];
    let running = lock["held"]
        .as_bool()
        .unwrap_or(false)
        .then(|| (num(&lock["size-cp"]), num(&lock["size"])));
    Ok(RepoInfo {
        backups,
        archive_min: archive.and_then(|a| a["min"].as_str()).map(str::to_string),
        archive_max: archive.and_then(|a| a["max"].as_str()).map(str::to_string),
        status: text(&stanza["status"]["message"]),
        running,
    })
}

/// The `pg_wal` entries a newly promoted leader on `timeline` pushes to the archive: complete
/// segments of earlier timelines (16 MiB files named by 24 hex digits).
pub fn catch_up_segments<'a>(
    entries: impl IntoIterator<Item = (&'a str, u64)>,
    timeline: u32,
) -> Vec<String> {
    let mut out: Vec<String> = entries
        .into_iter()
        .filter(|(name, size)| {
            name.len() == 24
                && *size == 16 * 1024 * 1024
                && segment(name).is_some_and(|(tli, _)| tli < timeline)
        })
        .map(|(name, _)| name.to_string())
        .collect();
    out.sort();
    out
}

/// A run of WAL segments missing from the archive, within one timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub timeline: u32,
    pub first_missing: String,
    pub last_missing: String,
}

/// Segment number of a 16 MiB-segment WAL file name (`TTTTTTTTXXXXXXXXYYYYYYYY`).
fn segment(name: &str) -> Option<(u32, u64)> {
    if name.len() < 24 || !name[..24].chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * 0x100 + seg))
}

fn segment_name(tli: u32, n: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", n / 0x100, n % 0x100)
}

/// Missing segments between the first and last archived one of each timeline, from the file
/// names in the repository's archive (`…/000000010000000000000003-<sha1>.lz4`; history files
/// and partial segments do not count as segments).
pub fn wal_gaps<'a>(files: impl IntoIterator<Item = &'a str>) -> Vec<Gap> {
    let mut by_tli: std::collections::BTreeMap<u32, std::collections::BTreeSet<u64>> =
        Default::default();
    for f in files {
        let base = f.rsplit('/').next().unwrap_or(f);
        if base.contains(".partial") || base.contains(".history") || base.contains(".backup") {
            continue;
        }
        if let Some((tli, n)) = segment(base) {
            by_tli.entry(tli).or_default().insert(n);
        }
    }
    let mut gaps = Vec::new();
    for (tli, segs) in by_tli {
        let mut prev: Option<u64> = None;
        for n in segs {
            if let Some(p) = prev {
                if n > p + 1 {
                    gaps.push(Gap {
                        timeline: tli,
                        first_missing: segment_name(tli, p + 1),
                        last_missing: segment_name(tli, n - 1),
                    });
                }
            }
            prev = Some(n);
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_found_per_timeline_and_partials_do_not_count() {
        let files = [
            "archive/larder/15-1/0000000100000000/000000010000000000000001-aa.lz4",
            "archive/larder/15-1/0000000100000000/000000010000000000000002-bb.lz4",
            "archive/larder/15-1/0000000100000000/000000010000000000000005-cc.lz4",
            "archive/larder/15-1/0000000100000000/000000010000000000000006.partial-dd.lz4",
            "archive/larder/15-1/00000002.history",
            "archive/larder/15-1/0000000200000000/000000020000000000000006-ee.lz4",
            "archive/larder/15-1/0000000200000000/000000020000000000000007-ff.lz4",
            // Across a log boundary: FF then 100.
            "0000000300000000000000FF-11.lz4",
            "000000030000000100000000-22.lz4",
        ];
        assert_eq!(
            wal_gaps(files),
            vec![Gap {
                timeline: 1,
                first_missing: "000000010000000000000003".into(),
                last_missing: "000000010000000000000004".into(),
            }]
        );
        assert!(wal_gaps(files[..2].iter().copied()).is_empty());
    }

    #[test]
    fn after_promotion_only_complete_older_timeline_segments_are_pushed() {
        let mb16 = 16 * 1024 * 1024;
        let entries = [
            ("000000010000000000000004", mb16),
            ("000000010000000000000003", mb16),
            ("000000010000000000000005.partial", mb16),
            ("00000002.history", 40),
            ("000000020000000000000005", mb16),
            ("000000010000000000000006", 1000),
            ("archive_status", 4096),
        ];
        assert_eq!(
            catch_up_segments(entries, 2),
            vec!["000000010000000000000003", "000000010000000000000004"]
        );
    }

    #[test]
    fn info_json_is_read() {
        let json = r#"[{"archive":[{"id":"15-1","min":"000000010000000000000001","max":"000000010000000000000009"}],
          "backup":[{"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},
            "info":{"size":30000000,"delta":30000000,"repository":{"size":4000000,"delta":4000000}},
            "label":"20261201-101010F","lsn":{"start":"0/3000028","stop":"0/3000100"},"prior":null,
            "timestamp":{"start":1780000000,"stop":1780000012},"type":"full"},
            {"archive":{"start":"000000010000000000000005","stop":"000000010000000000000005"},
            "info":{"size":30000000,"delta":100,"repository":{"size":4000000,"delta":50}},
            "label":"20261201-101010F_20261201-111111I","lsn":{"start":"0/5000028","stop":"0/5000100"},
            "prior":"20261201-101010F","timestamp":{"start":1780003600,"stop":1780003601},"type":"incr"}],
          "name":"larder","status":{"code":0,"lock":{"backup":{"held":true,"size":100,"size-cp":40}},"message":"ok"}}]"#;
        let i = parse_info(json).unwrap();
        assert_eq!(i.backups.len(), 2);
        assert_eq!(i.backups[1].kind, "incr");
        assert_eq!(i.backups[1].prior.as_deref(), Some("20261201-101010F"));
        assert_eq!(i.backups[0].repo_size, 4_000_000);
        assert_eq!(i.archive_max.as_deref(), Some("000000010000000000000009"));
        assert_eq!(i.running, Some((40, 100)));
        assert!(parse_info("[]").is_err());
        assert!(parse_info("not json").is_err());
    }

    #[test]
    fn larder_owned_options_cannot_be_overridden() {
        assert!(check_option("repo1-type", "s3").is_ok());
        assert!(check_option("repo1-path", "/x").is_err());
        assert!(check_option("Repo1", "x").is_err());
        assert!(check_option("process-max", "2\n[evil]").is_err());
        let mut c = Config {
            publish_address: "127.0.0.1".into(),
            ..Config::default()
        };
        c.backup.repo_path = "/backups".into();
        c.backup
            .pgbackrest
            .insert("compress-type".into(), "zst".into());
        c.backup.pgbackrest.insert("process-max".into(), "2".into());
        let files = Files {
            pg_data: "/d".into(),
            socket_dir: "/s".into(),
            log_dir: "/l".into(),
            lock_dir: "/k".into(),
            spool_dir: "/p".into(),
            tls_cert: "/t/server.crt".into(),
            tls_key: "/t/server.key".into(),
            tls_ca: "/t/ca.crt".into(),
        };
        let conf = render_conf(&c, &files);
        assert!(conf.contains("repo1-path=/backups\n"), "{conf}");
        assert!(
            conf.contains("compress-type=zst\n") && !conf.contains("lz4"),
            "{conf}"
        );
        assert!(conf.contains("process-max=2\n"), "{conf}");
        assert!(conf.contains("[larder]\npg1-path=/d\n"), "{conf}");
        assert!(
            conf.contains("[global:server]\ntls-server-address=127.0.0.1\ntls-server-port=8432\n")
                && conf.contains("tls-server-cert-file=/t/server.crt\n")
                && conf.contains("tls-server-auth=larder-pgbackrest=larder\n"),
            "{conf}"
        );
    }
}
