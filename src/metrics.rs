//! Prometheus metrics; `status::listener` serves them on `[metrics] listen`.
//!
//! One process-wide set, because metrics describe the process: requests by site,
//! status class and upstream, latency, upstream health, open connections, TLS
//! handshakes, certificate expiry and renewal outcomes. prometheus-client does
//! the text encoding; edge only records.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
    /// Shown only when this process follows a fleet store.
    cluster: Registry,
    pub cluster_store_up: Gauge,
    pub cluster_locks_held: Family<NameLabel, Gauge>,
    pub cluster_swap_seconds: Histogram,
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
        let mut cluster = Registry::with_prefix("edge_cluster");
        let cluster_store_up = Gauge::default();
        let cluster_locks_held = Family::<NameLabel, Gauge>::default();
        let cluster_swap_seconds =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]);
        cluster.register(
            "store_up",
            "1 while the fleet's store (etcd) is followed; 0 while the node serves its local copy",
            cluster_store_up.clone(),
        );
        cluster.register(
            "locks_held",
            "1 for each certificate lock this node holds in the fleet's store",
            cluster_locks_held.clone(),
        );
        cluster.register(
            "swap_seconds",
            "From another node's write of a certificate to its use here",
            cluster_swap_seconds.clone(),
        );
        Metrics {
            registry,
            cluster,
            cluster_store_up,
            cluster_locks_held,
            cluster_swap_seconds,
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
        if crate::store::cluster::Cluster::current().is_some() {
            // One exposition, one `# EOF` at its end.
            if let Some(body) = s.strip_suffix("# EOF\n") {
                s = body.to_string();
            }
            let _ = prometheus_client::encoding::text::encode(&mut s, &self.cluster);
        }
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

/// Counts a connection or a request refused at a limit (its config key).
pub fn refused(limit: &'static str) {
    METRICS
        .limits_hit
        .get_or_create(&LimitLabel { limit })
        .inc();
}

/// Counts an answer that says a limit was reached: 408, 413, 431.
pub fn limit_answer(status: u16) {
    let limit = match status {
        408 => "limits.timeouts",
        413 => "limits.max_body_bytes",
        431 => "limits.max_header_bytes",
        _ => return,
    };
    refused(limit);
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
/// The limits reached since start, by config key, for the status page.
pub fn limits_hit() -> Vec<crate::status::LimitHit> {
    LIMITS
        .iter()
        .map(|&limit| crate::status::LimitHit {
            limit: limit.to_string(),
            count: METRICS
                .limits_hit
                .get_or_create(&LimitLabel { limit })
                .get(),
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
