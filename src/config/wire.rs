//! The config file's shape, as serde reads it: every key optional (defaults
//! are applied in `validate`), unknown keys refused, values with a text form
//! parsed by their own types (`values`). `[dns]` is a plain table here: its
//! keys beyond the shared four belong to the chosen provider, which reads
//! them itself (`dns::ProviderSpec`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::{Addr, Dur, Size};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub state_dir: Option<String>,
    pub workers: Option<i64>,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub acme: Acme,
    pub dns: Option<toml::Table>,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub limits: Limits,
    pub metrics: Option<Metrics>,
    pub cluster: Option<Cluster>,
    #[serde(default)]
    pub site: Vec<Site>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub store: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub node: Option<String>,
    pub lease: Option<Dur>,
    pub key_encryption_key_file: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub http: Option<Addr>,
    pub https: Option<Addr>,
    pub redirect: Option<i64>,
    pub handshake_timeout: Option<Dur>,
    pub http3: Option<bool>,
    pub proxy_protocol: Option<bool>,
    pub proxy_protocol_from: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    pub directory: Option<String>,
    pub contact: Option<Vec<String>>,
    pub ca_bundle: Option<String>,
    pub key_type: Option<String>,
    pub eab: Option<Eab>,
    pub deploy_hook: Option<String>,
    pub profile: Option<String>,
    pub profile_required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eab {
    pub kid: String,
    pub hmac: String,
}

/// The keys of `[dns]` every provider takes.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsShared {
    pub provider: Option<String>,
    pub propagation_timeout: Option<Dur>,
    pub propagation_delay: Option<Dur>,
    pub resolvers: Option<Vec<String>>,
}

impl DnsShared {
    pub const KEYS: [&'static str; 4] = [
        "provider",
        "propagation_timeout",
        "propagation_delay",
        "resolvers",
    ];
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub access: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub header_read_timeout: Option<Dur>,
    pub keepalive_timeout: Option<Dur>,
    pub send_timeout: Option<Dur>,
    pub body_idle_timeout: Option<Dur>,
    pub max_header_bytes: Option<Size>,
    pub max_body_bytes: Option<Size>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub h2_max_pending_resets: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub shutdown_grace: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: Addr,
    pub username: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub domains: Option<Vec<String>>,
    pub upstreams: Option<Vec<Upstream>>,
    pub balance: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub connect_timeout: Option<Dur>,
    pub response_timeout: Option<Dur>,
    pub error_pages: Option<BTreeMap<String, String>>,
    pub max_fails: Option<i64>,
    pub fail_timeout: Option<Dur>,
    pub max_tries: Option<i64>,
    pub max_conns: Option<i64>,
    pub max_tunnels: Option<i64>,
    pub health_check: Option<HealthCheck>,
    pub profile: Option<String>,
    pub challenge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub status: Option<i64>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
}

/// `"host:port"` or `{ addr = "host:port", weight = 3, max_conns = 16 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Upstream {
    Addr(String),
    Table(UpstreamTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTable {
    pub addr: String,
    pub weight: Option<i64>,
    pub max_conns: Option<i64>,
}
