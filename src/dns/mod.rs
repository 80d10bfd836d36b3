//! Publishing `_acme-challenge` TXT records, one file per DNS provider, and
//! checking that the records are visible.
//!
//! A provider's file holds all of it: its `[dns]` keys and their validation
//! (`PROVIDER`, a [`ProviderSpec`]), what it tells `edge check`, what it can
//! do ([`DnsProvider`]) and its [`Publisher`]. Adding a provider is that one
//! file and one line in the `providers!` list below.

pub mod propagation;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::check::Report;
use crate::config::{ConfigError, ProviderKeys, Site};
use crate::ui::Ui;

/// Declares the provider modules and the table the config looks names up in.
macro_rules! providers {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every DNS provider this build knows.
        pub(crate) static PROVIDERS: &[&ProviderSpec] = &[$(&$module::PROVIDER),*];
    };
}

providers! {
    manual,
    exec,
    challtestsrv,
    httpreq,
    cloudflare,
    rfc2136,
    builtin,
}

/// One DNS provider as the config file knows it.
pub struct ProviderSpec {
    /// Its `[dns] provider` name.
    pub name: &'static str,
    /// The keys of `[dns]` it takes besides `provider`, `propagation_timeout`,
    /// `propagation_delay` and `resolvers`. Any other key is an error that
    /// names the provider it belongs to.
    pub keys: &'static [&'static str],
    /// Reads and checks those keys.
    pub parse: fn(&mut ProviderKeys<'_>) -> Result<Arc<dyn DnsProvider>, ConfigError>,
}

/// A configured DNS provider: what the order flow may ask of it.
pub trait DnsProvider: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    /// The publisher, with its credentials read now (from a file or the
    /// environment), so a missing one fails the order that needs it.
    fn publisher(&self) -> Result<Box<dyn Publisher>, DnsError>;
    /// A person sets the records; every renewal needs them again.
    fn needs_person(&self) -> bool {
        false
    }
    /// edge serves the records itself: visible the moment they are set, so
    /// there is no propagation to wait for.
    fn serves_records(&self) -> bool {
        false
    }
    /// What `edge check` says about this provider's set-up.
    fn check(&self, _sites: &[Site], _report: &mut Report) {}
}

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
    /// Starts what the publisher serves records from (the built-in
    /// responder's sockets), if anything; called again, it does nothing. Its
    /// owner calls it early to hold a port for its whole life; `present`
    /// starts it too. Whatever it started stops when the publisher is dropped.
    fn start(&self) -> BoxFuture<'_, Result<(), DnsError>> {
        Box::pin(async { Ok(()) })
    }
    fn present<'a>(
        &'a self,
        records: &'a [TxtRecord],
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>>;
    fn cleanup<'a>(
        &'a self,
        records: &'a [TxtRecord],
        ui: &'a Ui,
    ) -> BoxFuture<'a, Result<(), DnsError>>;
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
