//! One DNS-01 order: publish every TXT record, wait until all are visible, answer
//! all challenges, finalize, store. All authorizations are handled together, so
//! an order for five names waits for DNS once, not five times.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::{account, again_on_bad_nonce, from_acme, AcmeError};
use crate::certinfo::CertInfo;
use crate::config::{Config, KeyType, Provider};
use crate::dns::{self, propagation, TxtRecord};
use crate::names;
use crate::store::{self, Store};
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
        let v = names::validate_domain(n).map_err(AcmeError::InvalidName)?;
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

/// Obtains one certificate for `names` and stores it under `lineage`, holding
/// the lineage lock throughout. `replaces` is the ARI id of the certificate this
/// one renews, when the CA supports ARI.
pub async fn obtain(
    cfg: &Config,
    store: &Store,
    lineage: &str,
    names: &[String],
    replaces: Option<String>,
    ui: &Ui,
) -> Result<Obtained, AcmeError> {
    let start = Instant::now();
    let _lock = store.lock(lineage).await?;
    ui.step(&format!(
        "Requesting a certificate for {}",
        names.join(", ")
    ));
    let mut acct = account::load_or_create(&cfg.acme, store, ui).await?;
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let order = {
        let mut new = NewOrder::new(&ids);
        let replaces_id = replaces
            .as_deref()
            .and_then(crate::certinfo::ari_identifier);
        if let Some(r) = replaces_id.clone() {
            new = new.replaces(r);
        }
        match again_on_bad_nonce!(acct.new_order(&new).await) {
            Ok(o) => o,
            Err(e) if account::account_gone(&e) => {
                tracing::warn!(
                    "the CA does not know the stored account any more; registering a new one"
                );
                acct = account::create(&cfg.acme, store, ui).await?;
                again_on_bad_nonce!(acct.new_order(&new).await).map_err(from_acme)?
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                again_on_bad_nonce!(acct.new_order(&NewOrder::new(&ids)).await)
                    .map_err(from_acme)?
            }
            Err(e) => return Err(from_acme(e)),
        }
    };
    run_order(cfg, store, lineage, names, order, ui, start).await
}

async fn run_order(
    cfg: &Config,
    store: &Store,
    lineage: &str,
    names: &[String],
    mut order: instant_acme::Order,
    ui: &Ui,
    start: Instant,
) -> Result<Obtained, AcmeError> {
    // Collect every pending dns-01 challenge first.
    fetch_authorizations(&mut order).await.map_err(from_acme)?;
    let mut records = Vec::new();
    {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a.map_err(from_acme)?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Validation(format!(
                        "authorization for {} is {other:?}",
                        a.identifier()
                    )))
                }
            }
            let domain = a.identifier().to_string();
            let ch = a.challenge(ChallengeType::Dns01).ok_or_else(|| {
                AcmeError::Problem(format!("the CA offers no dns-01 challenge for {domain}"))
            })?;
            records.push(TxtRecord {
                fqdn: names::challenge_name(&domain),
                value: ch.key_authorization().dns_value(),
                domain,
            });
        }
    }
    for r in records.iter_mut() {
        r.fqdn = propagation::follow_cname(&r.fqdn, &cfg.dns.resolvers).await;
    }
    if !records.is_empty() {
        let publisher = dns::publisher(&cfg.dns, ui.clone())?;
        ui.step(&format!(
            "Publishing {} TXT record(s) with provider {}",
            records.len(),
            cfg.dns.provider.name()
        ));
        if matches!(cfg.dns.provider, Provider::Manual) {
            ui.say("Note: with dns.provider = \"manual\" renewals need you again; choose exec, rfc2136, builtin or an API provider for unattended renewal.");
        }
        let result = async {
            publisher.present(&records).await?;
            wait_visible(cfg, &records, ui).await?;
            answer_challenges(&mut order, ui).await
        }
        .await;
        // Cleanup always runs, also after a failure; its own error never hides the first.
        if let Err(e) = publisher.cleanup(&records).await {
            tracing::warn!("removing the TXT record(s) failed: {e}");
        }
        result?;
    }
    finalize_and_store(cfg, store, lineage, names, &mut order, ui, start).await
}

/// Waits for DNS; with `manual`, Enter on stdin also proceeds (the person
/// vouches for the record), while end-of-file (no terminal) is ignored.
async fn wait_visible(cfg: &Config, records: &[TxtRecord], ui: &Ui) -> Result<(), AcmeError> {
    if matches!(cfg.dns.provider, Provider::Builtin { .. }) {
        // edge serves these itself, from memory: visible the moment they are set.
        return Ok(());
    }
    if !matches!(cfg.dns.provider, Provider::Manual) || !ui.is_interactive() {
        return Ok(propagation::wait(records, &cfg.dns, ui).await?);
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
        r = propagation::wait(records, &cfg.dns, ui) => Ok(r?),
        Ok(()) = rx => {
            ui.step("Enter pressed: asking the CA to validate now");
            Ok(())
        }
    }
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

/// The authorizations' states are the ones `run_order` fetched: the loop
/// below asks the CA only to validate.
async fn answer_challenges(order: &mut instant_acme::Order, ui: &Ui) -> Result<(), AcmeError> {
    ui.step("Asking the CA to validate");
    {
        let mut auths = order.authorizations();
        while let Some(a) = auths.next().await {
            let mut a = a.map_err(from_acme)?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = a.challenge(ChallengeType::Dns01) {
                again_on_bad_nonce!(ch.set_ready().await).map_err(from_acme)?;
            }
        }
    }
    let status = again_on_bad_nonce!(order.poll_ready(&poll_policy()).await);
    match status {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(_) | Err(instant_acme::Error::Api(_)) => Err(validation_failure(order).await),
        Err(e) => Err(from_acme(e)),
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

async fn finalize_and_store(
    cfg: &Config,
    store: &Store,
    lineage: &str,
    names: &[String],
    order: &mut instant_acme::Order,
    ui: &Ui,
    start: Instant,
) -> Result<Obtained, AcmeError> {
    ui.step(&format!("Finalizing with a new {} key", cfg.acme.key_type));
    let key = key_pair(cfg.acme.key_type)?;
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| AcmeError::Other(format!("CSR: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Other(format!("CSR: {e}")))?;
    again_on_bad_nonce!(order.finalize_csr(csr.der()).await).map_err(from_acme)?;
    let chain =
        again_on_bad_nonce!(order.poll_certificate(&poll_policy()).await).map_err(from_acme)?;
    let info = store.save_certificate(lineage, &chain, &key.serialize_pem())?;
    let mut state = store.renewal_state(lineage);
    let now = store::unix(SystemTime::now());
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
    store.save_renewal_state(lineage, &state)?;
    let live = store.live_dir(lineage);
    Ok(Obtained {
        lineage: lineage.to_string(),
        info,
        fullchain: live.join("fullchain.pem"),
        privkey: live.join("privkey.pem"),
        elapsed: start.elapsed(),
    })
}
