//! A minimal HTTP/1.0 client over TLS for the search API (port 9200: HTTPS with the node
//! certificate, HTTP Basic authentication), enough for `_bulk` and `_search` with a JSON body.
//! One connection per request (`HTTP/1.0`, the server closes), so a request can never be
//! confused with an earlier one's late answer.
//!
//! What matters to the search workload is *when* a request failed: before anything was sent
//! (connect or TLS handshake refused — the request cannot have been applied) or after (it may
//! have been). [`Failure`] keeps the two apart.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Where and how to reach a search API.
#[derive(Clone)]
pub struct HttpsTarget {
    /// "ip:port".
    pub addr: String,
    /// Name the certificate must carry; 127.0.0.1 is in every Larder node certificate, which
    /// is what a frontend verifies behind its haproxy.
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// HTTP Basic (user, password); `None` sends no `Authorization` header.
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for HttpsTarget {
    // By hand: never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTarget")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("user", &self.auth.as_ref().map(|a| a.0.as_str()))
            .finish()
    }
}

impl HttpsTarget {
    pub fn with_addr(&self, addr: &str) -> HttpsTarget {
        HttpsTarget {
            addr: addr.to_string(),
            ..self.clone()
        }
    }
}

/// A rustls client configuration trusting only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| Error::Invalid(format!("cluster CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| Error::Invalid(format!("cluster CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Invalid("no CA certificate in the PEM text".into()));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(format!("TLS client configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Why a request has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing of the request reached the server (TCP connect or TLS handshake failed).
    NotSent(String),
    /// The request was (at least partly) sent, then the connection failed or the answer was
    /// garbled: the server may have acted on it.
    AfterSend(String),
    /// No complete answer within the deadline (the request may have been sent).
    Timeout,
}

/// `method path` with `body` (sent as `application/json`, as Chef sends even `_bulk`),
/// answered within `timeout`.
pub async fn request(
    t: &HttpsTarget,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::result::Result<Response, Failure> {
    let sent = std::sync::atomic::AtomicBool::new(false);
    let r = tokio::time::timeout(timeout, exchange(t, method, path, body, &sent)).await;
    match r {
        Ok(r) => r,
        Err(_) if !sent.load(std::sync::atomic::Ordering::Relaxed) => Err(Failure::NotSent(
            "timeout before the request was sent".into(),
        )),
        Err(_) => Err(Failure::Timeout),
    }
}

async fn exchange(
    t: &HttpsTarget,
    method: &str,
    path: &str,
    body: &str,
    sent: &std::sync::atomic::AtomicBool,
) -> std::result::Result<Response, Failure> {
    let name = rustls::pki_types::ServerName::try_from(t.server_name.clone())
        .map_err(|e| Failure::NotSent(format!("server name {}: {e}", t.server_name)))?;
    let tcp = TcpStream::connect(&t.addr)
        .await
        .map_err(|e| Failure::NotSent(format!("connect {}: {e}", t.addr)))?;
    let _ = tcp.set_nodelay(true);
    let mut s = tokio_rustls::TlsConnector::from(t.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::NotSent(format!("TLS handshake with {}: {e}", t.addr)))?;
    let req = render_request(t, method, path, body);
    sent.store(true, std::sync::atomic::Ordering::Relaxed);
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| Failure::AfterSend(format!("sending: {e}")))?;
    s.flush()
        .await
        .map_err(|e| Failure::AfterSend(format!("sending: {e}")))?;
    let mut raw = Vec::new();
    // A peer closing without TLS close_notify is an error to rustls; the answer is still
    // complete when its Content-Length is there, which `parse_response` decides.
    let read_err = s.read_to_end(&mut raw).await.err();
    match parse_response(&raw) {
        Some(r) => Ok(r),
        None => Err(Failure::AfterSend(match read_err {
            Some(e) => format!("reading the answer: {e} (after {} bytes)", raw.len()),
            None => format!("incomplete answer ({} bytes)", raw.len()),
        })),
    }
}

fn render_request(t: &HttpsTarget, method: &str, path: &str, body: &str) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: larder-faults\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        t.server_name,
        body.len()
    );
    if let Some((u, p)) = &t.auth {
        head.push_str(&format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

/// Status and body of a complete HTTP/1.x answer: the body must be as long as its
/// `Content-Length` says (an answer cut short is `None`); without the header it runs to the
/// end of what was read (HTTP/1.0 close-delimited).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        if k.trim().eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<usize>().ok()?);
        }
        if k.trim().eq_ignore_ascii_case("transfer-encoding")
            && v.trim().eq_ignore_ascii_case("chunked")
        {
            // Not asked for (HTTP/1.0) and not decoded here.
            return None;
        }
    }
    let body = match length {
        Some(n) if body.len() < n => return None,
        Some(n) => &body[..n],
        None => body,
    };
    Some(Response {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_complete_only_with_its_whole_body() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_response(full),
            Some(Response {
                status: 200,
                body: "{\"a\":1}".into()
            })
        );
        // Cut short by a connection that died: not an answer.
        assert_eq!(parse_response(&full[..full.len() - 1]), None);
        assert_eq!(parse_response(b"HTTP/1.1 503 Ser"), None);
        // Close-delimited body (no Content-Length).
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "{}"));
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            ),
            None
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n"), None);
    }

    #[test]
    fn request_carries_length_type_and_basic_auth() {
        let t = HttpsTarget {
            addr: "127.0.0.1:9200".into(),
            server_name: "127.0.0.1".into(),
            tls: Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
            auth: Some(("larder".into(), "pw".into())),
        };
        let r = render_request(&t, "POST", "/_bulk", "{}\n");
        assert!(r.starts_with("POST /_bulk HTTP/1.0\r\n"), "{r}");
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Content-Type: application/json\r\n"));
        // base64("larder:pw")
        assert!(r.contains("Authorization: Basic bGFyZGVyOnB3\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n{}\n"));
        assert!(!format!("{t:?}").contains("pw"));
    }

    #[test]
    fn ca_without_certificate_is_refused() {
        assert!(client_config("not a pem").is_err());
    }
}
