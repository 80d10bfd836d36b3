//! Publishing `_acme-challenge` TXT records, one file per way of doing it, behind
//! the [`Publisher`] trait; and checking that the records are visible.

pub mod builtin;
pub mod challtestsrv;
pub mod cloudflare;
pub mod exec;
pub mod httpreq;
pub mod manual;
pub mod propagation;
pub mod rfc2136;

use std::future::Future;
use std::pin::Pin;

use crate::config::{Dns, Provider};

/// One TXT value to publish for one certificate name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// The name on the certificate, e.g. `*.example.org`.
    pub domain: String,
    /// Where the record goes, without trailing dot: `_acme-challenge.example.org`.
    pub fqdn: String,
    /// The base64url SHA-256 of the key authorization.
    pub value: String,
}

/// A publisher that failed, naming what it tried and what came back.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns hook {command} ({action} for {fqdn}) {outcome}{stderr}")]
    Hook {
        command: String,
        action: &'static str,
        fqdn: String,
        outcome: String,
        stderr: String,
    },
    #[error("{provider}: {message}")]
    Api {
        provider: &'static str,
        message: String,
    },
    #[error("the TXT record did not appear within {timeout}: {detail}")]
    NotPropagated { timeout: String, detail: String },
    #[error("DNS lookup failed: {0}")]
    Lookup(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Puts TXT records in place and takes them away again. All records of an order
/// are handed over together so a publisher can batch them (one UPDATE, one API
/// session) and so apex and wildcard values on one name are added side by side.
pub trait Publisher: Send + Sync {
    fn present<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>>;
    fn cleanup<'a>(&'a self, records: &'a [TxtRecord]) -> BoxFuture<'a, Result<(), DnsError>>;
}

/// Reads a provider's credential; the error names the source, never the value.
fn secret(
    src: &crate::config::SecretSource,
    provider: &'static str,
    what: &str,
) -> Result<crate::config::Secret, DnsError> {
    src.resolve().map_err(|e| DnsError::Api {
        provider,
        message: format!("{what}: {e}"),
    })
}

/// Builds the publisher the config asks for.
pub fn publisher(cfg: &Dns, ui: crate::ui::Ui) -> Result<Box<dyn Publisher>, DnsError> {
    Ok(match &cfg.provider {
        Provider::Manual => Box::new(manual::Manual { ui }),
        Provider::Exec { command } => Box::new(exec::Exec::new(command.clone())),
        Provider::PebbleChalltestsrv { url } => {
            Box::new(challtestsrv::Challtestsrv::new(url.clone())?)
        }
        Provider::Httpreq {
            url,
            username,
            password,
        } => {
            let auth = match (username, password) {
                (Some(u), Some(p)) => Some((u.clone(), secret(p, "httpreq", "password")?)),
                _ => None,
            };
            Box::new(httpreq::Httpreq::new(url.clone(), auth)?)
        }
        Provider::Builtin { listen, zone } => {
            Box::new(builtin::Builtin::new(*listen, zone.clone()))
        }
        Provider::Rfc2136 {
            server,
            zone,
            tsig_key,
            tsig_secret,
            tsig_algorithm,
            ttl,
        } => {
            let secret = secret(tsig_secret, "rfc2136", "TSIG secret")?;
            Box::new(rfc2136::Rfc2136::new(
                *server,
                zone.clone(),
                tsig_key,
                &secret,
                *tsig_algorithm,
                *ttl,
            )?)
        }
        Provider::Cloudflare { token, api_url } => {
            let token = secret(token, "cloudflare", "API token")?;
            Box::new(cloudflare::Cloudflare::new(api_url.clone(), token)?)
        }
    })
}
