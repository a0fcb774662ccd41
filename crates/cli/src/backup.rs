//! `backup` and `restore`: pgBackRest backups of the cluster (full, differential,
//! incremental), their list, and a new cluster built from one — to its end, to a time or to an
//! LSN (point-in-time recovery). Archiving itself runs on every node all the time
//! (`larder_core::backup`).
//!
//! Each backup also saves the cluster's `larder.toml` and, sealed with a passphrase
//! (`seal.rs`), its secrets under `REPO/larder/<label>/`: a restore needs the same PostgreSQL
//! passwords the restored roles have. Secrets are never stored unencrypted: without a
//! passphrase they are not saved, and `restore` asks for `--secrets FILE`.

use crate::agent_client::agent_status;
use crate::progress::Steps;
use anyhow::{bail, Context};
use larder_agent::node::{write_private, Node};
use larder_agent::pgbackrest;
use larder_core::backup::{self, BackupSet, RepoInfo};
use larder_core::backup_source;
use larder_core::paths::Paths;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// full, diff or incr (default: incr when a full backup exists, else full).
    #[arg(long = "type")]
    kind: Option<String>,
    /// List the backups in the repository instead of taking one.
    #[arg(long)]
    list: bool,
    /// JSON (the list with --list, else the new backup) and no progress.
    #[arg(long)]
    pub json: bool,
    /// Also write one self-contained tarball (the repository and the saved configuration).
    #[arg(long)]
    output: Option<PathBuf>,
    /// File holding the passphrase that seals the saved secrets (or LARDER_BACKUP_PASSPHRASE).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Take the backup even though the WAL archive has a gap.
    #[arg(short, long)]
    force: bool,
    /// Assume yes.
    #[arg(short, long)]
    yes: bool,
}

#[derive(clap::Args, Clone)]
pub struct RestoreArgs {
    /// A pgBackRest repository directory, or a tarball written by `backup --output`.
    #[arg(required_unless_present = "from_pg_dump")]
    pub path: Option<PathBuf>,
    /// Build the new cluster from a `pg_dumpall` of a Chef Backend leader instead (the
    /// cut-over from Chef Backend); search is rebuilt from the Chef objects in it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["path", "set", "to_time", "to_lsn", "secrets", "passphrase_file", "staging_dir"])]
    pub from_pg_dump: Option<PathBuf>,
    /// Where a tarball is unpacked (default: /var/tmp under the node's root).
    #[arg(short = 'd', long)]
    pub staging_dir: Option<PathBuf>,
    /// The backup set (label from `backup --list`; default: the newest that fits the target).
    #[arg(long)]
    pub set: Option<String>,
    /// Point-in-time recovery: replay WAL up to this time (PostgreSQL timestamp syntax).
    #[arg(long, conflicts_with = "to_lsn")]
    pub to_time: Option<String>,
    /// Point-in-time recovery: replay WAL up to this LSN.
    #[arg(long)]
    pub to_lsn: Option<String>,
    /// Address of this node in the new cluster (default: the backed-up node's).
    #[arg(long = "publish_address", alias = "publish-address")]
    pub publish_address: Option<String>,
    /// Name of this node in the new cluster (default: the backed-up node's).
    #[arg(long)]
    pub fqdn: Option<String>,
    /// The cluster's secrets file, when the backup holds none (taken without a passphrase).
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// File holding the passphrase the backup's secrets are sealed with (or
    /// LARDER_BACKUP_PASSPHRASE).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    #[arg(short, long)]
    pub yes: bool,
    /// Print the result as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
}

fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the passphrase file {}", f.display()))?;
        let p = text.trim_end_matches(['\n', '\r']).to_string();
        if p.len() < 8 {
            bail!(
                "the passphrase in {} is shorter than 8 characters",
                f.display()
            );
        }
        return Ok(Some(p));
    }
    Ok(std::env::var("LARDER_BACKUP_PASSPHRASE")
        .ok()
        .filter(|p| !p.is_empty()))
}

/// Run pgBackRest as PostgreSQL's user; its stderr is the error.
fn run(node: &Node, args: &[&str]) -> anyhow::Result<String> {
    let out = pgbackrest::command(node, args)
        .output()
        .context("cannot run pgbackrest (install the `pgbackrest` package)")?;
    if !out.status.success() {
        bail!(
            "pgbackrest {} failed: {}{}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// `args` followed by the options naming the backup's PostgreSQL hosts.
fn with<'a>(args: &[&'a str], hosts: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(hosts.iter().map(String::as_str))
        .collect()
}

fn info(node: &Node) -> anyhow::Result<RepoInfo> {
    let json = run(node, &["info", "--output=json"])?;
    backup::parse_info(&json).map_err(|e| anyhow::anyhow!(e))
}

/// Files under the repository's archive of the stanza (for the gap check).
fn archive_files(repo: &Path) -> Vec<String> {
    fn walk(d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo.join("archive").join(backup::STANZA), &mut out);
    out
}

fn gaps(node: &Node) -> Vec<backup::Gap> {
    let files = archive_files(Path::new(&node.cfg.backup.repo_path));
    backup::wal_gaps(files.iter().map(String::as_str))
}

fn when(unix: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%d %H:%M:%S UTC"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => unix.to_string(),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

fn not_configured() -> anyhow::Error {
    anyhow::anyhow!("backups are not configured: set `backup.repo_path` in larder.toml to a directory every node mounts (or an object store with `backup.pgbackrest.repo1-type`), then `larder reconfigure` and `larder restart postgresql` on every node (archiving starts at that restart)")
}

pub async fn backup(paths: &Paths, a: BackupArgs) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    let mut node = Node::load(paths)?;
    if !node.cfg.backup.enabled() {
        return Err(not_configured());
    }
    if a.list {
        return list(&node, a.json);
    }
    // pgBackRest takes one password: during `rotate-secrets --postgresql`, the one the local
    // server accepts.
    larder_agent::postgres::use_working_superuser_password(&mut node).await;
    let st = agent_status(paths).await?;
    let Some(leader) = st.ha.leader.clone() else {
        bail!("the cluster has no leader: pgBackRest starts every backup on the primary; wait for one (`larder cluster-status`); nothing was changed");
    };
    let plan = backup_source::plan(&node.state.guid, &leader.guid, &st.members)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    let hosts = backup_source::host_options(
        &plan,
        &pgbackrest::client_tls(&node),
        &node.cfg.postgresql.db_superuser,
    );
    let on_leader = leader.guid == node.state.guid;
    let kind = match a.kind.as_deref() {
        Some(k @ ("full" | "diff" | "incr")) => k.to_string(),
        Some(other) => bail!("--type {other:?}: use full, diff or incr"),
        None => String::new(),
    };
    let pass = passphrase(a.passphrase_file.as_deref())?;
    let mut steps = Steps::new(if a.output.is_some() { 5 } else { 4 });
    steps.step("checking the repository and WAL archiving");
    run(&node, &with(&["stanza-create"], &hosts))?;
    run(&node, &with(&["check"], &hosts)).map_err(|e| {
        let shared = if on_leader {
            String::new()
        } else {
            format!(" If {} is a directory of this node only, the leader archives into its own copy: a backup taken here needs backup.repo_path on a mount every node shares (or an object store), else run `larder backup` on the leader {}.", node.cfg.backup.repo_path, leader.name)
        };
        anyhow::anyhow!("{e:#}\nWAL archiving does not work; if archive_mode is off, run `larder restart postgresql` (after `larder demote` on a multi-node cluster).{shared}")
    })?;
    let found = gaps(&node);
    if !found.is_empty() && !a.force {
        bail!(
            "the WAL archive has gaps ({}): point-in-time recovery across them is impossible. A new full backup (`--type full --force`) starts a clean range",
            found
                .iter()
                .map(|g| format!("timeline {}: {}..{}", g.timeline, g.first_missing, g.last_missing))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let before = info(&node)?;
    let kind = if kind.is_empty() {
        if before.backups.iter().any(|b| b.kind == "full") {
            "incr".to_string()
        } else {
            "full".to_string()
        }
    } else {
        kind
    };
    steps.step(&format!(
        "taking a {kind} backup with pgBackRest, {}",
        plan.note
    ));
    let type_arg = format!("--type={kind}");
    let standby = if plan.standby {
        "--backup-standby"
    } else {
        "--no-backup-standby"
    };
    let mut child = pgbackrest::command(&node, &with(&["backup", &type_arg, standby], &hosts))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run pgbackrest")?;
    let bar = crate::progress::CopyBar::new();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Ok(i) = info(&node) {
            if let Some((done, total)) = i.running {
                bar.update(done / 1024, total / 1024);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("pgbackrest backup failed ({status}): {}", err.trim());
    }
    let after = info(&node)?;
    let Some(set) = after
        .backups
        .iter()
        .find(|b| !before.backups.iter().any(|o| o.label == b.label))
        .cloned()
    else {
        bail!(
            "pgbackrest reported success but lists no new backup; see {}",
            paths.service_log_dir("pgbackrest").display()
        );
    };
    steps.step("saving the cluster configuration with the backup");
    let saved = save_config(paths, &node, &set, pass.as_deref())?;
    if let Some(out) = &a.output {
        steps.step(&format!("writing the tarball {}", out.display()));
        write_tarball(&node, out)?;
    }
    steps.finish(&format!(
        "{} backup {} read from {} ({} of data, {} in the repository, WAL {}..{}); {saved}",
        set.kind,
        set.label,
        if plan.standby {
            format!("the follower {}", plan.source)
        } else {
            format!("the leader {}", plan.source)
        },
        mib(set.size),
        mib(set.repo_size),
        set.wal_start,
        set.wal_stop
    ));
    match a.json {
        true => println!(
            "{}",
            serde_json::json!({"label": set.label, "kind": set.kind, "size_bytes": set.size, "repo_size_bytes": set.repo_size, "wal_start": set.wal_start, "wal_stop": set.wal_stop})
        ),
        false => println!("{}", set.label),
    }
    Ok(())
}

fn bundle_dir(repo: &Path, label: &str) -> PathBuf {
    repo.join("larder").join(label)
}

/// The configuration (and, sealed, the secrets) beside the backup set.
fn save_config(
    paths: &Paths,
    node: &Node,
    set: &BackupSet,
    pass: Option<&str>,
) -> anyhow::Result<String> {
    let dir = bundle_dir(Path::new(&node.cfg.backup.repo_path), &set.label);
    std::fs::create_dir_all(&dir)?;
    write_private(&dir.join("larder.toml"), node.cfg.to_toml().as_bytes())?;
    match pass {
        Some(p) => {
            let plain = std::fs::read(paths.secrets_file())?;
            let sealed = crate::seal::seal(p, &plain)?;
            write_private(&dir.join("secrets.sealed"), &sealed)?;
            Ok("secrets saved, sealed with the passphrase".into())
        }
        None => Ok(format!(
            "secrets NOT saved (no passphrase given; they are never stored unencrypted): keep {} safe, `restore --secrets` needs it",
            paths.secrets_file().display()
        )),
    }
}

fn write_tarball(node: &Node, out: &Path) -> anyhow::Result<()> {
    let repo = &node.cfg.backup.repo_path;
    let tmp = out.with_extension("partial");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tmp)
        .arg("-C")
        .arg(repo)
        .arg(".")
        .status()
        .context("cannot run tar")?;
    if !st.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("tar of {repo} failed ({st})");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn list(node: &Node, json: bool) -> anyhow::Result<()> {
    let i = info(node)?;
    let found = gaps(node);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "backups": i.backups, "archive_min": i.archive_min, "archive_max": i.archive_max,
                "status": i.status, "gaps": found,
            }))?
        );
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.set_header(["Label", "Type", "Started", "Took", "WAL", "Data", "Stored"]);
    for b in &i.backups {
        t.add_row([
            b.label.clone(),
            b.kind.clone(),
            when(b.start_unix),
            format!("{}s", b.stop_unix.saturating_sub(b.start_unix)),
            format!("{}..{}", b.wal_start, b.wal_stop),
            mib(b.size),
            mib(b.repo_size),
        ]);
    }
    println!("{t}");
    println!(
        "WAL archive: {} .. {} ({})",
        i.archive_min.as_deref().unwrap_or("-"),
        i.archive_max.as_deref().unwrap_or("-"),
        i.status
    );
    for g in &found {
        println!(
            "Warning: the archive misses timeline {} segments {}..{}",
            g.timeline, g.first_missing, g.last_missing
        );
    }
    let marker = pgbackrest::conf_path(node).with_file_name("archive-gap");
    if let Ok(why) = std::fs::read_to_string(marker) {
        println!("Warning: segments of the previous timeline could not be archived after this node's promotion: {why}");
    }
    Ok(())
}

/// What `create-cluster` restores before the agent first starts (see `restore`).
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub set: Option<String>,
    pub to_time: Option<String>,
    pub to_lsn: Option<String>,
}

/// `pgbackrest info` of a repository this node has no configuration for yet.
fn info_of(repo: &Path) -> anyhow::Result<RepoInfo> {
    let out = std::process::Command::new("pgbackrest")
        .arg(format!("--repo1-path={}", repo.display()))
        .arg(format!("--stanza={}", backup::STANZA))
        .args(["--log-level-file=off", "--log-level-console=warn"])
        .arg("--lock-path=/tmp")
        .args(["info", "--output=json"])
        .output()
        .context("cannot run pgbackrest (install the `pgbackrest` package)")?;
    if !out.status.success() {
        bail!(
            "{} is not a readable pgBackRest repository: {}",
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    backup::parse_info(&String::from_utf8_lossy(&out.stdout)).map_err(|e| anyhow::anyhow!(e))
}

/// `restore PATH`: a new single-node cluster on this node from a backup; the other nodes then
/// `join-cluster`. Everything is checked before anything is written.
/// Remove what a refused restore unpacked (the directory itself only if it made it).
fn unstage(staged: &Option<(PathBuf, bool)>) {
    if let Some((dir, existed)) = staged {
        let _ = std::fs::remove_dir_all(dir);
        if *existed {
            let _ = std::fs::create_dir_all(dir);
        }
    }
}

/// Everything `restore` checks before it writes: the repository, the set, the saved
/// configuration and the secrets (opened with the passphrase), and the operator's yes.
fn check_restore(
    a: &RestoreArgs,
    repo: &Path,
    from_tarball: bool,
) -> anyhow::Result<(larder_core::config::Config, Vec<u8>, String)> {
    let i = info_of(repo)?;
    if i.backups.is_empty() {
        bail!(
            "{} holds no backup ({}); nothing was changed",
            repo.display(),
            i.status
        );
    }
    if let Some(s) = &a.set {
        if !i.backups.iter().any(|b| &b.label == s) {
            bail!(
                "no backup set {s:?} in {}; sets: {}",
                repo.display(),
                i.backups
                    .iter()
                    .map(|b| b.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    // The saved configuration: the chosen set's, else the newest saved.
    let bundle = a
        .set
        .as_ref()
        .map(|s| bundle_dir(repo, s))
        .filter(|d| d.exists())
        .or_else(|| {
            i.backups
                .iter()
                .rev()
                .map(|b| bundle_dir(repo, &b.label))
                .find(|d| d.exists())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no configuration saved by `larder backup`",
                repo.display()
            )
        })?;
    let text = std::fs::read_to_string(bundle.join("larder.toml"))?;
    let mut cfg = larder_core::config::Config::parse(
        &text,
        &bundle.join("larder.toml").display().to_string(),
    )?;
    if let Some(p) = &a.publish_address {
        cfg.publish_address = p.clone();
    }
    if let Some(f) = &a.fqdn {
        cfg.fqdn = f.clone();
    }
    if from_tarball {
        cfg.backup.repo_path = repo.display().to_string();
    }
    cfg.validate("restore")?;
    let secrets = match (bundle.join("secrets.sealed").exists(), &a.secrets) {
        (_, Some(f)) => {
            larder_core::secrets::Secrets::load(f)?;
            std::fs::read(f)?
        }
        (true, None) => {
            let Some(p) = passphrase(a.passphrase_file.as_deref())? else {
                bail!("the backup's secrets are sealed with a passphrase: pass --passphrase-file FILE (or set LARDER_BACKUP_PASSPHRASE), or --secrets FILE; nothing was changed");
            };
            let sealed = std::fs::read(bundle.join("secrets.sealed"))?;
            crate::seal::open(&p, &sealed)?
        }
        (false, None) => bail!("the backup holds no secrets (it was taken without a passphrase): pass --secrets FILE with the cluster's chef-backend-secrets.json; nothing was changed"),
    };
    let target = match (&a.to_time, &a.to_lsn) {
        (Some(t), _) => format!("to {t}"),
        (_, Some(l)) => format!("to LSN {l}"),
        _ => "to the end of the archive".into(),
    };
    crate::prompt::confirm_on_terminal(
        &format!(
            "build a new cluster on {} ({}) from {} {target}?",
            cfg.fqdn,
            cfg.publish_address,
            repo.display()
        ),
        a.yes,
    )?;
    Ok((cfg, secrets, target))
}

/// `restore` builds a new cluster: refused on a node that has one.
pub(crate) fn refuse_member(paths: &Paths) -> anyhow::Result<()> {
    if paths.node_state_file().exists() || paths.pg_data().join("PG_VERSION").exists() {
        bail!("this node belongs to a cluster (or holds its data); `restore` builds a new cluster: run it on a cleansed node (`larder cleanse` keeps a copy of the config); nothing was changed");
    }
    Ok(())
}

pub async fn restore(paths: &Paths, a: RestoreArgs) -> anyhow::Result<()> {
    if let Some(dump) = &a.from_pg_dump {
        return crate::restore_dump::restore(paths, &a, dump).await;
    }
    refuse_member(paths)?;
    let path = a
        .path
        .clone()
        .expect("clap requires PATH without --from-pg-dump");
    // A tarball is unpacked first; a refusal after that removes what was unpacked.
    let mut staged: Option<(PathBuf, bool)> = None;
    let (repo, from_tarball) = if path.is_dir() {
        (path.canonicalize()?, false)
    } else if path.is_file() {
        let dir = a
            .staging_dir
            .clone()
            .unwrap_or_else(|| paths.root().join("var/tmp/larder-restore"));
        if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "the staging directory {} is not empty; give another with -d DIR or remove it",
                dir.display()
            );
        }
        let existed = dir.exists();
        std::fs::create_dir_all(&dir)?;
        staged = Some((dir.clone(), existed));
        let st = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&path)
            .arg("-C")
            .arg(&dir)
            .status()
            .context("cannot run tar")?;
        if !st.success() {
            unstage(&staged);
            bail!(
                "{} is not a backup tarball (tar failed: {st}); nothing was changed",
                path.display()
            );
        }
        (dir.canonicalize()?, true)
    } else {
        bail!(
            "{} does not exist; give a repository directory or a `backup --output` tarball",
            path.display()
        );
    };
    let (cfg, secrets, target) = match check_restore(&a, &repo, from_tarball) {
        Ok(v) => v,
        Err(e) => {
            unstage(&staged);
            return Err(e);
        }
    };
    std::fs::create_dir_all(paths.config_file().parent().expect("config dir"))?;
    write_private(&paths.config_file(), cfg.to_toml().as_bytes())?;
    write_private(&paths.secrets_file(), &secrets)?;
    let plan = RestorePlan {
        set: a.set.clone(),
        to_time: a.to_time.clone(),
        to_lsn: a.to_lsn.clone(),
    };
    let r = crate::bootstrap::create_cluster_for_restore(paths, None, None, Some(plan)).await;
    if r.is_err() {
        eprintln!("the restore did not complete; `larder cleanse` resets this node before another attempt");
    }
    r?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"restored_from": repo, "target": target, "leader": cfg.fqdn, "address": cfg.publish_address})
        );
        return Ok(());
    }
    println!(
        "restored from {} {target}: {} leads a new one-node cluster; join the others with `larder join-cluster {} -s {}`",
        repo.display(),
        cfg.fqdn,
        cfg.publish_address,
        paths.secrets_file().display()
    );
    Ok(())
}

fn pg_tool(node: &Node, tool: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(Path::new(&node.cfg.postgresql.bin_dir).join(tool));
    cmd.current_dir("/tmp").env("HOME", "/tmp");
    if let Some((uid, gid)) = node.pg_user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn cluster_state(node: &Node) -> String {
    pg_tool(node, "pg_controldata")
        .arg(node.paths.pg_data())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("Database cluster state:")
                    .map(|s| s.trim().to_string())
            })
        })
        .unwrap_or_default()
}

/// Restore the data directory and run its recovery to the end (promoted, then stopped
/// cleanly) with nothing able to connect, so the agent starts on an ordinary primary's data.
pub async fn restore_data(paths: &Paths, plan: &RestorePlan) -> anyhow::Result<()> {
    let node = Node::load(paths)?;
    larder_agent::postgres::prepare_dirs(&node)?;
    pgbackrest::write_conf(&node)?;
    let data = node.paths.pg_data();
    std::fs::create_dir_all(&data)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Some((uid, gid)) = node.pg_user {
        nix::unistd::chown(&data, Some(uid.into()), Some(gid.into()))?;
    }
    let mut args: Vec<String> = vec!["restore".into()];
    if let Some(s) = &plan.set {
        args.push(format!("--set={s}"));
    }
    match (&plan.to_time, &plan.to_lsn) {
        (Some(t), _) => args.extend(["--type=time".into(), format!("--target={t}")]),
        (_, Some(l)) => args.extend(["--type=lsn".into(), format!("--target={l}")]),
        _ => {}
    }
    if plan.to_time.is_some() || plan.to_lsn.is_some() {
        args.push("--target-action=promote".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&node, &refs)?;
    larder_agent::postgres::write_config(&node)?;
    let log = paths
        .service_log_dir("postgresql")
        .join("restore-recovery.log");
    std::fs::create_dir_all(log.parent().expect("log dir"))?;
    if let Some((uid, gid)) = node.pg_user {
        nix::unistd::chown(
            log.parent().expect("log dir"),
            Some(uid.into()),
            Some(gid.into()),
        )?;
    }
    let st = pg_tool(&node, "pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "3600", "-o", "-c listen_addresses=''", "start"])
        .status()?;
    if !st.success() {
        bail!(
            "PostgreSQL did not start for the recovery; see {}",
            log.display()
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    while cluster_state(&node) != "in production" {
        if std::time::Instant::now() > deadline {
            bail!(
                "the recovery did not finish within an hour; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = pg_tool(&node, "pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-w", "-m", "fast", "stop"])
        .status()?;
    if !st.success() {
        bail!(
            "PostgreSQL did not stop after the recovery; see {}",
            log.display()
        );
    }
    // The recovery settings pgBackRest wrote served once; the agent's followers stream instead.
    let auto = data.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("restore_command") && !l.starts_with("recovery_target")
        })
        .collect();
    std::fs::write(&auto, kept.join("\n") + "\n")?;
    Ok(())
}
