//! Challenge solvers behind one interface, after certmagic's `solvers.go`.
//!
//! An order asks its solver what it needs to know (does a person take part?)
//! and hands it every pending challenge of the order at once: `prepare` says
//! where each answer goes, `present` puts them there, `ready` waits until the
//! CA can see them (a propagation check, a person, or nothing for a solver
//! that serves its answers itself), `cleanup` takes them away, and always
//! runs. DNS-01 through any DNS provider is the solver today; TLS-ALPN-01 and
//! HTTP-01 fit the same shape (answers served by edge's own listeners).
//!
//! A solver belongs to its owner, not to one order: the certificate manager in
//! `edge serve` keeps one for its life (and `start`s it at once, so the
//! built-in DNS responder holds its port from the start), a command keeps one
//! while it runs.

use std::sync::Arc;

use instant_acme::ChallengeType;
use tokio::sync::OnceCell;

use super::listen_solver::{Kind, ListenSolver};
use super::AcmeError;
use crate::config::{Challenge, Config, Dns};
use crate::dns::{propagation, BoxFuture, Publisher, TxtRecord};
use crate::names;
use crate::ui::Ui;

/// One pending challenge of an order.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The name on the certificate, e.g. `*.example.org`.
    pub domain: String,
    pub token: String,
    pub key_authorization: String,
    /// The DNS-01 TXT value: base64url SHA-256 of the key authorization.
    pub dns_value: String,
}

/// Where a solver put an order's answers.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    pub pending: Vec<Pending>,
    /// DNS-01: the records, at the end of each challenge name's CNAME chain.
    pub records: Vec<TxtRecord>,
}

pub trait Solver: Send + Sync {
    /// The challenge type it answers.
    fn challenge_type(&self) -> ChallengeType;

    /// A person takes part in every order (and so in every renewal).
    fn needs_person(&self) -> bool {
        false
    }

    /// Starts what it serves answers from, if anything; called again, it does
    /// nothing. Whatever it started stops when the solver is dropped.
    fn start(&self) -> BoxFuture<'_, Result<(), AcmeError>> {
        Box::pin(async { Ok(()) })
    }

    /// Where each answer goes.
    fn prepare(&self, pending: Vec<Pending>) -> BoxFuture<'_, Placed>;

    fn present<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>>;

    /// Returns once the CA can see every answer; at once by default, for
    /// answers served from this process's memory.
    fn ready<'a>(
        &'a self,
        _placed: &'a Placed,
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async { Ok(()) })
    }

    fn cleanup<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>>;

    /// The solver to use instead when the CA does not offer this one's
    /// challenge for an order.
    fn fallback(&self) -> Option<&dyn Solver> {
        None
    }
}

/// The challenge type of dns-persist-01 (instant-acme has no variant).
pub fn dns_persist_01() -> ChallengeType {
    ChallengeType::Unknown("dns-persist-01".into())
}

/// dns-persist-01: the `_validation-persist.<name>` record (its value made
/// by the order: the CA's issuer domain and the account URL) is published
/// through the DNS provider only when it is not already visible, and never
/// taken away: after the first order, orders make no DNS change at all (so
/// no renewal needs a person, whatever the provider).
/// Where the CA does not offer it, dns-01 with the same provider.
pub struct DnsPersist01 {
    dns01: Arc<Dns01>,
    /// Records this process published and not yet seen visible, by name:
    /// `ready` waits for these only (a record already in place may differ
    /// in text, e.g. carry a `persistUntil` someone set).
    published: std::sync::Mutex<Vec<TxtRecord>>,
}

/// Warn this long ahead of a record's `persistUntil`.
const PERSIST_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

/// Whether a TXT value `seen` is a dns-persist-01 record that authorizes
/// what `want` asks for (same issuer and account; `policy=wildcard` when
/// `want` has it), and its `persistUntil` (unix seconds) if it has one.
pub fn persist_match(seen: &str, want: &str) -> Option<Option<u64>> {
    let parts = |v: &str| -> (String, Vec<(String, String)>) {
        let mut it = v.split(';').map(str::trim);
        let issuer = it.next().unwrap_or_default().to_ascii_lowercase();
        let params = it
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (issuer, params)
    };
    let (si, sp) = parts(seen);
    let (wi, wp) = parts(want);
    let get =
        |ps: &[(String, String)], k: &str| ps.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if si != wi || get(&sp, "accounturi") != get(&wp, "accounturi") {
        return None;
    }
    let wildcard = |ps: &[(String, String)]| {
        get(ps, "policy").is_some_and(|p| p.eq_ignore_ascii_case("wildcard"))
    };
    if wildcard(&wp) && !wildcard(&sp) {
        return None;
    }
    Some(get(&sp, "persistuntil").and_then(|t| t.parse().ok()))
}

impl Solver for DnsPersist01 {
    fn challenge_type(&self) -> ChallengeType {
        dns_persist_01()
    }

    fn start(&self) -> BoxFuture<'_, Result<(), AcmeError>> {
        self.dns01.start()
    }

    fn prepare(&self, pending: Vec<Pending>) -> BoxFuture<'_, Placed> {
        Box::pin(async move {
            let name =
                |d: &str| format!("_validation-persist.{}", d.strip_prefix("*.").unwrap_or(d));
            let records = txt_records(&pending, name, &self.dns01.dns.resolvers).await;
            Placed { pending, records }
        })
    }

    fn present<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            let now = crate::clock::now();
            let mut missing = Vec::new();
            for r in &placed.records {
                let everywhere = propagation::txt_everywhere(&r.fqdn, &self.dns01.dns).await;
                // In place: every server has a record for this issuer and
                // account that has not run out.
                let mut until = None;
                let in_place = everywhere.is_some_and(|servers| {
                    servers.iter().all(|values| {
                        values.iter().any(|v| match persist_match(v, &r.value) {
                            Some(Some(t)) if crate::store::from_unix(t) > now => {
                                until = Some(t);
                                true
                            }
                            Some(Some(_)) => false,
                            Some(None) => true,
                            None => false,
                        })
                    })
                });
                if !in_place {
                    missing.push(r.clone());
                } else if let Some(t) = until {
                    let at = crate::store::from_unix(t);
                    if at < now + PERSIST_WARNING {
                        let msg = format!(
                            "the dns-persist-01 record {} stops validating at {} (persistUntil): move persistUntil later or remove it, or orders will need a new record",
                            r.fqdn,
                            crate::certinfo::rfc3339(at)
                        );
                        tracing::warn!("{msg}");
                        ui.say(&msg);
                    }
                }
            }
            if missing.is_empty() {
                ui.step("dns-persist-01 record(s) already in place: no DNS change for this order");
                return Ok(());
            }
            for r in &missing {
                if self.dns01.dns.provider.serves_records() {
                    // The built-in zone: served from memory behind the one
                    // CNAME; nothing changes in anyone's zone.
                    ui.step(&format!("Serving the dns-persist-01 record at {}", r.fqdn));
                } else {
                    ui.say(&format!(
                        "Setting the dns-persist-01 record once (it stays; later orders need no DNS change):\n  {}. TXT \"{}\"",
                        r.fqdn, r.value
                    ));
                }
            }
            self.dns01.publisher().await?.present(&missing, ui).await?;
            // In a fleet the built-in zone's record is the fleet's, kept in
            // etcd beyond this node's life: every node answers it, for this
            // order and every later one.
            if self.dns01.dns.provider.serves_records() {
                if let Some(c) = crate::store::cluster::Cluster::current() {
                    c.keep_txt(&shared(&missing)).await?;
                }
            }
            self.published
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(missing);
            Ok(())
        })
    }

    fn ready<'a>(&'a self, placed: &'a Placed, ui: &'a Ui) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            // Only what this order published; what was in place is visible.
            let ours: Vec<TxtRecord> = {
                let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
                placed
                    .records
                    .iter()
                    .filter(|r| {
                        published
                            .iter()
                            .any(|p| p.fqdn == r.fqdn && p.value == r.value)
                    })
                    .cloned()
                    .collect()
            };
            if ours.is_empty() || self.dns01.visible_when_set() {
                return Ok(());
            }
            self.dns01.wait_visible(&ours, ui).await
        })
    }

    fn cleanup<'a>(
        &'a self,
        placed: &'a Placed,
        _ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        // Set once: nothing to take away from DNS.
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| !placed.records.iter().any(|r| r.fqdn == p.fqdn));
        Box::pin(async { Ok(()) })
    }

    fn fallback(&self) -> Option<&dyn Solver> {
        Some(self.dns01.as_ref())
    }
}

/// The TXT records for `pending`, each at `name(domain)` or the end of its
/// CNAME chain; one record where two names (an apex and its wildcard) need
/// the same value at the same place.
async fn txt_records(
    pending: &[Pending],
    name: impl Fn(&str) -> String,
    resolvers: &[std::net::SocketAddr],
) -> Vec<TxtRecord> {
    let mut records: Vec<TxtRecord> = Vec::with_capacity(pending.len());
    for p in pending {
        let fqdn = propagation::follow_cname(&name(&p.domain), resolvers).await;
        if !records
            .iter()
            .any(|r| r.fqdn == fqdn && r.value == p.dns_value)
        {
            records.push(TxtRecord {
                fqdn,
                value: p.dns_value.clone(),
                domain: p.domain.clone(),
            });
        }
    }
    records
}

/// DNS-01 through the configured DNS provider.
pub struct Dns01 {
    dns: Dns,
    /// Made at first use and kept: credentials are read then (so a missing
    /// one fails that order, and the next order tries again), and a
    /// publisher that serves (the built-in zone) keeps its sockets.
    publisher: OnceCell<Box<dyn Publisher>>,
}

impl Dns01 {
    pub fn new(dns: &Dns) -> Dns01 {
        Dns01 {
            dns: dns.clone(),
            publisher: OnceCell::new(),
        }
    }

    /// Whether a record is visible to the CA the moment it is set: edge's
    /// own zone, served from this process's memory, on a single node. In a
    /// fleet another node may be the one asked, and it learns the record
    /// through etcd: checked like any provider's.
    fn visible_when_set(&self) -> bool {
        self.dns.provider.serves_records() && crate::store::cluster::Cluster::current().is_none()
    }

    async fn publisher(&self) -> Result<&dyn Publisher, AcmeError> {
        let p = self
            .publisher
            .get_or_try_init(|| async {
                // Reads a credential from a file: on the blocking pool.
                let provider = self.dns.provider.clone();
                tokio::task::spawn_blocking(move || provider.publisher())
                    .await
                    .map_err(|e| crate::dns::DnsError::Api {
                        provider: "dns",
                        message: e.to_string(),
                    })?
            })
            .await?;
        Ok(p.as_ref())
    }

    /// Waits for DNS; with a person, Enter on stdin also proceeds (they vouch
    /// for the record), while end-of-file (no terminal) is ignored.
    async fn wait_visible(&self, records: &[TxtRecord], ui: &Ui) -> Result<(), AcmeError> {
        if !self.dns.provider.needs_person() || !ui.is_interactive() {
            return Ok(propagation::wait(records, &self.dns, ui).await?);
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A plain thread: a blocking read must not keep the runtime from shutting down.
        std::thread::spawn(move || {
            let mut line = String::new();
            if matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
                let _ = tx.send(());
            }
        });
        tokio::select! {
            r = propagation::wait(records, &self.dns, ui) => Ok(r?),
            Ok(()) = rx => {
                ui.step("Enter pressed: asking the CA to validate now");
                Ok(())
            }
        }
    }
}

impl Solver for Dns01 {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Dns01
    }

    fn needs_person(&self) -> bool {
        self.dns.provider.needs_person()
    }

    fn start(&self) -> BoxFuture<'_, Result<(), AcmeError>> {
        Box::pin(async move { Ok(self.publisher().await?.start().await?) })
    }

    fn prepare(&self, pending: Vec<Pending>) -> BoxFuture<'_, Placed> {
        Box::pin(async move {
            let records = txt_records(&pending, names::challenge_name, &self.dns.resolvers).await;
            Placed { pending, records }
        })
    }

    fn present<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            ui.step(&format!(
                "Publishing {} TXT record(s) with provider {}",
                placed.records.len(),
                self.dns.provider.name()
            ));
            if self.needs_person() {
                ui.say("Note: with dns.provider = \"manual\" renewals need you again; choose exec, rfc2136, builtin or an API provider for unattended renewal.");
            }
            self.publisher().await?.present(&placed.records, ui).await?;
            // In a fleet the records are the fleet's: every node's built-in
            // responder answers them, and a node that takes over sees them.
            if let Some(c) = crate::store::cluster::Cluster::current() {
                c.share_txt(&shared(&placed.records)).await?;
            }
            Ok(())
        })
    }

    fn ready<'a>(&'a self, placed: &'a Placed, ui: &'a Ui) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            if self.visible_when_set() {
                return Ok(());
            }
            self.wait_visible(&placed.records, ui).await
        })
    }

    fn cleanup<'a>(
        &'a self,
        placed: &'a Placed,
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), AcmeError>> {
        Box::pin(async move {
            if let Some(c) = crate::store::cluster::Cluster::current() {
                if let Err(e) = c.unshare_txt(&shared(&placed.records)).await {
                    tracing::warn!("{e}; the records go with this node's lease");
                }
            }
            Ok(self.publisher().await?.cleanup(&placed.records, ui).await?)
        })
    }
}

/// Records as the fleet's store keeps them: lower-case name, no final dot.
fn shared(records: &[TxtRecord]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.fqdn.trim_end_matches('.').to_ascii_lowercase(),
                r.value.clone(),
            )
        })
        .collect()
}

/// The solvers a config asks for, owned together.
#[derive(Clone)]
pub struct Solvers {
    dns01: Arc<Dns01>,
    dns_persist01: Arc<DnsPersist01>,
    http01: Arc<ListenSolver>,
    tls_alpn01: Arc<ListenSolver>,
    /// Each site's names and challenge.
    sites: Vec<(Vec<String>, Challenge)>,
}

impl Solvers {
    pub fn new(cfg: &Config) -> Solvers {
        let dns01 = Arc::new(Dns01::new(&cfg.dns));
        Solvers {
            dns_persist01: Arc::new(DnsPersist01 {
                dns01: dns01.clone(),
                published: Default::default(),
            }),
            dns01,
            http01: Arc::new(ListenSolver::new(Kind::Http01, cfg.listen.http)),
            tls_alpn01: Arc::new(ListenSolver::new(Kind::TlsAlpn01, cfg.listen.https)),
            sites: cfg
                .sites
                .iter()
                .map(|s| (s.domains.clone(), s.challenge))
                .collect(),
        }
    }

    /// The challenge of the site that lists these names (dns-01 for names
    /// no site lists).
    pub fn challenge_for(&self, names: &[String]) -> Challenge {
        self.sites
            .iter()
            .find(|(domains, _)| names.iter().any(|n| domains.contains(n)))
            .map_or(Challenge::Dns01, |(_, c)| *c)
    }

    /// The solver for an order of these names: their site's challenge.
    pub fn for_names(&self, names: &[String]) -> Arc<dyn Solver> {
        match self.challenge_for(names) {
            Challenge::Dns01 => self.dns01.clone(),
            Challenge::DnsPersist01 => self.dns_persist01.clone(),
            Challenge::Http01 => self.http01.clone(),
            Challenge::TlsAlpn01 => self.tls_alpn01.clone(),
        }
    }

    /// Starts every solver that serves answers itself; a failure is logged and
    /// met again by the first order that needs the solver.
    pub async fn start(&self) {
        if !self.dns01.dns.provider.serves_records() {
            return;
        }
        if let Err(e) = self.dns01.start().await {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::persist_match;

    #[test]
    fn a_persist_record_matches_by_issuer_account_and_wildcard_policy() {
        let want = "pebble.letsencrypt.org; accounturi=https://ca/acct/1";
        assert_eq!(persist_match(want, want), Some(None));
        assert_eq!(
            persist_match(
                "Pebble.LetsEncrypt.org;accounturi=https://ca/acct/1; persistUntil=1900000000",
                want
            ),
            Some(Some(1_900_000_000))
        );
        assert_eq!(
            persist_match("pebble.letsencrypt.org; accounturi=https://ca/acct/2", want),
            None
        );
        assert_eq!(
            persist_match("other.ca; accounturi=https://ca/acct/1", want),
            None
        );
        let wild = format!("{want}; policy=wildcard");
        assert_eq!(
            persist_match(want, &wild),
            None,
            "a wildcard needs the policy"
        );
        assert_eq!(
            persist_match(&wild, want),
            Some(None),
            "the policy covers the apex too"
        );
    }
}
