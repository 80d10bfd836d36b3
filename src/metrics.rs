//! Prometheus metrics, served on `[metrics] listen` when configured.
//!
//! One process-wide set, because metrics describe the process: requests by site,
//! status class and upstream, latency, upstream health, open connections, TLS
//! handshakes, certificate expiry and renewal outcomes. prometheus-client does
//! the text encoding; edge only records.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub site: String,
    pub class: &'static str,
    pub upstream: String,
    /// `http1`, `http2` or `http3`.
    pub proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabel {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub site: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub site: String,
    pub upstream: String,
    /// `refused`, `connect_timeout`, `reset`, `timeout`, `bad_answer`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The config key of the limit, e.g. `limits.max_connections_per_ip`,
    /// `limits.max_header_bytes`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<SiteLabel, Histogram>,
    pub upstream_up: Family<UpstreamLabels, Gauge>,
    pub upstream_failures: Family<FailureLabels, Counter>,
    pub open_connections: Gauge,
    pub handshakes: Family<ResultLabel, Counter>,
    pub cert_expiry: Family<NameLabel, Gauge<f64, AtomicU64>>,
    pub renewals: Family<ResultLabel, Counter>,
    pub limits_hit: Family<LimitLabel, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edge");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<SiteLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        let upstream_failures = Family::<FailureLabels, Counter>::default();
        let open_connections = Gauge::default();
        let handshakes = Family::<ResultLabel, Counter>::default();
        let cert_expiry = Family::<NameLabel, Gauge<f64, AtomicU64>>::default();
        let renewals = Family::<ResultLabel, Counter>::default();
        let limits_hit = Family::<LimitLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests by site, status class and upstream",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers",
            latency.clone(),
        );
        registry.register(
            "upstream_up",
            "1 when the last attempt to reach the upstream succeeded",
            upstream_up.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed attempts to reach an upstream or get its answer, by kind",
            upstream_failures.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes by result",
            handshakes.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the served certificate, unix seconds",
            cert_expiry.clone(),
        );
        registry.register(
            "renewals",
            "Certificate renewals by result",
            renewals.clone(),
        );
        registry.register(
            "limits_hit",
            "Connections refused and requests answered 408, 413 or 431, by the limit reached",
            limits_hit.clone(),
        );
        Metrics {
            registry,
            limits_hit,
            requests,
            latency,
            upstream_up,
            upstream_failures,
            open_connections,
            handshakes,
            cert_expiry,
            renewals,
        }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// The `class` label values, in the order `class_index` numbers them.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

/// Counts a connection refused at a cap (`which` is its config key).
pub fn refused(which: &'static str) {
    hit(which);
}

/// Counts an answer that says a limit was reached: 408, 413, 431.
pub fn limit_answer(status: u16) {
    let limit = match status {
        408 => "limits.timeouts",
        413 => "limits.max_body_bytes",
        431 => "limits.max_header_bytes",
        _ => return,
    };
    hit(limit);
}

/// The limits the status page lists, by config key (the `limit` label).
const LIMITS: [&str; 6] = [
    "limits.max_connections",
    "limits.max_connections_per_ip",
    "listen.proxy_protocol",
    "limits.max_header_bytes",
    "limits.max_body_bytes",
    "limits.timeouts",
];
/// The same counts as `limits_hit`, readable without encoding the registry.
static HITS: [std::sync::atomic::AtomicU64; LIMITS.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; LIMITS.len()];

fn hit(limit: &'static str) {
    if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
        HITS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    METRICS
        .limits_hit
        .get_or_create(&LimitLabel { limit })
        .inc();
}

/// The limits reached since start, by config key, for the status page.
pub fn limits_hit() -> Vec<crate::status::LimitHit> {
    LIMITS
        .iter()
        .zip(&HITS)
        .map(|(l, n)| crate::status::LimitHit {
            limit: l.to_string(),
            count: n.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect()
}

/// Counts an open connection for as long as it lives.
pub struct ConnGuard;

impl ConnGuard {
    pub fn new() -> ConnGuard {
        METRICS.open_connections.inc();
        ConnGuard
    }
}

impl Default for ConnGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        METRICS.open_connections.dec();
    }
}

/// Longest request head the metrics endpoint reads.
const MAX_HEAD: usize = 8 * 1024;
/// A client has this long to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the metrics listener serves beside `/metrics`: the status page
/// (`/`, `/status`) and its JSON (`/status.json`), and the basic auth all
/// of them need when `[metrics] username` is set.
#[derive(Clone)]
pub struct Site {
    pub status: Arc<crate::status::Source>,
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
                            crate::status::page::render(&snap),
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
