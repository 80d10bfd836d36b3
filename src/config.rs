//! The TOML wire format and the validated [`Config`] the rest of edge uses.
//!
//! The two are different types on purpose: serde only knows the shape of the file
//! (and rejects unknown keys), while [`validate`] turns every string into a typed
//! value and names the key, the bad value and what is expected when it cannot.
//! Nothing here touches the network; `edge check` adds the I/O checks on top.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::names;

/// A config file that cannot be used, with the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("no config file: looked for {tried}; pass --config FILE or set EDGE_CONFIG")]
    NotFound { tried: String },
}

/// Where the config comes from when neither `--config` nor `EDGE_CONFIG` says.
pub const DEFAULT_PATHS: [&str; 2] = ["config/edge.toml", "/etc/edge/edge.toml"];

/// Picks the config path: an explicit one (flag or `EDGE_CONFIG`) wins, else the
/// first default that exists.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    for p in DEFAULT_PATHS {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(ConfigError::NotFound {
        tried: DEFAULT_PATHS.join(", "),
    })
}

// ---------------------------------------------------------------- wire format

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<String>,
    workers: Option<i64>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    acme: RawAcme,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    limits: RawLimits,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    site: Vec<RawSite>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    http: Option<String>,
    https: Option<String>,
    redirect: Option<i64>,
    handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<String>,
    contact: Option<Vec<String>>,
    ca_bundle: Option<String>,
    key_type: Option<String>,
    eab: Option<RawEab>,
    deploy_hook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEab {
    kid: String,
    hmac: String,
}

/// Every key any provider takes; [`validate_dns`] rejects the ones the chosen
/// provider does not use, so a typo or a leftover key is never silently ignored.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    provider: Option<String>,
    propagation_timeout: Option<String>,
    propagation_delay: Option<String>,
    resolvers: Option<Vec<String>>,
    command: Option<String>,
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    server: Option<String>,
    zone: Option<String>,
    tsig_key: Option<String>,
    tsig_secret: Option<String>,
    tsig_secret_file: Option<String>,
    tsig_algorithm: Option<String>,
    ttl: Option<i64>,
    listen: Option<String>,
    api_token: Option<String>,
    api_token_file: Option<String>,
    api_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    send_timeout: Option<String>,
    body_idle_timeout: Option<String>,
    max_header_bytes: Option<toml::Value>,
    max_body_bytes: Option<toml::Value>,
    h2_max_concurrent_streams: Option<i64>,
    h2_max_pending_resets: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    domains: Option<Vec<String>>,
    upstreams: Option<Vec<RawUpstream>>,
    balance: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    error_pages: Option<BTreeMap<String, String>>,
    max_fails: Option<i64>,
    fail_timeout: Option<String>,
    max_tries: Option<i64>,
    max_conns: Option<i64>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    status: Option<i64>,
    rise: Option<i64>,
    fall: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUpstream {
    Addr(String),
    Table(RawUpstreamTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTable {
    addr: String,
    weight: Option<i64>,
    max_conns: Option<i64>,
}

// ---------------------------------------------------------------- validated

/// Requests in flight to one upstream before more wait in edge's queue.
/// Each upstream HTTP/1.1 connection costs memory (about 40 KiB with hyper's
/// client when this was measured; a socket and an 8 KiB read buffer with edge's
/// own), and a Flask backend gains nothing from hundreds of requests at once:
/// a full upstream is passed over for one with room, and when all are full
/// requests queue in edge, as HAProxy's `maxconn` does. In bench/run's
/// HTTP/2 test (500 streams) 64 cost no CPU against no limit and cut peak RSS
/// by about 7 MiB; 32 cost a third more CPU per request (smaller batches).
pub const DEFAULT_MAX_CONNS: usize = 64;
const MAX_CONNS_LIMIT: i64 = 100_000;

/// The validated configuration: every value typed, every path resolved.
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
    pub sites: Vec<Site>,
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
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            h2_max_concurrent_streams: 250,
            h2_max_pending_resets: 100,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(30),
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

#[derive(Debug, Clone)]
pub struct Dns {
    pub provider: Provider,
    pub propagation_timeout: Duration,
    pub propagation_delay: Duration,
    pub resolvers: Vec<SocketAddr>,
}

/// How the `_acme-challenge` TXT record gets published.
#[derive(Debug, Clone)]
pub enum Provider {
    /// A person sets the record; edge prints it and waits.
    Manual,
    /// A certbot-style hook script, called for present and cleanup.
    Exec { command: PathBuf },
    /// Pebble's test DNS server, through its management API.
    PebbleChalltestsrv { url: String },
    /// lego's httpreq convention: POST {fqdn, value} to `<url>/present` and `/cleanup`.
    Httpreq {
        url: String,
        username: Option<String>,
        password: Option<SecretSource>,
    },
    /// Cloudflare's v4 API with a scoped API token.
    Cloudflare {
        token: SecretSource,
        api_url: String,
    },
    /// edge answers DNS itself for `zone`; challenge names are CNAMEd into it.
    Builtin { listen: SocketAddr, zone: String },
    /// RFC 2136 dynamic update with TSIG to an authoritative server.
    Rfc2136 {
        server: SocketAddr,
        /// Found by SOA at `server` when not given.
        zone: Option<String>,
        tsig_key: String,
        tsig_secret: SecretSource,
        tsig_algorithm: TsigAlg,
        ttl: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlg {
    HmacSha256,
    HmacSha384,
    HmacSha512,
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

pub const CLOUDFLARE_API: &str = "https://api.cloudflare.com/client/v4";

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Manual => "manual",
            Provider::Exec { .. } => "exec",
            Provider::PebbleChalltestsrv { .. } => "pebble-challtestsrv",
            Provider::Httpreq { .. } => "httpreq",
            Provider::Cloudflare { .. } => "cloudflare",
            Provider::Rfc2136 { .. } => "rfc2136",
            Provider::Builtin { .. } => "builtin",
        }
    }

    /// Whether renewals can run with nobody at the keyboard.
    pub fn unattended(&self) -> bool {
        !matches!(self, Provider::Manual)
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
}

impl Site {
    /// The certificate lineage this site's certificate is stored under.
    pub fn cert_name(&self) -> String {
        names::lineage_name(&self.domains)
    }
}

// ---------------------------------------------------------------- loading

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut cfg = parse(path, &text)?;
    if cfg.holds_secrets {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o044 != 0 {
            cfg.warnings.push(format!(
                "{} holds a credential and is readable by others (mode {mode:o}); run `chmod 600 {}` or move the secret to a *_file key or an EDGE_DNS_* environment variable",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(cfg)
}

/// Validates config text; `path` is only used in messages and is kept in the result.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: format!("invalid config: {}", e.to_string().trim_end()),
    })?;
    Validator {
        path,
        secrets: std::cell::Cell::new(false),
    }
    .config(raw)
}

struct Validator<'a> {
    path: &'a Path,
    /// Set when the file itself holds a credential.
    secrets: std::cell::Cell<bool>,
}

impl Validator<'_> {
    fn note_secret_in_file(&self) {
        self.secrets.set(true);
    }

    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v).map_err(|e| {
                self.err(
                    key,
                    format!("{v:?} is not a duration ({e}); expected e.g. \"10s\", \"5m\", \"1h\""),
                )
            }),
        }
    }

    fn addr(
        &self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let v = value.unwrap_or(default);
        v.parse().map_err(|_| {
            self.err(key, format!("{v:?} is not an address; expected IP:PORT such as \"0.0.0.0:443\" or \"[::]:443\""))
        })
    }

    /// A DNS server: `IP` (port 53) or `IP:PORT`.
    fn dns_server(&self, key: &str, v: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        v.parse::<SocketAddr>()
            .or_else(|_| {
                v.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map_err(|_| {
                self.err(
                    key,
                    format!("{v:?}: expected IP or IP:PORT such as {example:?}"),
                )
            })
    }

    /// An http(s) base URL that paths are appended to: no trailing slash.
    fn base_url(&self, key: &str, url: String) -> Result<String, ConfigError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.err(key, format!("{url:?}: expected an http:// or https:// URL")));
        }
        Ok(url.trim_end_matches('/').to_string())
    }

    /// A secret set inline as `name`, in a file as `name_file`, or else read
    /// from the environment variable `env` when the provider is built.
    fn secret_source(
        &self,
        name: &str,
        inline: Option<String>,
        file: Option<String>,
        env: &'static str,
    ) -> Result<SecretSource, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(self.err(
                format!("dns.{name}"),
                format!("set {name} or {name}_file, not both"),
            )),
            (Some(s), None) => Ok(SecretSource::Inline(Secret(s))),
            (None, Some(f)) => Ok(SecretSource::File(PathBuf::from(f))),
            (None, None) => Ok(SecretSource::Env(env)),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let state_dir = PathBuf::from(raw.state_dir.as_deref().unwrap_or("acme-state"));
        if state_dir.as_os_str().is_empty() {
            return Err(self.err(
                "state_dir",
                "empty; expected a directory such as \"acme-state\" or \"/var/lib/edge\"",
            ));
        }
        let workers = match raw.workers {
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(n) => {
                return Err(self.err(
                    "workers",
                    format!(
                        "{n} is out of range; expected 1 to 1024 (default: the number of CPUs)"
                    ),
                ))
            }
        };
        let listen = self.listen(raw.listen)?;
        let acme = self.acme(raw.acme)?;
        let dns = self.dns(raw.dns)?;
        let log = self.log(raw.log)?;
        let limits = self.limits(raw.limits)?;
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(self.addr("metrics.listen", Some(&m.listen), "")?),
        };
        if raw.site.is_empty() {
            return Err(self.err(
                "site",
                "no [[site]] table; add one with `domains` and `upstreams`",
            ));
        }
        let mut sites = Vec::with_capacity(raw.site.len());
        for (i, s) in raw.site.into_iter().enumerate() {
            sites.push(self.site(i, s)?);
        }
        // A name served by two sites would make routing depend on file order.
        let mut seen = BTreeMap::new();
        for (i, s) in sites.iter().enumerate() {
            for d in &s.domains {
                if let Some(j) = seen.insert(d.clone(), i) {
                    return Err(self.err(
                        format!("site[{i}].domains"),
                        format!("{d:?} is already served by site[{j}]; each name may belong to one site"),
                    ));
                }
            }
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            warnings: Vec::new(),
            holds_secrets: self.secrets.get(),
            state_dir,
            workers,
            listen,
            acme,
            dns,
            log,
            limits,
            metrics,
            sites,
        })
    }

    /// A size: an integer number of bytes or a string such as "64k", "16m", "1g".
    fn size(
        &self,
        key: &str,
        value: Option<&toml::Value>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let bad = |v: &dyn std::fmt::Display| {
            self.err(
                key,
                format!("{v} is not a size; expected bytes (65536) or \"64k\", \"16m\", \"1g\""),
            )
        };
        match value {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
            Some(toml::Value::String(s)) => {
                let t = s.trim().to_ascii_lowercase();
                let (num, mult) = match t.chars().last() {
                    Some('k') => (&t[..t.len() - 1], 1024),
                    Some('m') => (&t[..t.len() - 1], 1024 * 1024),
                    Some('g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
                    _ => (t.as_str(), 1),
                };
                num.trim()
                    .parse::<u64>()
                    .map(|n| n * mult)
                    .map_err(|_| bad(&format!("{s:?}")))
            }
            Some(v) => Err(bad(v)),
        }
    }

    fn count(
        &self,
        key: &str,
        value: Option<i64>,
        default: usize,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<usize, ConfigError> {
        match value {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n as usize),
            Some(n) => Err(self.err(
                key,
                format!(
                    "{n} is out of range; expected {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    fn limits(&self, raw: RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let max_header_bytes = self.size(
            "limits.max_header_bytes",
            raw.max_header_bytes.as_ref(),
            d.max_header_bytes as u64,
        )?;
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            return Err(self.err(
                "limits.max_header_bytes",
                format!("{max_header_bytes} is out of range; expected 8k to 1m"),
            ));
        }
        Ok(Limits {
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_deref(),
                d.header_read_timeout,
            )?,
            keepalive_timeout: self.duration(
                "limits.keepalive_timeout",
                raw.keepalive_timeout.as_deref(),
                d.keepalive_timeout,
            )?,
            send_timeout: self.duration(
                "limits.send_timeout",
                raw.send_timeout.as_deref(),
                d.send_timeout,
            )?,
            body_idle_timeout: self.duration(
                "limits.body_idle_timeout",
                raw.body_idle_timeout.as_deref(),
                d.body_idle_timeout,
            )?,
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes: self.size(
                "limits.max_body_bytes",
                raw.max_body_bytes.as_ref(),
                d.max_body_bytes,
            )?,
            h2_max_concurrent_streams: self.count(
                "limits.h2_max_concurrent_streams",
                raw.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams as usize,
                1..=10_000,
            )? as u32,
            h2_max_pending_resets: self.count(
                "limits.h2_max_pending_resets",
                raw.h2_max_pending_resets,
                d.h2_max_pending_resets,
                1..=10_000,
            )?,
            max_connections: self.count(
                "limits.max_connections",
                raw.max_connections,
                d.max_connections,
                1..=1_000_000,
            )?,
            max_connections_per_ip: self.count(
                "limits.max_connections_per_ip",
                raw.max_connections_per_ip,
                d.max_connections_per_ip,
                1..=1_000_000,
            )?,
            shutdown_grace: self.duration(
                "limits.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                d.shutdown_grace,
            )?,
        })
    }

    fn listen(&self, raw: RawListen) -> Result<Listen, ConfigError> {
        let http = self.addr("listen.http", raw.http.as_deref(), "0.0.0.0:80")?;
        let https = self.addr("listen.https", raw.https.as_deref(), "0.0.0.0:443")?;
        if http == https && http.port() != 0 {
            return Err(self.err(
                "listen.http",
                format!("{http} is also listen.https; the two listeners need different ports"),
            ));
        }
        let redirect = match raw.redirect {
            None => 308,
            Some(c @ (301 | 302 | 307 | 308)) => c as u16,
            Some(c) => return Err(self.err("listen.redirect", format!("{c} is not a redirect status; expected 308 (default, keeps the method) or 301 (nginx's `permanent`)"))),
        };
        let handshake_timeout = self.duration(
            "listen.handshake_timeout",
            raw.handshake_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        Ok(Listen {
            http,
            https,
            redirect,
            handshake_timeout,
        })
    }

    fn acme(&self, raw: RawAcme) -> Result<Acme, ConfigError> {
        let directory = match raw.directory.as_deref().unwrap_or("letsencrypt") {
            "letsencrypt" => LETSENCRYPT.to_string(),
            "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
            url if url.starts_with("https://") || url.starts_with("http://") => {
                if url.parse::<http::Uri>().map(|u| u.host().is_none()).unwrap_or(true) {
                    return Err(self.err("acme.directory", format!("{url:?} is not a valid URL")));
                }
                url.to_string()
            }
            other => return Err(self.err("acme.directory", format!("{other:?}: expected \"letsencrypt\", \"letsencrypt-staging\" or a directory URL such as \"https://127.0.0.1:14000/dir\""))),
        };
        let contact = raw.contact.unwrap_or_default();
        for c in &contact {
            if !c.starts_with("mailto:") || !c.contains('@') {
                return Err(self.err(
                    "acme.contact",
                    format!("{c:?}: expected \"mailto:you@example.org\""),
                ));
            }
        }
        let key_type = match raw.key_type.as_deref() {
            None => KeyType::EcdsaP256,
            Some(k) => KeyType::parse(k).ok_or_else(|| {
                self.err(
                    "acme.key_type",
                    format!("{k:?}: expected one of {}", KeyType::NAMES),
                )
            })?,
        };
        let eab = match raw.eab {
            None => None,
            Some(e) if e.kid.is_empty() || e.hmac.is_empty() => {
                return Err(self.err(
                    "acme.eab",
                    "kid and hmac must both be set (your CA's dashboard shows them)",
                ))
            }
            Some(e) => Some(Eab {
                kid: e.kid,
                hmac: e.hmac,
            }),
        };
        Ok(Acme {
            directory,
            contact,
            ca_bundle: raw.ca_bundle.map(PathBuf::from),
            key_type,
            eab,
            deploy_hook: raw.deploy_hook.map(PathBuf::from),
        })
    }

    fn dns(&self, raw: RawDns) -> Result<Dns, ConfigError> {
        let provider_name = raw.provider.clone().unwrap_or_else(|| "manual".into());
        // Keys each provider takes, besides the three shared ones.
        let allowed: &[&str] = match provider_name.as_str() {
            "manual" => &[],
            "exec" => &["command"],
            "pebble-challtestsrv" => &["url"],
            "httpreq" => &["url", "username", "password"],
            "cloudflare" => &["api_token", "api_token_file", "api_url"],
            "builtin" => &["listen", "zone"],
            "rfc2136" => &["server", "zone", "tsig_key", "tsig_secret", "tsig_secret_file", "tsig_algorithm", "ttl"],
            other => {
                return Err(self.err("dns.provider", format!("{other:?} is not a provider this build knows; expected one of: manual, exec, pebble-challtestsrv, httpreq, cloudflare, rfc2136, builtin")))
            }
        };
        let inline_secret =
            raw.password.is_some() || raw.api_token.is_some() || raw.tsig_secret.is_some();
        let set: [(&str, bool); 16] = [
            ("command", raw.command.is_some()),
            ("url", raw.url.is_some()),
            ("username", raw.username.is_some()),
            ("password", raw.password.is_some()),
            ("server", raw.server.is_some()),
            ("zone", raw.zone.is_some()),
            ("tsig_key", raw.tsig_key.is_some()),
            ("tsig_secret", raw.tsig_secret.is_some()),
            ("tsig_secret_file", raw.tsig_secret_file.is_some()),
            ("tsig_algorithm", raw.tsig_algorithm.is_some()),
            ("ttl", raw.ttl.is_some()),
            ("listen", raw.listen.is_some()),
            ("api_token", raw.api_token.is_some()),
            ("api_token_file", raw.api_token_file.is_some()),
            ("api_url", raw.api_url.is_some()),
            ("provider", false),
        ];
        for (key, present) in set {
            if present && !allowed.contains(&key) {
                return Err(self.err(format!("dns.{key}"), format!("not used by provider {provider_name:?}; remove it or choose the provider it belongs to")));
            }
        }
        let provider = match provider_name.as_str() {
            "manual" => Provider::Manual,
            "exec" => Provider::Exec {
                command: PathBuf::from(raw.command.ok_or_else(|| {
                    self.err(
                        "dns.command",
                        "missing; provider \"exec\" needs the path of the hook script",
                    )
                })?),
            },
            "httpreq" => {
                let url = raw.url.ok_or_else(|| {
                    self.err(
                        "dns.url",
                        "missing; expected the base URL that takes /present and /cleanup",
                    )
                })?;
                let url = self.base_url("dns.url", url)?;
                let password = match raw.password {
                    Some(p) => Some(SecretSource::Inline(Secret(p))),
                    None if raw.username.is_some() => Some(SecretSource::Env("EDGE_DNS_PASSWORD")),
                    None => None,
                };
                Provider::Httpreq {
                    url,
                    username: raw.username,
                    password,
                }
            }
            "builtin" => {
                let listen = self.addr("dns.listen", raw.listen.as_deref(), "0.0.0.0:53")?;
                let zone = raw.zone.ok_or_else(|| self.err("dns.zone", "missing; expected the zone delegated to this host, e.g. \"acme.example.org\""))?;
                let zone = names::validate_domain(&zone).map_err(|m| self.err("dns.zone", m))?;
                if zone.starts_with("*.") {
                    return Err(self.err("dns.zone", "a zone cannot be a wildcard"));
                }
                Provider::Builtin { listen, zone }
            }
            "rfc2136" => {
                let server_s = raw.server.ok_or_else(|| {
                    self.err(
                        "dns.server",
                        "missing; expected the primary server's IP or IP:PORT, e.g. \"192.0.2.53\"",
                    )
                })?;
                let server = self.dns_server("dns.server", &server_s, "192.0.2.53")?;
                let zone = match raw.zone {
                    Some(z) => {
                        Some(names::validate_domain(&z).map_err(|m| self.err("dns.zone", m))?)
                    }
                    None => None,
                };
                let tsig_key = raw.tsig_key.ok_or_else(|| {
                    self.err(
                        "dns.tsig_key",
                        "missing; expected the TSIG key name the server knows, e.g. \"edge-key\"",
                    )
                })?;
                let tsig_secret = self.secret_source(
                    "tsig_secret",
                    raw.tsig_secret,
                    raw.tsig_secret_file,
                    "EDGE_DNS_TSIG_SECRET",
                )?;
                let tsig_algorithm = match raw.tsig_algorithm.as_deref().unwrap_or("hmac-sha256") {
                    "hmac-sha256" => TsigAlg::HmacSha256,
                    "hmac-sha384" => TsigAlg::HmacSha384,
                    "hmac-sha512" => TsigAlg::HmacSha512,
                    "hmac-sha1" => return Err(self.err("dns.tsig_algorithm", "hmac-sha1 is not supported by this build (its TSIG library signs with SHA-2 only); create an hmac-sha256 key")),
                    other => return Err(self.err("dns.tsig_algorithm", format!("{other:?}: expected \"hmac-sha256\" (default), \"hmac-sha384\" or \"hmac-sha512\""))),
                };
                let ttl = self.count("dns.ttl", raw.ttl, 60, 1..=86_400)? as u32;
                Provider::Rfc2136 {
                    server,
                    zone,
                    tsig_key,
                    tsig_secret,
                    tsig_algorithm,
                    ttl,
                }
            }
            "cloudflare" => {
                let token = self.secret_source(
                    "api_token",
                    raw.api_token,
                    raw.api_token_file,
                    "EDGE_DNS_API_TOKEN",
                )?;
                let api_url = raw.api_url.unwrap_or_else(|| CLOUDFLARE_API.to_string());
                Provider::Cloudflare {
                    token,
                    api_url: self.base_url("dns.api_url", api_url)?,
                }
            }
            _ => {
                let url = raw.url.ok_or_else(|| {
                    self.err(
                        "dns.url",
                        "missing; expected the management URL, e.g. \"http://127.0.0.1:8055\"",
                    )
                })?;
                Provider::PebbleChalltestsrv {
                    url: self.base_url("dns.url", url)?,
                }
            }
        };
        let propagation_timeout = self.duration(
            "dns.propagation_timeout",
            raw.propagation_timeout.as_deref(),
            Duration::from_secs(600),
        )?;
        let propagation_delay = self.duration(
            "dns.propagation_delay",
            raw.propagation_delay.as_deref(),
            Duration::ZERO,
        )?;
        let mut resolvers = Vec::new();
        for r in raw.resolvers.unwrap_or_default() {
            let addr = self.dns_server("dns.resolvers", &r, "127.0.0.1:8053")?;
            resolvers.push(addr);
        }
        if inline_secret {
            self.note_secret_in_file();
        }
        Ok(Dns {
            provider,
            propagation_timeout,
            propagation_delay,
            resolvers,
        })
    }

    fn log(&self, raw: RawLog) -> Result<Log, ConfigError> {
        let access = match raw.access.as_deref().unwrap_or("text") {
            "text" => AccessLog::Text,
            "json" => AccessLog::Json,
            "off" => AccessLog::Off,
            other => {
                return Err(self.err(
                    "log.access",
                    format!("{other:?}: expected \"text\", \"json\" or \"off\""),
                ))
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.err(
                "log.level",
                format!("{level:?}: expected error, warn, info, debug or trace"),
            ));
        }
        Ok(Log { access, level })
    }

    fn site(&self, i: usize, raw: RawSite) -> Result<Site, ConfigError> {
        let k = |name: &str| format!("site[{i}].{name}");
        let domains = raw.domains.ok_or_else(|| {
            self.err(
                k("domains"),
                "missing; expected a list such as [\"app.example.org\"]",
            )
        })?;
        if domains.is_empty() {
            return Err(self.err(k("domains"), "empty list; expected at least one name"));
        }
        let mut valid = Vec::with_capacity(domains.len());
        for d in &domains {
            let name = names::validate_domain(d).map_err(|m| self.err(k("domains"), m))?;
            if !valid.contains(&name) {
                valid.push(name);
            }
        }
        let ups = raw.upstreams.ok_or_else(|| {
            self.err(
                k("upstreams"),
                "missing; expected a list such as [\"127.0.0.1:5001\"]",
            )
        })?;
        if ups.is_empty() {
            return Err(self.err(
                k("upstreams"),
                "empty list; expected at least one \"host:port\"",
            ));
        }
        let max_conns = self.count(
            &k("max_conns"),
            raw.max_conns,
            DEFAULT_MAX_CONNS,
            0..=MAX_CONNS_LIMIT,
        )?;
        let mut upstreams = Vec::with_capacity(ups.len());
        for u in ups {
            let (addr, weight, own_max_conns) = match u {
                RawUpstream::Addr(a) => (a, 1, None),
                RawUpstream::Table(t) => (t.addr, t.weight.unwrap_or(1), t.max_conns),
            };
            let max_conns = match own_max_conns {
                None => max_conns,
                Some(n) if (0..=MAX_CONNS_LIMIT).contains(&n) => n as usize,
                Some(n) => {
                    return Err(self.err(
                        k("upstreams"),
                        format!("{addr}: max_conns {n} is out of range; expected 0 (no limit) to {MAX_CONNS_LIMIT}"),
                    ))
                }
            };
            check_upstream_addr(&addr).map_err(|m| self.err(k("upstreams"), m))?;
            if !(1..=1000).contains(&weight) {
                return Err(self.err(
                    k("upstreams"),
                    format!("{addr}: weight {weight} is out of range; expected 1 to 1000"),
                ));
            }
            upstreams.push(Upstream {
                addr,
                weight: weight as u32,
                max_conns,
            });
        }
        let balance = match raw.balance.as_deref().unwrap_or("round_robin") {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "ip_hash" => Balance::IpHash,
            "p2c" => Balance::P2c,
            other => {
                return Err(self.err(
                    k("balance"),
                    format!(
                    "{other:?}: expected \"round_robin\", \"least_conn\", \"ip_hash\" or \"p2c\""
                ),
                ))
            }
        };
        let max_fails = self.count(&k("max_fails"), raw.max_fails, 1, 0..=1000)? as u32;
        let fail_timeout = self.duration(
            &k("fail_timeout"),
            raw.fail_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        let max_tries = self.count(&k("max_tries"), raw.max_tries, 0, 0..=100)?;
        let health_check = match raw.health_check {
            None => None,
            Some(h) => {
                let path = h.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    return Err(self.err(
                        k("health_check.path"),
                        format!("{path:?}: expected a path starting with '/'"),
                    ));
                }
                let status = h.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(self.err(
                        k("health_check.status"),
                        format!("{status}: expected an HTTP status"),
                    ));
                }
                Some(HealthCheck {
                    path,
                    interval: self.duration(
                        &k("health_check.interval"),
                        h.interval.as_deref(),
                        Duration::from_secs(5),
                    )?,
                    timeout: self.duration(
                        &k("health_check.timeout"),
                        h.timeout.as_deref(),
                        Duration::from_secs(2),
                    )?,
                    status: status as u16,
                    rise: self.count(&k("health_check.rise"), h.rise, 2, 1..=100)? as u32,
                    fall: self.count(&k("health_check.fall"), h.fall, 3, 1..=100)? as u32,
                })
            }
        };
        let mut trusted_proxies = Vec::new();
        for p in raw.trusted_proxies.unwrap_or_default() {
            let net = p
                .parse::<IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    self.err(
                        k("trusted_proxies"),
                        format!("{p:?}: expected a CIDR such as \"10.0.0.0/8\" or an IP"),
                    )
                })?;
            trusted_proxies.push(net);
        }
        let connect_timeout = self.duration(
            &k("connect_timeout"),
            raw.connect_timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        let response_timeout = self.duration(
            &k("response_timeout"),
            raw.response_timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        let mut error_pages = BTreeMap::new();
        for (status, file) in raw.error_pages.unwrap_or_default() {
            let code: u16 = status
                .parse()
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| {
                    self.err(
                        k("error_pages"),
                        format!("{status:?}: expected an HTTP error status such as 502"),
                    )
                })?;
            error_pages.insert(code, PathBuf::from(file));
        }
        Ok(Site {
            domains: valid,
            upstreams,
            balance,
            trusted_proxies,
            connect_timeout,
            response_timeout,
            error_pages,
            max_fails,
            fail_timeout,
            max_tries,
            health_check,
        })
    }
}

/// `host:port` with a usable port; the host may be an IP, `[v6]` or a DNS name.
fn check_upstream_addr(addr: &str) -> Result<(), String> {
    let bad = || {
        format!("{addr:?} is not an upstream address; expected \"host:port\" such as \"127.0.0.1:5001\" or \"website1:5000\"")
    };
    if addr.contains("://") || addr.contains('/') {
        return Err(format!(
            "{addr:?}: give \"host:port\" without a scheme or path"
        ));
    }
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "s"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
[[site]]
domains = ["flask.example.org"]
upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]
"#;

    fn err(text: &str) -> String {
        parse(Path::new("t.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = parse(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.listen.redirect, 308);
        assert_eq!(c.sites[0].upstreams[1].weight, 3);
        assert_eq!(c.acme.directory, LETSENCRYPT);
        assert_eq!(c.sites[0].connect_timeout, Duration::from_secs(60));
        assert_eq!(c.sites[0].upstreams[0].max_conns, DEFAULT_MAX_CONNS);
    }

    #[test]
    fn max_conns_for_the_site_and_per_upstream() {
        let ups = r#"upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]"#;
        let text = GOOD.replace(
            ups,
            &format!(
                "{}\nmax_conns = 0",
                ups.replace("weight = 3", "max_conns = 8")
            ),
        );
        let c = parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(c.sites[0].upstreams[0].max_conns, 0, "0 is no limit");
        assert_eq!(c.sites[0].upstreams[1].max_conns, 8);
        let e = err(&format!("{GOOD}max_conns = -1\n"));
        assert!(
            e.contains("site[0].max_conns") && e.contains("out of range"),
            "{e}"
        );
        let e = err(&GOOD.replace("weight = 3", "max_conns = 100001"));
        assert!(
            e.contains("site[0].upstreams") && e.contains("website2:5000: max_conns"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("bogus = 1\n").contains("unknown field `bogus`"));
        assert!(err(&GOOD.replace("127.0.0.1:8080", "nope")).contains("listen.http"));
        assert!(err(&GOOD.replace(
            r#"upstreams = ["127.0.0.1:5001", { addr = "website2:5000", weight = 3 }]"#,
            "upstreams = []"
        ))
        .contains("site[0].upstreams"));
        assert!(err(&format!(
            "{GOOD}\n[dns]\nprovider = \"manual\"\nurl = \"http://x\"\n"
        ))
        .contains("dns.url"));
        assert!(err(&GOOD.replace("flask.example.org", "1.2.3.4")).contains("site[0].domains"));
    }

    #[test]
    fn bad_toml_shows_the_line() {
        let e = err("state_dir = \n");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn upstream_addresses() {
        assert!(check_upstream_addr("127.0.0.1:5001").is_ok());
        assert!(check_upstream_addr("[::1]:5001").is_ok());
        assert!(check_upstream_addr("website1:5000").is_ok());
        assert!(check_upstream_addr("website1").is_err());
        assert!(check_upstream_addr("http://x:1").is_err());
        assert!(check_upstream_addr("x:0").is_err());
    }
}
