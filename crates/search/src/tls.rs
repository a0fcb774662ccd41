//! HTTPS for the search API: a listener that completes TLS handshakes off the accept path
//! (one slow client cannot stall others) and answers a plain-HTTP request on the TLS port
//! with an ES-shaped 400 instead of a handshake failure the client cannot explain.
//!
//! The certificate is re-read from its files for every new connection when they changed, so
//! `rotate-certs` needs no restart of the service (established connections keep theirs).

use crate::SearchError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// A handshake that has not finished after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the service's certificate chain and key live (PEM). The chain is the node
/// certificate followed by its CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, SearchError> {
    let bad = |what: &str, p: &Path, e: String| {
        SearchError::Config(format!("search TLS {what} {}: {e}", p.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_chain)
        .map_err(|e| bad("certificate", &files.cert_chain, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", &files.cert_chain, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "certificate",
            &files.cert_chain,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let pair = CertifiedKey::new(chain, signing);
    // Read between the replacement of the key and of the certificate (`rotate-certs`), the
    // two do not match: refused, so the previous pair is served until both are new.
    pair.keys_match().map_err(|e| {
        bad(
            "certificate",
            &files.cert_chain,
            format!("does not match the key in {}: {e}", files.key.display()),
        )
    })?;
    Ok(Arc::new(pair))
}

/// Serves the current certificate, reloading it when the files' modification time changes.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl Reloading {
    fn stamp(&self) -> Option<SystemTime> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(&self.files.cert_chain).max(m(&self.files.key))
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let stamp = self.stamp();
        let mut cur = self.current.lock().unwrap();
        if stamp != cur.0 {
            // A half-written pair fails to load: keep serving the previous one.
            match load_key(&self.files) {
                Ok(k) => *cur = (stamp, k),
                Err(e) => tracing::warn!("keeping the previous search certificate: {e}"),
            }
        }
        Some(cur.1.clone())
    }
}

/// The rustls server configuration for `files` (fails now if they cannot be loaded).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, SearchError> {
    let key = load_key(files)?;
    let resolver = Reloading {
        files: files.clone(),
        current: Mutex::new((None, key)),
    };
    let stamp = resolver.stamp();
    resolver.current.lock().unwrap().0 = stamp;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SearchError::Config(format!("search TLS: {e}")))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("search TLS accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if !speaks_tls(&stream).await {
                        refuse_plain_http(stream).await;
                        return;
                    }
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "search TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "search TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            accept_task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when aborted (the listener is being dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A TLS connection starts with a handshake record (content type 22).
async fn speaks_tls(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, s.peek(&mut b)).await,
        Ok(Ok(1)) if b[0] == 0x16
    )
}

/// Reads the plain request's head (so closing does not reset the connection before the
/// client read the answer) and answers 400 in ES's error shape.
async fn refuse_plain_http(mut s: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    let read_head = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > 65536 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = plain_http_refusal_body();
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json; charset=UTF-8\r\nx-elastic-product: Elasticsearch\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The body of the answer to plain HTTP on the HTTPS port.
pub fn plain_http_refusal_body() -> String {
    let cause = serde_json::json!({
        "type": "illegal_argument_exception",
        "reason": "this port speaks HTTPS only: plain HTTP is refused; use an https:// URL (the cluster CA is in the secrets file, larder.ca_cert_pem)",
    });
    let mut err = cause.clone();
    err["root_cause"] = serde_json::json!([cause]);
    serde_json::json!({"error": err, "status": 400}).to_string()
}
