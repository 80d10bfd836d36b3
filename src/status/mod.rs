//! What the running daemon says about itself: certificates as served now and
//! their renewals, upstreams and their health over the last minute,
//! listeners, limits reached, version and uptime. One [`Snapshot`], built
//! here from the live state (not from the disk alone, as `edge certs` is),
//! shown three ways: the HTML page (`page`), the text of `edge status`
//! (`text`), and JSON for scripts (`--json`, `/status.json`); `listener`
//! serves the page and the JSON beside `/metrics`. [`Snapshot::problems`] is
//! what needs a person, and decides `edge status`'s exit code.

pub mod listener;
pub mod page;
pub mod text;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::acme::renew::{self, Decision};
use crate::certinfo::rfc3339;
use crate::certs::Manager;
use crate::daemon::Bound;
use crate::proxy::Proxy;
use crate::store::cluster::Written;

/// A certificate within this many days of expiry needs a person.
pub const EXPIRY_WARNING_DAYS: f64 = 7.0;
/// An upstream out of rotation for this many times its `fail_timeout`
/// needs a person.
pub const DOWN_FACTOR: u32 = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub uptime_secs: u64,
    /// When it was taken (RFC 3339).
    pub at: String,
    pub listeners: Vec<Listener>,
    pub certificates: Vec<Certificate>,
    pub sites: Vec<SiteStatus>,
    /// Limits reached since start, by config key.
    pub limits_hit: Vec<LimitHit>,
    pub open_connections: i64,
    /// This node in a fleet (`[cluster]`); absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
}

/// A fleet node's view of the shared store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fleet {
    pub node: String,
    /// Why the node does not follow etcd now (it then serves its local copy
    /// and due renewals wait); `None` while it does.
    pub store_down_why: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Listener {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitHit {
    pub limit: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Certificate {
    /// The lineage (`live/<name>`), or `None` for a self-signed placeholder
    /// served until the first certificate comes.
    pub lineage: Option<String>,
    pub names: Vec<String>,
    pub serial: String,
    pub issuer: String,
    pub not_after: String,
    pub days_left: f64,
    pub lifetime_days: f64,
    /// When the next renewal is planned (RFC 3339), and why then.
    pub next_renewal: Option<String>,
    pub next_reason: String,
    /// `ok` or `failed`, and when; `None` before any attempt.
    pub last_outcome: Option<String>,
    pub last_attempt: Option<String>,
    pub last_error: Option<String>,
    pub failures: u32,
    /// The ACME profile it was ordered with; `None`: the CA's default.
    #[serde(default)]
    pub profile: Option<String>,
    /// The DNS provider that answers its challenges.
    pub provider: String,
    /// In a fleet: the node that stored this certificate and when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_by: Option<String>,
    /// In a fleet: the node holding its lock now (renewing it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SiteStatus {
    pub name: String,
    pub domains: Vec<String>,
    pub balance: String,
    pub fail_timeout_secs: f64,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStatus {
    pub addr: String,
    pub up: bool,
    /// Out of rotation for this long, and why (`refused`, `timeout`,
    /// `failed health check` ...).
    pub down_secs: Option<f64>,
    pub down_why: Option<String>,
    pub inflight: usize,
    /// Over the last minute.
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Snapshot {
    /// What needs a person: a certificate within a week of expiry (or a
    /// placeholder where one should be), an upstream out for ten times its
    /// `fail_timeout`. Empty: all is well.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = self.fleet.as_ref().and_then(|f| f.store_down_why.as_ref()) {
            out.push(format!(
                "the fleet's store (etcd) is not followed: {why}; serving this node's copy, renewals wait"
            ));
        }
        for c in &self.certificates {
            let names = c.names.join(", ");
            match &c.lineage {
                None => out.push(format!(
                    "{names}: served with a self-signed placeholder (no certificate obtained yet{})",
                    c.last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                )),
                Some(_) if c.days_left < EXPIRY_WARNING_DAYS => out.push(format!(
                    "{names}: certificate expires in {:.1} days{}",
                    c.days_left,
                    c.last_error
                        .as_deref()
                        .map(|e| format!("; last renewal failed: {e}"))
                        .unwrap_or_default()
                )),
                Some(_) => {}
            }
        }
        for s in &self.sites {
            let limit = s.fail_timeout_secs * f64::from(DOWN_FACTOR);
            for u in &s.upstreams {
                if let Some(d) = u.down_secs.filter(|d| *d >= limit) {
                    out.push(format!(
                        "{}: upstream {} down for {} ({})",
                        s.name,
                        u.addr,
                        text::duration(d),
                        u.down_why.as_deref().unwrap_or("failures")
                    ));
                }
            }
        }
        out
    }
}

/// What the snapshot is read from, beside the certificate manager.
pub struct Source {
    pub proxy: Arc<Proxy>,
    pub bound: Bound,
    pub started: std::time::Instant,
}

fn days(d: Duration) -> f64 {
    d.as_secs_f64() / 86400.0
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

impl Source {
    pub async fn snapshot(&self, m: &Manager) -> Snapshot {
        let cfg = m.config();
        let now = crate::clock::now();
        let mut certificates = Vec::new();
        let fleet = m.store().backend().cluster();
        let served = m.certs().current_full();
        for e in served.entries() {
            // A placeholder's renewal state is its site's lineage: what the
            // attempts to obtain its first certificate said.
            let lineage = e
                .lineage
                .clone()
                .unwrap_or_else(|| crate::names::lineage_name(&e.names));
            let state = m.store().renewal_state(&lineage).await;
            let left = e.not_after.duration_since(now).unwrap_or_default();
            let lifetime = e.not_after.duration_since(e.not_before).unwrap_or_default();
            let (next_renewal, next_reason) = match &e.lineage {
                None => match state.not_before.filter(|_| state.failures > 0) {
                    Some(t) => (
                        Some(rfc3339(crate::store::from_unix(t))),
                        format!(
                            "next attempt to obtain the first certificate, backing off after {} failure(s)",
                            state.failures
                        ),
                    ),
                    None => (None, "obtaining the first certificate".to_string()),
                },
                Some(_) => {
                    let info = crate::certinfo::CertInfo {
                        names: e.names.clone(),
                        not_before: e.not_before,
                        not_after: e.not_after,
                        serial: e.serial.clone(),
                        issuer: e.issuer.clone(),
                        ari_id: None,
                    };
                    match renew::decide(&info, &state, now, false) {
                        Decision::Due(why) => (Some(rfc3339(now)), format!("due now: {why}")),
                        Decision::NotYet(t) => {
                            (Some(rfc3339(t)), renew::due_reason(&info, &state).into())
                        }
                        Decision::BackingOff(t) => (
                            Some(rfc3339(t)),
                            format!("backing off after {} failure(s)", state.failures),
                        ),
                    }
                }
            };
            let last_outcome = match (state.last_attempt, state.last_success) {
                (None, _) => None,
                (Some(a), Some(s)) if s >= a => Some("ok".to_string()),
                (Some(_), _) => Some("failed".to_string()),
            };
            let provider = cfg.dns.provider.name().to_string();
            let facts = fleet
                .zip(e.lineage.as_deref())
                .map(|(c, l)| c.facts(l))
                .unwrap_or_default();
            certificates.push(Certificate {
                lineage: e.lineage.clone(),
                names: e.names.clone(),
                serial: e.serial.clone(),
                issuer: e.issuer.clone(),
                not_after: rfc3339(e.not_after),
                days_left: days(left),
                lifetime_days: days(lifetime),
                next_renewal,
                next_reason,
                last_outcome,
                last_attempt: state
                    .last_attempt
                    .map(|t| rfc3339(crate::store::from_unix(t))),
                last_error: state.last_error.clone(),
                failures: state.failures,
                profile: state.profile.clone(),
                provider,
                renewed_by: facts.written.as_ref().map(Written::describe),
                lock_holder: facts.lock_holder,
            });
        }
        certificates.sort_by(|a, b| a.names.cmp(&b.names));
        let routes = self.proxy.routes();
        let sites = routes
            .sites
            .iter()
            .map(|s| SiteStatus {
                name: s.cfg.domains.first().cloned().unwrap_or_default(),
                domains: s.cfg.domains.clone(),
                balance: match s.cfg.balance {
                    crate::config::Balance::RoundRobin => "round_robin",
                    crate::config::Balance::LeastConn => "least_conn",
                    crate::config::Balance::IpHash => "ip_hash",
                    crate::config::Balance::P2c => "p2c",
                }
                .to_string(),
                fail_timeout_secs: s.cfg.fail_timeout.as_secs_f64(),
                upstreams: s
                    .pool
                    .upstreams
                    .iter()
                    .map(|u| {
                        let down = u.down_for();
                        let minute = u.window.minute();
                        UpstreamStatus {
                            addr: u.addr.clone(),
                            up: down.is_none(),
                            down_secs: down.map(|(d, _)| d.as_secs_f64()),
                            down_why: down.map(|(_, w)| w.to_string()),
                            inflight: u.inflight.load(std::sync::atomic::Ordering::Relaxed),
                            per_second: minute.per_second,
                            p50_ms: ms(minute.p50),
                            p99_ms: ms(minute.p99),
                        }
                    })
                    .collect(),
            })
            .collect();
        let b = &self.bound;
        let mut listeners = vec![
            Listener {
                name: "https".into(),
                addr: b.https.to_string(),
            },
            Listener {
                name: "http (redirect)".into(),
                addr: b.http.to_string(),
            },
        ];
        if let Some(a) = b.http3 {
            listeners.push(Listener {
                name: "http3 (QUIC)".into(),
                addr: a.to_string(),
            });
        }
        if let Some(a) = b.metrics {
            listeners.push(Listener {
                name: "metrics and status".into(),
                addr: a.to_string(),
            });
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            at: rfc3339(SystemTime::now()),
            listeners,
            certificates,
            sites,
            limits_hit: crate::metrics::limits_hit(),
            open_connections: crate::metrics::METRICS.open_connections.get(),
            fleet: fleet.map(|c| Fleet {
                node: c.node().to_string(),
                store_down_why: c.health().err(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(lineage: Option<&str>, days_left: f64) -> Certificate {
        Certificate {
            lineage: lineage.map(String::from),
            names: vec!["a.test".into()],
            serial: "01".into(),
            issuer: "CN=test".into(),
            not_after: String::new(),
            days_left,
            lifetime_days: 90.0,
            next_renewal: None,
            next_reason: String::new(),
            last_outcome: None,
            last_attempt: None,
            last_error: None,
            failures: 0,
            profile: None,
            provider: "manual".into(),
            renewed_by: None,
            lock_holder: None,
        }
    }

    fn snapshot(certificates: Vec<Certificate>, down_secs: Option<f64>) -> Snapshot {
        Snapshot {
            version: "0".into(),
            uptime_secs: 0,
            at: String::new(),
            listeners: vec![],
            certificates,
            sites: vec![SiteStatus {
                name: "a.test".into(),
                domains: vec!["a.test".into()],
                balance: "RoundRobin".into(),
                fail_timeout_secs: 10.0,
                upstreams: vec![UpstreamStatus {
                    addr: "127.0.0.1:1".into(),
                    up: down_secs.is_none(),
                    down_secs,
                    down_why: down_secs.map(|_| "refused".into()),
                    inflight: 0,
                    per_second: 0.0,
                    p50_ms: None,
                    p99_ms: None,
                }],
            }],
            limits_hit: vec![],
            open_connections: 0,
            fleet: None,
        }
    }

    #[test]
    fn a_person_is_needed_for_a_week_to_expiry_a_placeholder_or_a_long_outage() {
        assert!(snapshot(vec![cert(Some("a.test"), 30.0)], None)
            .problems()
            .is_empty());
        assert!(snapshot(vec![cert(Some("a.test"), 30.0)], Some(99.0))
            .problems()
            .is_empty());
        assert_eq!(
            snapshot(vec![cert(Some("a.test"), 6.5)], None).problems(),
            ["a.test: certificate expires in 6.5 days"]
        );
        assert_eq!(snapshot(vec![cert(None, 90.0)], None).problems().len(), 1);
        assert_eq!(
            snapshot(vec![cert(Some("a.test"), 30.0)], Some(100.0)).problems(),
            ["a.test: upstream 127.0.0.1:1 down for 1m 40s (refused)"]
        );
        // A fleet node that cannot follow etcd: renewals wait for a person.
        let mut s = snapshot(vec![cert(Some("a.test"), 30.0)], None);
        s.fleet = Some(Fleet {
            node: "edge-1".into(),
            store_down_why: None,
        });
        assert!(s.problems().is_empty());
        s.fleet = Some(Fleet {
            node: "edge-1".into(),
            store_down_why: Some("etcd does not answer through a quorum".into()),
        });
        assert_eq!(
            s.problems(),
            ["the fleet's store (etcd) is not followed: etcd does not answer through a quorum; serving this node's copy, renewals wait"]
        );
    }
}
