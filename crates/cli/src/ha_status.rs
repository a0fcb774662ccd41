//! `larder ha-status [--json]`: the legacy `chef-server-ctl ha-status` checks, one line per
//! check with `[OK]` or `[ERROR]` and the fix; exit 0 only when every check passes (usable as
//! a keepalived `vrrp_script` or a monitoring check, docs/vip.md). The exit code of a failure
//! is the class of the last failing check, as the DRBD-era command did.

use crate::agent_client::agent_status;
use larder_agent::control::AgentStatus;
use larder_core::config::Config;
use larder_core::model::PgState;
use larder_core::paths::Paths;
use serde::Serialize;

/// Exit classes (the last failing check's).
pub const EXIT_NOT_RUNNING: i32 = 1;
pub const EXIT_ROLE: i32 = 2;
pub const EXIT_VIP: i32 = 3;
pub const EXIT_REPLICATION: i32 = 5;
pub const EXIT_ETCD: i32 = 6;
pub const EXIT_SERVICE: i32 = 7;
pub const EXIT_DISK: i32 = 9;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure (empty when ok).
    pub fix: String,
    #[serde(skip)]
    pub class: i32,
}

fn ok(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail,
        fix: String::new(),
        class: 0,
    }
}

fn err(name: &str, class: i32, detail: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail,
        fix: fix.into(),
        class,
    }
}

/// Every check, from the agent's status, the configuration and this node's free disk (MB).
pub fn checks(s: &AgentStatus, cfg: &Config, disk_free_mb: &[(String, Option<u64>)]) -> Vec<Check> {
    let mut out = Vec::new();
    let ha = &s.ha;
    let role = ha.role.clone().unwrap_or_else(|| "unknown".into());
    let leader = ha.writable_leader;
    // Role.
    match role.as_str() {
        "leader" if leader => out.push(ok("role", format!("leader, writable (term {})", ha.term))),
        "follower" => out.push(ok(
            "role",
            format!(
                "follower of {}",
                ha.leader.as_ref().map(|l| l.name.as_str()).unwrap_or("?")
            ),
        )),
        _ => out.push(err(
            "role",
            EXIT_ROLE,
            format!("{role}: {}", ha.reason),
            "see `larder cluster-status` and the agent log (`larder tail leaderl`)",
        )),
    }
    // VIP: on the leader only, and exactly on one member.
    if let Some(v) = &ha.vip {
        let holders: Vec<&str> = s
            .members
            .iter()
            .filter(|m| m.vip_held)
            .map(|m| m.name.as_str())
            .collect();
        let detail = format!(
            "{} on {}: {} here; held by {}",
            v.address,
            v.interface,
            if v.present { "present" } else { "absent" },
            if holders.is_empty() {
                "no member".to_string()
            } else {
                holders.join(", ")
            }
        );
        if v.present != leader {
            let fix = if leader {
                "the leader adds it within a loop once PostgreSQL is writable; check `ip addr show` and the agent log for `ip`/`arping` errors"
            } else {
                "a non-leader removes it at once; remove it by hand (`ip addr del VIP/32 dev IFACE`) if it stays"
            };
            out.push(err("vip", EXIT_VIP, detail, fix));
        } else if holders.len() > 1 {
            out.push(err(
                "vip",
                EXIT_VIP,
                detail,
                "more than one member reports the VIP: check each node with `ip addr show`",
            ));
        } else {
            out.push(ok("vip", detail));
        }
    }
    // Replication.
    let pg = ha.postgresql.as_ref();
    let others = s.nodes.len().saturating_sub(1);
    if leader {
        let streaming = pg.map(|p| p.streaming_followers.len()).unwrap_or(0);
        if streaming >= others {
            out.push(ok(
                "replication",
                format!("{streaming} of {others} followers streaming"),
            ));
        } else {
            out.push(err(
                "replication",
                EXIT_REPLICATION,
                format!("{streaming} of {others} followers streaming"),
                "start the missing followers (`larder start` there) or re-sync them (`larder pgsql-follow LEADER` there)",
            ));
        }
    } else {
        let me = s.members.iter().find(|m| m.guid == ha.guid);
        let lag = me.and_then(|m| m.lag_bytes);
        let max = cfg.leaderl.health_check.max_bytes_behind_leader;
        match pg.map(|p| p.state) {
            Some(PgState::Streaming) if lag.unwrap_or(0) <= max => out.push(ok(
                "replication",
                format!("streaming, {} bytes behind", lag.unwrap_or(0)),
            )),
            Some(PgState::Streaming) => out.push(err(
                "replication",
                EXIT_REPLICATION,
                format!(
                    "streaming but {} bytes behind (limit {max})",
                    lag.unwrap_or(0)
                ),
                "wait for it to catch up; check the network and the leader's load",
            )),
            other => out.push(err(
                "replication",
                EXIT_REPLICATION,
                format!("PostgreSQL is {other:?}, not streaming from the leader"),
                "see `larder status`; `larder pgsql-follow LEADER` re-syncs this node",
            )),
        }
    }
    // etcd.
    if ha.etcd_ok {
        out.push(ok(
            "etcd",
            format!("healthy ({} members)", s.etcd_members.len()),
        ));
    } else {
        out.push(err(
            "etcd",
            EXIT_ETCD,
            "this node cannot read etcd".into(),
            "check `larder status etcd` and `larder tail etcd`; a majority of nodes must be up",
        ));
    }
    // Services.
    let down: Vec<&str> = s
        .services
        .iter()
        .filter(|x| x.want_up && !x.running)
        .map(|x| x.name.as_str())
        .collect();
    if down.is_empty() {
        out.push(ok("services", format!("{} running", s.services.len())));
    } else {
        out.push(err(
            "services",
            EXIT_SERVICE,
            format!("down: {}", down.join(", ")),
            "`larder start SERVICE`; see `larder tail SERVICE` for why it exited",
        ));
    }
    // Disk.
    let min = cfg.leaderl.health_check.disk_min_space_mb;
    for (path, free) in disk_free_mb {
        match free {
            Some(f) if *f >= min => out.push(ok("disk", format!("{path}: {f} MB free"))),
            Some(f) => out.push(err(
                "disk",
                EXIT_DISK,
                format!("{path}: {f} MB free (below {min} MB)"),
                "free space on that file system",
            )),
            None => out.push(err(
                "disk",
                EXIT_DISK,
                format!("{path}: free space unknown"),
                "check that the path exists",
            )),
        }
    }
    out
}

/// The exit code: 0, or the class of the last failing check.
pub fn exit_code(checks: &[Check]) -> i32 {
    checks
        .iter()
        .rev()
        .find(|c| !c.ok)
        .map(|c| c.class)
        .unwrap_or(0)
}

pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        if c.ok {
            s.push_str(&format!("[OK]    {}: {}\n", c.name, c.detail));
        } else {
            s.push_str(&format!(
                "[ERROR] {}: {} — fix: {}\n",
                c.name, c.detail, c.fix
            ));
        }
    }
    if exit_code(checks) == 0 {
        s.push_str("[OK] all checks passed.\n");
    } else {
        s.push_str("[ERROR] ERRORS WERE DETECTED.\n");
    }
    s
}

pub async fn ha_status(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let fail = |msg: String| -> anyhow::Result<()> {
        if json {
            println!(
                "{}",
                serde_json::json!({"ok": false, "exit": EXIT_NOT_RUNNING, "checks": [{"name": "agent", "ok": false, "detail": msg}]})
            );
        } else {
            println!("[ERROR] agent: {msg}\n[ERROR] ERRORS WERE DETECTED.");
        }
        std::process::exit(EXIT_NOT_RUNNING);
    };
    if let Err(e) = crate::report::require_configured(paths) {
        return fail(format!("{e:#}"));
    }
    let cfg = match Config::load(&paths.config_file()) {
        Ok(c) => c,
        Err(e) => return fail(format!("{e}")),
    };
    let s = match agent_status(paths).await {
        Ok(s) => s,
        Err(e) => return fail(format!("{e:#} (start it with `larder start`)")),
    };
    let disks: Vec<(String, Option<u64>)> = [paths.log_dir(), paths.data_dir()]
        .iter()
        .map(|p| (p.display().to_string(), larder_agent::disk::free_mb(p)))
        .collect();
    let c = checks(&s, &cfg, &disks);
    let code = exit_code(&c);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ok": code == 0, "exit": code, "checks": c})
            )?
        );
    } else {
        print!("{}", render(&c));
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_agent::control::{HaStatus, PgStatus, VipStatus};
    use larder_agent::supervisor::ServiceState;
    use larder_core::model::{LeaderRecord, NodeRecord};

    fn svc(name: &str, running: bool) -> ServiceState {
        ServiceState {
            name: name.into(),
            want_up: true,
            running,
            pid: None,
            since_unix: 0,
            restarts: 0,
            last_exit: None,
        }
    }

    fn leader_status(followers: usize, vip_present: bool) -> AgentStatus {
        let nodes = ["a", "b", "c"]
            .iter()
            .map(|g| NodeRecord {
                guid: g.to_string(),
                name: format!("n-{g}"),
                address: format!("10.231.0.{}", g.as_bytes()[0] - b'a' + 1),
            })
            .collect();
        AgentStatus {
            services: vec![
                svc("leaderl", true),
                svc("etcd", true),
                svc("postgresql", true),
            ],
            ha: HaStatus {
                guid: "a".into(),
                role: Some("leader".into()),
                writable_leader: true,
                term: 4,
                leader: Some(LeaderRecord {
                    guid: "a".into(),
                    name: "n-a".into(),
                    address: "10.231.0.1".into(),
                    term: 4,
                }),
                postgresql: Some(PgStatus {
                    state: PgState::Primary,
                    timeline: 1,
                    lsn: "0/1".into(),
                    streaming_followers: (0..followers).map(|i| format!("f{i}")).collect(),
                    synchronous_standby_names: String::new(),
                }),
                etcd_ok: true,
                vip: Some(VipStatus {
                    address: "10.231.0.100".into(),
                    interface: "eth0".into(),
                    present: vip_present,
                }),
                ..Default::default()
            },
            nodes,
            ..Default::default()
        }
    }

    fn disks() -> Vec<(String, Option<u64>)> {
        vec![("/var/opt/larder".into(), Some(10_000))]
    }

    #[test]
    fn healthy_leader_passes_every_check() {
        let c = checks(&leader_status(2, true), &Config::default(), &disks());
        assert_eq!(exit_code(&c), 0, "{}", render(&c));
        assert!(render(&c).ends_with("[OK] all checks passed.\n"));
    }

    #[test]
    fn follower_down_fails_replication() {
        let c = checks(&leader_status(1, true), &Config::default(), &disks());
        assert_eq!(exit_code(&c), EXIT_REPLICATION, "{}", render(&c));
        assert!(render(&c).contains("[ERROR] replication: 1 of 2 followers streaming"));
    }

    #[test]
    fn vip_missing_on_the_leader_fails_the_vip_check() {
        let c = checks(&leader_status(2, false), &Config::default(), &disks());
        assert_eq!(exit_code(&c), EXIT_VIP, "{}", render(&c));
        // And on a follower that holds it.
        let mut s = leader_status(2, true);
        s.ha.writable_leader = false;
        s.ha.role = Some("follower".into());
        s.ha.postgresql.as_mut().unwrap().state = PgState::Streaming;
        let c = checks(&s, &Config::default(), &disks());
        assert_eq!(exit_code(&c), EXIT_VIP, "{}", render(&c));
    }

    #[test]
    fn last_failure_class_wins_and_disk_is_checked() {
        let mut s = leader_status(1, false);
        s.services[1].running = false;
        let c = checks(&s, &Config::default(), &[("/x".into(), Some(1))]);
        assert_eq!(exit_code(&c), EXIT_DISK, "{}", render(&c));
        assert_eq!(c.iter().filter(|c| !c.ok).count(), 4);
    }
}
