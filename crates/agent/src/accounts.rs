//! Unprivileged OS accounts of the supervised services.
//!
//! Only the agent needs root (it binds nothing privileged, but it manages data directories,
//! certificates and process groups of three services). etcd and the search service run as their
//! own system users, so a bug in either cannot read the secrets file, the other services' keys or
//! PostgreSQL's data. PostgreSQL runs as Debian's `postgres` (see [`crate::node::pg_os_user`]).
//!
//! The Debian package creates the accounts in its postinst; a node that was not installed from
//! the package (the local dev cluster, tests, a copied binary) gets them created on first start.
//! The names are Larder's own, not Debian's `etcd`: `install-deps.sh` and the package stop
//! Debian's default etcd by its user, which must never hit Larder's.

use std::path::Path;
use std::process::Command;

/// etcd's OS user.
pub const ETCD_USER: &str = "larder-etcd";
/// The search service's OS user.
pub const SEARCH_USER: &str = "larder-search";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("cannot look up OS user {0}: {1}")]
    Lookup(String, String),
    #[error("cannot create OS user {0} (useradd: {1}); create it with `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {0}` and retry")]
    Create(String, String),
    #[error("cannot give {path} to {user}: {err}")]
    Chown {
        path: String,
        user: String,
        err: String,
    },
}

/// uid and gid of a service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Result<Option<Account>, AccountError> {
    nix::unistd::User::from_name(name)
        .map(|u| {
            u.map(|u| Account {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })
        })
        .map_err(|e| AccountError::Lookup(name.into(), e.to_string()))
}

/// The account `name`, created as a system user without a home or login shell if missing.
/// `None` when the agent itself is not root: it then runs everything as itself (tests of single
/// services as an ordinary user).
pub fn ensure(name: &str) -> Result<Option<Account>, AccountError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    if let Some(a) = lookup(name)? {
        return Ok(Some(a));
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "Larder service account",
            name,
        ])
        .output()
        .map_err(|e| AccountError::Create(name.into(), e.to_string()))?;
    // Several agents of a dev cluster start at once: another one may have won the race.
    match lookup(name)? {
        Some(a) => Ok(Some(a)),
        None => Err(AccountError::Create(
            name.into(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )),
    }
}

/// Give `path` and everything below it to `account` (no-op for `None`). Symlinks are changed
/// themselves, never followed.
pub fn chown_tree(path: &Path, account: Option<Account>, user: &str) -> Result<(), AccountError> {
    let Some(a) = account else { return Ok(()) };
    let err = |p: &Path, e: String| AccountError::Chown {
        path: p.display().to_string(),
        user: user.into(),
        err: e,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e.to_string())),
    };
    std::os::unix::fs::lchown(path, Some(a.uid), Some(a.gid))
        .map_err(|e| err(path, e.to_string()))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(|e| err(path, e.to_string()))? {
            let e = e.map_err(|e| err(path, e.to_string()))?;
            chown_tree(&e.path(), account, user)?;
        }
    }
    Ok(())
}

/// Write `data` to `path` as a 0600 file owned by `account` (a service's private copy of a key
/// or its settings).
pub fn write_owned(
    path: &Path,
    data: &[u8],
    account: Option<Account>,
    user: &str,
) -> anyhow::Result<()> {
    // Owned by the service before it is renamed into place: a service re-reading the file
    // (a TLS reload at its next handshake) never finds it half-written or still root's.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    crate::node::write_private(&tmp, data)?;
    chown_tree(&tmp, account, user)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_callers_run_services_as_themselves() {
        if nix::unistd::geteuid().is_root() {
            // As root, `ensure` creates accounts; that path is covered by the cluster tests
            // (`services_run_unprivileged`).
            let a = ensure(ETCD_USER).unwrap().expect("root gets an account");
            assert_ne!(a.uid, 0);
        } else {
            assert_eq!(ensure(ETCD_USER).unwrap(), None);
        }
    }

    #[test]
    fn chown_tree_of_missing_path_is_ok() {
        let d = tempfile::tempdir().unwrap();
        chown_tree(
            &d.path().join("absent"),
            Some(Account { uid: 0, gid: 0 }),
            "x",
        )
        .unwrap();
    }
}
