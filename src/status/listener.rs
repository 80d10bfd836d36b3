//! The `[metrics] listen` address: `/metrics` (Prometheus text), the
//! status page at `/` and `/status`, and `/status.json`; basic auth on all
//! of it when `[metrics] username` is set. One request per connection, read
//! with edge's HTTP/1 head reader, answered and closed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::metrics::METRICS;

/// Longest request head the metrics endpoint reads.
const MAX_HEAD: usize = 8 * 1024;
/// A client has this long to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the metrics listener serves beside `/metrics`: the status page
/// (`/`, `/status`) and its JSON (`/status.json`), and the basic auth all
/// of them need when `[metrics] username` is set.
#[derive(Clone)]
pub struct Site {
    pub status: Arc<super::Source>,
    pub manager: crate::certs::Manager,
    /// The `Authorization` value a request must carry, when auth is on.
    pub auth: Option<Arc<str>>,
}

/// The `Authorization` header value for `user` and `password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Serves `/metrics`, the status page and its JSON until `stop` fires: one
/// request per connection, read with edge's HTTP/1 head reader, answered
/// and closed.
pub async fn serve(listener: tokio::net::TcpListener, site: Site, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let site = site.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(stream, &site)).await;
        });
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(mut s: tokio::net::TcpStream, site: &Site) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(1024);
    let mut fields = Vec::new();
    let head = match crate::http1::head::read_one(&mut s, MAX_HEAD, &mut buf, &mut fields).await? {
        None => return Ok(()),
        Some(h) => h.ok(),
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, ctype, body, extra): (&str, &str, String, &str) = match head {
        None => ("400 Bad Request", TEXT, "bad request\n".into(), ""),
        Some(h) => {
            let target = h.target.get(&buf);
            let path = target.split(|&b| b == b'?').next().unwrap_or_default();
            let authorized = site.auth.as_deref().is_none_or(|want| {
                fields.iter().any(|f| {
                    f.name.get(&buf).eq_ignore_ascii_case(b"authorization")
                        && same(f.value.get(&buf), want.as_bytes())
                })
            });
            if !authorized {
                (
                    "401 Unauthorized",
                    TEXT,
                    "authentication required\n".into(),
                    "www-authenticate: Basic realm=\"edge\", charset=\"UTF-8\"\r\n",
                )
            } else {
                match path {
                    b"/metrics" => (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        METRICS.encode(),
                        "",
                    ),
                    b"/" | b"/status" => {
                        let snap = site.status.snapshot(&site.manager).await;
                        (
                            "200 OK",
                            "text/html; charset=utf-8",
                            super::page::render(&snap),
                            "cache-control: no-store\r\n",
                        )
                    }
                    b"/status.json" => {
                        let snap = site.status.snapshot(&site.manager).await;
                        (
                            "200 OK",
                            "application/json",
                            serde_json::to_string_pretty(&snap).unwrap_or_default(),
                            "cache-control: no-store\r\n",
                        )
                    }
                    _ => (
                        "404 Not Found",
                        TEXT,
                        "not found: try /, /status, /status.json or /metrics\n".into(),
                        "",
                    ),
                }
            }
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
