//! A minimal HTTP/1.1 GET, enough to read the status code of a health endpoint the way
//! haproxy's `httpchk` does. Written by hand to keep the suite free of an HTTP stack and
//! its TLS providers; the health endpoints are plain HTTP on the private subnet.

use std::time::Duration;

/// Sent with every request, so the agents can tell the suite's samplers from the frontend
/// haproxy's checks (whose rhythm they learn; see `larder_core::check_phase`).
const AGENT: &str = "larder-faults";

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status code of `GET path` on `addr` ("ip:port"), or `None` when there is no answer within
/// `timeout` (refused, reset, hung, garbled) — haproxy treats all of those as DOWN.
pub async fn get_status(addr: &str, path: &str, timeout: Duration) -> Option<u16> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let port = addr.rsplit(':').next().unwrap_or("80");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: {AGENT}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        // Only the status line is needed.
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        line.split_whitespace().nth(1)?.parse().ok()
    })
    .await
    .ok()
    .flatten()
}

/// Status and body of `GET path` (the body read until the server closes, at most 1 MiB).
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let port = addr.rsplit(':').next().unwrap_or("80");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: {AGENT}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > (1 << 20) {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}
