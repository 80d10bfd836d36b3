//! The validated configuration the rest of edge uses: every value typed,
//! every default applied, every cross-key rule checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::defaults;
use crate::dns::DnsProvider;
use crate::names;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Things worth a warning that do not stop edge (logged once logging is up).
    pub warnings: Vec<String>,
    /// The file holds a credential inline (TSIG secret, API token, password).
    pub holds_secrets: bool,
    pub state_dir: PathBuf,
    pub workers: usize,
    pub listen: Listen,
    pub acme: Acme,
    pub dns: Dns,
    pub log: Log,
    pub limits: Limits,
    pub metrics: Option<SocketAddr>,
    /// Basic auth for everything on the metrics listener, when set.
    pub metrics_auth: Option<MetricsAuth>,
    /// `[cluster]`: the fleet's shared store; `None` is a single node.
    pub cluster: Option<Cluster>,
    pub sites: Vec<Site>,
}

/// `[cluster]`: several edge nodes sharing certificates through etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub endpoints: Vec<String>,
    /// Ends in `/`; every key edge writes is under it.
    pub prefix: String,
    pub node: String,
    /// How long a lock outlives a node that died holding it.
    pub lease: Duration,
    pub key_encryption_key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd's own users: the name and the file whose first line is the password.
    pub auth: Option<(String, PathBuf)>,
}

/// `[metrics] username` and `password_file` (read when the daemon starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsAuth {
    pub username: String,
    pub password_file: PathBuf,
}

/// What one client may hold or send. Every value has a default chosen so that
/// real browsers and APIs never meet it and a hostile client meets it early;
/// the README lists each with its reason.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            send_timeout: defaults::SEND_TIMEOUT,
            body_idle_timeout: defaults::BODY_IDLE_TIMEOUT,
            max_header_bytes: defaults::MAX_HEADER_BYTES as usize,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            h2_max_concurrent_streams: defaults::H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_resets: defaults::H2_MAX_PENDING_RESETS,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// 308 keeps the method and body (our default); 301 is what nginx's `permanent` sends.
    pub redirect: u16,
    pub handshake_timeout: Duration,
    /// HTTP/3 (QUIC) on the `https` address, UDP.
    pub http3: bool,
    /// A PROXY protocol header is expected on both TCP listeners, from
    /// these peers only (`proxy_protocol_from`); `None` when off.
    pub proxy_protocol: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa4096,
}

impl KeyType {
    pub const NAMES: &'static str = "ecdsa-p256, ecdsa-p384, rsa2048, rsa4096";

    pub fn parse(s: &str) -> Option<KeyType> {
        Some(match s {
            "ecdsa-p256" => KeyType::EcdsaP256,
            "ecdsa-p384" => KeyType::EcdsaP384,
            "rsa2048" => KeyType::Rsa2048,
            "rsa4096" => KeyType::Rsa4096,
            _ => return None,
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa4096 => "rsa4096",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Acme {
    pub directory: String,
    pub contact: Vec<String>,
    pub ca_bundle: Option<PathBuf>,
    pub key_type: KeyType,
    pub eab: Option<Eab>,
    pub deploy_hook: Option<PathBuf>,
    /// The ACME profile to order (`classic`, `tlsserver`, `shortlived` ...).
    pub profile: Option<String>,
    /// A CA without `profile` fails the order (else: its default, logged).
    pub profile_required: bool,
}

#[derive(Clone)]
pub struct Eab {
    pub kid: String,
    pub hmac: String,
}

impl fmt::Debug for Eab {
    /// The HMAC is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac", &"<redacted>")
            .finish()
    }
}

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How the `_acme-challenge` TXT record gets published, and how edge checks it.
#[derive(Debug, Clone)]
pub struct Dns {
    /// The provider `[dns] provider` names, with its own keys read.
    pub provider: Arc<dyn DnsProvider>,
    pub propagation_timeout: Duration,
    pub propagation_delay: Duration,
    pub resolvers: Vec<SocketAddr>,
}

/// A credential, kept out of every `Debug` and log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a credential comes from. Files and environment variables are read when
/// the provider is built, so the config stays free of secrets and of I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
    Env(&'static str),
}

impl SecretSource {
    /// Reads the secret; the error names the source, never the value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret(s.trim().to_string()))
                .map_err(|e| format!("{}: {e}", p.display())),
            SecretSource::Env(v) => std::env::var(v)
                .map(Secret)
                .map_err(|_| format!("environment variable {v} is not set")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Text,
    Json,
    Off,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub access: AccessLog,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// nginx's smooth weighted round robin.
    RoundRobin,
    /// Fewest requests in flight per unit of weight.
    LeastConn,
    /// Client IP on a consistent-hash ring: a client sticks to one upstream, and
    /// an upstream leaving moves only its own clients.
    IpHash,
    /// Power of two random choices, the less loaded of the two.
    P2c,
}

/// Active health checking of a site's upstreams.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub status: u16,
    /// Consecutive passes before a down upstream gets traffic again.
    pub rise: u32,
    /// Consecutive failures before an upstream is taken out.
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`; the host may be a name (resolved at connect time, as in Docker).
    pub addr: String,
    pub weight: u32,
    /// Requests in flight to this upstream at once; more wait in edge's queue.
    /// 0 means no limit.
    pub max_conns: usize,
    /// WebSocket tunnels open to this upstream at once; more get 503.
    pub max_tunnels: usize,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub domains: Vec<String>,
    pub upstreams: Vec<Upstream>,
    pub balance: Balance,
    pub trusted_proxies: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Status -> HTML file that replaces the built-in page (nginx's `error_page`).
    pub error_pages: BTreeMap<u16, PathBuf>,
    /// Failures within `fail_timeout` that take an upstream out for `fail_timeout` (nginx).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Upstreams one request may try; 0 means every one.
    pub max_tries: usize,
    pub health_check: Option<HealthCheck>,
    /// This site's ACME profile, over `[acme] profile`.
    pub profile: Option<String>,
    /// How the CA checks this site's names.
    pub challenge: Challenge,
}

/// The ACME challenge a site's certificate is validated by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A TXT record through `[dns] provider` (the tutorial's; wildcards).
    Dns01,
    /// `/.well-known/acme-challenge/` on the plain-HTTP listener (port 80).
    Http01,
    /// A certificate for ALPN `acme-tls/1` on the HTTPS listener (port 443).
    TlsAlpn01,
    /// One `_validation-persist` TXT record, set once, for every order
    /// (draft-ietf-acme-dns-persist); dns-01 where the CA lacks it.
    DnsPersist01,
}

impl Challenge {
    pub fn name(self) -> &'static str {
        match self {
            Challenge::Dns01 => "dns-01",
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::DnsPersist01 => "dns-persist-01",
        }
    }

    /// Validated through DNS (wildcards allowed, IP addresses not).
    pub fn through_dns(self) -> bool {
        matches!(self, Challenge::Dns01 | Challenge::DnsPersist01)
    }
}

impl Site {
    /// The certificate lineage this site's certificate is stored under.
    pub fn cert_name(&self) -> String {
        names::lineage_name(&self.domains)
    }
}
