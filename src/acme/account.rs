//! The ACME account: created on first use, kept under
//! `accounts/<directory host>/account.json` (0600), reused after. Loaded only
//! when an order needs it: serving stored certificates and checking their
//! renewal windows (ARI, `ari`) never contacts the CA as an account.

use std::time::Duration;

use base64::Engine;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};

use super::http::{ca_client, AcmeHttp, RetryAfter};
use super::{error_chain, AcmeError};
use crate::config::Acme;
use crate::store::Store;
use crate::ui::Ui;

/// How long one request to the CA may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An account at one CA, and what its transport noticed.
pub struct Ca {
    pub account: Account,
    pub directory: String,
    retry_after: RetryAfter,
}

impl Ca {
    /// instant-acme's error in edge's terms, with the CA's `Retry-After`.
    pub fn err(&self, e: instant_acme::Error) -> AcmeError {
        super::from_acme(e, &self.directory).with_retry_after(self.retry_after.take())
    }
}

async fn builder(
    cfg: &Acme,
    retry_after: &RetryAfter,
) -> Result<instant_acme::AccountBuilder, AcmeError> {
    let http = ca_client(cfg.ca_bundle.as_deref(), REQUEST_TIMEOUT).await?;
    Ok(Account::builder_with_http(Box::new(AcmeHttp {
        client: http,
        retry_after: retry_after.clone(),
    })))
}

/// Turns a failure to reach the directory into advice.
fn directory_error(cfg: &Acme, e: instant_acme::Error) -> AcmeError {
    let detail = error_chain(&e);
    let hint = if detail.contains("invalid peer certificate") || detail.contains("certificate") {
        if cfg.ca_bundle.is_some() {
            "; the server's certificate is not signed by acme.ca_bundle: check that it holds this CA's root"
        } else {
            "; for a test CA such as Pebble, set acme.ca_bundle to its root certificate"
        }
    } else if detail.contains("onnect")
        || detail.contains("dns error")
        || detail.contains("timed out")
    {
        "; check acme.directory and that the CA is reachable from this host"
    } else {
        ""
    };
    match e {
        instant_acme::Error::Api(p) => super::from_problem(&p, &cfg.directory),
        _ => AcmeError::Unreachable {
            url: cfg.directory.clone(),
            detail: format!("{detail}{hint}"),
        },
    }
}

/// The lock held while an account is registered, so processes (and a
/// fleet's nodes) starting at once register one account between them, not
/// one each. `@` is never in a certificate name, so it names no lineage.
const ACCOUNT_LOCK: &str = "@account";

/// Loads the stored account for this directory, or registers a new one.
pub async fn load_or_create(cfg: &Acme, store: &Store, ui: &Ui) -> Result<Ca, AcmeError> {
    if let Some(ca) = stored(cfg, store).await? {
        return Ok(ca);
    }
    let _lock = store.lock(ACCOUNT_LOCK).await?;
    // Registered by another process or node while this one waited.
    if let Some(ca) = stored(cfg, store).await? {
        return Ok(ca);
    }
    create(cfg, store, ui).await
}

/// Registers a new account in place of `gone`, which the CA no longer knows,
/// unless another process or node already did while this one waited.
pub async fn replace(cfg: &Acme, store: &Store, ui: &Ui, gone: &Ca) -> Result<Ca, AcmeError> {
    let _lock = store.lock(ACCOUNT_LOCK).await?;
    if let Some(ca) = stored(cfg, store).await? {
        if ca.account.id() != gone.account.id() {
            return Ok(ca);
        }
    }
    create(cfg, store, ui).await
}

/// The stored account for this directory, if there is a readable one.
async fn stored(cfg: &Acme, store: &Store) -> Result<Option<Ca>, AcmeError> {
    let Some(bytes) = store.account(&cfg.directory).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<AccountCredentials>(&bytes) {
        Ok(creds) => {
            let retry_after = RetryAfter::default();
            let account = builder(cfg, &retry_after)
                .await?
                .from_credentials(creds)
                .await
                .map_err(|e| directory_error(cfg, e))?;
            Ok(Some(Ca {
                account,
                directory: cfg.directory.clone(),
                retry_after,
            }))
        }
        Err(e) => {
            tracing::warn!(path = %store.account_location(&cfg.directory), "stored ACME account is unreadable ({e}); registering a new one");
            Ok(None)
        }
    }
}

/// Registers a new account (terms accepted, contacts, EAB) and stores it.
async fn create(cfg: &Acme, store: &Store, ui: &Ui) -> Result<Ca, AcmeError> {
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let eab = match &cfg.eab {
        None => None,
        Some(e) => {
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(e.hmac.trim_end_matches('='))
                .map_err(|_| {
                    AcmeError::Other(
                        "acme.eab.hmac is not base64url; copy it exactly as your CA shows it"
                            .into(),
                    )
                })?;
            Some(ExternalAccountKey::new(e.kid.clone(), &key))
        }
    };
    ui.step(&format!("Registering an ACME account at {}", cfg.directory));
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let retry_after = RetryAfter::default();
    // `create` consumes its builder, so a round after a refused nonce builds
    // another: rare, and cheaper than a failed registration.
    let (account, creds) = super::again_on_bad_nonce!(
        builder(cfg, &retry_after)
            .await?
            .create(&new, cfg.directory.clone(), eab.as_ref())
            .await
    )
    .map_err(|e| directory_error(cfg, e).with_retry_after(retry_after.take()))?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| AcmeError::Other(e.to_string()))?;
    store.save_account(&cfg.directory, json).await?;
    Ok(Ca {
        account,
        directory: cfg.directory.clone(),
        retry_after,
    })
}

/// Whether an error means the CA no longer knows the stored account (a test CA
/// restarted, or the account was deactivated): then a new one is registered.
pub fn account_gone(e: &instant_acme::Error) -> bool {
    match e {
        instant_acme::Error::Api(p) => p.r#type.as_deref().is_some_and(|t| {
            t.ends_with("accountDoesNotExist")
                || t.ends_with("unauthorized")
                    && p.detail.as_deref().is_some_and(|d| d.contains("account"))
        }),
        _ => false,
    }
}
