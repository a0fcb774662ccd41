//! `gather-logs`: one support tarball of this node — every service's logs, the configuration
//! with secrets redacted, `status`/`cluster-status --json`, etcd's members and health,
//! PostgreSQL's settings and replication views, versions and disk usage.
//!
//! Every part is gathered on its own: a part that fails (agent down, PostgreSQL stopped, a file
//! unreadable) becomes `<part>.FAILED.txt` saying what failed and why, and the rest goes on.
//! Everything copied passes through a [`Redactor`] that replaces every value of the node's
//! secrets file (and any `password=` in a connection string) with `[REDACTED]`; the secrets
//! file itself is copied with every value replaced.

use anyhow::{bail, Context};
use larder_core::config::Config;
use larder_core::paths::Paths;
use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const REDACTED: &str = "[REDACTED]";

#[derive(clap::Args)]
pub struct GatherArgs {
    /// Tarball to write (default: /var/log/larder/gather-logs-<host>-<UTC time>.tar.gz).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Replaces secret values in everything that goes into the tarball.
pub struct Redactor {
    needles: Vec<Vec<u8>>,
}

/// Keys whose values are secret wherever they appear (config lines, JSON objects).
fn sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    // postgresql.conf's password_encryption names an algorithm, not a secret.
    if k.trim() == "password_encryption" {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "passphrase",
        "private",
        "key_pem",
    ]
    .iter()
    .any(|w| k.contains(w))
}

impl Redactor {
    /// From the secrets file's JSON: the values of secret keys whatever their length, other
    /// strings from 8 characters on (shorter ones would blank common words in the logs);
    /// multi-line values (PEM) line by line.
    pub fn from_secrets_json(text: &str) -> Redactor {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        fn walk(key: &str, v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| walk(k, v, out)),
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(key, v, out)),
                serde_json::Value::String(s) => {
                    let min = if sensitive_key(key) { 3 } else { 8 };
                    if s.len() >= min {
                        out.push(s.as_bytes().to_vec());
                    }
                    if s.contains('\n') {
                        for l in s.lines().map(str::trim) {
                            if l.len() >= 16 && !l.starts_with("-----") {
                                out.push(l.as_bytes().to_vec());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            walk("", &v, &mut needles);
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Redactor { needles }
    }

    pub fn none() -> Redactor {
        Redactor { needles: vec![] }
    }

    /// One line (or any text): secret values, then `password=…` in connection strings.
    pub fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for n in &self.needles {
            out = replace_all(&out, n, REDACTED.as_bytes());
        }
        redact_conninfo_passwords(&out)
    }

    pub fn text(&self, s: &str) -> String {
        String::from_utf8_lossy(&self.bytes(s.as_bytes())).into_owned()
    }
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() || hay.len() < needle.len() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// `password=xyz` / `password='xyz'` (libpq conninfo, URLs' query strings) → `password=[REDACTED]`.
fn redact_conninfo_passwords(data: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"password=";
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data.len() - i >= KEY.len() && data[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            out.extend_from_slice(&data[i..i + KEY.len()]);
            i += KEY.len();
            let quoted = data.get(i) == Some(&b'\'');
            if quoted {
                i += 1;
            }
            let start = i;
            while i < data.len() {
                let c = data[i];
                if (quoted && c == b'\'' && data.get(i.wrapping_sub(1)) != Some(&b'\\'))
                    || (!quoted
                        && (c.is_ascii_whitespace() || c == b'\'' || c == b'"' || c == b'&'))
                {
                    break;
                }
                i += 1;
            }
            if i > start || quoted {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            if quoted && i < data.len() {
                i += 1; // the closing quote is dropped with the value
            }
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// Config text (TOML, postgresql.conf): a line `key = value` whose key looks secret keeps
/// its key only.
pub fn redact_config_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let key = line.split(['=', ':']).next().unwrap_or("").trim();
        let is_assignment = line.contains('=') || line.contains(':');
        if is_assignment && !key.starts_with('#') && !key.is_empty() && sensitive_key(key) {
            out.push_str(&format!("{key} = \"{REDACTED}\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// JSON: the values under secret-looking keys become `[REDACTED]` (`all`: every value).
pub fn redact_json(v: &serde_json::Value, all: bool) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Object(_) | Value::Array(_) => redact_json(v, all),
                        _ if all || sensitive_key(k) => Value::String(REDACTED.into()),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| redact_json(v, all)).collect()),
        _ if all => Value::String(REDACTED.into()),
        other => other.clone(),
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC; proleptic Gregorian calendar).
pub fn utc_stamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Days since 1970-01-01 → civil date, counting in 400-year eras that start on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The staging tree and the record of what was gathered.
struct Gather {
    top: PathBuf,
    redactor: Redactor,
    summary: Vec<String>,
    failures: usize,
}

impl Gather {
    fn path(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.top.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        Ok(p)
    }

    /// Store a gathered part (already redacted where needed) or, on error, why it is missing.
    fn part(&mut self, rel: &str, what: &str, result: Result<Vec<u8>, String>) {
        match result {
            Ok(data) => {
                let data = self.redactor.bytes(&data);
                match self
                    .path(rel)
                    .and_then(|p| std::fs::write(p, data).map_err(Into::into))
                {
                    Ok(()) => self.summary.push(format!("ok      {rel}  ({what})")),
                    Err(e) => self.failed(rel, what, &format!("cannot write it: {e}")),
                }
            }
            Err(why) => self.failed(rel, what, &why),
        }
    }

    fn failed(&mut self, rel: &str, what: &str, why: &str) {
        self.failures += 1;
        let rel_failed = format!("{rel}.FAILED.txt");
        let text = self.redactor.text(&format!("{what}: FAILED\n\n{why}\n"));
        let _ = self.path(&rel_failed).map(|p| std::fs::write(p, text));
        self.summary.push(format!(
            "FAILED  {rel}  ({what}): {}",
            first_line(&self.redactor.text(why))
        ));
    }

    /// Copy a file line by line through the redactor.
    fn copy_log(&mut self, src: &Path, rel: &str) {
        let res = (|| -> std::io::Result<()> {
            let mut r = std::io::BufReader::new(std::fs::File::open(src)?);
            let dst = self.path(rel).map_err(std::io::Error::other)?;
            let mut w = std::io::BufWriter::new(std::fs::File::create(dst)?);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                w.write_all(&self.redactor.bytes(&line))?;
            }
            w.flush()
        })();
        match res {
            Ok(()) => self
                .summary
                .push(format!("ok      {rel}  (log {})", src.display())),
            Err(e) => self.failed(rel, &format!("log {}", src.display()), &e.to_string()),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// Run a program with a time limit; its stdout on success, otherwise what went wrong.
async fn run(program: &Path, args: &[String], timeout: Duration) -> Result<Vec<u8>, String> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!(
            "`{shown}` did not finish within {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("cannot run `{shown}`: {e}")),
        Ok(Ok(o)) if o.status.success() => Ok(o.stdout),
        Ok(Ok(o)) => Err(format!(
            "`{shown}` failed ({}): {}\n\nstdout:\n{}\nstderr:\n{}",
            o.status,
            first_line(&String::from_utf8_lossy(&o.stderr)),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "larder".into())
}

pub async fn gather_logs(paths: &Paths, a: GatherArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&paths.config_file());
    let host = cfg
        .as_ref()
        .map(|c| c.fqdn.clone())
        .unwrap_or_else(|_| hostname());
    let stamp = utc_stamp(larder_agent::clock::unix_ms() / 1000);
    let name = format!("gather-logs-{host}-{stamp}");
    let out = a
        .output
        .unwrap_or_else(|| paths.log_dir().join(format!("{name}.tar.gz")));
    if out.exists() {
        bail!("{} already exists; pass another --output", out.display());
    }
    let out_dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // The staging tree holds logs too: private, next to the tarball, removed at the end.
    let staging = out_dir.join(format!(".{name}.partial"));
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create the staging directory {}", staging.display()))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    let res = gather_into(paths, &cfg, &staging, &name, &out).await;
    let _ = std::fs::remove_dir_all(&staging);
    let failures = res?;
    if failures > 0 {
        eprintln!("{failures} part(s) could not be gathered; see summary.txt in the tarball");
    }
    println!("{}", out.display());
    Ok(())
}

async fn gather_into(
    paths: &Paths,
    cfg: &Result<Config, larder_core::config::ConfigError>,
    staging: &Path,
    name: &str,
    out: &Path,
) -> anyhow::Result<usize> {
    let top = staging.join(name);
    std::fs::create_dir(&top)?;
    let secrets_text = std::fs::read_to_string(paths.secrets_file());
    let redactor = match &secrets_text {
        Ok(t) => Redactor::from_secrets_json(t),
        Err(_) => Redactor::none(),
    };
    let mut g = Gather {
        top,
        redactor,
        summary: vec![],
        failures: 0,
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("larder"));
    let root = paths.root().display().to_string();
    let short = Duration::from_secs(15);

    // Versions.
    let larder_version = run(&exe, &["--version".into()], short).await;
    g.part("versions/larder.txt", "larder --version", larder_version);
    let (pg_bin, etcd_bin) = match cfg {
        Ok(c) => (
            PathBuf::from(&c.postgresql.bin_dir).join("postgres"),
            PathBuf::from(&c.etcd.binary),
        ),
        Err(_) => {
            let d = larder_core::config::Config::default();
            (
                PathBuf::from(d.postgresql.bin_dir).join("postgres"),
                PathBuf::from(d.etcd.binary),
            )
        }
    };
    let etcdctl = etcd_bin
        .parent()
        .map(|d| d.join("etcdctl"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("etcdctl"));
    let r = run(&pg_bin, &["--version".into()], short).await;
    g.part("versions/postgres.txt", "postgres --version", r);
    let r = run(&etcd_bin, &["--version".into()], short).await;
    g.part("versions/etcd.txt", "etcd --version", r);
    let r = run(&etcdctl, &["version".into()], short).await;
    g.part("versions/etcdctl.txt", "etcdctl version", r);
    let r = run(Path::new("uname"), &["-a".into()], short).await;
    g.part("versions/uname.txt", "uname -a", r);
    let r =
        std::fs::read("/etc/os-release").map_err(|e| format!("cannot read /etc/os-release: {e}"));
    g.part("versions/os-release.txt", "/etc/os-release", r);

    // The agent's view, exactly as an operator sees it.
    for (rel, verb) in [
        ("status/status.json", "status"),
        ("status/cluster-status.json", "cluster-status"),
    ] {
        let args = vec!["--root".into(), root.clone(), verb.into(), "--json".into()];
        let r = run(&exe, &args, Duration::from_secs(30)).await;
        g.part(rel, &format!("larder {verb} --json"), r);
    }

    // Configuration, redacted.
    let toml = std::fs::read_to_string(paths.config_file())
        .map(|t| redact_config_lines(&t).into_bytes())
        .map_err(|e| format!("cannot read {}: {e}", paths.config_file().display()));
    g.part("config/larder.toml", "larder.toml", toml);
    let secrets = match &secrets_text {
        Ok(t) => serde_json::from_str::<serde_json::Value>(t)
            .map(|v| {
                let mut s =
                    serde_json::to_string_pretty(&redact_json(&v, true)).unwrap_or_default();
                s.push('\n');
                s.into_bytes()
            })
            .map_err(|e| {
                format!(
                    "{} is not valid JSON ({e}); not copied, so no secret can leak",
                    paths.secrets_file().display()
                )
            }),
        Err(e) => Err(format!(
            "cannot read {}: {e}",
            paths.secrets_file().display()
        )),
    };
    g.part(
        "config/chef-backend-secrets.json",
        "secrets file (every value redacted)",
        secrets,
    );
    let json_files = [
        (paths.node_state_file(), "config/node.json"),
        (
            paths.data_dir().join("search/service.json"),
            "config/search-service.json",
        ),
    ];
    for (src, rel) in json_files {
        let r = std::fs::read_to_string(&src)
            .map_err(|e| format!("cannot read {}: {e}", src.display()))
            .and_then(|t| {
                serde_json::from_str::<serde_json::Value>(&t)
                    .map_err(|e| format!("{} is not valid JSON ({e}); not copied", src.display()))
            })
            .map(|v| {
                let mut s =
                    serde_json::to_string_pretty(&redact_json(&v, false)).unwrap_or_default();
                s.push('\n');
                s.into_bytes()
            });
        g.part(rel, &src.display().to_string(), r);
    }
    for f in [
        "postgresql.conf",
        "postgresql.auto.conf",
        "larder.conf",
        "larder-recovery.conf",
        "pg_hba.conf",
    ] {
        let src = paths.pg_data().join(f);
        let optional = ["postgresql.auto.conf", "larder-recovery.conf"].contains(&f);
        if optional && !src.exists() && paths.pg_data().exists() {
            g.summary.push(format!(
                "absent  config/postgresql/{f}  (not written on this node)"
            ));
            continue;
        }
        let r = std::fs::read_to_string(&src)
            .map(|t| redact_config_lines(&t).into_bytes())
            .map_err(|e| format!("cannot read {}: {e}", src.display()));
        g.part(
            &format!("config/postgresql/{f}"),
            &src.display().to_string(),
            r,
        );
    }

    // etcd: members and health, asked of the local member with this node's certificate.
    match cfg {
        Ok(c) => {
            let tls = paths.tls_dir();
            let base = vec![
                format!(
                    "--endpoints=https://{}:{}",
                    larder_agent::node::url_host(&c.publish_address),
                    c.etcd.client_port
                ),
                format!("--cacert={}", tls.join("ca.crt").display()),
                format!("--cert={}", tls.join("node.crt").display()),
                format!("--key={}", tls.join("node.key").display()),
                "--dial-timeout=3s".into(),
                "--command-timeout=5s".into(),
            ];
            for (rel, args) in [
                ("etcd/member-list.txt", "member list -w table"),
                ("etcd/member-list.json", "member list -w json"),
                (
                    "etcd/endpoint-status.txt",
                    "endpoint status --cluster -w table",
                ),
                (
                    "etcd/endpoint-health.txt",
                    "endpoint health --cluster -w table",
                ),
            ] {
                let mut all = base.clone();
                all.extend(args.split(' ').map(String::from));
                let r = run(&etcdctl, &all, Duration::from_secs(20)).await;
                g.part(rel, &format!("etcdctl {args}"), r);
            }
        }
        Err(e) => g.failed(
            "etcd/member-list.txt",
            "etcd members and health",
            &format!("no usable configuration: {e}"),
        ),
    }

    // PostgreSQL: settings and replication views over the local socket.
    let queries = [
        (
            "postgresql/settings.tsv",
            "SELECT name, setting, unit, source, pending_restart FROM pg_settings ORDER BY name",
        ),
        (
            "postgresql/state.tsv",
            "SELECT pg_is_in_recovery() AS in_recovery, CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn, (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline, pg_postmaster_start_time() AS started, now() AS now",
        ),
        ("postgresql/pg_stat_replication.tsv", "SELECT * FROM pg_stat_replication"),
        ("postgresql/pg_stat_wal_receiver.tsv", "SELECT * FROM pg_stat_wal_receiver"),
        ("postgresql/pg_replication_slots.tsv", "SELECT * FROM pg_replication_slots"),
    ];
    match connect_pg(paths).await {
        Ok(client) => {
            for (rel, sql) in queries {
                let r = query_tsv(&client, sql).await;
                g.part(rel, sql, r.map(String::into_bytes));
            }
        }
        Err(e) => {
            for (rel, sql) in queries {
                g.failed(
                    rel,
                    sql,
                    &format!("cannot connect to the local PostgreSQL: {e}"),
                );
            }
        }
    }

    // Disk usage of the data, log and configuration directories.
    let dirs: Vec<String> = [
        paths.data_dir(),
        paths.pg_data(),
        paths.etcd_data(),
        paths.data_dir().join("search"),
        paths.log_dir(),
        paths.config_dir(),
    ]
    .iter()
    .filter(|d| d.exists())
    .map(|d| d.display().to_string())
    .collect();
    if dirs.is_empty() {
        g.failed(
            "disk/df.txt",
            "disk usage",
            "none of Larder's directories exist on this node",
        );
    } else {
        let mut args = vec!["-P".to_string(), "-h".into()];
        args.extend(dirs.iter().cloned());
        let r = run(Path::new("df"), &args, short).await;
        g.part("disk/df.txt", "df -P -h", r);
        let mut args = vec!["-P".to_string(), "-i".into()];
        args.extend(dirs.iter().cloned());
        let r = run(Path::new("df"), &args, short).await;
        g.part("disk/df-inodes.txt", "df -P -i", r);
        let mut args = vec!["-s".to_string(), "-h".into()];
        args.extend(
            [
                paths.pg_data(),
                paths.etcd_data(),
                paths.data_dir().join("search"),
                paths.log_dir(),
                paths.config_dir(),
            ]
            .iter()
            .filter(|d| d.exists())
            .map(|d| d.display().to_string()),
        );
        let r = run(Path::new("du"), &args, Duration::from_secs(60)).await;
        g.part("disk/du.txt", "du -s -h", r);
    }

    // Every service's logs: /var/log/larder/<service>/{current,@<time>.s}.
    match std::fs::read_dir(paths.log_dir()) {
        Ok(rd) => {
            let mut dirs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect();
            dirs.sort();
            for d in dirs {
                let svc = d
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                match std::fs::read_dir(&d) {
                    Ok(rd) => {
                        let mut files: Vec<PathBuf> = rd
                            .filter_map(|e| e.ok())
                            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                            .map(|e| e.path())
                            .collect();
                        files.sort();
                        for f in files {
                            let file = f
                                .file_name()
                                .unwrap_or_default()
                                .to_string_lossy()
                                .into_owned();
                            g.copy_log(&f, &format!("logs/{svc}/{file}"));
                        }
                    }
                    Err(e) => g.failed(
                        &format!("logs/{svc}"),
                        &format!("logs of {svc}"),
                        &e.to_string(),
                    ),
                }
            }
        }
        Err(e) => g.failed(
            "logs",
            "service logs",
            &format!("cannot read {}: {e}", paths.log_dir().display()),
        ),
    }

    let mut summary = format!(
        "Larder gather-logs of {name}\nroot: {}\nparts: {} gathered, {} failed\n\n",
        paths.root().display(),
        g.summary.len() - g.failures,
        g.failures
    );
    for l in &g.summary {
        summary.push_str(l);
        summary.push('\n');
    }
    std::fs::write(g.top.join("summary.txt"), g.redactor.text(&summary))?;

    // The tarball: created 0600 before anything is written into it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    let status = tokio::process::Command::new("tar")
        .arg("-czf")
        .arg("-")
        .arg("-C")
        .arg(staging)
        .arg(name)
        .stdout(std::process::Stdio::from(file))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(|c| c.wait_with_output());
    // (`output()` would replace the tarball as stdout with a pipe.)
    let status = match status {
        Ok(wait) => wait.await,
        Err(e) => Err(e),
    };
    let failed = match status {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "tar failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run tar: {e}")),
    };
    if let Some(why) = failed {
        let _ = std::fs::remove_file(out);
        bail!("{why}; no tarball was written");
    }
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    Ok(g.failures)
}

async fn connect_pg(paths: &Paths) -> anyhow::Result<tokio_postgres::Client> {
    let node = larder_agent::node::Node::load(paths)?;
    let client = larder_agent::postgres::connect(&node, Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    client
        .batch_execute("SET statement_timeout = '10s'; SET application_name = 'larder-gather-logs'")
        .await?;
    Ok(client)
}

/// A query's rows as tab-separated text with a header (NULL for nulls).
async fn query_tsv(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    use tokio_postgres::SimpleQueryMessage;
    let msgs = tokio::time::timeout(Duration::from_secs(15), client.simple_query(sql))
        .await
        .map_err(|_| "the query did not finish within 15 s".to_string())?
        .map_err(|e| format!("the query failed: {e}"))?;
    let mut out = String::new();
    let mut rows = 0;
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if rows == 0 {
                let header: Vec<&str> = r.columns().iter().map(|c| c.name()).collect();
                out.push_str(&header.join("\t"));
                out.push('\n');
            }
            let vals: Vec<String> = (0..r.len())
                .map(|i| {
                    r.get(i)
                        .map(|v| v.replace(['\t', '\n'], " "))
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect();
            out.push_str(&vals.join("\t"));
            out.push('\n');
            rows += 1;
        }
    }
    if rows == 0 {
        out.push_str("(no rows)\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_everywhere() {
        let secrets = r#"{"postgresql": {"db_superuser_password": "s3cr3tPW", "replication_password": "abc"},
            "etcd": {"initial_cluster_token": "token-xyz-123"},
            "elasticsearch": {"cluster_name": "chef"},
            "larder": {"ca_cert_pem": "", "ca_key_pem": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\nzzzz\n-----END PRIVATE KEY-----\n"}}"#;
        let r = Redactor::from_secrets_json(secrets);
        let line = "login s3cr3tPW tok token-xyz-123 repl=abc key MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg chef_pgsql\n";
        let got = r.text(line);
        assert_eq!(
            got,
            "login [REDACTED] tok [REDACTED] repl=[REDACTED] key [REDACTED] chef_pgsql\n"
        );
        // A short non-secret value (cluster name "chef") does not blank the logs.
        assert!(got.contains("chef_pgsql"));
    }

    #[test]
    fn conninfo_passwords_are_replaced() {
        let r = Redactor::none();
        assert_eq!(
            r.text("primary_conninfo = 'host=a password=hunter2 user=r'"),
            "primary_conninfo = 'host=a password=[REDACTED] user=r'"
        );
        assert_eq!(r.text("x PASSWORD='it is' y"), "x PASSWORD=[REDACTED] y");
        assert_eq!(
            r.text("password authentication failed"),
            "password authentication failed"
        );
    }

    #[test]
    fn config_lines_and_json_keep_keys_only() {
        let t = redact_config_lines(
            "fqdn = \"n1\"\nadmin_password = \"x\"\n# password = y\n[postgresql]\nport = 5432\n",
        );
        assert_eq!(
            t,
            "fqdn = \"n1\"\nadmin_password = \"[REDACTED]\"\n# password = y\n[postgresql]\nport = 5432\n"
        );
        let v: serde_json::Value = serde_json::from_str(
            r#"{"pg_password": "p", "port": 5, "nested": {"api_token": "t", "name": "n"}}"#,
        )
        .unwrap();
        assert_eq!(
            redact_json(&v, false).to_string(),
            r#"{"nested":{"api_token":"[REDACTED]","name":"n"},"pg_password":"[REDACTED]","port":5}"#
        );
        assert_eq!(
            redact_json(&v, true).to_string(),
            r#"{"nested":{"api_token":"[REDACTED]","name":"[REDACTED]"},"pg_password":"[REDACTED]","port":"[REDACTED]"}"#
        );
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_709_251_199), "20240229T235959Z");
        assert_eq!(utc_stamp(4_102_444_800), "21000101T000000Z");
    }
}
