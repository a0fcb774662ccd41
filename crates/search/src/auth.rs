//! HTTP Basic authentication of the search API, answered the way Elasticsearch's security
//! layer answers (`security_exception`, 401, `WWW-Authenticate`), so ES/OpenSearch clients
//! raise their usual authentication error. Passwords are compared in constant time and
//! never logged; a refusal logs the peer and the user name only.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;
use std::sync::Arc;

/// One accepted user name and password. Several may be accepted at once while a password is
/// rotated (the new one everywhere before the old one goes).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

// By hand, so a logged config never shows the password.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// The accepted credentials, re-read from `file` (JSON with an `auth` array of
/// [`Credential`]s, the service's settings file) when it is replaced or changes: how a
/// rotated password reaches a running service (`larder rotate-secrets`).
pub struct Accepted {
    file: Option<std::path::PathBuf>,
    current: std::sync::Mutex<(Option<Stamp>, Arc<Vec<Credential>>)>,
}

/// Identifies one version of a file: a rename gives a new inode even within one mtime tick.
type Stamp = (u64, std::time::SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auth: Vec<Credential>,
}

impl Accepted {
    pub fn new(initial: Vec<Credential>, file: Option<std::path::PathBuf>) -> Accepted {
        let s = file.as_deref().and_then(stamp);
        Accepted {
            file,
            current: std::sync::Mutex::new((s, Arc::new(initial))),
        }
    }

    /// The credentials accepted now (one `stat` per call when a file is watched).
    pub fn get(&self) -> Arc<Vec<Credential>> {
        let mut cur = self.current.lock().unwrap();
        if let Some(f) = &self.file {
            let s = stamp(f);
            if s.is_some() && s != cur.0 {
                cur.0 = s;
                match std::fs::read(f)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<AuthFile>(&b).map_err(|e| e.to_string()))
                {
                    // A running service never turns authentication off: that takes a restart.
                    Ok(a) if a.auth.is_empty() && !cur.1.is_empty() => tracing::warn!(
                        "{} lists no credentials; keeping the accepted ones",
                        f.display()
                    ),
                    Ok(a) => {
                        tracing::info!(
                            "accepted search credentials re-read ({} in all)",
                            a.auth.len()
                        );
                        cur.1 = Arc::new(a.auth)
                    }
                    Err(e) => tracing::warn!(
                        "cannot re-read the credentials in {}: {e}; keeping the accepted ones",
                        f.display()
                    ),
                }
            }
        }
        cur.1.clone()
    }
}

const CHALLENGE: &str = "Basic realm=\"security\" charset=\"UTF-8\"";

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    /// Wrong password or unknown user (not told apart to the client).
    Wrong {
        username: String,
    },
}

/// Checks an `Authorization` header value against the accepted credentials.
pub fn check(header: Option<&[u8]>, accepted: &[Credential]) -> Result<(), Refusal> {
    let Some(raw) = header else {
        return Err(Refusal::Missing);
    };
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::Missing)?;
    let Some(b64) = text
        .strip_prefix("Basic ")
        .or_else(|| text.strip_prefix("basic "))
    else {
        return Err(Refusal::Missing);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Refusal::Missing)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Refusal::Missing)?;
    let Some((user, pass)) = decoded.split_once(':') else {
        return Err(Refusal::Missing);
    };
    // Every credential is compared (no early exit), so timing says nothing about which.
    let mut ok = false;
    for c in accepted {
        ok |= ct_eq(c.username.as_bytes(), user.as_bytes())
            & ct_eq(c.password.as_bytes(), pass.as_bytes());
    }
    if ok {
        Ok(())
    } else {
        Err(Refusal::Wrong {
            username: user.to_string(),
        })
    }
}

/// Constant-time equality for equal lengths (a length difference is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The ES-shaped 401.
pub fn refusal_response(r: &Refusal, path: &str) -> Response {
    let reason = match r {
        Refusal::Missing => format!("missing authentication credentials for REST request [{path}]"),
        Refusal::Wrong { username } => {
            format!("unable to authenticate user [{username}] for REST request [{path}]")
        }
    };
    let cause = json!({
        "type": "security_exception",
        "reason": reason,
        "header": {"WWW-Authenticate": CHALLENGE},
    });
    let mut err = cause.clone();
    err["root_cause"] = json!([cause]);
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": err, "status": 401})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    resp
}

/// The middleware: every route requires a valid credential when any is configured.
pub async fn require(State(source): State<Arc<Accepted>>, req: Request, next: Next) -> Response {
    let accepted = source.get();
    if accepted.is_empty() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match check(header, &accepted) {
        Ok(()) => next.run(req).await,
        Err(r) => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<crate::service::Peer>>()
                .map(|c| c.0 .0.to_string())
                .unwrap_or_else(|| "-".into());
            if let Refusal::Wrong { username } = &r {
                tracing::warn!(%peer, user = %username, path = %req.uri().path(), "search request refused: wrong credentials");
            }
            refusal_response(&r, req.uri().path())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_credentials_follow_their_file_but_never_turn_authentication_off() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("service.json");
        let cred = |u: &str, p: &str| Credential {
            username: u.into(),
            password: p.into(),
        };
        // Replaced the way the agent writes it: a new file renamed over the old.
        let write = |text: &str| {
            let tmp = dir.path().join("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &f).unwrap();
        };
        write(r#"{"listen": "x", "auth": [{"username": "larder", "password": "old"}]}"#);
        let a = Accepted::new(vec![cred("larder", "old")], Some(f.clone()));
        assert_eq!(*a.get(), vec![cred("larder", "old")]);
        write(
            r#"{"auth": [{"username": "larder", "password": "new"}, {"username": "larder", "password": "old"}]}"#,
        );
        assert_eq!(*a.get(), vec![cred("larder", "new"), cred("larder", "old")]);
        assert!(check(Some(&basic("larder:new")), &a.get()).is_ok());
        write(r#"{"auth": []}"#);
        assert_eq!(a.get().len(), 2, "an empty list must not open the port");
        write("not json");
        assert_eq!(a.get().len(), 2);
        write(r#"{"auth": [{"username": "larder", "password": "new"}]}"#);
        assert_eq!(*a.get(), vec![cred("larder", "new")]);
        assert!(check(Some(&basic("larder:old")), &a.get()).is_err());
        // Without a file the initial list stays.
        let fixed = Accepted::new(vec![cred("u", "p")], None);
        assert_eq!(*fixed.get(), vec![cred("u", "p")]);
    }

    fn basic(s: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[test]
    fn accepts_any_configured_credential_and_refuses_the_rest() {
        let accepted = vec![
            Credential {
                username: "larder".into(),
                password: "old".into(),
            },
            Credential {
                username: "larder".into(),
                password: "new:with:colons".into(),
            },
        ];
        assert_eq!(check(Some(&basic("larder:old")), &accepted), Ok(()));
        assert_eq!(
            check(Some(&basic("larder:new:with:colons")), &accepted),
            Ok(())
        );
        assert_eq!(
            check(Some(&basic("larder:nope")), &accepted),
            Err(Refusal::Wrong {
                username: "larder".into()
            })
        );
        assert_eq!(check(None, &accepted), Err(Refusal::Missing));
        assert_eq!(check(Some(b"Bearer x"), &accepted), Err(Refusal::Missing));
        assert_eq!(check(Some(b"Basic !!!"), &accepted), Err(Refusal::Missing));
    }

    #[test]
    fn refusal_is_es_shaped_and_never_echoes_a_password() {
        let r = refusal_response(
            &Refusal::Wrong {
                username: "u".into(),
            },
            "/chef",
        );
        assert_eq!(r.status(), 401);
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic realm="));
        let dbg = format!(
            "{:?}",
            Credential {
                username: "u".into(),
                password: "secret".into()
            }
        );
        assert!(!dbg.contains("secret"));
    }
}
