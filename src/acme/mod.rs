//! The ACME side: account, DNS-01 orders, renewal policy.
//!
//! Everything that talks to the CA returns [`AcmeError`], whose messages are meant
//! for the person at the terminal: a rate limit says until when, a failed
//! validation says which name and what the CA's resolver saw.

pub mod account;
pub mod http;
pub mod order;
pub mod renew;

use std::path::PathBuf;

use crate::dns::DnsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("invalid certificate name: {0}")]
    InvalidName(String),
    #[error("cannot reach the ACME directory {url}: {detail}")]
    Directory { url: String, detail: String },
    #[error("acme.ca_bundle {path}: {detail}")]
    CaBundle { path: PathBuf, detail: String },
    #[error("the CA refused the request: {0}")]
    Problem(String),
    #[error("rate limited by the CA: {detail}{retry}")]
    RateLimited { detail: String, retry: String },
    #[error("validation failed: {0}")]
    Validation(String),
    #[error("publishing the TXT record failed: {0}")]
    Dns(#[from] DnsError),
    #[error("storing the certificate failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// How many times an ACME call is made while the CA refuses its nonce. Each
/// call is itself up to three tries (instant-acme's own), so a CA refusing
/// nonces at random 5% of the time (Pebble's default) fails a request about
/// once in 8,000 with one round, and practically never with eight.
pub const NONCE_ROUNDS: u32 = 8;

/// Whether the CA refused a request only for its anti-replay nonce.
pub fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref().is_some_and(|t| t.ends_with(":badNonce")))
}

/// Evaluates an ACME call (an expression that awaits one) again while the CA
/// refuses it for its nonce, up to [`NONCE_ROUNDS`] times.
///
/// RFC 8555 §6.5: a `badNonce` refusal means the CA did nothing with the
/// request, so sending it again is always safe, and clients should. A CA may
/// refuse a valid nonce at any time (an expired one, a request that reached
/// another of its nodes); one such refusal must not fail a renewal.
///
/// A macro rather than a function taking an async closure: the calls borrow
/// the order mutably, and a future built from an `AsyncFnMut` is not `Send`
/// for every lifetime, which the daemon's spawned renewals need.
macro_rules! again_on_bad_nonce {
    ($call:expr) => {{
        let mut round = 1;
        loop {
            match $call {
                Err(e) if $crate::acme::is_bad_nonce(&e) && round < $crate::acme::NONCE_ROUNDS => {
                    tracing::debug!(
                        round,
                        "the CA refused the request's nonce; sending it again"
                    );
                    round += 1;
                }
                result => break result,
            }
        }
    }};
}
pub(crate) use again_on_bad_nonce;

/// A readable error from instant-acme's, with the CA's problem document in words.
pub fn from_acme(e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(p) => from_problem(&p),
        instant_acme::Error::Timeout(_) => {
            AcmeError::Other("the CA did not finish the order in time; try again later".into())
        }
        other => AcmeError::Other(error_chain(&other)),
    }
}

pub fn from_problem(p: &instant_acme::Problem) -> AcmeError {
    let kind = p
        .r#type
        .as_deref()
        .and_then(|t| t.rsplit(':').next())
        .unwrap_or("unknown");
    let mut detail = p.detail.clone().unwrap_or_else(|| kind.to_string());
    for s in &p.subproblems {
        let who = s
            .identifier
            .as_ref()
            .map(|i| i.authorized(false).to_string())
            .unwrap_or_default();
        detail.push_str(&format!("; {who}: {}", s.detail.as_deref().unwrap_or("")));
    }
    match kind {
        "rateLimited" => AcmeError::RateLimited {
            detail,
            retry: String::from(
                " (edge backs off and retries later; see the CA's rate-limit documentation)",
            ),
        },
        "unauthorized" | "dns" | "incorrectResponse" | "connection" | "caa" => {
            AcmeError::Validation(detail)
        }
        "externalAccountRequired" => AcmeError::Problem(format!(
            "this CA requires External Account Binding: set [acme] eab = {{ kid = \"...\", hmac = \"...\" }} from your account at the CA ({detail})"
        )),
        _ => AcmeError::Problem(format!("{detail} ({kind})")),
    }
}

/// An error and its sources on one line: reqwest and rustls put the useful part
/// (e.g. "invalid peer certificate: UnknownIssuer") in the source chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: &str) -> instant_acme::Error {
        let problem = serde_json::json!({ "type": kind, "detail": "refused", "status": 400 });
        instant_acme::Error::Api(serde_json::from_value(problem).unwrap())
    }

    #[test]
    fn only_a_refused_nonce_is_sent_again_and_not_forever() {
        const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
        // Refused twice, then answered: three calls, and the answer.
        let mut calls = 0;
        let r = again_on_bad_nonce!({
            calls += 1;
            if calls < 3 {
                Err(refused(BAD_NONCE))
            } else {
                Ok(calls)
            }
        });
        assert_eq!((r.unwrap(), calls), (3, 3));
        // Refused every time: the refusal, after NONCE_ROUNDS calls.
        let mut calls = 0;
        let r: Result<(), _> = again_on_bad_nonce!({
            calls += 1;
            Err(refused(BAD_NONCE))
        });
        assert!(is_bad_nonce(&r.unwrap_err()));
        assert_eq!(calls, NONCE_ROUNDS);
        // Any other refusal is the answer at once.
        let mut calls = 0;
        let r: Result<(), _> = again_on_bad_nonce!({
            calls += 1;
            Err(refused("urn:ietf:params:acme:error:malformed"))
        });
        assert!(!is_bad_nonce(&r.unwrap_err()));
        assert_eq!(calls, 1);
    }
}
