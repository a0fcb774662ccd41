//! The shared secrets file (`chef-backend-secrets.json`): the same on every node, mode 0600.
//!
//! Secrets are wrapped in [`Secret`], whose `Debug`/`Display` print a mask, so a secret can
//! never reach a log line or an error message by accident.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {file}: {message}")]
    Io { file: String, message: String },
    #[error("secrets file {file} is readable by group or others (mode {mode:04o}); run `chmod 600 {file}` and retry")]
    Permissions { file: String, mode: u32 },
    #[error("secrets file {file} is not valid: {message}")]
    Malformed { file: String, message: String },
    #[error("secrets file {file} is incomplete: `{key}` is missing or empty")]
    Missing { file: String, key: String },
}

/// A string that never prints itself.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"********\"")
    }
}
impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("********")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Secrets {
    #[serde(default)]
    pub postgresql: PgSecrets,
    #[serde(default)]
    pub etcd: EtcdSecrets,
    #[serde(default)]
    pub elasticsearch: SearchSecrets,
    #[serde(default)]
    pub larder: LarderSecrets,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct PgSecrets {
    #[serde(default)]
    pub db_superuser_password: Secret,
    #[serde(default)]
    pub replication_password: Secret,
    /// New passwords staged by `rotate-secrets --postgresql`: PostgreSQL holds one password
    /// per role, so while the rotation runs every connection tries the current password and,
    /// refused, these (the catalog may already hold them). Absent otherwise.
    #[serde(default, skip_serializing_if = "secret_is_empty")]
    pub next_db_superuser_password: Secret,
    #[serde(default, skip_serializing_if = "secret_is_empty")]
    pub next_replication_password: Secret,
}

impl PgSecrets {
    /// The superuser's passwords in the order to try them: the current one, then the staged.
    pub fn superuser_passwords(&self) -> Vec<&Secret> {
        with_next(
            &self.db_superuser_password,
            &self.next_db_superuser_password,
        )
    }

    /// The replication role's passwords in the order to try them.
    pub fn replication_passwords(&self) -> Vec<&Secret> {
        with_next(&self.replication_password, &self.next_replication_password)
    }

    /// A rotation has staged new passwords here.
    pub fn next_staged(&self) -> bool {
        !self.next_db_superuser_password.0.is_empty()
            || !self.next_replication_password.0.is_empty()
    }
}

fn with_next<'a>(current: &'a Secret, next: &'a Secret) -> Vec<&'a Secret> {
    let mut out = vec![current];
    if !next.0.is_empty() && next != current {
        out.push(next);
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EtcdSecrets {
    #[serde(default)]
    pub initial_cluster_token: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SearchSecrets {
    #[serde(default)]
    pub cluster_name: String,
    /// HTTP Basic credentials of the search API (Chef 15's `opscode_erchef['search_auth_*']`).
    /// Absent in secrets files written before they existed: such a cluster keeps its old,
    /// open defaults until the operator adds them (`crate::security`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_username: String,
    #[serde(default, skip_serializing_if = "secret_is_empty")]
    pub auth_password: Secret,
    /// The password `auth_password` replaced, still accepted while `rotate-secrets` is under
    /// way (until `--finish`), so frontends can move over one at a time.
    #[serde(default, skip_serializing_if = "secret_is_empty")]
    pub previous_auth_password: Secret,
}

fn secret_is_empty(s: &Secret) -> bool {
    s.0.is_empty()
}

impl SearchSecrets {
    /// Both halves of the search credentials are present.
    pub fn has_credentials(&self) -> bool {
        !self.auth_username.is_empty() && !self.auth_password.0.is_empty()
    }
}

/// Larder's additions: the cluster CA every node issues its certificate from, and the token
/// that authenticates admin calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct LarderSecrets {
    #[serde(default)]
    pub ca_cert_pem: String,
    #[serde(default)]
    pub ca_key_pem: Secret,
}

impl Secrets {
    /// Load, refusing a file that others can read, that is not JSON, or that lacks a field.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let file = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| SecretsError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::Permissions { file, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|e| SecretsError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Secrets::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Secrets, SecretsError> {
        // serde_json's message carries line and column but never echoes string values, so it
        // cannot leak a secret.
        let s: Secrets = serde_json::from_str(text).map_err(|e| SecretsError::Malformed {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let missing = |key: &str| SecretsError::Missing {
            file: file.to_string(),
            key: key.to_string(),
        };
        if s.postgresql.db_superuser_password.expose().is_empty() {
            return Err(missing("postgresql.db_superuser_password"));
        }
        if s.postgresql.replication_password.expose().is_empty() {
            return Err(missing("postgresql.replication_password"));
        }
        if s.etcd.initial_cluster_token.expose().is_empty() {
            return Err(missing("etcd.initial_cluster_token"));
        }
        if s.elasticsearch.cluster_name.is_empty() {
            return Err(missing("elasticsearch.cluster_name"));
        }
        // Half a credential is a mistake, not an old file.
        match (
            s.elasticsearch.auth_username.is_empty(),
            s.elasticsearch.auth_password.0.is_empty(),
        ) {
            (false, true) => return Err(missing("elasticsearch.auth_password")),
            (true, false) => return Err(missing("elasticsearch.auth_username")),
            _ => {}
        }
        if !s.larder.ca_cert_pem.contains("BEGIN CERTIFICATE") {
            return Err(missing("larder.ca_cert_pem"));
        }
        if !s.larder.ca_key_pem.expose().contains("PRIVATE KEY") {
            return Err(missing("larder.ca_key_pem"));
        }
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// A fingerprint of the shared secrets stored in etcd, so a joining node can prove it holds
    /// the same secrets without sending them. Stable FNV-1a over the fields; not a MAC — the
    /// real authentication is the CA-signed client certificate.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for part in [
            self.postgresql.db_superuser_password.expose(),
            self.postgresql.replication_password.expose(),
            self.etcd.initial_cluster_token.expose(),
            &self.elasticsearch.cluster_name,
            &self.larder.ca_cert_pem,
        ] {
            for b in part.bytes().chain(std::iter::once(0u8)) {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub fn sample() -> Secrets {
        Secrets {
            postgresql: PgSecrets {
                db_superuser_password: Secret::new("su-pass"),
                replication_password: Secret::new("repl-pass"),
                ..PgSecrets::default()
            },
            etcd: EtcdSecrets {
                initial_cluster_token: Secret::new("tok"),
            },
            elasticsearch: SearchSecrets {
                cluster_name: "chef".into(),
                auth_username: "larder".into(),
                auth_password: Secret::new("search-pass"),
                previous_auth_password: Secret::new("old-search-pass"),
            },
            larder: LarderSecrets {
                ca_cert_pem: "-----BEGIN CERTIFICATE-----\nx\n".into(),
                ca_key_pem: Secret::new("-----BEGIN PRIVATE KEY-----\ny\n"),
            },
        }
    }

    fn write(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn round_trip_0600() {
        let f = write(0o600, &sample().to_json());
        assert_eq!(Secrets::load(f.path()).unwrap(), sample());
    }

    #[test]
    fn group_or_world_readable_is_refused() {
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let f = write(mode, &sample().to_json());
            let e = Secrets::load(f.path()).unwrap_err();
            assert!(matches!(e, SecretsError::Permissions { .. }), "{mode:o}");
            assert!(e.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn malformed_and_incomplete_are_refused_without_leaking() {
        let f = write(0o600, "{\"postgresql\": ");
        assert!(matches!(
            Secrets::load(f.path()).unwrap_err(),
            SecretsError::Malformed { .. }
        ));
        let mut s = sample();
        s.postgresql.replication_password = Secret::default();
        let f = write(0o600, &s.to_json());
        let e = Secrets::load(f.path()).unwrap_err().to_string();
        assert!(e.contains("postgresql.replication_password"), "{e}");
        assert!(!e.contains("su-pass"));
    }

    #[test]
    fn search_credentials_are_optional_but_never_half() {
        let mut old = sample();
        old.elasticsearch.auth_username.clear();
        old.elasticsearch.auth_password = Secret::default();
        let json = old.to_json();
        assert!(!json.contains("auth_username"), "{json}");
        let back = Secrets::parse(&json, "s.json").unwrap();
        assert!(!back.elasticsearch.has_credentials());
        assert!(sample().elasticsearch.has_credentials());
        let mut half = sample();
        half.elasticsearch.auth_password = Secret::default();
        let e = Secrets::parse(&half.to_json(), "s.json").unwrap_err();
        assert!(e.to_string().contains("elasticsearch.auth_password"), "{e}");
    }

    #[test]
    fn staged_postgresql_passwords_are_tried_after_the_current_ones() {
        let mut s = sample();
        let json = s.to_json();
        assert!(
            !json.contains("next_"),
            "nothing staged, nothing written: {json}"
        );
        assert_eq!(s.postgresql.superuser_passwords().len(), 1);
        assert!(!s.postgresql.next_staged());
        s.postgresql.next_db_superuser_password = Secret::new("su-next");
        s.postgresql.next_replication_password = Secret::new("repl-next");
        let back = Secrets::parse(&s.to_json(), "s.json").unwrap();
        assert!(back.postgresql.next_staged());
        let order = |v: Vec<&Secret>| v.iter().map(|p| p.expose().to_string()).collect::<Vec<_>>();
        assert_eq!(
            order(back.postgresql.superuser_passwords()),
            ["su-pass", "su-next"]
        );
        assert_eq!(
            order(back.postgresql.replication_passwords()),
            ["repl-pass", "repl-next"]
        );
        // The fingerprint a joiner proves is of the current passwords only.
        assert_eq!(back.fingerprint(), sample().fingerprint());
        assert!(!format!("{back:?}").contains("su-next"));
    }

    #[test]
    fn secrets_never_print() {
        let s = sample();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("search-pass"));
        assert!(!dbg.contains("su-pass") && !dbg.contains("repl-pass") && !dbg.contains("tok\""));
        assert_eq!(s.postgresql.db_superuser_password.to_string(), "********");
    }

    #[test]
    fn fingerprint_changes_with_any_secret() {
        let a = sample();
        let mut b = sample();
        b.postgresql.db_superuser_password = Secret::new("other");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), sample().fingerprint());
    }
}
