//! One order: every pending challenge handed to the solver at once (so an
//! order for five names waits for DNS once, not five times), answered,
//! finalized with a new key, stored.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::account::{self, Ca};
use super::solver::{Pending, Solver};
use super::{again_on_bad_nonce, AcmeError};
use crate::certinfo::CertInfo;
use crate::config::{Config, KeyType};
use crate::names;
use crate::store::{self, Lock, Store};
use crate::ui::Ui;

/// A stored certificate, as reported to the person or the log.
#[derive(Debug, Clone)]
pub struct Obtained {
    pub lineage: String,
    pub info: CertInfo,
    pub fullchain: PathBuf,
    pub privkey: PathBuf,
    pub elapsed: Duration,
}

/// Validates, lower-cases and de-duplicates the requested names.
pub fn clean_names(requested: &[String]) -> Result<Vec<String>, AcmeError> {
    let mut out = Vec::new();
    for n in requested {
        let v = names::validate_name(n).map_err(AcmeError::InvalidName)?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(AcmeError::InvalidName("no --domain given".into()));
    }
    Ok(out)
}

/// Polling for the CA: quick first looks (Pebble answers in milliseconds), then
/// slower, giving up after two minutes.
fn poll_policy() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .backoff(1.6)
        .timeout(Duration::from_secs(120))
}

/// Obtains one certificate for `names` and stores it under `lineage`, which
/// the caller has locked (`Store::lock`) and checked still needs it: the
/// certificate is written only while that lock is held. `replaces` is the ARI
/// id of the certificate this one renews, when the CA supports ARI.
#[allow(clippy::too_many_arguments)]
pub async fn obtain(
    cfg: &Config,
    store: &Store,
    solver: &dyn Solver,
    lock: &Lock,
    lineage: &str,
    names: &[String],
    replaces: Option<String>,
    ui: &Ui,
) -> Result<Obtained, AcmeError> {
    let start = Instant::now();
    if solver.challenge_type() == ChallengeType::Dns01 {
        if let Some(ip) = names.iter().find(|n| names::is_ip(n)) {
            return Err(AcmeError::InvalidName(format!(
                "{ip:?} is an IP address, which a CA validates only over http-01 or tls-alpn-01 (RFC 8738); list it in a [[site]] with challenge = \"http-01\" or \"tls-alpn-01\""
            )));
        }
    }
    ui.step(&format!(
        "Requesting a certificate for {}",
        names.join(", ")
    ));
    let mut ca = account::load_or_create(&cfg.acme, store, ui).await?;
    let ids: Vec<Identifier> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(n.clone()),
        })
        .collect();
    let wanted = wanted_profile(cfg, names, &store.renewal_state(lineage).await);
    let profile = choose_profile(cfg, &ca, wanted.as_deref(), ui)?;
    let order = {
        // The order without `replaces`: what a CA that refuses the
        // replacement gets instead.
        let order_of = || {
            let o = NewOrder::new(&ids);
            match profile.as_deref() {
                Some(p) => o.profile(p),
                None => o,
            }
        };
        let plain = order_of();
        let replaces_id = replaces
            .as_deref()
            .and_then(crate::certinfo::ari_identifier);
        let new = match replaces_id.clone() {
            Some(r) => order_of().replaces(r),
            None => order_of(),
        };
        match again_on_bad_nonce!(ca.account.new_order(&new).await) {
            Ok(o) => o,
            Err(e) if account::account_gone(&e) => {
                tracing::warn!(
                    "the CA does not know the stored account any more; registering a new one"
                );
                ca = account::replace(&cfg.acme, store, ui, &ca).await?;
                // A new account replaces nothing it did not order.
                again_on_bad_nonce!(ca.account.new_order(&plain).await).map_err(|e| ca.err(e))?
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                again_on_bad_nonce!(ca.account.new_order(&plain).await).map_err(|e| ca.err(e))?
            }
            // ARI (RFC 9773 section 5): a CA that refuses the order as a
            // replacement (already replaced, an old certificate it does not
            // know) gets the same order without `replaces`; the renewal
            // must not fail on it.
            Err(instant_acme::Error::Api(problem)) if replaces_id.is_some() => {
                let msg = format!(
                    "the CA refused the order as a replacement of the current certificate ({}); ordering without `replaces`",
                    problem.detail.as_deref().unwrap_or("no detail")
                );
                tracing::warn!("{msg}");
                ui.step(&msg);
                again_on_bad_nonce!(ca.account.new_order(&plain).await).map_err(|e| ca.err(e))?
            }
            Err(e) => return Err(ca.err(e)),
        }
    };
    let mut order = order;
    solve(cfg, &ca, &mut order, solver, ui).await?;
    let ordered = Ordered { names, profile };
    finalize_and_store(
        cfg, &ca, store, lock, lineage, &ordered, &mut order, ui, start,
    )
    .await
}

/// What an order asked for, recorded with its certificate.
struct Ordered<'a> {
    names: &'a [String],
    profile: Option<String>,
}

/// The profile to ask for: the site's (the one whose names these are), else
/// `[acme] profile`, else the one the lineage was last ordered with.
fn wanted_profile(cfg: &Config, names: &[String], state: &store::RenewalState) -> Option<String> {
    cfg.sites
        .iter()
        .find(|s| names.iter().any(|n| s.domains.contains(n)))
        .and_then(|s| s.profile.clone())
        .or_else(|| cfg.acme.profile.clone())
        .or_else(|| state.profile.clone())
}

/// `wanted` if the CA's directory offers it. Otherwise: with
/// `profile_required`, an error naming what it offers; without, the CA's
/// default, said to the person and the log (Traefik drops a profile
/// silently on renewal: edge says it every time).
fn choose_profile(
    cfg: &Config,
    ca: &Ca,
    wanted: Option<&str>,
    ui: &Ui,
) -> Result<Option<String>, AcmeError> {
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    let offered: Vec<String> = ca.account.profiles().map(|p| p.name.to_string()).collect();
    if offered.iter().any(|p| p == wanted) {
        ui.step(&format!("Ordering with the CA's profile {wanted:?}"));
        return Ok(Some(wanted.to_string()));
    }
    let offers = if offered.is_empty() {
        "no profiles".to_string()
    } else {
        format!("these: {}", offered.join(", "))
    };
    if cfg.acme.profile_required {
        return Err(AcmeError::Problem(format!(
            "the CA does not offer profile {wanted:?} (it offers {offers}); set acme.profile to one it offers, or acme.profile_required = false to take the CA's default"
        )));
    }
    let msg = format!(
        "the CA does not offer profile {wanted:?} (it offers {offers}); ordering with the CA's default profile (acme.profile_required = true would fail instead)"
    );
    tracing::warn!("{msg}");
    ui.step(&msg);
    Ok(None)
}

/// The dns-persist-01 record's value for an order (draft-ietf-acme-dns-
/// persist): the CA's issuer domain (its directory's first caaIdentities),
/// this account's URL, and `policy=wildcard` when the order has a wildcard.
async fn persist_value(cfg: &Config, ca: &Ca, wildcard: bool) -> Result<String, AcmeError> {
    let client =
        super::http::ca_client(cfg.acme.ca_bundle.as_deref(), Duration::from_secs(30)).await?;
    let dir: serde_json::Value = client
        .get(&ca.directory)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| AcmeError::Other(format!("reading the ACME directory {}: {e}", ca.directory)))?
        .json()
        .await
        .map_err(|e| AcmeError::Other(format!("the ACME directory {}: {e}", ca.directory)))?;
    let issuer = dir["meta"]["caaIdentities"][0].as_str().ok_or_else(|| {
        AcmeError::Problem(format!(
            "the CA's directory {} names no caaIdentities, which a dns-persist-01 record needs; use challenge = \"dns-01\"",
            ca.directory
        ))
    })?;
    let mut v = format!("{issuer}; accounturi={}", ca.account.id());
    if wildcard {
        v.push_str("; policy=wildcard");
    }
    Ok(v)
}

/// Answers every pending authorization of the order through `solver` (or
/// its fallback, when the CA does not offer its challenge for a name).
async fn solve(
    cfg: &Config,
    ca: &Ca,
    order: &mut instant_acme::Order,
    solver: &dyn Solver,
    ui: &Ui,
) -> Result<(), AcmeError> {
    let kind = solver.challenge_type();
    fetch_authorizations(order).await.map_err(|e| ca.err(e))?;
    let persist = kind == super::solver::dns_persist_01();
    let mut pending = Vec::new();
    let mut unoffered = None;
    {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a.map_err(|e| ca.err(e))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => {
                    // The CA reused an authorization it holds for this
                    // account: no answer to publish, so no DNS change.
                    ui.step(&format!(
                        "{}: the CA already holds a valid authorization; nothing to publish",
                        a.identifier()
                    ));
                    continue;
                }
                other => {
                    return Err(AcmeError::Validation(format!(
                        "authorization for {} is {other:?}",
                        a.identifier()
                    )))
                }
            }
            let domain = a.identifier().to_string();
            let Some(ch) = a.challenge(kind.clone()) else {
                unoffered = Some(domain);
                break;
            };
            let key_authorization = ch.key_authorization();
            pending.push(Pending {
                token: ch.token.clone(),
                key_authorization: key_authorization.as_str().to_string(),
                dns_value: key_authorization.dns_value(),
                domain,
            });
        }
    }
    if let Some(domain) = unoffered {
        let name = match &kind {
            ChallengeType::Unknown(n) => n.clone(),
            k => format!("{k:?}"),
        };
        return match solver.fallback() {
            Some(fallback) => {
                let msg = format!(
                    "the CA does not offer {name} for {domain}; using {:?} with the same provider for this order",
                    fallback.challenge_type()
                );
                tracing::warn!("{msg}");
                ui.step(&msg);
                Box::pin(solve(cfg, ca, order, fallback, ui)).await
            }
            None => Err(AcmeError::Problem(format!(
                "the CA offers no {name} challenge for {domain}"
            ))),
        };
    }
    if persist && !pending.is_empty() {
        let wildcard = pending.iter().any(|p| p.domain.starts_with("*."));
        let value = persist_value(cfg, ca, wildcard).await?;
        for p in &mut pending {
            p.dns_value = value.clone();
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let placed = solver.prepare(pending).await;
    let result = async {
        solver.present(&placed, ui).await?;
        solver.ready(&placed, ui).await?;
        answer_challenges(ca, order, &kind, ui).await
    }
    .await;
    // Cleanup always runs, also after a failure; its own error never hides the first.
    if let Err(e) = solver.cleanup(&placed, ui).await {
        tracing::warn!("cleaning up the challenge answers failed: {e}");
    }
    result
}

/// Fetches the state of every authorization the order does not hold yet, so
/// that the loops over them after this send nothing. instant-acme's stream
/// moves past an authorization whose fetch failed, so a refused nonce starts
/// it over; the states already fetched are kept.
async fn fetch_authorizations(order: &mut instant_acme::Order) -> Result<(), instant_acme::Error> {
    again_on_bad_nonce!({
        let mut auths = order.authorizations();
        let mut fetched = Ok(());
        while let Some(a) = auths.next().await {
            if let Err(e) = a {
                fetched = Err(e);
                break;
            }
        }
        fetched
    })
}

/// The authorizations' states are the ones `solve` fetched: the loop
/// below asks the CA only to validate.
async fn answer_challenges(
    ca: &Ca,
    order: &mut instant_acme::Order,
    kind: &instant_acme::ChallengeType,
    ui: &Ui,
) -> Result<(), AcmeError> {
    ui.step("Asking the CA to validate");
    {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a.map_err(|e| ca.err(e))?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = a.challenge(kind.clone()) {
                again_on_bad_nonce!(ch.set_ready().await).map_err(|e| ca.err(e))?;
            }
        }
    }
    let status = again_on_bad_nonce!(order.poll_ready(&poll_policy()).await);
    match status {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(_) | Err(instant_acme::Error::Api(_)) => Err(validation_failure(order).await),
        Err(e) => Err(ca.err(e)),
    }
}

/// Gathers what each failed authorization's challenge says, best effort: a
/// failure to fetch leaves a name out.
///
/// The order is read again first: that drops the authorizations' states held
/// from before validation, so one fetch each gives what the CA says now.
async fn validation_failure(order: &mut instant_acme::Order) -> AcmeError {
    let _ = again_on_bad_nonce!(order.refresh().await.map(|_| ()));
    let _ = fetch_authorizations(order).await;
    let mut details = Vec::new();
    let mut auths = order.authorizations();
    while let Some(Ok(a)) = auths.next().await {
        let name = a.identifier().to_string();
        for err in a.challenges.iter().filter_map(|c| c.error.as_ref()) {
            details.push(match &err.detail {
                Some(detail) => format!("{name}: {detail}"),
                None => format!("{name}: {:?}", err.r#type),
            });
        }
    }
    if details.is_empty() {
        details.push("the order became invalid without a reason from the CA".into());
    }
    AcmeError::Validation(details.join("; "))
}

fn key_pair(kt: KeyType) -> Result<KeyPair, AcmeError> {
    let r = match kt {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        KeyType::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
        }
    };
    r.map_err(|e| AcmeError::Other(format!("generating a {kt} key failed: {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn finalize_and_store(
    cfg: &Config,
    ca: &Ca,
    store: &Store,
    lock: &Lock,
    lineage: &str,
    ordered: &Ordered<'_>,
    order: &mut instant_acme::Order,
    ui: &Ui,
    start: Instant,
) -> Result<Obtained, AcmeError> {
    let names = ordered.names;
    ui.step(&format!("Finalizing with a new {} key", cfg.acme.key_type));
    // Key generation is CPU work (RSA 4096 takes a second): off the runtime's threads.
    let (key_type, csr_names) = (cfg.acme.key_type, names.to_vec());
    let (key_pem, csr) = tokio::task::spawn_blocking(move || {
        let key = key_pair(key_type)?;
        let mut params =
            CertificateParams::new(csr_names).map_err(|e| AcmeError::Other(format!("CSR: {e}")))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Other(format!("CSR: {e}")))?;
        Ok::<_, AcmeError>((key.serialize_pem(), csr.der().to_vec()))
    })
    .await
    .map_err(|e| AcmeError::Other(format!("key generation: {e}")))??;
    again_on_bad_nonce!(order.finalize_csr(&csr).await).map_err(|e| ca.err(e))?;
    let chain =
        again_on_bad_nonce!(order.poll_certificate(&poll_policy()).await).map_err(|e| ca.err(e))?;
    let info = store
        .save_certificate(lineage, &chain, &key_pem, lock)
        .await?;
    let mut state = store.renewal_state(lineage).await;
    let now = store::unix(crate::clock::now());
    state.names = names.to_vec();
    state.last_attempt = Some(now);
    state.last_success = Some(now);
    state.failures = 0;
    state.last_error = None;
    state.not_before = None;
    state.ari_window = None;
    state.ari_chosen = None;
    state.ari_serial = None;
    state.ari_retry_after = None;
    state.profile = ordered.profile.clone();
    state.requested = None;
    store.save_renewal_state(lineage, &state).await?;
    Ok(Obtained {
        lineage: lineage.to_string(),
        info,
        fullchain: store.live_path(lineage, "fullchain.pem"),
        privkey: store.live_path(lineage, "privkey.pem"),
        elapsed: start.elapsed(),
    })
}
