//! Wire format -> model: defaults applied, strings that name a choice turned
//! into their enum, ranges and cross-key rules checked. Each error names the
//! key (`site[0].upstreams`), the bad value and what would be right.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::provider_keys::{dns_server, ProviderKeys};
use super::values::Dur;
use super::{defaults, wire, ConfigError};
use super::{
    AccessLog, Acme, Balance, Challenge, Cluster, Config, Dns, Eab, HealthCheck, KeyType, Limits,
    Listen, Log, MetricsAuth, Site, Upstream, LETSENCRYPT, LETSENCRYPT_STAGING,
};
use crate::dns::PROVIDERS;
use crate::names;

const MAX_CONNS_LIMIT: i64 = 100_000;

struct V<'a> {
    path: &'a Path,
    holds_secrets: bool,
}

fn dur(v: Option<Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

pub(super) fn config(path: &Path, raw: wire::File) -> Result<Config, ConfigError> {
    let mut v = V {
        path,
        holds_secrets: false,
    };
    let state_dir = PathBuf::from(raw.state_dir.as_deref().unwrap_or(defaults::STATE_DIR));
    if state_dir.as_os_str().is_empty() {
        return Err(v.err(
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
            return Err(v.err(
                "workers",
                format!("{n} is out of range; expected 1 to 1024 (default: the number of CPUs)"),
            ))
        }
    };
    let listen = v.listen(raw.listen)?;
    let acme = v.acme(raw.acme)?;
    let dns = v.dns(raw.dns.unwrap_or_default())?;
    let log = v.log(raw.log)?;
    let limits = v.limits(raw.limits)?;
    let (metrics, metrics_auth) = match raw.metrics {
        None => (None, None),
        Some(m) => (
            Some(m.listen.0),
            v.metrics_auth(m.username, m.password_file)?,
        ),
    };
    let cluster = raw.cluster.map(|c| v.cluster(c)).transpose()?;
    if raw.site.is_empty() {
        return Err(v.err(
            "site",
            "no [[site]] table; add one with `domains` and `upstreams`",
        ));
    }
    let mut sites = Vec::with_capacity(raw.site.len());
    for (i, s) in raw.site.into_iter().enumerate() {
        sites.push(v.site(i, s)?);
    }
    // A name served by two sites would make routing depend on file order.
    let mut seen = BTreeMap::new();
    for (i, s) in sites.iter().enumerate() {
        for d in &s.domains {
            if let Some(j) = seen.insert(d.clone(), i) {
                return Err(v.err(
                    format!("site[{i}].domains"),
                    format!(
                        "{d:?} is already served by site[{j}]; each name may belong to one site"
                    ),
                ));
            }
        }
    }
    Ok(Config {
        path: path.to_path_buf(),
        warnings: Vec::new(),
        holds_secrets: v.holds_secrets,
        state_dir,
        workers,
        listen,
        acme,
        dns,
        log,
        limits,
        metrics,
        metrics_auth,
        cluster,
        sites,
    })
}

impl V<'_> {
    /// A CIDR, or one IP address.
    fn cidr(&self, key: &str, p: &str) -> Result<IpNet, ConfigError> {
        p.parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                self.err(
                    key,
                    format!("{p:?}: expected a CIDR such as \"10.0.0.0/8\" or an IP"),
                )
            })
    }

    fn metrics_auth(
        &self,
        username: Option<String>,
        password_file: Option<String>,
    ) -> Result<Option<MetricsAuth>, ConfigError> {
        match (username, password_file) {
            (None, None) => Ok(None),
            (Some(u), Some(f)) => {
                if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) {
                    return Err(self.err(
                        "metrics.username",
                        format!("{u:?}: expected a non-empty name without ':' (basic auth)"),
                    ));
                }
                Ok(Some(MetricsAuth {
                    username: u,
                    password_file: PathBuf::from(f),
                }))
            }
            (Some(_), None) => Err(self.err(
                "metrics.username",
                "set metrics.password_file too: the file whose first line is the password",
            )),
            (None, Some(_)) => Err(self.err(
                "metrics.password_file",
                "set metrics.username too (basic auth needs both)",
            )),
        }
    }

    fn cluster(&self, raw: wire::Cluster) -> Result<Cluster, ConfigError> {
        match raw.store.as_deref() {
            Some("etcd") => {}
            Some(other) => {
                return Err(self.err(
                    "cluster.store",
                    format!("{other:?} is not a store edge knows; expected \"etcd\""),
                ))
            }
            None => {
                return Err(self.err(
                    "cluster.store",
                    "missing; set store = \"etcd\" (or remove [cluster] for a single node)",
                ))
            }
        }
        let endpoints = raw.endpoints.unwrap_or_default();
        if endpoints.is_empty() {
            return Err(self.err(
                "cluster.endpoints",
                "missing or empty; expected etcd's client URLs, e.g. [\"http://10.0.0.1:2379\"]",
            ));
        }
        let mut tls = None;
        for e in &endpoints {
            let uri: Option<http::Uri> = e.parse().ok();
            let https = match uri.as_ref() {
                Some(u)
                    if u.port_u16().is_some()
                        && u.host().is_some()
                        && matches!(u.path(), "" | "/") =>
                {
                    match u.scheme_str() {
                        Some("http") => Some(false),
                        Some("https") => Some(true),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(https) = https else {
                return Err(self.err(
                    "cluster.endpoints",
                    format!("{e:?}: expected a URL with a port, e.g. \"http://10.0.0.1:2379\" or \"https://etcd-1:2379\""),
                ));
            };
            if tls.is_some_and(|t| t != https) {
                return Err(self.err(
                    "cluster.endpoints",
                    "mixes http:// and https://; etcd's members all speak TLS or none does",
                ));
            }
            tls = Some(https);
        }
        let prefix = raw
            .prefix
            .unwrap_or_else(|| defaults::CLUSTER_PREFIX.to_string());
        let prefix_ok = prefix.starts_with('/')
            && prefix.ends_with('/')
            && prefix.len() > 1
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
            && !prefix.contains("//");
        if !prefix_ok {
            return Err(self.err(
                "cluster.prefix",
                format!("{prefix:?}: expected a path that starts and ends with '/', e.g. \"/edge/\" (letters, digits, '.', '_', '-')"),
            ));
        }
        let node = match raw.node {
            Some(n) => n,
            None => host_name().ok_or_else(|| {
                self.err(
                    "cluster.node",
                    "not set and the host name could not be read; set node = \"edge-1\"",
                )
            })?,
        };
        let node_ok = !node.is_empty()
            && node.len() <= 63
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !node_ok {
            return Err(self.err(
                "cluster.node",
                format!("{node:?}: expected 1 to 63 letters, digits, '.', '_' or '-', unique in the fleet"),
            ));
        }
        let lease = dur(raw.lease, defaults::CLUSTER_LEASE);
        if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&lease)
            || lease.subsec_nanos() != 0
        {
            return Err(self.err(
                "cluster.lease",
                "expected whole seconds from \"2s\" to \"5m\" (default \"15s\"); etcd refuses shorter leases",
            ));
        }
        let key_encryption_key_file = raw.key_encryption_key_file.map(PathBuf::from).ok_or_else(|| {
            self.err(
                "cluster.key_encryption_key_file",
                "missing; private keys leave this host only encrypted. Make one with `head -c 32 /dev/urandom > /etc/edge/kek && chmod 600 /etc/edge/kek`, copy it to every node, and name it here",
            )
        })?;
        let client_cert = match (raw.cert_file, raw.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (Some(_), None) => {
                return Err(self.err(
                    "cluster.key_file",
                    "missing; cluster.cert_file needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "cluster.cert_file",
                    "missing; cluster.key_file needs its certificate",
                ))
            }
        };
        let ca_file = raw.ca_file.map(PathBuf::from);
        if tls == Some(false) && (ca_file.is_some() || client_cert.is_some()) {
            return Err(self.err(
                "cluster.endpoints",
                "ca_file/cert_file are set but the endpoints are http://; use https:// URLs for TLS to etcd",
            ));
        }
        let auth = match (raw.username, raw.password_file) {
            (None, None) => None,
            (Some(u), Some(f)) if !u.is_empty() => Some((u, PathBuf::from(f))),
            (Some(_), Some(_)) => return Err(self.err("cluster.username", "empty")),
            (Some(_), None) => {
                return Err(self.err(
                    "cluster.password_file",
                    "missing; cluster.username needs the file whose first line is the password",
                ))
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "cluster.username",
                    "missing; cluster.password_file needs the etcd user it belongs to",
                ))
            }
        };
        Ok(Cluster {
            endpoints,
            prefix,
            node,
            lease,
            key_encryption_key_file,
            ca_file,
            client_cert,
            auth,
        })
    }

    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.path, key, message)
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

    fn listen(&self, raw: wire::Listen) -> Result<Listen, ConfigError> {
        let http = raw.http.map_or(defaults::HTTP, |a| a.0);
        let https = raw.https.map_or(defaults::HTTPS, |a| a.0);
        if http == https && http.port() != 0 {
            return Err(self.err(
                "listen.http",
                format!("{http} is also listen.https; the two listeners need different ports"),
            ));
        }
        let redirect = match raw.redirect {
            None => defaults::REDIRECT,
            Some(c @ (301 | 302 | 307 | 308)) => c as u16,
            Some(c) => return Err(self.err("listen.redirect", format!("{c} is not a redirect status; expected 308 (default, keeps the method) or 301 (nginx's `permanent`)"))),
        };
        let mut from = Vec::new();
        for p in raw.proxy_protocol_from.unwrap_or_default() {
            from.push(self.cidr("listen.proxy_protocol_from", &p)?);
        }
        let proxy_protocol = match (raw.proxy_protocol.unwrap_or(false), from.is_empty()) {
            (false, true) => None,
            (false, false) => {
                return Err(self.err(
                    "listen.proxy_protocol_from",
                    "has no effect without listen.proxy_protocol = true; set that too, or remove this",
                ))
            }
            (true, true) => {
                return Err(self.err(
                    "listen.proxy_protocol",
                    "true needs listen.proxy_protocol_from: the balancers' addresses, such as [\"10.0.0.0/8\"]; a PROXY header from anyone else would let them pass for any client",
                ))
            }
            (true, false) => Some(from),
        };
        Ok(Listen {
            http,
            https,
            redirect,
            handshake_timeout: dur(raw.handshake_timeout, defaults::HANDSHAKE_TIMEOUT),
            http3: raw.http3.unwrap_or(defaults::HTTP3),
            proxy_protocol,
        })
    }

    fn acme(&self, raw: wire::Acme) -> Result<Acme, ConfigError> {
        let directory = match raw.directory.as_deref().unwrap_or(defaults::DIRECTORY) {
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
            None => defaults::KEY_TYPE,
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
            profile: self.profile("acme.profile", raw.profile)?,
            profile_required: raw.profile_required.unwrap_or(false),
        })
    }

    /// An ACME profile name: a short token, as CAs name them.
    fn profile(&self, key: &str, p: Option<String>) -> Result<Option<String>, ConfigError> {
        match p {
            Some(p)
                if p.is_empty()
                    || p.len() > 64
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') =>
            {
                Err(self.err(
                    key,
                    format!("{p:?}: expected a profile name the CA offers, such as \"tlsserver\", \"shortlived\" or \"classic\""),
                ))
            }
            p => Ok(p),
        }
    }

    /// The shared keys here; the provider's own keys by the provider, after
    /// checking that each key left is one the provider takes.
    fn dns(&mut self, mut table: toml::Table) -> Result<Dns, ConfigError> {
        let mut shared = toml::Table::new();
        for k in wire::DnsShared::KEYS {
            if let Some(v) = table.remove(k) {
                shared.insert(k.to_string(), v);
            }
        }
        let shared: wire::DnsShared = ProviderKeys::new(self.path, shared).read()?;
        let name = shared.provider.as_deref().unwrap_or(defaults::DNS_PROVIDER);
        // Exactly the name: an unknown one is an error, never another provider.
        let Some(spec) = PROVIDERS.iter().find(|p| p.name == name) else {
            let known: Vec<&str> = PROVIDERS.iter().map(|p| p.name).collect();
            return Err(self.err(
                "dns.provider",
                format!(
                    "{name:?} is not a provider this build knows; expected one of: {}",
                    known.join(", ")
                ),
            ));
        };
        if let Some(key) = table.keys().find(|k| !spec.keys.contains(&k.as_str())) {
            let owner = PROVIDERS
                .iter()
                .filter(|p| p.keys.contains(&key.as_str()))
                .map(|p| format!("{:?}", p.name))
                .collect::<Vec<_>>();
            let hint = if owner.is_empty() {
                "no provider takes it; check the spelling".to_string()
            } else {
                format!("it belongs to {}", owner.join(", "))
            };
            return Err(self.err(
                format!("dns.{key}"),
                format!("not used by provider {name:?}; remove it or choose the provider it belongs to ({hint})"),
            ));
        }
        let mut keys = ProviderKeys::new(self.path, table);
        let provider = (spec.parse)(&mut keys)?;
        self.holds_secrets |= keys.holds_secret();
        let mut resolvers = Vec::new();
        for r in shared.resolvers.unwrap_or_default() {
            let addr = dns_server(&r).ok_or_else(|| {
                self.err(
                    "dns.resolvers",
                    format!("{r:?}: expected IP or IP:PORT such as \"127.0.0.1:8053\""),
                )
            })?;
            resolvers.push(addr);
        }
        Ok(Dns {
            provider,
            propagation_timeout: dur(shared.propagation_timeout, defaults::PROPAGATION_TIMEOUT),
            propagation_delay: dur(shared.propagation_delay, defaults::PROPAGATION_DELAY),
            resolvers,
        })
    }

    fn log(&self, raw: wire::Log) -> Result<Log, ConfigError> {
        let access = match raw.access.as_deref() {
            None => defaults::ACCESS_LOG,
            Some("text") => AccessLog::Text,
            Some("json") => AccessLog::Json,
            Some("off") => AccessLog::Off,
            Some(other) => {
                return Err(self.err(
                    "log.access",
                    format!("{other:?}: expected \"text\", \"json\" or \"off\""),
                ))
            }
        };
        let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.err(
                "log.level",
                format!("{level:?}: expected error, warn, info, debug or trace"),
            ));
        }
        Ok(Log { access, level })
    }

    fn limits(&self, raw: wire::Limits) -> Result<Limits, ConfigError> {
        let max_header_bytes = raw
            .max_header_bytes
            .map_or(defaults::MAX_HEADER_BYTES, |s| s.0);
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            return Err(self.err(
                "limits.max_header_bytes",
                format!("{max_header_bytes} is out of range; expected 8k to 1m"),
            ));
        }
        Ok(Limits {
            header_read_timeout: dur(raw.header_read_timeout, defaults::HEADER_READ_TIMEOUT),
            keepalive_timeout: dur(raw.keepalive_timeout, defaults::KEEPALIVE_TIMEOUT),
            send_timeout: dur(raw.send_timeout, defaults::SEND_TIMEOUT),
            body_idle_timeout: dur(raw.body_idle_timeout, defaults::BODY_IDLE_TIMEOUT),
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes: raw.max_body_bytes.map_or(defaults::MAX_BODY_BYTES, |s| s.0),
            h2_max_concurrent_streams: self.count(
                "limits.h2_max_concurrent_streams",
                raw.h2_max_concurrent_streams,
                defaults::H2_MAX_CONCURRENT_STREAMS as usize,
                1..=10_000,
            )? as u32,
            h2_max_pending_resets: self.count(
                "limits.h2_max_pending_resets",
                raw.h2_max_pending_resets,
                defaults::H2_MAX_PENDING_RESETS,
                1..=10_000,
            )?,
            max_connections: self.count(
                "limits.max_connections",
                raw.max_connections,
                defaults::MAX_CONNECTIONS,
                1..=1_000_000,
            )?,
            max_connections_per_ip: self.count(
                "limits.max_connections_per_ip",
                raw.max_connections_per_ip,
                defaults::MAX_CONNECTIONS_PER_IP,
                1..=1_000_000,
            )?,
            shutdown_grace: dur(raw.shutdown_grace, defaults::SHUTDOWN_GRACE),
        })
    }

    fn site(&self, i: usize, raw: wire::Site) -> Result<Site, ConfigError> {
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
            let name = names::validate_name(d).map_err(|m| self.err(k("domains"), m))?;
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
            defaults::MAX_CONNS,
            0..=MAX_CONNS_LIMIT,
        )?;
        let max_tunnels = self.count(
            &k("max_tunnels"),
            raw.max_tunnels,
            defaults::MAX_TUNNELS,
            1..=MAX_CONNS_LIMIT,
        )?;
        let mut upstreams = Vec::with_capacity(ups.len());
        for u in ups {
            let (addr, weight, own_max_conns) = match u {
                wire::Upstream::Addr(a) => (a, i64::from(defaults::WEIGHT), None),
                wire::Upstream::Table(t) => (
                    t.addr,
                    t.weight.unwrap_or(i64::from(defaults::WEIGHT)),
                    t.max_conns,
                ),
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
                max_tunnels,
            });
        }
        let balance = match raw.balance.as_deref() {
            None => defaults::BALANCE,
            Some("round_robin") => Balance::RoundRobin,
            Some("least_conn") => Balance::LeastConn,
            Some("ip_hash") => Balance::IpHash,
            Some("p2c") => Balance::P2c,
            Some(other) => {
                return Err(self.err(
                    k("balance"),
                    format!(
                    "{other:?}: expected \"round_robin\", \"least_conn\", \"ip_hash\" or \"p2c\""
                ),
                ))
            }
        };
        let max_fails = self.count(
            &k("max_fails"),
            raw.max_fails,
            defaults::MAX_FAILS as usize,
            0..=1000,
        )? as u32;
        let max_tries = self.count(&k("max_tries"), raw.max_tries, defaults::MAX_TRIES, 0..=100)?;
        let health_check = match raw.health_check {
            None => None,
            Some(h) => Some(self.health_check(i, h)?),
        };
        let mut trusted_proxies = Vec::new();
        for p in raw.trusted_proxies.unwrap_or_default() {
            trusted_proxies.push(self.cidr(&k("trusted_proxies"), &p)?);
        }
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
        let challenge = match raw.challenge.as_deref() {
            None | Some("dns-01") => Challenge::Dns01,
            Some("http-01") => Challenge::Http01,
            Some("tls-alpn-01") => Challenge::TlsAlpn01,
            Some("dns-persist-01") => Challenge::DnsPersist01,
            Some(other) => {
                return Err(self.err(
                    k("challenge"),
                    format!("{other:?}: expected \"dns-01\" (default), \"dns-persist-01\", \"http-01\" or \"tls-alpn-01\""),
                ))
            }
        };
        if challenge.through_dns() {
            if let Some(ip) = valid.iter().find(|d| names::is_ip(d)) {
                return Err(self.err(
                    k("challenge"),
                    format!("{ip:?} is an IP address, which a CA validates only over http-01 or tls-alpn-01 (RFC 8738); set challenge = \"http-01\" or \"tls-alpn-01\" for this site"),
                ));
            }
        }
        if !challenge.through_dns() {
            if let Some(w) = valid.iter().find(|d| d.starts_with("*.")) {
                return Err(self.err(
                    k("challenge"),
                    format!("{w:?} is a wildcard, which only dns-01 can validate; set challenge = \"dns-01\" for this site, or list the names without the wildcard"),
                ));
            }
        }
        Ok(Site {
            domains: valid,
            upstreams,
            balance,
            trusted_proxies,
            connect_timeout: dur(raw.connect_timeout, defaults::CONNECT_TIMEOUT),
            response_timeout: dur(raw.response_timeout, defaults::RESPONSE_TIMEOUT),
            error_pages,
            max_fails,
            fail_timeout: dur(raw.fail_timeout, defaults::FAIL_TIMEOUT),
            max_tries,
            health_check,
            profile: self.profile(&k("profile"), raw.profile)?,
            challenge,
        })
    }

    fn health_check(&self, i: usize, h: wire::HealthCheck) -> Result<HealthCheck, ConfigError> {
        let k = |name: &str| format!("site[{i}].health_check.{name}");
        let path = h.path.unwrap_or_else(|| defaults::HEALTH_PATH.into());
        if !path.starts_with('/') {
            return Err(self.err(
                k("path"),
                format!("{path:?}: expected a path starting with '/'"),
            ));
        }
        let status = h.status.unwrap_or(i64::from(defaults::HEALTH_STATUS));
        if !(100..=599).contains(&status) {
            return Err(self.err(k("status"), format!("{status}: expected an HTTP status")));
        }
        Ok(HealthCheck {
            path,
            interval: dur(h.interval, defaults::HEALTH_INTERVAL),
            timeout: dur(h.timeout, defaults::HEALTH_TIMEOUT),
            status: status as u16,
            rise: self.count(&k("rise"), h.rise, defaults::HEALTH_RISE as usize, 1..=100)? as u32,
            fall: self.count(&k("fall"), h.fall, defaults::HEALTH_FALL as usize, 1..=100)? as u32,
        })
    }
}

/// `host:port` with a usable port; the host may be an IP, `[v6]` or a DNS name.
pub(super) fn check_upstream_addr(addr: &str) -> Result<(), String> {
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

/// This host's name, the default `cluster.node`.
fn host_name() -> Option<String> {
    let n = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let n = n.trim();
    (!n.is_empty()).then(|| n.to_string())
}
