//! The TLS listener's configuration and its certificate resolver.
//!
//! The resolver reads an immutable [`CertMap`] through an `ArcSwap`: a handshake
//! costs one atomic load and a hash lookup, never a lock, and a renewal or reload
//! swaps the whole map at once, so every handshake sees either the old map or the
//! new one and never a moment with no certificate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::Site;
use crate::names;
use crate::store::{LoadedCert, StoreError};

/// One certificate as served: the rustls key plus the names it covers.
#[derive(Debug)]
pub struct Entry {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// The lineage it came from, or `None` for a self-signed placeholder.
    pub lineage: Option<String>,
    pub serial: String,
    pub issuer: String,
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

impl Entry {
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| names::covers(n, host))
    }
}

/// Names -> certificate, immutable once built.
#[derive(Debug, Default)]
pub struct CertMap {
    exact: HashMap<String, Arc<Entry>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<Entry>>,
    /// Served when the client sends no SNI (IP-address clients), like nginx's default server.
    default: Option<Arc<Entry>>,
    entries: Vec<Arc<Entry>>,
    /// Some certificate names an IP address: only then does a handshake
    /// without SNI need the local address it reached (`for_client`).
    has_ip: bool,
}

impl CertMap {
    /// Whether any certificate here names an IP address.
    pub fn has_ip_names(&self) -> bool {
        self.has_ip
    }

    pub fn lookup(&self, host: &str) -> Option<&Arc<Entry>> {
        let host = host.trim_end_matches('.');
        if let Some(e) = self.exact.get(host) {
            return Some(e);
        }
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            if let Some(e) = self.exact.get(&lower) {
                return Some(e);
            }
            lower.as_str()
        } else {
            host
        };
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// The certificate a handshake with this SNI (or none) is given.
    pub fn for_sni(&self, sni: Option<&str>) -> Option<&Arc<Entry>> {
        match sni {
            Some(name) => self.lookup(name).or(self.default.as_ref()),
            None => self.default.as_ref(),
        }
    }

    /// As `for_sni`; a client without SNI connected by address, so the
    /// certificate for the `local` address it reached, if there is one.
    pub fn for_client(&self, sni: Option<&str>, local: Option<IpAddr>) -> Option<&Arc<Entry>> {
        match (sni, local) {
            (None, Some(ip)) => self.lookup(&ip.to_string()).or(self.default.as_ref()),
            _ => self.for_sni(sni),
        }
    }

    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    fn insert(&mut self, entry: Arc<Entry>) {
        self.has_ip |= entry.names.iter().any(|n| crate::names::is_ip(n));
        for n in &entry.names {
            match n.strip_prefix("*.") {
                Some(suffix) => {
                    keep_later(&mut self.wildcard, suffix, &entry);
                }
                None => {
                    keep_later(&mut self.exact, n, &entry);
                }
            }
        }
        self.entries.push(entry);
    }
}

/// Two certificates for one name: a real one beats a placeholder, then the one
/// that expires later wins (a fresh renewal beside an old copy).
fn keep_later(map: &mut HashMap<String, Arc<Entry>>, name: &str, entry: &Arc<Entry>) {
    match map.get(name) {
        Some(old)
            if (old.lineage.is_some() && entry.lineage.is_none())
                || (old.lineage.is_some() == entry.lineage.is_some()
                    && old.not_after >= entry.not_after) => {}
        _ => {
            map.insert(name.to_string(), entry.clone());
        }
    }
}

/// What [`build_map`] noticed that an operator should hear about.
#[derive(Debug, Default)]
pub struct BuildReport {
    pub loaded: Vec<String>,
    pub placeholders: Vec<Vec<String>>,
    pub refused: Vec<String>,
}

/// One lineage as the certificate manager hands it to [`build_map`].
pub enum Stored {
    /// Read and checked.
    Loaded(LoadedCert),
    /// Read and refused (a half-copied or mismatched pair): what was
    /// served for it before stays.
    Refused(StoreError),
    /// Not read again (nothing changed): what was served for it stays.
    Kept,
}

/// Builds the map from every stored lineage, adding a self-signed
/// placeholder for each site name no stored certificate covers, so the
/// listener always starts. A lineage refused or kept serves what `previous`
/// served for it. CPU work only (a placeholder is a key generation): the
/// certificate manager runs it on the blocking pool.
pub fn build_map(
    stored: Vec<(String, Stored)>,
    sites: &[Site],
    previous: Option<&CertMap>,
) -> (CertMap, BuildReport) {
    let mut map = CertMap::default();
    let mut report = BuildReport::default();
    let mut served: HashMap<&str, Vec<&Arc<Entry>>> = HashMap::new();
    for e in previous.map_or(&[][..], |p| &p.entries) {
        if let Some(l) = &e.lineage {
            served.entry(l.as_str()).or_default().push(e);
        }
    }
    for (name, loaded) in stored {
        match loaded {
            Stored::Loaded(loaded) => {
                report.loaded.push(name.clone());
                map.insert(Arc::new(Entry {
                    key: loaded.key,
                    names: loaded.info.names,
                    lineage: Some(name),
                    serial: loaded.info.serial,
                    issuer: loaded.info.issuer,
                    not_before: loaded.info.not_before,
                    not_after: loaded.info.not_after,
                }));
            }
            kept => {
                if let Stored::Refused(e) = kept {
                    report.refused.push(e.to_string());
                }
                for old in served.get(name.as_str()).into_iter().flatten() {
                    map.insert((*old).clone());
                }
            }
        }
    }
    for site in sites {
        let uncovered: Vec<String> = site
            .domains
            .iter()
            .filter(|d| map.lookup(d).is_none_or(|e| !e.covers(d)))
            .cloned()
            .collect();
        if uncovered.is_empty() {
            continue;
        }
        // The placeholder already served for exactly these names is kept:
        // no key made and no line logged again on every publish.
        let kept = previous.and_then(|prev| {
            prev.entries
                .iter()
                .find(|e| e.lineage.is_none() && e.names == uncovered)
        });
        if let Some(old) = kept {
            map.insert(old.clone());
        } else {
            match placeholder(&uncovered) {
                Ok(entry) => {
                    map.insert(Arc::new(entry));
                    report.placeholders.push(uncovered);
                }
                Err(e) => report
                    .refused
                    .push(format!("placeholder for {uncovered:?}: {e}")),
            }
        }
    }
    // A client that sends no SNI connects by address (SNI cannot carry
    // one): an IP-address certificate is its answer when there is one, else
    // the first site's, as nginx's default server.
    let ip_site = sites
        .iter()
        .flat_map(|s| &s.domains)
        .find(|d| crate::names::is_ip(d));
    map.default = ip_site
        .or_else(|| sites.first().and_then(|s| s.domains.first()))
        .and_then(|d| map.lookup(d).cloned())
        .or_else(|| map.entries.first().cloned());
    (map, report)
}

/// A self-signed certificate for names that have no real one yet.
pub fn placeholder(domains: &[String]) -> Result<Entry, String> {
    let ck = rcgen::generate_simple_self_signed(domains.to_vec()).map_err(|e| e.to_string())?;
    let der = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let info = crate::certinfo::inspect(&der)?;
    let key = CertifiedKey::from_der(vec![der], key, &provider).map_err(|e| e.to_string())?;
    Ok(Entry {
        key: Arc::new(key),
        names: domains.to_vec(),
        lineage: None,
        serial: info.serial,
        issuer: info.issuer,
        not_before: info.not_before,
        not_after: info.not_after,
    })
}

/// The live certificate set. Cloning shares the same map.
#[derive(Debug, Clone, Default)]
pub struct Certs {
    map: Arc<ArcSwap<CertMap>>,
}

impl Certs {
    pub fn new(map: CertMap) -> Certs {
        Certs {
            map: Arc::new(ArcSwap::from_pointee(map)),
        }
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<CertMap>> {
        self.map.load()
    }

    /// Replaces the whole map in one atomic store. The certificate manager's
    /// publish step is its one caller (`certs::Manager::publish`).
    pub fn replace(&self, map: CertMap) {
        self.map.store(Arc::new(map));
    }

    /// The map as it is now, shared (the previous one when building the next).
    pub fn current_full(&self) -> Arc<CertMap> {
        self.map.load_full()
    }
}

pub fn log_report(report: &BuildReport) {
    for r in &report.refused {
        tracing::error!("certificate refused, keeping what was served before: {r}");
    }
    for p in &report.placeholders {
        tracing::warn!(names = ?p, "no certificate stored for these names yet; serving a self-signed placeholder (run `edge obtain` or let `edge serve` obtain one)");
    }
}

#[derive(Debug)]
struct Resolver(Certs);

tokio::task_local! {
    /// The local address the TLS handshake in progress was reached at (set by
    /// the listener around the handshake): a client that sends no SNI
    /// connected by address and gets that address's certificate.
    pub static LOCAL_IP: IpAddr;
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == crate::acme::challenges::ACME_TLS_ALPN))
        {
            // A TLS-ALPN-01 validation: its challenge certificate or nothing.
            return crate::acme::listen_solver::challenge_for(&hello);
        }
        let map = self.0.map.load();
        let sni = hello.server_name();
        let local = sni
            .is_none()
            .then(|| LOCAL_IP.try_with(|ip| *ip).ok())
            .flatten();
        map.for_client(sni, local).map(|e| e.key.clone())
    }
}

/// Whether this CPU does AES-GCM in hardware.
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The server's cipher suite order. With AES in hardware, AES-128-GCM first:
/// its key schedule uses SHA-256, which runs on the SHA extensions most server
/// CPUs have, while the AES-256 suite's SHA-384 runs in software on some (on
/// the bench's AMD EPYC, aws-lc's SHA-512 code was 16% of a full handshake,
/// since OpenSSL clients such as curl and wrk ask for AES-256 first). Without
/// AES hardware, ChaCha20-Poly1305 first, as Go's crypto/tls and Caddy do.
/// All of these are strong; this only picks the cheapest.
fn preferred_suites(
    mut suites: Vec<rustls::SupportedCipherSuite>,
    aes_hw: bool,
) -> Vec<rustls::SupportedCipherSuite> {
    let order = if aes_hw {
        ["AES_128", "AES_256", "CHACHA20"]
    } else {
        ["CHACHA20", "AES_128", "AES_256"]
    };
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        let bulk = order.iter().position(|b| name.contains(b));
        (
            s.version() != &rustls::version::TLS13,
            bulk.unwrap_or(order.len()),
        )
    };
    suites.sort_by_key(rank);
    suites
}

/// The rustls server configuration: TLS 1.2 and 1.3 only, h2 and http/1.1 by
/// ALPN, stateless resumption tickets plus a session cache for TLS 1.2 clients.
pub fn server_config(certs: &Certs) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = preferred_suites(provider.cipher_suites, aes_in_hardware());
    let provider = Arc::new(provider);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs.clone())));
    // acme-tls/1 last: only TLS-ALPN-01 validations offer it (and only it).
    cfg.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        crate::acme::challenges::ACME_TLS_ALPN.to_vec(),
    ];
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.session_storage = ServerSessionMemoryCache::new(10_240);
    // Our own suite order, not the client's (nginx: ssl_prefer_server_ciphers on).
    cfg.ignore_client_order = true;
    // One TLS 1.3 ticket per connection, not rustls' default two (Go's crypto/tls
    // also sends one): a client gets a fresh ticket on every connection, resumed
    // ones included, and each ticket costs an encryption in the handshake.
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}

/// The same, for QUIC: TLS 1.3 only (QUIC has no other), ALPN h3, the same
/// certificate resolver, and no 0-RTT (early data can be replayed).
pub fn quic_server_config(certs: &Certs) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = preferred_suites(provider.cipher_suites, aes_in_hardware());
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs.clone())));
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.ignore_client_order = true;
    cfg.send_tls13_tickets = 1;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(suites: &[rustls::SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn aes_128_first_with_aes_hardware_chacha_first_without() {
        let default = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        let hw = names(&preferred_suites(default.clone(), true));
        assert_eq!(
            hw[..3],
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(hw[3].contains("AES_128"), "{hw:?}");
        let soft = names(&preferred_suites(default.clone(), false));
        assert_eq!(soft[0], "TLS13_CHACHA20_POLY1305_SHA256");
        assert!(soft[3].contains("CHACHA20"), "{soft:?}");
        // Nothing dropped or added: only the order changes.
        let (mut a, mut b) = (hw, names(&default));
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    fn loaded(name: &str, domain: &str) -> LoadedCert {
        let ck = rcgen::generate_simple_self_signed(vec![domain.to_string()]).unwrap();
        let (chain, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
        crate::store::certified_key(name, chain.as_bytes(), key.as_bytes()).unwrap()
    }

    #[test]
    fn a_lineage_kept_or_refused_serves_what_was_served_and_a_loaded_one_replaces_it() {
        let stored = vec![
            ("a".to_string(), Stored::Loaded(loaded("a", "a.test"))),
            ("b".to_string(), Stored::Loaded(loaded("b", "b.test"))),
            ("c".to_string(), Stored::Loaded(loaded("c", "c.test"))),
        ];
        let (first, report) = build_map(stored, &[], None);
        assert_eq!(report.loaded, ["a", "b", "c"]);
        // A publish that read only `c` again: `a` kept unread, `b` refused.
        let stored = vec![
            ("a".to_string(), Stored::Kept),
            (
                "b".to_string(),
                Stored::Refused(StoreError::NotFound {
                    key: "live/b/privkey.pem".into(),
                }),
            ),
            ("c".to_string(), Stored::Loaded(loaded("c", "c.test"))),
        ];
        let (next, report) = build_map(stored, &[], Some(&first));
        assert_eq!(report.loaded, ["c"]);
        assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
        for host in ["a.test", "b.test"] {
            let same = Arc::ptr_eq(first.lookup(host).unwrap(), next.lookup(host).unwrap());
            assert!(same, "{host} is served as before");
        }
        let c = next.lookup("c.test").unwrap();
        assert!(
            !Arc::ptr_eq(first.lookup("c.test").unwrap(), c),
            "c is the new pair"
        );
        // A lineage left out of the list is no longer served.
        let (gone, _) = build_map(vec![("a".into(), Stored::Kept)], &[], Some(&next));
        assert!(gone.lookup("b.test").is_none() && gone.lookup("a.test").is_some());
    }
}
